"""AMED-Solver and AMED-Plugin (Zhou et al., "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps",
CVPR 2024).

Per interval t_{n+1} -> t_n a predictor gives r_n in (0, 1), a direction scale c_n and a time scale a_n,
from the features of the model evaluation at t_{n+1}; the intermediate time is s_n = t_n^r t_{n+1}^(1-r).
Without a predictor r = 0.5, c = a = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from .base import Model, Solver, geometric_time, to_d

__all__ = ["AMEDSolver", "AMEDPlugin", "StepPredictor", "PluginState"]


class StepPredictor(Protocol):
    """``predictor(i, t_cur, t_next, features, batch) -> (r, c, a)``, each of shape (batch,)."""

    uses_features: bool

    def __call__(
        self, i: int, t_cur: torch.Tensor, t_next: torch.Tensor, features: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


# Constants of the predictor-free step (r = 1/2, c = a = 1), made once rather than at every step.
_HALF, _ONE = torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)


def _step_params(predictor: StepPredictor | None, model: Model, i: int, t_cur: torch.Tensor, t_next: torch.Tensor,
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r, c, a) shaped to broadcast against x: (B, 1, ..., 1), or 0-dim constants without a predictor."""
    if predictor is None:
        return _HALF, _ONE, _ONE
    # The model call (fewstep.sampling.ModelCall) keeps the features of its latest evaluation in .features.
    feats = getattr(model, "features", None) if predictor.uses_features else None
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    r, c, a = predictor(i, t_cur, t_next, feats, x.shape[0])
    return tuple(v.to(torch.float64).reshape(shape) for v in (r, c, a))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class AMEDSolver(Solver):
    """AMED-Solver: one evaluation at t_{n+1}, an Euler step to s_n, a second evaluation at (x_s, a_n s_n), and
    x_{t_n} = x_{t_{n+1}} + c_n (t_n - t_{n+1}) eps(x_s, s_n). With r=0.5, c=a=1 it is DPM-Solver-2."""

    name = "amed"
    evals_per_step = 2
    predictor: StepPredictor | None = None

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any, state: Any) -> tuple[torch.Tensor, Any]:
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d = to_d(model, x, t_cur)
        r, c, a = _step_params(self.predictor, model, i, t_cur, t_next, x)
        s = geometric_time(t_cur, t_next, r)
        x_s = x + (s - t_cur) * d
        d_s = (x_s - model(x_s, a * s)) / s
        return x + c * (t_next - t_cur) * d_s, state


@dataclass(frozen=True)
class PluginState:
    base_state: Any
    refined: tuple[torch.Tensor, ...]  # t_N, s_{N-1}, t_{N-1}, ..., s_1, t_1 (future s_n are placeholders)


class _Reuse:
    """Model wrapper that answers its first call from an evaluation already made."""

    def __init__(self, model: Model, x0: torch.Tensor) -> None:
        self.model, self.x0 = model, x0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.x0 is not None:
            out, self.x0 = self.x0, None
            return out
        return self.model(x, sigma)


class _TimeScaled:
    """Model wrapper evaluating D(x, a * sigma) (AMED's time scale a_n)."""

    def __init__(self, model: Model, a: torch.Tensor) -> None:
        self.model, self.a = model, a

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.a * sigma)


@dataclass(frozen=True, eq=False)
class AMEDPlugin(Solver):
    """AMED-Plugin around any base solver: the base solver steps t_{n+1} -> s_n and s_n -> t_n on the refined
    schedule (its multistep history includes the intermediate points), the second sub-step's increment is
    scaled by c_n and its model call made at a_n s_n. The predictor reads the features of the evaluation at
    t_{n+1}, which the base solver then reuses (no extra call)."""

    name = "amed_plugin"
    base: Solver | None = None
    predictor: StepPredictor | None = None

    takes_base_solver: ClassVar[bool] = True  # get_solver("amed_plugin", base="ipndm", max_order=4)

    def __post_init__(self) -> None:
        if not isinstance(self.base, Solver) or isinstance(self.base, (AMEDPlugin, AMEDSolver)):
            raise TypeError("amed_plugin needs a base solver instance (not AMED itself), e.g. get_solver('ipndm')")

    def nfe(self, num_sigmas: int) -> int:
        return self.base.nfe(2 * num_sigmas - 1)

    def init(self, x: torch.Tensor, sigmas: Any) -> PluginState:
        refined: list[torch.Tensor] = []
        for i in range(len(sigmas) - 1):
            refined += [sigmas[i], geometric_time(sigmas[i], sigmas[i + 1], _HALF)]
        refined.append(sigmas[len(sigmas) - 1])
        return PluginState(self.base.init(x, sigmas), tuple(refined))

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any, state: PluginState) -> tuple[torch.Tensor, PluginState]:
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x0 = model(x, t_cur)
        r, c, a = _step_params(self.predictor, model, i, t_cur, t_next, x)
        refined = list(state.refined)
        refined[2 * i + 1] = geometric_time(t_cur, t_next, r)
        x_s, bs = self.base.step(_Reuse(model, x0), x, 2 * i, refined, state.base_state)
        x_b, bs = self.base.step(_TimeScaled(model, a), x_s, 2 * i + 1, refined, bs)
        # x_s + c (x_b - x_s), written so that c = 1 gives x_b bitwise.
        return x_b + (c - 1) * (x_b - x_s), PluginState(bs, tuple(refined))
