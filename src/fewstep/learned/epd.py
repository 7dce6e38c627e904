"""EPD, the ensemble of parallel directions (Zhu et al., ICCV 2025): K intermediate directions per step with learned
times, mixing weights, a direction scale and a model-input time scale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..solvers import Solver
from ..solvers.base import Model, geometric_time, to_d
from .sampler import Defaults, LearnedSampler, Option, positive_factor

__all__ = ["EPDSampler", "EPD", "epd_initial_r"]


def epd_initial_r(K: int) -> list[float]:
    """Initial intermediate-time fractions of EPD: 0.5 (DPM-Solver-2's midpoint) first, the others spread over
    (0, 1) so that their directions differ (identical ones would receive identical gradients forever)."""
    if K == 1:
        return [0.5]
    spread = [0.2 + 0.6 * k / (K - 1) for k in range(K)]  # plain floats: also used under torch.device("meta")
    return [0.5] + [v for v in spread if abs(v - 0.5) > 1e-9][: K - 1]


_HALF, _ONE = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class EPD(Solver):
    """EPD-Solver (Zhu et al., ICCV 2025): per step one evaluation d = d(x, t_n), then K parallel intermediate
    points s_k = t_{n+1}^{r_k} t_n^{1 - r_k}, x_k = x + (s_k - t_n) d, evaluated at (x_k, a s_k), and
    x_{n+1} = x + c (t_{n+1} - t_n) sum_k lam_k d(x_k, a s_k). The weights here are affine (sum to one,
    lam_1 = 1 - sum_{k>1} lam_k, the others initialised to 0) rather than EPD's softmax simplex, so that the
    neutral sampler is exactly DPM-Solver-2 for every K (at K = 1 there are no free weights).

    Evaluations: (K + 1) per step (``nfe``); sequential model rounds: 2 per step (:meth:`rounds`), the K
    intermediate evaluations being independent of each other."""

    name = "epd"
    evals_per_step: ClassVar[int] = 2  # for K = 1; see nfe()
    K: int = 2
    predictor: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.K, bool) or not isinstance(self.K, int) or not 1 <= self.K <= 8:
            raise ValueError(f"{self.name}: K must be an int in 1..8, got {self.K!r}")

    def nfe(self, num_sigmas: int) -> int:
        return (self.K + 1) * (num_sigmas - 1)

    def rounds(self, num_sigmas: int) -> int:
        """Sequential model rounds (parallel evaluations of one step count once)."""
        return 2 * (num_sigmas - 1)

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any, state: Any) -> tuple[torch.Tensor, Any]:
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d = to_d(model, x, t_cur)
        if self.predictor is None:
            r = [_HALF] + [torch.tensor(v, dtype=torch.float64) for v in epd_initial_r(self.K)[1:]]
            lam, c, a = None, _ONE, _ONE
        else:
            r, lam, c, a = self.predictor.epd_params(i)
        dirs = []
        for r_k in r:
            s = geometric_time(t_cur, t_next, r_k)
            x_s = x + (s - t_cur) * d
            dirs.append((x_s - model(x_s, a * s)) / s)
        if self.K == 1:
            mix = dirs[0]
        elif lam is None:
            mix = dirs[0]  # lam = (1, 0, ..., 0): the other evaluations are made (and counted) but unused
        else:
            mix = sum(l_k * d_k for l_k, d_k in zip(lam, dirs))
        return x + c * (t_next - t_cur) * mix, state


class EPDSampler(LearnedSampler):
    """EPD (Zhu et al., ICCV 2025) per step: K intermediate-time fractions r_k = sigmoid(z_k), mixing weights lam
    (affine: lam_1 = 1 - sum of the others, the others zero-initialised), a direction scale c = exp(log_c) and a
    model-input time scale a = exp(log_a). Neutral: DPM-Solver-2 (the AMED-Solver untrained) for every K."""

    method = "epd"
    summary = "EPD: K parallel intermediate directions per step (Zhu et al., 2025); K+1 evaluations per step"
    OPTIONS: ClassVar[dict[str, Option]] = {"K": Option(2, int, 1, 8, help="parallel directions per step")}
    DEFAULTS = Defaults(lr=0.05)  # measured on the natural-patch GMM bed at NFE 5

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
        return list(r.unbind()), lam, positive_factor(self.log_c[i]), positive_factor(self.log_a[i])

    def make_solver(self) -> Solver:
        return EPD(K=self.options["K"], predictor=self)
