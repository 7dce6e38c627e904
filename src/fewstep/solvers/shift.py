"""Decoupled model-input time shifts around any solver (LD3, Tong et al., 2025; GS, Oganov et al., 2025): during
step n every model call is made at sigma * exp(xi_n) while the solver steps with sigma. The parameters come from a
learned sampler (:mod:`fewstep.learned`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .base import Model, Solver

__all__ = ["TimeShift", "ShiftedModel"]


class ShiftedModel:
    """The model call during one step with a shifted input time: ``model(x, sigma * factor)``."""

    def __init__(self, model: Model, factor: torch.Tensor) -> None:
        self.model, self.factor = model, factor

    @property
    def features(self) -> Any:
        return getattr(self.model, "features", None)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma * self.factor)


@dataclass(frozen=True, eq=False)
class TimeShift(Solver):
    """Decoupled model-input time shifts around any solver (LD3, Tong et al., 2025; GS, Oganov et al., 2025): during
    step n every model call of ``inner`` is made at sigma * exp(xi_n) while ``inner`` steps with sigma.
    xi = 0 (or no predictor) is ``inner`` bitwise. NFE and state are the inner solver's."""

    name = "time_shift"
    inner: Solver | None = None
    predictor: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Solver):
            raise TypeError("time_shift needs an inner solver instance")

    def nfe(self, num_sigmas: int) -> int:
        return self.inner.nfe(num_sigmas)

    def rounds(self, num_sigmas: int) -> int:
        inner_rounds = getattr(self.inner, "rounds", None)
        return inner_rounds(num_sigmas) if callable(inner_rounds) else self.inner.nfe(num_sigmas)

    def init(self, x: torch.Tensor, sigmas: Any) -> Any:
        return self.inner.init(x, sigmas)

    def timing(self) -> Solver:
        """The same shifts around the inner solver's timing solver."""
        inner = self.inner.timing()
        return self if inner is self.inner else dataclasses.replace(self, inner=inner)

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any, state: Any) -> tuple[torch.Tensor, Any]:
        if self.predictor is not None:
            model = ShiftedModel(model, self.predictor.time_factor(i))
        return self.inner.step(model, x, i, sigmas, state)

