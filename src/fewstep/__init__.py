"""fewstep: few-step ODE sampling of diffusion models (AMED, Zhou et al., CVPR 2024, and its baselines)."""

from . import denoisers, schedules, solvers
from ._version import VERSION as __version__
from .sampling import (
    ModelCall,
    NonFiniteError,
    Solution,
    Step,
    count_nfe,
    img2img_sigmas,
    iterate,
    noise_for_seeds,
    sample,
    solve,
    steps_for_nfe,
)
from .schedules import SCHEDULES, get_schedule, validate_sigmas
from .solvers import SOLVERS, get_solver

# Subpackages and modules that load on first use (``fewstep.learned`` works after a plain ``import fewstep``): the
# diffusers integration imports diffusers, which is slow, and the rest is not needed to sample.
_LAZY = ("amed", "learned", "k", "integrations", "evaluation", "teacher", "metrics", "data", "io", "distributed",
         "schedule_search", "experiments", "cli")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and the lazily loaded subpackages (not the module's private helpers)."""
    return sorted({n for n in globals() if n.startswith("__") or not n.startswith("_")} | set(_LAZY))


__all__ = [
    "sample",
    "solve",
    "iterate",
    "ModelCall",
    "Step",
    "Solution",
    "NonFiniteError",
    "noise_for_seeds",
    "count_nfe",
    "img2img_sigmas",
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
