"""The denoiser protocol: the only way fewstep sees a model."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "sigma_like"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma) -> x0_hat`` in the EDM parameterisation x = x0 + sigma * n (Karras et al., 2022).

    ``x`` has shape (B, ...); ``sigma`` is a scalar tensor or a tensor of shape (B,). The ODE is
    dx/dsigma = (x - D(x, sigma)) / sigma.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def sigma_like(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast ``sigma`` (scalar or (B,)) to shape (B, 1, ..., 1) matching ``x``'s dtype and device."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s.reshape(-1, *([1] * (x.ndim - 1)))
