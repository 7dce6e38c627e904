"""Solver protocol, typed multistep state, and the shared coefficient formulas (written once).

A solver is a small frozen dataclass: ``init(x, sigmas) -> state`` and
``step(model, x, i, sigmas, state) -> (x_next, state)`` advance from sigmas[i] to sigmas[i + 1].
``model(x, sigma)`` is the denoiser D(x, sigma) -> x0 with sigma a 0-dim float64 tensor; the driver
(:func:`fewstep.sample`) wraps the user's denoiser with NFE counting, AFS and dtype handling.
Schedule values are tensors throughout, so gradients can reach learned times (AMED): 0-dim, or of shape
(B, 1, ..., 1) for per-sample times (AMED-Plugin); every formula broadcasts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

__all__ = [
    "Model",
    "Solver",
    "History",
    "phi",
    "lagrange_integrals",
    "taylor_terms",
    "step_order",
    "to_d",
    "geometric_time",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def geometric_time(t_cur: Any, t_next: Any, r: Any) -> Any:
    """The intermediate time t_next^r t_cur^(1-r) of DPM-Solver-2 (Lu et al., 2022) and AMED (Zhou et al., 2024,
    eq. 10): a fraction r of the way from t_cur to t_next in log sigma. Tensors or floats."""
    return t_next**r * t_cur ** (1 - r)


def to_d(model: Model, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ODE direction dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al., 2022, eq. 3)."""
    return (x - model(x, sigma)) / sigma


