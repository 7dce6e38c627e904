"""fewstep: few-step ODE sampling of diffusion models (AMED, Zhou et al., CVPR 2024, and its baselines)."""

from . import denoisers, schedules, solvers
from .sampling import NonFiniteError, SampleResult, count_nfe, noise_for_seeds, sample, steps_for_nfe
from .schedules import SCHEDULES, get_schedule, validate_sigmas
from .solvers import SOLVERS, get_solver

__version__ = "0.1.0"


def __getattr__(name: str):
    # fewstep.k and fewstep.integrations load on first use (the diffusers integration imports diffusers, which is slow).
    if name in ("k", "integrations"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "sample",
    "SampleResult",
    "NonFiniteError",
    "noise_for_seeds",
    "count_nfe",
    "steps_for_nfe",
    "get_schedule",
    "validate_sigmas",
    "SCHEDULES",
    "SOLVERS",
    "get_solver",
    "denoisers",
    "schedules",
    "solvers",
]
