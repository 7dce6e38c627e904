"""Learned solvers beyond AMED, whose per-step parameters come from a parameter module (``fewstep.learned``):

* :class:`LearnedMultistep` (DyWeight-style; Zhao et al., 2026): lower-triangular history weights initialised to
  iPNDM's Adams-Bashforth rows, unconstrained row sums with the implied time calibration carried forward, and a
  per-step model-input time scale;
* :class:`EPD` (Zhu et al., ICCV 2025): K parallel intermediate directions per step with learned times, mixing
  weights, a direction scale and a time scale;
* :class:`TimeShift`: decoupled model-input time shifts xi_n (LD3 / GS) around any solver: during step n the model
  is called at sigma * exp(xi_n) while the solver steps with sigma;
* :class:`PAS` (Wang et al., ICML 2025): iPNDM whose step direction is corrected by a few learned coordinates in an
  orthonormal basis of the current direction and the principal components of the past directions;
* :class:`GeneralisedMultistep` (GS; Oganov et al., 2025): DPM-Solver++(kM) with zero-initialised additive
  corrections to the weights of its last k data predictions (learned times and time shifts come from
  ``fewstep.learned``: a learned schedule and :class:`TimeShift`).

Without a parameter module (``predictor=None``) each equals its base solver: LearnedMultistep is
``ipndm(max_order=window)`` bitwise, EPD at K=1 is the AMED-Solver's neutral step (DPM-Solver-2) bitwise, TimeShift
is its inner solver bitwise, PAS is ``ipndm(max_order)`` bitwise and GeneralisedMultistep is ``dpmpp(max_order)``
bitwise (also with a parameter module at zero). A parameter module provides ``multistep_params(i) -> (dW, s)``,
``epd_params(i) -> (r, lam, c, a)``, ``time_factor(i) -> exp(xi_i)``, ``pas_coords(i) -> c`` or
``gs_corrections(i) -> dc`` (0-dim / 1-dim float64 tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import History, Model, Solver, geometric_time, to_d
from .multistep import DPMSolverPP

__all__ = ["LearnedMultistep", "EPD", "TimeShift", "MultistepState", "ADAMS_BASHFORTH", "epd_initial_r",
           "ShiftedModel", "PAS", "PASState", "pas_basis", "PAS_PCA_UNIT", "GeneralisedMultistep"]

# Adams-Bashforth weights for equal steps, newest first: iPNDM's rows (Zhang & Chen, 2023, eq. 16-18).
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@dataclass(frozen=True)
class MultistepState:
    """Directions d_j (newest first) and the calibrated time t~_i at which the next step starts (None: sigmas[i])."""

    history: History = History()
    t_eff: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class LearnedMultistep(Solver):
    """DyWeight-style learned multistep (Zhao et al., 2026, arXiv 2603.11607), in sigma:
    d_i = (x_i - D(x_i, s_i t~_i)) / t~_i,  x_{i+1} = x_i + (t_{i+1} - t~_i) sum_j W[i, j] d_{i-j},
    t~_{i+1} = t~_i + (sum_j W[i, j]) (t_{i+1} - t~_i) = t_{i+1} + (sum_j dW[i, j]) (t_{i+1} - t~_i), with
    W = AB rows + dW (window ``max_order``, iPNDM's warm-up) and s_i a per-step time scale. The calibrated time is
    kept positive: t~_{i+1} = t_{i+1} f(1 + z / t_{i+1}), z = (sum_j dW[i, j]) (t_{i+1} - t~_i), f(y) = y down
    to 0.1 and 0.1 exp(y - 0.1) below (:func:`positive_floor`). Measured: the plain additive form went below 0
    near sigma_min when training over guidance scales up to 8 (the model refused the negative sigma); a
    multiplicative form (t_{i+1} exp(z / t_{i+1})) cost 2x RMSE at NFE 9 on the patch bed, whose trained
    calibration goes down to a fraction of t_{i+1}; a steep tail (0.1 exp((y - 0.1) / 0.1)) overflowed the guided
    training and a hard clamp at 0.1 stalled it (guidance-aware DyWeight worse than its base at w = 6).
    ``multiplicative``: t~_{i+1} = t_{i+1} (1 + elu(z / t_{i+1})) instead (additive upwards, t_{i+1} exp(z /
    t_{i+1}) downwards), which trains far better over guidance scales. dW = 0, s = 1 (or no predictor) is
    iPNDM(max_order) bitwise in both forms."""

    name = "dyweight"
    max_supported_order = 4
    max_order: int = 4
    predictor: Any = None
    multiplicative: bool = False

    def init(self, x: torch.Tensor, sigmas: Any) -> MultistepState:
        return MultistepState()

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any,
             state: MultistepState) -> tuple[torch.Tensor, MultistepState]:
        t_eff = sigmas[i] if state.t_eff is None else state.t_eff
        t_next = sigmas[i + 1]
        if self.predictor is None:
            dw, scale = None, None
        else:
            dw, scale = self.predictor.multistep_params(i)
        t_in = t_eff if scale is None else scale * t_eff
        d = (x - model(x, t_in)) / t_eff
        hist = state.history.push(t_eff, d, keep=self.max_order)
        order = min(self.max_order, len(hist))
        h = t_next - t_eff
        ab = ADAMS_BASHFORTH[order]
        if dw is None:
            w = [h * c for c in ab]
            t_new = t_next
        else:
            w = [h * (c + dw[j]) for j, c in enumerate(ab)]
            inc = dw[:order].sum() * h
            if not bool(t_next > 0):
                t_new = t_next + inc
            elif self.multiplicative:  # t_{i+1} exp(z / t_{i+1}) below t_{i+1}, additive above
                t_new = t_next * (1 + torch.nn.functional.elu(inc / t_next))
            else:
                t_new = t_next * positive_floor(1 + inc / t_next)
        return x + sum(wj * dj for wj, dj in zip(w, hist.values)), MultistepState(hist, t_new)


FLOOR = 0.1


def positive_floor(y: torch.Tensor) -> torch.Tensor:
    """y for y >= FLOOR, FLOOR exp(y - FLOOR) below: DyWeight's calibrated time t~ / t_{i+1}, positive, with a
    gradient everywhere (a hard clamp stalled guidance-aware training on the clamp)."""
    return torch.where(y >= FLOOR, y, FLOOR * torch.exp(torch.clamp(y, max=FLOOR) - FLOOR))


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

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any, state: Any) -> tuple[torch.Tensor, Any]:
        if self.predictor is not None:
            model = ShiftedModel(model, self.predictor.time_factor(i))
        return self.inner.step(model, x, i, sigmas, state)


# ---------------------------------------------------------------------------------------------------------- PAS
# PAS's principal-component coordinates are in units of 0.1 ||D_i||: with the along-direction coordinate in units
# of ||D_i||, one Adam step then moves x 10x less across the direction than along it. Measured on the natural-patch
# bed at NFE 5 (lr 0.02): unit 1 -> RMSE 0.038, unit 0.1 -> 0.028 (iPNDM 0.048; coordinate 1 alone 0.028).
PAS_PCA_UNIT = 0.1


@dataclass(frozen=True)
class PASState:
    """iPNDM's history, every direction so far (oldest first, for the PCA), the start point x_T and the calibrated
    time t~_i at which the next step starts (None: sigmas[i])."""

    history: History = History()
    directions: tuple[torch.Tensor, ...] = ()
    x_start: torch.Tensor | None = None
    t_eff: torch.Tensor | None = None


def pas_basis(directions: tuple[torch.Tensor, ...], current: torch.Tensor, flip: torch.Tensor,
              num: int) -> list[torch.Tensor]:
    """PAS's extra basis vectors u_2..u_num per sample (Wang et al., 2025, ``pca_utils/utils.py``): the leading
    principal components of the (centred) directions so far, Gram-Schmidt-orthonormalised against the current
    direction and each other, signs chosen so that <u_k, x_t - x_T> >= 0. Detached (the PCA is a fixed frame
    for the gradient, as in PAS's search); a component the history cannot provide yet (n directions give at most
    n - 1, D-dimensional data at most D) or a degenerate one is the zero vector. Exact SVD (deterministic), not
    ``pca_lowrank``."""
    shape = current.shape
    out: list[torch.Tensor] = []
    with torch.no_grad():
        B = shape[0]
        u1 = current.detach().reshape(B, -1)
        basis = [u1 / u1.norm(dim=1, keepdim=True).clamp_min(1e-300)]
        f = flip.detach().reshape(B, -1)
        n = len(directions)
        avail = min(num - 1, n - 1)
        if avail > 0:
            data = torch.stack([d.detach().reshape(B, -1) for d in directions], 1)
            data = data - data.mean(1, keepdim=True)
            _, sv, vh = torch.linalg.svd(data, full_matrices=False)
            for j in range(min(avail, vh.shape[1])):  # low-dimensional data: at most D components
                v = vh[:, j]
                for u in basis:
                    v = v - (v * u).sum(1, keepdim=True) * u
                nv = v.norm(dim=1, keepdim=True)
                ok = (nv > 1e-6) & (sv[:, j:j + 1] > 1e-12 * sv[:, :1])
                v = torch.where(ok, v / nv.clamp_min(1e-300), torch.zeros_like(v))
                v = torch.where((f * v).sum(1, keepdim=True) >= 0, v, -v)
                basis.append(v)
        out = [u.reshape(shape) for u in basis[1:]]
        out += [torch.zeros_like(current)] * (num - 1 - len(out))
    return out


@dataclass(frozen=True, eq=False)
class PAS(Solver):
    """PAS (PCA-based Adaptive Search; Wang et al., ICML 2025, arXiv 2411.06503) on iPNDM(``max_order``):
    with D_i = sum_j AB_j d_{i-j} iPNDM's direction, the step is
    x_{i+1} = x_i + (t_{i+1} - t~_i) ((1 + c_1) D_i + 0.1 ||D_i|| sum_{k=2..coords} c_k u_k),
    u_k = :func:`pas_basis` (principal components of the past directions, orthogonal to D_i). This is PAS's
    corrected direction sum_k C_k u_k with C_1 = ||D_i|| (1 + c_1), C_k = ||D_i|| c_k (here 0.1 c_k,
    :data:`PAS_PCA_UNIT`): coordinates relative to
    each sample's norm instead of PAS's batch-mean norm, so they can be shared across samples and start at 0.
    Lengthening the step along D_i moves x along the ODE by (1 + c_1) of the step, so the time is carried forward
    as in DyWeight (t~_{i+1} = t_{i+1} + c_1 (t_{i+1} - t~_i); d_i = (x_i - D(x_i, t~_i)) / t~_i): without this
    calibration a 1% change of c_1 at large sigma leaves x at the wrong noise level and the final-point loss
    jumps several-fold (measured; PAS's own search avoids it by fitting one step at a time to the teacher's
    trajectory). Zero coordinates (or no predictor): iPNDM(max_order) bitwise. One model evaluation per step."""

    name = "pas"
    max_supported_order = 4
    max_order: int = 4
    coords: int = 2
    predictor: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.coords, bool) or not isinstance(self.coords, int) or not 1 <= self.coords <= 4:
            raise ValueError(f"{self.name}: coords must be an int in 1..4, got {self.coords!r}")

    def init(self, x: torch.Tensor, sigmas: Any) -> PASState:
        return PASState(x_start=x)

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any,
             state: PASState) -> tuple[torch.Tensor, PASState]:
        t_eff = sigmas[i] if state.t_eff is None else state.t_eff
        t_next = sigmas[i + 1]
        hist = state.history.push(t_eff, to_d(model, x, t_eff), keep=self.max_order)
        order = min(self.max_order, len(hist))
        h = t_next - t_eff
        x_next = x + sum(h * c * d for c, d in zip(ADAMS_BASHFORTH[order], hist.values))  # iPNDM's update
        dirs = state.directions + (hist.values[0],)
        x_start = x if state.x_start is None else state.x_start
        if self.predictor is None:
            return x_next, PASState(hist, dirs, x_start, t_next)
        c = self.predictor.pas_coords(i)
        direction = sum(a * d for a, d in zip(ADAMS_BASHFORTH[order], hist.values))
        corr = c[0] * direction
        if self.coords > 1:
            basis = pas_basis(dirs, direction, x - x_start, self.coords)
            norm = direction.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (x.ndim - 1))
            corr = corr + norm * sum(PAS_PCA_UNIT * c[k] * u for k, u in enumerate(basis, start=1))
        return x_next + h * corr, PASState(hist, dirs, x_start, t_next + c[0] * h)


# ---------------------------------------------------------------------------------------------------------- GS
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
