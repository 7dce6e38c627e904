"""Peer implementations for cross-checking fewstep's solvers.

This is a test-support module (not a test file).  The diffusers harness
(``run_diffusers``, ``diffusers_step_orders``: diffusers' schedulers driven on
exactly our sigmas, in float64) lives in ``benchmarks/diffusers_harness.py``,
shared with the benchmarks (``make bench``); it is re-exported here.  This
module adds small from-the-formula reference solvers (``ref_dpmpp``) and an
analytic test problem (``gaussian_denoiser`` / ``gaussian_exact``).
"""

from __future__ import annotations

import math

import torch

from benchmarks.diffusers_harness import (  # the repository root is on sys.path (pytest's `pythonpath`)
    Denoiser,
    check_sigmas,
    denoise_at,
    diffusers_step_orders,
    gaussian_denoiser,
    logsnr_sigmas,
    run_diffusers,
)

__all__ = [
    "run_diffusers",
    "diffusers_step_orders",
    "ref_dpmpp",
    "gaussian_denoiser",
    "gaussian_exact",
    "logsnr_sigmas",
]


# --------------------------------------------------------------------------- references
def ref_dpmpp(denoiser: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor, order: int = 2,
              solver_type: str = "midpoint", lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++ (multistep, data prediction) written directly in EDM form.

    lambda = -log(sigma); step i goes s = sigmas[i] -> t = sigmas[i+1],
    h = lambda_t - lambda_s, so exp(-h) = t/s.
      order 1:  x_t = (t/s) x + (1 - t/s) D0
      order 2:  r = h_prev / h, D1 = (D0 - D_prev) / r,
                midpoint: x_t = (t/s) x + (1 - t/s) (D0 + D1/2)
                heun:     x_t = (t/s) x + (1 - t/s) D0 + (1 - (1 - t/s)/h) D1
      order 3:  r0 = h_prev/h, r1 = h_prevprev/h,
                Da = (D0 - D_prev)/r0, Db = (D_prev - D_prevprev)/r1,
                D1 = Da + r0/(r0+r1) (Da - Db), D2 = (Da - Db)/(r0+r1),
                x_t = (t/s) x + (1 - t/s) D0 + (1 - (1 - t/s)/h) D1
                      - ((t/s - 1 + h)/h^2 - 1/2) D2
    Effective order at step i: min(order, i + 1) (warm-up), and if
    ``lower_order_final`` and N < 15 also min(., N - i).
    """
    sig = check_sigmas(sigmas)
    n = len(sig) - 1
    lam = [-math.log(float(v)) for v in sig]
    x = x_T.to(torch.float64)
    hist: list[torch.Tensor] = []
    for i in range(n):
        s, t = float(sig[i]), float(sig[i + 1])
        d0 = denoise_at(denoiser, x, s)
        hist.append(d0)
        h = lam[i + 1] - lam[i]
        e = t / s
        k = min(order, i + 1)
        if lower_order_final and n < 15:
            k = min(k, n - i)
        if k == 1:
            x = e * x + (1 - e) * d0
        elif k == 2:
            r = (lam[i] - lam[i - 1]) / h
            d1 = (d0 - hist[-2]) / r
            if solver_type == "midpoint":
                x = e * x + (1 - e) * (d0 + 0.5 * d1)
            elif solver_type == "heun":
                x = e * x + (1 - e) * d0 + (1 - (1 - e) / h) * d1
            else:
                raise ValueError(solver_type)
        else:
            r0 = (lam[i] - lam[i - 1]) / h
            r1 = (lam[i - 1] - lam[i - 2]) / h
            da = (d0 - hist[-2]) / r0
            db = (hist[-2] - hist[-3]) / r1
            d1 = da + r0 / (r0 + r1) * (da - db)
            d2 = (da - db) / (r0 + r1)
            x = e * x + (1 - e) * d0 + (1 - (1 - e) / h) * d1 - ((e - 1 + h) / h**2 - 0.5) * d2
    return x


def gaussian_exact(x_T: torch.Tensor, c: torch.Tensor, sigma_max: float, sigma: float) -> torch.Tensor:
    """Exact probability-flow ODE solution for ``gaussian_denoiser(c)``:
    x(sigma) = x_T * sqrt((c + sigma^2) / (c + sigma_max^2))."""
    c = torch.as_tensor(c, dtype=torch.float64)
    return x_T.to(torch.float64) * torch.sqrt((c + sigma**2) / (c + sigma_max**2))
