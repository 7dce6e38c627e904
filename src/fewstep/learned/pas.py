"""PAS, PCA-based adaptive search (Wang et al., ICML 2025, arXiv 2411.06503; landscape.md Sec. 1b): iPNDM whose
direction is corrected by a few learned coordinates in an orthonormal basis of the current direction and the
principal components of the past directions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..solvers import History, Solver
from ..solvers.base import Model, to_d
from ..solvers.multistep import ADAMS_BASHFORTH
from .dyweight import calibrated_time
from .sampler import Defaults, LearnedSampler, Option

__all__ = ["PASSampler", "PAS", "PASState", "pas_basis", "PAS_PCA_UNIT"]


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
        t_new = calibrated_time(t_next, c[0] * h) if bool(t_next > 0) else t_next + c[0] * h
        return x_next + h * corr, PASState(hist, dirs, x_start, t_new)


class PASSampler(LearnedSampler):
    """PAS (Wang et al., ICML 2025; landscape.md Sec. 1b): per step ``coords`` coordinates c[i] correcting
    iPNDM(``order``)'s direction in an orthonormal per-sample basis (the direction itself, then principal components
    of the past directions, Gram-Schmidt, signs aligned with x_t - x_T; :class:`PAS`).
    Zero coordinates: iPNDM bitwise. ``coords`` x steps parameters (12 at NFE 5 with AFS and coords 2).
    Differences from PAS, both measured on the natural-patch bed: PAS searches the coordinates step by step against
    a teacher trajectory, here they train end to end with the final-point loss of the one trainer, which needs the
    along-direction coordinate to carry the time forward (DyWeight's calibration) and the principal-component
    coordinates in units of 0.1 ||D|| (without either, training at lr 0.02 made iPNDM worse); coordinates are per
    sample norm-relative (PAS: batch-mean norm) and every step is corrected (PAS picks steps adaptively)."""

    method = "pas"
    summary = "PAS: learned coordinates correcting iPNDM's direction in a PCA basis (Wang et al., 2025)"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "order": Option(4, int, 1, 4, help="iPNDM's max_order"),
        "coords": Option(2, int, 1, 4, help="coordinates per step: the direction, then principal components"),
    }
    DEFAULTS = Defaults(lr=0.02)  # measured on the natural-patch GMM bed at NFE 5

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "ipndm", "options": {"max_order": options["order"]}}

    @classmethod
    def options_for_base(cls, solver: str, options: dict[str, Any]) -> dict[str, Any] | None:
        return {"order": options.get("max_order", 4)} if solver == "ipndm" else None

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.coords = nn.Parameter(torch.zeros(num_intervals, options["coords"], dtype=torch.float64))

    def pas_coords(self, i: int) -> torch.Tensor:
        return self.coords[i]

    def make_solver(self) -> Solver:
        return PAS(max_order=self.options["order"], coords=self.options["coords"], predictor=self)
