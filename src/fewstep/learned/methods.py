"""The learned samplers: DyWeight-style learned multistep and EPD (parallel directions)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..solvers import EPD, LearnedMultistep, Solver
from ..solvers.learned import epd_initial_r
from .base import LearnedSampler, register

__all__ = ["DyWeightSampler", "EPDSampler"]


@register
class DyWeightSampler(LearnedSampler):
    """DyWeight-style learned multistep (landscape.md, Sec. 2(2)): per step the history weights W[i] = AB row + dW[i]
    over the last ``window`` directions (row sums free: the implied time calibration t~ is carried forward) and a
    model-input time scale s_i = exp(log_s[i]). Zero parameters: iPNDM(max_order=window) bitwise. AFS is the
    first step's direction when trained with ``afs``."""

    method = "dyweight"
    OPTIONS = {"window": (4, 1, 4)}

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "ipndm", "options": {"max_order": options["window"]}}

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.dw = nn.Parameter(torch.zeros(num_intervals, options["window"], dtype=torch.float64))
        self.log_s = nn.Parameter(torch.zeros(num_intervals, dtype=torch.float64))

    def multistep_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dw[i], self.log_s[i].exp()

    def make_solver(self) -> Solver:
        return LearnedMultistep(max_order=self.options["window"], predictor=self)

    def weights(self) -> list[list[float]]:
        """The history weights W as plain numbers, one row per step (newest direction first)."""
        from ..solvers.learned import ADAMS_BASHFORTH

        rows = []
        with torch.no_grad():
            for i in range(self.num_intervals):
                order = min(self.options["window"], i + 1)
                rows.append([c + float(self.dw[i, j]) for j, c in enumerate(ADAMS_BASHFORTH[order])])
        return rows


@register
class EPDSampler(LearnedSampler):
    """EPD (Zhu et al., ICCV 2025) per step: K intermediate-time fractions r_k = sigmoid(z_k), mixing weights lam
    (affine: lam_1 = 1 - sum of the others, the others zero-initialised), a direction scale c = exp(log_c) and a
    model-input time scale a = exp(log_a). Neutral: DPM-Solver-2 (the AMED-Solver untrained) for every K."""

    method = "epd"
    OPTIONS = {"K": (2, 1, 8)}

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "amed", "options": {}}

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        K = options["K"]
        logit = [math.log(r / (1 - r)) for r in epd_initial_r(K)]
        self.r_logit = nn.Parameter(torch.tensor([logit] * num_intervals, dtype=torch.float64).reshape(
            num_intervals, K))
        self.lam = nn.Parameter(torch.zeros(num_intervals, K - 1, dtype=torch.float64))
        self.log_c = nn.Parameter(torch.zeros(num_intervals, dtype=torch.float64))
        self.log_a = nn.Parameter(torch.zeros(num_intervals, dtype=torch.float64))

    def epd_params(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        r = torch.sigmoid(self.r_logit[i])
        rest = self.lam[i]
        lam = [1 - rest.sum()] + list(rest.unbind())
        return list(r.unbind()), lam, self.log_c[i].exp(), self.log_a[i].exp()

    def make_solver(self) -> Solver:
        return EPD(K=self.options["K"], predictor=self)
