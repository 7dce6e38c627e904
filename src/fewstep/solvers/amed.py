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
from .multistep import DPMSolverPP
from .singlestep import DPM2, Heun

__all__ = ["AMEDSolver", "AMEDPlugin", "StepPredictor", "PluginState", "C_MODES"]

C_MODES = ("increment", "data")  # where AMED-Plugin's c_n acts: see AMEDPlugin


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


def _mid_direction(model: Model, x: torch.Tensor, d: torch.Tensor, t_cur: Any, t_next: Any, r: Any, a: Any) -> Any:
    """d(x_s, a s) / the direction at the learned intermediate point (AMED eq. 9-10): s = t_next^r t_cur^(1-r),
    x_s = x + (s - t_cur) d (an Euler step), the model evaluated at (x_s, a s) and the direction taken at s."""
    s = geometric_time(t_cur, t_next, r)
    x_s = x + (s - t_cur) * d
    return (x_s - model(x_s, a * s)) / s


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
        return x + c * (t_next - t_cur) * _mid_direction(model, x, d, t_cur, t_next, r, a), state


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
    """AMED-Plugin around a base solver (Zhou et al., 2024, Sec. 3.3-3.4); two forms, chosen by the base.

    **Any base but DPM-Solver-2** (Euler, iPNDM, DPM-Solver++, UniPC, DEIS, ...): the base solver steps
    t_{n+1} -> s_n and s_n -> t_n on the refined schedule (its multistep history includes the intermediate
    points); the second sub-step's model call is made at a_n s_n and c_n scales its result. The predictor reads
    the features of the evaluation at t_{n+1}, which the base solver then reuses (no extra call): 2 evaluations
    per interval, one more than the base. Where c_n acts, ``c_mode``:

    * ``"increment"`` (default): the whole second increment, x_{t_n} = x_s + c_n (x_b - x_s), with x_b the base
      solver's result at t_n. For Euler, iPNDM, DEIS and DPM-Solver / UniPC in noise prediction this is the
      reference code's placement (their step is x_s + h * directions).
    * ``"data"`` (base ``dpmpp`` only): the reference code's placement for DPM-Solver++ in data prediction
      (``predict_x0=True``), whose step is x_b = (t_n/s_n) x_s + (data-prediction terms): c_n scales only those
      terms, x_{t_n} = (t_n/s_n) x_s + c_n (x_b - (t_n/s_n) x_s). With ``predict_x0=False`` the linear part is
      x_s and both modes coincide.

    The two modes agree at c_n = 1 and differ otherwise by (c_n - 1)(1 - t_n/s_n) x_s, so learned c_n values
    do **not** transfer between them: a predictor is tied to the mode it was trained in (its checkpoint stores
    ``c_mode`` in the student options).

    **DPM-Solver-2 base** (``base=get_solver("dpm2")``): the paper's plugin on DPM-Solver-2 (its Tab. 1 row
    "generalised DPM-Solver-2" and Tab. 2d; the reference code's ``dpm_2_sampler``): one DPM-Solver-2 step whose
    intermediate time is learned,
    x_{t_n} = x + c_n (t_n - t_{n+1}) [(1/2r) d(x_s, a_n s_n) + (1 - 1/2r) d(x, t_{n+1})],
    s_n = t_n^r t_{n+1}^(1-r), x_s = x + (s_n - t_{n+1}) d(x, t_{n+1}): 2 evaluations per interval, like the
    base, so NFE 2(N-1) (minus 1 with AFS: 3, 5, 7, 9). Untrained (r = 1/2, c = a = 1) it is DPM-Solver-2; the
    base must have its default r = 0.5, which the learned r_n replaces. There is no plugin on Heun (r = 1 is out
    of the predictor's range (0, 1)).
    """

    name = "amed_plugin"
    base: Solver | None = None
    predictor: StepPredictor | None = None
    c_mode: str = "increment"

    takes_base_solver: ClassVar[bool] = True  # get_solver("amed_plugin", base="ipndm", max_order=4)

    def __post_init__(self) -> None:
        if not isinstance(self.base, Solver) or isinstance(self.base, (AMEDPlugin, AMEDSolver)):
            raise TypeError("amed_plugin needs a base solver instance (not AMED itself), e.g. get_solver('ipndm')")
        if isinstance(self.base, Heun):
            raise ValueError("amed_plugin is not defined on heun (its second point t_n is r = 1, outside the "
                             "learned r's range (0, 1)); use base='dpm2', whose plugin learns r")
        if isinstance(self.base, DPM2) and self.base.r != 0.5:
            raise ValueError(f"amed_plugin on dpm2 learns r itself; the base must have the default r=0.5 (at which "
                             f"the untrained plugin is DPM-Solver-2), got r={self.base.r!r}")
        if self.c_mode not in C_MODES:
            raise ValueError(f"amed_plugin: c_mode must be one of {', '.join(map(repr, C_MODES))}, "
                             f"got {self.c_mode!r}")
        if self.c_mode == "data" and not isinstance(self.base, DPMSolverPP):
            raise ValueError(f"amed_plugin: c_mode='data' (c scales the data-prediction terms) needs base 'dpmpp', "
                             f"got {self.base.name!r}; use c_mode='increment'")

    def nfe(self, num_sigmas: int) -> int:
        if isinstance(self.base, DPM2):
            return self.base.nfe(num_sigmas)  # one generalised DPM-Solver-2 step per interval
        return self.base.nfe(2 * num_sigmas - 1)

    def init(self, x: torch.Tensor, sigmas: Any) -> PluginState | None:
        if isinstance(self.base, DPM2):
            return None  # single-step: no state
        refined: list[torch.Tensor] = []
        for i in range(len(sigmas) - 1):
            refined += [sigmas[i], geometric_time(sigmas[i], sigmas[i + 1], _HALF)]
        refined.append(sigmas[len(sigmas) - 1])
        return PluginState(self.base.init(x, sigmas), tuple(refined))

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any,
             state: PluginState | None) -> tuple[torch.Tensor, PluginState | None]:
        if isinstance(self.base, DPM2):
            return self._dpm2_step(model, x, i, sigmas), state
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x0 = model(x, t_cur)
        r, c, a = _step_params(self.predictor, model, i, t_cur, t_next, x)
        refined = list(state.refined)
        s = refined[2 * i + 1] = geometric_time(t_cur, t_next, r)
        x_s, bs = self.base.step(_Reuse(model, x0), x, 2 * i, refined, state.base_state)
        x_b, bs = self.base.step(_TimeScaled(model, a), x_s, 2 * i + 1, refined, bs)
        # lin + c (x_b - lin), written so that c = 1 gives x_b bitwise; lin is the part of the step c leaves alone.
        lin = (t_next / s) * x_s if self.c_mode == "data" and self.base.predict_x0 else x_s
        return x_b + (c - 1) * (x_b - lin), PluginState(bs, tuple(refined))

    def _dpm2_step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any) -> torch.Tensor:
        """Generalised DPM-Solver-2 with learned r, c, a (the reference code's AMED ``dpm_2_sampler``)."""
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        d = to_d(model, x, t_cur)
        if self.predictor is None:
            r, c, a = self.base.r, 1.0, 1.0  # plain numbers: bitwise DPM-Solver-2
        else:
            r, c, a = _step_params(self.predictor, model, i, t_cur, t_next, x)
        d_s = _mid_direction(model, x, d, t_cur, t_next, r, a)
        w = 1 / (2 * r)
        return x + c * (t_next - t_cur) * ((1 - w) * d + w * d_s)
