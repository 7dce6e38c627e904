"""The learned samplers: DyWeight-style learned multistep, EPD (parallel directions), PAS (PCA-basis direction
correction) and GS (generalised multistep solver)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..solvers import EPD, LearnedMultistep, Solver
from ..solvers.learned import PAS, GeneralisedMultistep
from ..solvers.learned import epd_initial_r
from .base import LearnedSampler, register

__all__ = ["DyWeightSampler", "EPDSampler", "PASSampler", "GSSampler"]


@register
class DyWeightSampler(LearnedSampler):
    """DyWeight-style learned multistep (landscape.md, Sec. 2(2)): per step the history weights W[i] = AB row + dW[i]
    over the last ``window`` directions (row sums free: the implied time calibration t~ is carried forward) and a
    model-input time scale s_i = exp(log_s[i]). Zero parameters: iPNDM(max_order=window) bitwise. AFS is the
    first step's direction when trained with ``afs``. Option ``calibration``: 0 carries t~ additively (DyWeight's
    form, floored at 0.1 t_{i+1}), 1 multiplicatively (:class:`fewstep.solvers.LearnedMultistep`); measured: 0 is
    2x better at NFE 9 on the patch bed, 1 trains far better over guidance scales 1-8 (docs/guidance_scales.md)."""

    method = "dyweight"
    OPTIONS = {"window": (4, 1, 4), "calibration": (0, 0, 1)}
    learns_schedule_by_default: ClassVar[bool] = True  # measured: 7% lower RMSE at NFE 5 and 9, same cost

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "ipndm", "options": {"max_order": options["window"]}}

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.dw = nn.Parameter(torch.zeros(num_intervals, options["window"], dtype=torch.float64))
        self.log_s = nn.Parameter(torch.zeros(num_intervals, dtype=torch.float64))

    def multistep_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dw[i], self.log_s[i].exp()

    def make_solver(self) -> Solver:
        return LearnedMultistep(max_order=self.options["window"], predictor=self,
                                multiplicative=bool(self.options["calibration"]))

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


@register
class PASSampler(LearnedSampler):
    """PAS (Wang et al., ICML 2025; landscape.md Sec. 1b): per step ``coords`` coordinates c[i] correcting
    iPNDM(``order``)'s direction in an orthonormal per-sample basis (the direction itself, then principal components
    of the past directions, Gram-Schmidt, signs aligned with x_t - x_T; :class:`fewstep.solvers.learned.PAS`).
    Zero coordinates: iPNDM bitwise. ``coords`` x steps parameters (12 at NFE 5 with AFS and coords 2).
    Differences from PAS, both measured on the natural-patch bed: PAS searches the coordinates step by step against
    a teacher trajectory, here they train end to end with the final-point loss of the one trainer, which needs the
    along-direction coordinate to carry the time forward (DyWeight's calibration) and the principal-component
    coordinates in units of 0.1 ||D|| (without either, training at lr 0.02 made iPNDM worse); coordinates are per
    sample norm-relative (PAS: batch-mean norm) and every step is corrected (PAS picks steps adaptively)."""

    method = "pas"
    OPTIONS = {"order": (4, 1, 4), "coords": (2, 1, 4)}

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "ipndm", "options": {"max_order": options["order"]}}

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.coords = nn.Parameter(torch.zeros(num_intervals, options["coords"], dtype=torch.float64))

    def pas_coords(self, i: int) -> torch.Tensor:
        return self.coords[i]

    def make_solver(self) -> Solver:
        return PAS(max_order=self.options["order"], coords=self.options["coords"], predictor=self)


@register
class GSSampler(LearnedSampler):
    """GS, the generalised solver of GS/GAS (Oganov et al., 2025; landscape.md Sec. 2(1)) without the adversarial
    loss: zero-initialised additive corrections dc[i, j] to DPM-Solver++(``order``M)'s weights of its last ``order``
    data predictions (:class:`fewstep.solvers.learned.GeneralisedMultistep`), trained by default with model-input
    time shifts xi (:class:`fewstep.solvers.TimeShift`) and a learned monotone schedule (softmax log-sigma
    increments, :class:`fewstep.amed.predictor.LearnedSchedule`; GS uses stick-breaking: the same family).
    Zero corrections and shifts on the initial schedule: DPM-Solver++(3M) bitwise."""

    method = "gs"
    OPTIONS = {"order": (3, 1, 3)}
    learns_schedule_by_default: ClassVar[bool] = True
    time_shift_by_default: ClassVar[bool] = True

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "dpmpp", "options": {"max_order": options["order"]}}

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.dc = nn.Parameter(torch.zeros(num_intervals, options["order"], dtype=torch.float64))

    def gs_corrections(self, i: int) -> torch.Tensor:
        return self.dc[i]

    def make_solver(self) -> Solver:
        return GeneralisedMultistep(max_order=self.options["order"], predictor=self)
