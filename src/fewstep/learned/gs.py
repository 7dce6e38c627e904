"""GS, the generalised solver of GS/GAS (Oganov et al., 2025, arXiv 2510.17699; landscape.md Sec. 2(1)) without the
adversarial loss: learned corrections to DPM-Solver++(kM)'s weights, with model-input time shifts and a learned
schedule by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..solvers import DPMSolverPP, History, Solver
from ..solvers.base import Model
from .sampler import Defaults, LearnedSampler, Option

__all__ = ["GSSampler", "GeneralisedMultistep"]


@dataclass(frozen=True, eq=False)
class GeneralisedMultistep(Solver):
    """The generalised solver of GS/GAS (Oganov et al., 2025, arXiv 2510.17699, Alg. 1) on DPM-Solver++(kM),
    k = ``max_order`` (midpoint 3M, lower order at the end, data prediction): per step the base update plus
    zero-initialised additive corrections to the weights of the last k data predictions m_{i-j},
    x_{i+1} = DPM++(x_i) + (1 - t_{i+1} / t_i) sum_j dc[i, j] m_{i-j}
    (1 - t_{i+1}/t_i = h phi_1(-h) is the first-order weight, so dc is relative to it). Zero corrections (or no
    predictor): ``dpmpp(max_order=k)`` bitwise. GS's learned times and model-input time shifts are not here: the
    learned sampler trains a monotone schedule and wraps this in :class:`TimeShift`."""

    name = "gs"
    max_supported_order = 3
    max_order: int = 3
    predictor: Any = None

    def init(self, x: torch.Tensor, sigmas: Any) -> History:
        return History()

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any,
             state: History) -> tuple[torch.Tensor, History]:
        x_next, hist = DPMSolverPP(max_order=self.max_order).step(model, x, i, sigmas, state)
        if self.predictor is not None:
            dc = self.predictor.gs_corrections(i)
            g = 1 - sigmas[i + 1] / sigmas[i]
            n = min(self.max_order, len(hist))
            x_next = x_next + g * sum(dc[j] * hist.values[j] for j in range(n))
        return x_next, hist


class GSSampler(LearnedSampler):
    """GS, the generalised solver of GS/GAS (Oganov et al., 2025; landscape.md Sec. 2(1)) without the adversarial
    loss: zero-initialised additive corrections dc[i, j] to DPM-Solver++(``order``M)'s weights of its last ``order``
    data predictions (:class:`GeneralisedMultistep`), trained by default with model-input
    time shifts xi (:class:`fewstep.solvers.TimeShift`) and a learned monotone schedule (softmax log-sigma
    increments, :class:`fewstep.learned.LearnedSchedule`; GS uses stick-breaking: the same family).
    Zero corrections and shifts on the initial schedule: DPM-Solver++(3M) bitwise."""

    method = "gs"
    summary = "GS: learned corrections of DPM-Solver++(3M), time shifts and schedule (Oganov et al., 2025)"
    OPTIONS: ClassVar[dict[str, Option]] = {"order": Option(3, int, 1, 3, help="DPM-Solver++ order")}
    DEFAULTS = Defaults(lr=0.01, learn_schedule=True, time_shift=True)  # measured on the natural-patch GMM bed

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "dpmpp", "options": {"max_order": options["order"]}}

    @classmethod
    def options_for_base(cls, solver: str, options: dict[str, Any]) -> dict[str, Any] | None:
        plain = set(options) <= {"max_order"}  # DPM-Solver++ with its other options at their defaults
        return {"order": options.get("max_order", 2)} if solver == "dpmpp" and plain else None

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.dc = nn.Parameter(torch.zeros(num_intervals, options["order"], dtype=torch.float64))

    def gs_corrections(self, i: int) -> torch.Tensor:
        return self.dc[i]

    def make_solver(self) -> Solver:
        return GeneralisedMultistep(max_order=self.options["order"], predictor=self)
