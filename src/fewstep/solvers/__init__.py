"""Solvers of the probability-flow ODE in the EDM parameterisation, by name."""

from ..schedules import vp_fit
from .amed import AMEDPlugin, AMEDSolver
from .base import History, Solver, lagrange_integrals, phi, step_order, taylor_terms, to_d
from .multistep import DEIS, IPNDM, IPNDMV, DPMSolverPP, UniPC
from .shift import TimeShift
from .singlestep import DPM2, Euler, Heun

SOLVERS: dict[str, type[Solver]] = {
    "euler": Euler,
    "heun": Heun,
    "dpm2": DPM2,
    "dpmpp": DPMSolverPP,
    "unipc": UniPC,
    "ipndm": IPNDM,
    "ipndm_v": IPNDMV,
    "deis": DEIS,
    "amed": AMEDSolver,
    "amed_plugin": AMEDPlugin,
}

def get_solver(name: str | Solver, **options: object) -> Solver:
    """Solver instance from a registry name and keyword options (or pass an instance through)."""
    if isinstance(name, Solver):
        if options:
            raise TypeError("options cannot be given together with a solver instance")
        return name
    if not isinstance(name, str) or name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    cls = SOLVERS[name]
    if getattr(cls, "takes_base_solver", False):
        # A wrapper (AMED-Plugin): its own options stay, the rest configure the base solver named by ``base``.
        own = {k: options.pop(k) for k in list(options) if k in cls.options() and k != "base"}
        base = options.pop("base", "ipndm")
        return cls.create(base=get_solver(base, **options), **own)
    return cls.create(**options)


__all__ = [
    "SOLVERS",
    "get_solver",
    "Solver",
    "History",
    "Euler",
    "Heun",
    "DPM2",
    "DPMSolverPP",
    "UniPC",
    "IPNDM",
    "IPNDMV",
    "DEIS",
    "AMEDSolver",
    "AMEDPlugin",
    "TimeShift",
    "phi",
    "taylor_terms",
    "lagrange_integrals",
    "step_order",
    "to_d",
    "vp_fit",
]