@dataclass(frozen=True)
class History:
    """Past model outputs for multistep solvers, newest first (diffrax-style explicit solver state)."""

    sigmas: tuple[torch.Tensor, ...] = ()
    values: tuple[torch.Tensor, ...] = ()

    def push(self, sigma: torch.Tensor, value: torch.Tensor, keep: int) -> "History":
        return History((sigma, *self.sigmas)[:keep], (value, *self.values)[:keep])

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Solver:
    """Base class. Subclasses set ``name``, ``evals_per_step`` and implement :meth:`step`."""

    name: ClassVar[str] = ""
    evals_per_step: ClassVar[int] = 1
    min_order: ClassVar[int] = 1
    max_supported_order: ClassVar[int] = 1

    def __post_init__(self) -> None:
        order = getattr(self, "max_order", None)
        if order is not None:
            if isinstance(order, bool) or not isinstance(order, int):
                raise TypeError(f"{self.name}: max_order must be an int, got {type(order).__name__}")
            if not self.min_order <= order <= self.max_supported_order:
                raise ValueError(
                    f"{self.name}: max_order must be in {self.min_order}..{self.max_supported_order}, got {order}"
                )

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Names of the keyword options this solver accepts."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def create(cls, **options: Any) -> "Solver":
        """Build the solver, naming unknown options and the allowed ones in the error."""
        unknown = sorted(set(options) - set(cls.options()))
        if unknown:
            allowed = ", ".join(cls.options()) or "none"
            raise TypeError(f"solver {cls.name!r} got unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
        return cls(**options)

    def nfe(self, num_sigmas: int) -> int:
        """Model evaluations for a schedule of ``num_sigmas`` sigmas (without AFS or denoise_to_zero)."""
        return self.evals_per_step * (num_sigmas - 1)

    def init(self, x: torch.Tensor, sigmas: torch.Tensor) -> Any:
        return None

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def timing(self) -> "Solver":
        """A solver that evaluates the model at the same sigmas as this one, for dry runs on a placeholder state
        (:func:`fewstep.integrations.stepper.evaluation_sigmas`): itself, unless its step needs the real samples
        (a learned operator over their shape)."""
        return self


def step_order(max_order: int, i: int, num_steps: int, history_len: int, lower_order_final: bool) -> int:
    """Order of multistep step i: warm-up from the available history and, if asked, lowered near the end.

    With ``lower_order_final`` the last k steps use order at most k (DPM-Solver++, UniPC), which keeps
    few-step sampling stable; there is no hidden step-count threshold.
    """
    order = min(max_order, history_len)
    if lower_order_final:
        order = min(order, num_steps - i)
    return max(order, 1)


# --------------------------------------------------------------------------------------------------
# Exponential-integrator coefficients: phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1} / (k-1)! du
# --------------------------------------------------------------------------------------------------


def phi(k: int, z: torch.Tensor) -> torch.Tensor:
    """phi_k(z) (Hochbruck & Ostermann, 2010), stable near 0 by a series, elsewhere by the recursion
    phi_1 = expm1(z)/z, phi_{j+1} = (phi_j - 1/j!)/z."""
    if k < 1:
        raise ValueError(f"phi needs k >= 1, got {k}")
    small = z.abs() < 0.5
    # Schedule values live on the CPU, where choosing the branch up front costs no device sync and skips the
    # one not needed (the series is ~50 tiny tensor ops); the result is bitwise that of the torch.where form.
    use = "both"
    if z.device.type == "cpu":
        use = "series" if bool(small.all()) else "rec" if not bool(small.any()) else "both"
    if use != "series":
        zs = z if use == "rec" else torch.where(small, torch.ones_like(z), z)  # finite where unused
        rec = torch.expm1(zs) / zs
        for j in range(1, k):
            rec = (rec - 1.0 / math.factorial(j)) / zs
        if use == "rec":
            return rec
    zz = z if use == "series" else torch.where(small, z, torch.zeros_like(z))
    series = sum(zz**j / float(math.factorial(j + k)) for j in range(18))
    return series if use == "series" else torch.where(small, series, rec)


def taylor_terms(lambdas: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...], h: torch.Tensor) -> list[torch.Tensor]:
    """Scaled derivatives h^k f^(k)(lambda_0), k < len(values), of the interpolating polynomial through
    (lambda_j, values_j), newest first (Newton divided differences; exact for polynomial data)."""
    n = len(values)
    if n == 1:
        return [values[0]]
    if n == 2:
        return [values[0], h * (values[0] - values[1]) / (lambdas[0] - lambdas[1])]
    if n == 3:
        l0, l1, l2 = lambdas
        d01 = (values[0] - values[1]) / (l0 - l1)
        d12 = (values[1] - values[2]) / (l1 - l2)
        d012 = (d01 - d12) / (l0 - l2)
        return [values[0], h * (d01 + d012 * (l0 - l1)), h**2 * 2 * d012]
    raise ValueError(f"taylor_terms supports up to 3 points, got {n}")


_GL_NODES, _GL_WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(24))


def lagrange_integrals(
    nodes: tuple[torch.Tensor, ...],
    sigma_from: torch.Tensor,
    sigma_to: torch.Tensor,
    u: Callable[[torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """w_j = int_{sigma_from}^{sigma_to} L_j(u(sigma)) dsigma for the Lagrange basis L_j on u(nodes).

    The Adams-Bashforth weights of an ODE dx/dsigma = f with f extrapolated as a polynomial in the
    variable u (DEIS, Zhang & Chen 2023: u = VP time for tAB, u = sigma for rhoAB, u = log sigma for
    diffusers' logrho). Gauss-Legendre (24 nodes) in log sigma, where every integrand here is smooth.
    """
    va, vb = sigma_from.log().unsqueeze(-1), sigma_to.log().unsqueeze(-1)  # quadrature on a trailing axis
    v = 0.5 * (vb - va) * _GL_NODES.to(va) + 0.5 * (va + vb)
    sig = v.exp()
    uq, un = u(sig), [u(n).unsqueeze(-1) for n in nodes]
    jac = 0.5 * (vb - va) * _GL_WEIGHTS.to(va) * sig
    out = []
    for j in range(len(nodes)):
        basis = torch.ones_like(uq)
        for m in range(len(nodes)):
            if m != j:
                basis = basis * (uq - un[m]) / (un[j] - un[m])
        out.append((basis * jac).sum(-1))
    return out
