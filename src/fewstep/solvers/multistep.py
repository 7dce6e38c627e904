"""Multistep solvers: DPM-Solver++, UniPC, iPNDM, iPNDM-v and DEIS.

History (past model outputs) lives in the typed state; every step costs one model evaluation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..schedules import VP_BETA_D, VP_BETA_MIN, vp_sigma_inv
from .base import History, Model, Solver, lagrange_integrals, phi, step_order, taylor_terms, to_d

__all__ = ["DPMSolverPP", "UniPC", "IPNDM", "IPNDMV", "DEIS", "UniPCState", "ADAMS_BASHFORTH"]


def _check_choice(solver: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{solver}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_bool(solver: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{solver}: {name} must be True or False, got {value!r}")


def _exp_update(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, terms: list[torch.Tensor], predict_x0: bool) -> torch.Tensor:
    """Exponential integrator in lambda = -log sigma with the model output expanded as
    sum_k terms[k] (lambda - lambda_s)^k / (k! h^k) (DPM-Solver, Lu et al. 2022; DPM-Solver++, 2023):
      data:  x_t = (sigma_t / sigma_s) x_s + sum_k h phi_{k+1}(-h) terms[k]
      noise: x_t = x_s - sigma_t sum_k h phi_{k+1}(h) terms[k]"""
    h = (s / t).log()
    if predict_x0:
        return (t / s) * x + sum(h * phi(k + 1, -h) * T for k, T in enumerate(terms))
    return x - t * sum(h * phi(k + 1, h) * T for k, T in enumerate(terms))


def _model_value(model: Model, x: torch.Tensor, s: torch.Tensor, predict_x0: bool) -> torch.Tensor:
    return model(x, s) if predict_x0 else to_d(model, x, s)


@dataclass(frozen=True)
class DPMSolverPP(Solver):
    """Multistep DPM-Solver++ (Lu et al., 2023), orders 1-3; ``predict_x0=False`` is multistep DPM-Solver.

    ``solver_type="taylor"`` uses the exact exponential-integrator weights h phi_{k+1} on the Taylor terms
    of the interpolating polynomial: order k at ``max_order=k`` (diffusers' ``solver_type="heun"`` at
    order 2). ``"midpoint"`` is the paper's 2M formula (1 + 1/2r) D_i - 1/2r D_{i-1} and, at order 3, the
    reference code's 3M (as in diffusers and k-diffusion), whose second difference carries half the
    Taylor weight: it converges with order 2 only.
    """

    name = "dpmpp"
    max_supported_order = 3
    max_order: int = 2
    predict_x0: bool = True
    lower_order_final: bool = True
    solver_type: str = "midpoint"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bool(self.name, "predict_x0", self.predict_x0)
        _check_bool(self.name, "lower_order_final", self.lower_order_final)
        _check_choice(self.name, "solver_type", self.solver_type, ("taylor", "midpoint"))

    def init(self, x: torch.Tensor, sigmas: torch.Tensor) -> History:
        return History()

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: torch.Tensor, state: History) -> tuple[torch.Tensor, History]:
        s, t = sigmas[i], sigmas[i + 1]
        hist = state.push(s, _model_value(model, x, s, self.predict_x0), keep=self.max_order)
        order = step_order(self.max_order, i, len(sigmas) - 1, len(hist), self.lower_order_final)
        h = (s / t).log()
        terms = taylor_terms(tuple(-sig.log() for sig in hist.sigmas[:order]), hist.values[:order], h)
        if self.solver_type == "midpoint" and order == 2:
            # D_i + D1/2 under the first-order weight (DPM-Solver++, Alg. 2).
            terms = [terms[0] + 0.5 * terms[1]]
        elif self.solver_type == "midpoint" and order == 3:
            # The reference implementation's 3M weighs the second difference by half the Taylor weight,
            # which makes it second-order accurate; "taylor" is the third-order formula.
            terms = [terms[0], terms[1], 0.5 * terms[2]]
        return _exp_update(x, s, t, terms, self.predict_x0), hist


@dataclass(frozen=True)
class UniPCState:
    history: History = History()
    x_start: torch.Tensor | None = None  # x at the start of the previous step (before its predictor)
    order: int = 0  # order of the previous predictor step


@dataclass(frozen=True)
class UniPC(Solver):
    """UniPC (Zhao et al., 2023): UniP-p predictor and UniC corrector with B(h) = h (``bh1``) or
    e^h - 1 (``bh2``). The corrector reuses the model output of the next step, so it is free; it is not
    applied after the last step. With the corrector the order is p + 1."""

    name = "unipc"
    max_supported_order = 3
    max_order: int = 2
    variant: str = "bh2"
    predict_x0: bool = True
    lower_order_final: bool = True
    corrector: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice(self.name, "variant", self.variant, ("bh1", "bh2"))
        for n in ("predict_x0", "lower_order_final", "corrector"):
            _check_bool(self.name, n, getattr(self, n))

    def init(self, x: torch.Tensor, sigmas: torch.Tensor) -> UniPCState:
        return UniPCState()

    def _update(
        self, x: torch.Tensor, t: torch.Tensor, hist: History, order: int, m_new: torch.Tensor | None
    ) -> torch.Tensor:
        """UniP (m_new is None) or UniC (m_new = model output at t) from hist.sigmas[0] to t."""
        s, m0 = hist.sigmas[0], hist.values[0]
        h = (s / t).log()
        hh = -h if self.predict_x0 else h
        B = hh if self.variant == "bh1" else torch.expm1(hh)
        lam0 = -s.log()
        rks = [(-hist.sigmas[k].log() - lam0) / h for k in range(1, order)]
        diffs = [(hist.values[k] - m0) / rks[k - 1] for k in range(1, order)]
        if m_new is not None:
            rks, diffs = rks + [torch.ones_like(h)], diffs + [m_new - m0]
        n = len(rks)
        if n == 0:
            rhos: list[torch.Tensor] = []
        elif n == 1 and (m_new is not None or order == 2):
            rhos = [torch.full_like(h, 0.5)]  # UniPC's fixed weight for one difference
        else:
            rks = list(torch.broadcast_tensors(*rks, hh))[:-1]
            R = torch.stack([torch.stack([r**j for r in rks], -1) for j in range(n)], -2)  # (..., n, n)
            b = torch.stack([hh * phi(j + 2, hh) * math.factorial(j + 1) / B for j in range(n)], -1)
            b = b.expand(R.shape[:-1])
            rhos = list(torch.linalg.solve(R, b).movedim(-1, 0))
        base = _exp_update(x, s, t, [m0], self.predict_x0)
        if not rhos:
            return base
        corr = sum(r * d for r, d in zip(rhos, diffs))
        return base - (t if not self.predict_x0 else 1.0) * B * corr

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: torch.Tensor, state: UniPCState) -> tuple[torch.Tensor, UniPCState]:
        s, t = sigmas[i], sigmas[i + 1]
        m = _model_value(model, x, s, self.predict_x0)
        if self.corrector and state.x_start is not None:
            x = self._update(state.x_start, s, state.history, state.order, m_new=m)
        hist = state.history.push(s, m, keep=self.max_order)
        order = step_order(self.max_order, i, len(sigmas) - 1, len(hist), self.lower_order_final)
        return self._update(x, t, hist, order, m_new=None), UniPCState(hist, x, order)


# Adams-Bashforth weights for equal steps, newest first (iPNDM; Zhang & Chen, 2023, eq. 16-18); also the neutral
# rows of the learned multistep samplers (DyWeight, PAS).
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@dataclass(frozen=True)
class IPNDM(Solver):
    """Improved PNDM (Zhang & Chen, 2023): Adams-Bashforth in sigma with equal-step weights and a
    lower-order warm start. On non-uniform grids the fixed weights make it second-order at best;
    ``ipndm_v`` uses the exact variable-step weights."""

    name = "ipndm"
    max_supported_order = 4
    max_order: int = 4

    def init(self, x: torch.Tensor, sigmas: torch.Tensor) -> History:
        return History()

    def weights(self, hist: History, order: int, s: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        return [(t - s) * c for c in ADAMS_BASHFORTH[order]]

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: torch.Tensor, state: History) -> tuple[torch.Tensor, History]:
        s, t = sigmas[i], sigmas[i + 1]
        hist = state.push(s, to_d(model, x, s), keep=self.max_order)
        order = step_order(self.max_order, i, len(sigmas) - 1, len(hist), False)
        w = self.weights(hist, order, s, t)
        return x + sum(wj * dj for wj, dj in zip(w, hist.values)), hist


@dataclass(frozen=True)
class IPNDMV(IPNDM):
    """iPNDM with exact variable-step Adams-Bashforth weights in sigma (Lagrange extrapolation of the
    direction in sigma, integrated exactly); equals DEIS rhoAB."""

    name = "ipndm_v"

    def weights(self, hist: History, order: int, s: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        return lagrange_integrals(hist.sigmas[:order], s, t, _identity)


def _identity(sig: torch.Tensor) -> torch.Tensor:
    return sig


def _log(sig: torch.Tensor) -> torch.Tensor:
    return sig.log()


_DEIS_VARIABLES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tab": vp_sigma_inv,  # VP time t (tAB)
    "rhoab": _identity,  # rho = sigma (rhoAB)
    "logrho": _log,  # log rho (diffusers' DEISMultistepScheduler)
}


@dataclass(frozen=True)
class DEIS(IPNDM):
    """DEIS (Zhang & Chen, 2023): exponential integrator whose noise prediction is extrapolated by a
    Lagrange polynomial in VP time (``deis_mode="tab"``), in rho = sigma (``"rhoab"``) or in log rho
    (``"logrho"``), with weights recomputed for every step and order.

    tAB's VP time is that of sigma(t) = sqrt(exp(vp_beta_d t^2 / 2 + vp_beta_min t) - 1): by default the
    standard VP (0.1, 19.9); the DEIS reference code (as used by AMED / GITS) fits the VP to sigma_min and
    sigma_max instead (:func:`vp_fit`). The VP options belong to tAB only (another mode refuses values other
    than the defaults)."""

    name = "deis"
    max_supported_order = 4
    max_order: int = 3
    deis_mode: str = "tab"
    vp_beta_min: float = VP_BETA_MIN
    vp_beta_d: float = VP_BETA_D

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice(self.name, "deis_mode", self.deis_mode, tuple(_DEIS_VARIABLES))
        for n in ("vp_beta_min", "vp_beta_d"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{self.name}: {n} must be a finite number, got {v!r}")
        if (self.vp_beta_min, self.vp_beta_d) != (VP_BETA_MIN, VP_BETA_D):
            if self.deis_mode != "tab":
                raise ValueError(f"{self.name}: vp_beta_min / vp_beta_d set the VP time of deis_mode='tab'; "
                                 f"deis_mode={self.deis_mode!r} does not use them")
            # sigma(t) must increase on t > 0 (beta_d t + beta_min > 0), which the time map's inverse assumes.
            if self.vp_beta_d < 0 or (self.vp_beta_d == 0 and self.vp_beta_min <= 0):
                raise ValueError(f"{self.name}: the VP schedule needs vp_beta_d >= 0 and vp_beta_d > 0 or "
                                 f"vp_beta_min > 0, got vp_beta_min={self.vp_beta_min!r}, vp_beta_d={self.vp_beta_d!r}")

    def weights(self, hist: History, order: int, s: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        u = _DEIS_VARIABLES[self.deis_mode]
        if self.deis_mode == "tab" and (self.vp_beta_min, self.vp_beta_d) != (VP_BETA_MIN, VP_BETA_D):
            u = functools.partial(vp_sigma_inv, beta_min=self.vp_beta_min, beta_d=self.vp_beta_d)
        return lagrange_integrals(hist.sigmas[:order], s, t, u)
