"""Adapters from other model parameterisations to the EDM denoiser protocol ``D(x, sigma) -> x0``.

EDM state x and sigma relate to a VP process x_vp = alpha x0 + sigma_vp n by
alpha = 1 / sqrt(1 + sigma^2), sigma_vp = sigma * alpha, x_vp = alpha * x (Karras et al., 2022, Table 1),
and to a rectified flow x_t = (1 - t) x0 + t n by sigma = t / (1 - t), x_t = x / (1 + sigma).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..schedules import VP_BETA_D, VP_BETA_MIN, vp_sigma, vp_sigma_inv
from .base import model_dtype, sigma_like

__all__ = ["VPModel", "FlowModel", "PREDICTIONS"]

PREDICTIONS = ("eps", "v", "x0")
ModelFn = Callable[..., torch.Tensor]


class _Adapter:
    """Shared by the adapters: the wrapped network gets its inputs in its own dtype (found by
    :func:`~fewstep.denoisers.model_dtype`, e.g. a float32 network inside a lambda), while the conversions to and
    from EDM run in the dtype of the state. ``sigma_min`` / ``sigma_max``: the EDM sigmas of the ends of the
    model's training range (None where it has none); ``fewstep sample`` builds its schedules between them."""

    accepts_any_dtype = True
    model: ModelFn
    sigma_min: float | None = None
    sigma_max: float | None = None

    def network(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The wrapped model's raw output at its own input ``x_in`` and time ``t``."""
        key = id(self.model)
        if getattr(self, "_dtype_key", None) != key:
            self._dtype_key, self._net_dtype = key, model_dtype(self.model)
        dt = self._net_dtype
        if dt is not None:
            x_in, t = x_in.to(dt), t.to(dt)
        return self.model(x_in, t)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.denoised(x, sigma, self.network(*self.model_input(x, sigma)))


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _time_range(value: object, upper: float) -> tuple[float, float]:
    """``time_range`` as (t_min, t_max) with 0 < t_min < t_max <= ``upper``."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"time_range must be a pair (t_min, t_max) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi <= upper):
        raise ValueError(f"time_range must satisfy 0 < t_min < t_max <= {upper:g}, got {value!r}")
    return lo, hi


class VPModel(_Adapter):
    """Wrap a VP model ``model(x_vp, t) -> eps | v | x0`` as an EDM denoiser.

    Time conditioning: with ``alphas_cumprod`` (discrete model, e.g. DDPM/LDM) ``t`` is the timestep index
    whose sigma = sqrt((1 - abar) / abar) is nearest in log sigma (``timestep="nearest"``) or the
    fractional index interpolated in log sigma (``"interp"``); otherwise the continuous VP schedule
    (beta_min, beta_d) is inverted and ``t * time_scale`` is passed.

    The model's noise range, ``sigma_min`` / ``sigma_max`` (EDM sigmas): for a discrete model the sigmas of its
    first and last training timestep, sqrt((1 - abar) / abar) at ``alphas_cumprod[0]`` and ``[-1]`` (0.0100 and
    157.4 for DDPM's 1000 linear betas); for the continuous VP schedule the sigmas at the ends of ``time_range``,
    the VP times (before ``time_scale``) it was trained on (default (1e-5, 1): Song et al., 2021, and EDM's VP;
    sigma 0.0010 .. 152.2 for the standard beta_min 0.1, beta_d 19.9).
    """

    def __init__(
        self,
        model: ModelFn,
        prediction: str = "eps",
        *,
        alphas_cumprod: torch.Tensor | None = None,
        beta_min: float = VP_BETA_MIN,
        beta_d: float = VP_BETA_D,
        time_scale: float = 1.0,
        timestep: str = "nearest",
        time_range: tuple[float, float] = (1e-5, 1.0),
    ) -> None:
        _check_choice("prediction", prediction, PREDICTIONS)
        _check_choice("timestep", timestep, ("nearest", "interp"))
        self.model, self.prediction, self.timestep = model, prediction, timestep
        self.beta_min, self.beta_d, self.time_scale = beta_min, beta_d, time_scale
        if alphas_cumprod is not None:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
            if ac.ndim != 1 or not ((ac > 0) & (ac < 1)).all():
                raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")
            self.log_sigmas = (((1 - ac) / ac).sqrt()).log()
            self.time_range = None
            self.sigma_min, self.sigma_max = float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())
        else:
            self.log_sigmas = None
            self.time_range = _time_range(time_range, math.inf)
            lo, hi = (float(vp_sigma(t, beta_min, beta_d)) for t in self.time_range)
            if not 0 < lo < hi < math.inf:
                raise ValueError(f"the VP schedule (beta_min {beta_min}, beta_d {beta_d}) gives no increasing sigma "
                                 f"range on time_range {self.time_range}: sigma {lo:g} .. {hi:g}")
            self.sigma_min, self.sigma_max = lo, hi

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Model time for EDM sigma (float64)."""
        sigma = sigma.to(torch.float64)
        if self.log_sigmas is None:
            return vp_sigma_inv(sigma, self.beta_min, self.beta_d) * self.time_scale
        ls = self.log_sigmas.to(sigma.device)
        d = sigma.log().reshape(-1, 1) - ls
        if self.timestep == "nearest":
            return d.abs().argmin(-1).to(torch.float64).reshape(sigma.shape)
        lo = (d >= 0).sum(-1).sub(1).clamp(0, ls.numel() - 2)
        w = ((sigma.log().reshape(-1) - ls[lo]) / (ls[lo + 1] - ls[lo])).clamp(0, 1)
        return (lo + w).reshape(sigma.shape)

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_vp, t): the network's input and time for EDM state ``x`` at ``sigma``."""
        s = sigma_like(sigma, x)
        return (1 + s**2).rsqrt() * x, self.sigma_to_t(s.reshape(-1)).to(x.dtype)

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor | float, out: torch.Tensor) -> torch.Tensor:
        """x0 from the network output ``out`` (eps, v or x0) at EDM state ``x`` and ``sigma``."""
        s = sigma_like(sigma, x)
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "v":
            alpha = (1 + s**2).rsqrt()
            return alpha * (alpha * x) - s * alpha * out
        return out



