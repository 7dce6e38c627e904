"""Integrations: diffusers pipelines (:mod:`fewstep.integrations.diffusers`, imported on first use because
diffusers is slow to import) and the solver-by-model-call :class:`~fewstep.integrations.stepper.Stepper`.
k-diffusion-style sampling functions live in :mod:`fewstep.k`."""

from __future__ import annotations

from typing import Any

from .stepper import Request, Stepper, evaluation_sigmas

__all__ = ["Stepper", "Request", "evaluation_sigmas", "FewstepScheduler", "DiffusersDenoiser", "load_denoiser",
           "run_pipeline_loop", "unet_model_id", "resolve_noise_config"]

_DIFFUSERS = ("FewstepScheduler", "FewstepSchedulerOutput", "DiffusersDenoiser", "load_denoiser", "run_pipeline_loop",
              "unet_model_id", "resolve_noise_config")


def __getattr__(name: str) -> Any:
    if name in _DIFFUSERS:
        from . import diffusers as _d

        return getattr(_d, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
