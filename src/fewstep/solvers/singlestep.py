"""Single-step solvers in sigma: Euler (DDIM), Heun (EDM) and the generalised DPM-Solver-2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import Model, Solver, geometric_time, to_d

__all__ = ["Euler", "Heun", "DPM2"]


@dataclass(frozen=True)
class Euler(Solver):
    """Euler in sigma; identical to deterministic DDIM (Song et al., 2021) in the EDM parameterisation."""

    name = "euler"

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        s, t = sigmas[i], sigmas[i + 1]
        return x + (t - s) * to_d(model, x, s), state


@dataclass(frozen=True)
class DPM2(Solver):
    """Generalised DPM-Solver-2 (Lu et al., 2022, Alg. 1 in EDM form): an Euler step to the geometric
    point s = sigma_i^(1-r) sigma_{i+1}^r, then x + h ((1 - 1/2r) d_i + 1/2r d_s). r=0.5 is DPM-Solver-2
    (midpoint in log sigma), r=1 is Heun."""

    name = "dpm2"
    evals_per_step = 2
    r: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) or not 0 < self.r <= 1:
            raise ValueError(f"{self.name}: r must be a number in (0, 1], got {self.r!r}")

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        s, t = sigmas[i], sigmas[i + 1]
        d = to_d(model, x, s)
        mid = geometric_time(s, t, self.r)
        d_mid = to_d(model, x + (mid - s) * d, mid)
        w = 1 / (2 * self.r)
        return x + (t - s) * ((1 - w) * d + w * d_mid), state


@dataclass(frozen=True)
class Heun(DPM2):
    """Heun's second-order method (Karras et al., 2022, Alg. 1, deterministic)."""

    name = "heun"
    r: float = 1.0

    def __post_init__(self) -> None:
        if self.r != 1.0:
            raise ValueError("heun has r=1 by definition; use solver='dpm2' for other r")