class FlowModel(_Adapter):
    """Wrap a rectified-flow model ``model(x_t, t) -> velocity (n - x0) | x0 | eps`` as an EDM denoiser.

    x_t = (1 - t) x0 + t n, so sigma = t / (1 - t) and x_edm = x_t / (1 - t) (Lipman et al., 2023;
    Liu et al., 2023). ``time_scale`` multiplies t before the call (e.g. 1000 for models trained on [0, 1000]).
    ``time_range`` (t_min, t_max) with t_max < 1, the times (before ``time_scale``) the model is to be run on, sets
    ``sigma_min`` / ``sigma_max`` = t / (1 - t) at its ends; without it they are None (t = 1 is sigma = inf, so a
    flow model has no finite range of its own: ``fewstep sample`` then uses 0.002 .. 80 unless told).
    """

    def __init__(self, model: ModelFn, prediction: str = "velocity", *, time_scale: float = 1.0,
                 time_range: tuple[float, float] | None = None) -> None:
        _check_choice("prediction", prediction, ("velocity", "x0", "eps"))
        self.model, self.prediction, self.time_scale = model, prediction, time_scale
        self.time_range = None
        if time_range is not None:
            lo, hi = _time_range(time_range, 1.0)
            if hi >= 1:
                raise ValueError(f"time_range of a flow model must end below t = 1 (sigma = inf), got {time_range!r}")
            self.time_range = (lo, hi)
            self.sigma_min, self.sigma_max = lo / (1 - lo), hi / (1 - hi)

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t * time_scale): the network's input and time for EDM state ``x`` at ``sigma``."""
        s = sigma_like(sigma, x)
        t = s / (1 + s)  # x / (1 + s), not x (1 - t): 1 - t cancels near t = 1 (5 % off at sigma 1e6 in float32)
        return x / (1 + s), (t.reshape(-1) * self.time_scale).to(x.dtype)

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor | float, out: torch.Tensor) -> torch.Tensor:
        """x0 from the network output ``out`` (velocity n - x0, x0 or eps) at EDM state ``x`` and ``sigma``."""
        s = sigma_like(sigma, x)
        if self.prediction == "velocity":
            return (x - s * out) / (1 + s)
        if self.prediction == "eps":
            return x - s * out
        return out

