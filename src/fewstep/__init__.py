"""fewstep: few-step ODE sampling of diffusion models (AMED, Zhou et al., CVPR 2024, and its baselines)."""

from . import denoisers, schedules, solvers
from .sampling import NonFiniteError, SampleResult, count_nfe, noise_for_seeds, sample, steps_for_nfe
from .schedules import SCHEDULES, get_schedule, validate_sigmas
from .solvers import SOLVERS, get_solver

__version__ = "0.1.0"

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
