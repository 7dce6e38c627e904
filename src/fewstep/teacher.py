"""The default teacher and how to run it: reference solutions, distillation targets and schedule search all use
the same accurate solver (DEIS with Lagrange extrapolation in log sigma, order 4; Zhang & Chen, 2023)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .sampling import Solution, solve
from .schedules import refine_schedule

__all__ = ["REFERENCE_SOLVER", "teacher_options", "run_teacher"]

REFERENCE_SOLVER = ("deis", {"max_order": 4, "deis_mode": "logrho"})  # reference and default AMED/GITS teacher


def teacher_options(teacher: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's solver options: ``options`` as given, or the reference DEIS-logrho order 4 for ``"deis"``."""
    if options is None and teacher == REFERENCE_SOLVER[0]:
        return dict(REFERENCE_SOLVER[1])
    return dict(options or {})


def run_teacher(denoiser: Callable, noise: torch.Tensor, sigmas: torch.Tensor, M: int, teacher: str = "deis",
                options: dict[str, Any] | None = None, *, trajectory: bool = False,
                **sample_kwargs: Any) -> Solution:
    """Run ``teacher`` from noise * sigmas[0] on ``sigmas`` with ``M`` log-uniform points inserted per interval
    (AMED's teacher, Zhou et al., 2024, Sec. 3.4). With ``trajectory`` the result's ``trajectory`` holds the
    teacher's states at the given (coarse) sigmas only."""
    fine = refine_schedule(sigmas, M)
    res = solve(denoiser, noise, fine, teacher, trajectory=trajectory, **sample_kwargs,
                **teacher_options(teacher, options))
    if trajectory:
        res.trajectory = res.trajectory[:: M + 1]
        res.sigmas = sigmas
    return res
