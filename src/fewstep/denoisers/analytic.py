"""Closed-form denoisers: the exact posterior mean E[x0 | x_sigma] for simple data distributions.

They give test beds where the probability-flow ODE is known exactly (Gaussian) or to solver precision
(mixtures, finite data sets), so every solver's true error can be measured.
"""

from __future__ import annotations

import math

import torch

from .base import sigma_like

__all__ = ["GaussianMixture", "Gaussian", "EmpiricalDenoiser", "FlowVelocity", "gmm_denoiser", "GMM_MODEL_ID"]


def _as64(t: torch.Tensor | object, name: str) -> torch.Tensor:
    try:
        out = torch.as_tensor(t, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a tensor of numbers") from e
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} must be finite")
    return out


class GaussianMixture:
    """Exact denoiser of a Gaussian mixture sum_k w_k N(mu_k, C_k).

    ``covariances`` is either a (K, D, D) tensor of full covariances or a pair ``(factors, diag)`` with
    factors (K, D, r) and diag (K, D) > 0 for low-rank-plus-diagonal C_k = W_k W_k^T + diag(d_k).
    The posterior mean is computed by Tweedie's formula per component,
    D_k(x) = x - sigma^2 (C_k + sigma^2 I)^{-1} (x - mu_k), with responsibilities from
    N(x; mu_k, C_k + sigma^2 I); full covariances go through an eigendecomposition so the result is
    stable in float64 from sigma = 1e-3 to 1e3. Inputs of shape (B, ...) are flattened to (B, D).
    """

    accepts_any_dtype = True  # computes in its own float64 and returns the input's dtype

    def __init__(
        self,
        means: torch.Tensor,
        covariances: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        weights: torch.Tensor | None = None,
    ) -> None:
        self.means = _as64(means, "means")
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        K, D = self.means.shape
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        self.weights = _as64(weights, "weights")
        if self.weights.shape != (K,) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError(f"weights must be non-negative with shape ({K},)")
        self.weights = self.weights / self.weights.sum()
        self.log_weights = self.weights.log()

        if isinstance(covariances, (tuple, list)):
            if len(covariances) != 2:
                raise ValueError("low-rank covariances must be a pair (factors (K, D, r), diag (K, D))")
            W, d = _as64(covariances[0], "covariance factors"), _as64(covariances[1], "covariance diag")
            if W.ndim != 3 or W.shape[:2] != (K, D) or d.shape != (K, D):
                raise ValueError(f"expected factors of shape ({K}, {D}, r) and diag of shape ({K}, {D})")
            if not (d > 0).all():
                raise ValueError("the diagonal part of low-rank covariances must be positive")
            self.low_rank = True
            self.factors, self.diag = W, d
        else:
            C = _as64(covariances, "covariances")
            if C.shape != (K, D, D):
                raise ValueError(f"covariances must have shape ({K}, {D}, {D}), got {tuple(C.shape)}")
            C = 0.5 * (C + C.transpose(-1, -2))
            evals, evecs = torch.linalg.eigh(C)
            if (evals < -1e-8 * evals.abs().max()).any():
                raise ValueError("covariances must be positive semi-definite")
            self.low_rank = False
            self.evals, self.evecs = evals.clamp_min(0.0), evecs
        self.dim = D

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def to(self, device: torch.device | str) -> "GaussianMixture":
        """Move the parameters to ``device`` in place and return self."""
        for name in ("means", "weights", "log_weights", "factors", "diag", "evals", "evecs"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).to(device))
        return self

    def _precision_times(self, y: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C_k + s2 I)^{-1} y_k and log det(C_k + s2 I) for y of shape (B, K, D), s2 of shape (B, 1, 1)."""
        if not self.low_rank:
            z = torch.einsum("kde,bkd->bke", self.evecs, y)
            denom = self.evals + s2  # (B, K, D)
            py = torch.einsum("kde,bke->bkd", self.evecs, z / denom)
            return py, denom.log().sum(-1)
        # Woodbury: (A^-1 + W W^T)^-1 = A - A W (I + W^T A W)^-1 W^T A with A = diag(1 / (d + s2)).
        a = 1.0 / (self.diag + s2)  # (B, K, D)
        Wt_a = self.factors.transpose(-1, -2).unsqueeze(0) * a.unsqueeze(-2)  # (B, K, r, D)
        M = torch.eye(self.factors.shape[-1], dtype=y.dtype, device=y.device) + Wt_a @ self.factors
        L = torch.linalg.cholesky(M)
        u = torch.cholesky_solve((Wt_a @ y.unsqueeze(-1)), L)  # (B, K, r, 1)
        py = a * y - a * (self.factors @ u).squeeze(-1)
        logdet = -a.log().sum(-1) + 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        return py, logdet

    def component_log_likelihood(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """log w_k + log N(x; mu_k, C_k + sigma^2 I) up to the shared constant, shape (B, K)."""
        xf = x.reshape(x.shape[0], -1).to(self.means.dtype)
        s2 = sigma_like(sigma, xf).to(xf.dtype).unsqueeze(-1) ** 2
        y = xf.unsqueeze(1) - self.means
        py, logdet = self._precision_times(y, s2)
        return self.log_weights - 0.5 * ((y * py).sum(-1) + logdet)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.denoise_with_features(x, sigma)[0]

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and, as features for AMED's predictor, the component responsibilities (B, K)."""
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must have shape (B, ...) with {self.dim} features per item, got {tuple(x.shape)}")
        xf = x.reshape(x.shape[0], -1).to(self.means.dtype)
        s2 = sigma_like(sigma, xf).to(xf.dtype).unsqueeze(-1) ** 2  # (B, 1, 1)
        y = xf.unsqueeze(1) - self.means  # (B, K, D)
        py, logdet = self._precision_times(y, s2)
        resp = torch.softmax(self.log_weights - 0.5 * ((y * py).sum(-1) + logdet), dim=-1)  # (B, K)
        x0 = xf - s2.squeeze(-1) * (resp.unsqueeze(-1) * py).sum(1)
        return x0.reshape(x.shape).to(x.dtype), resp

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n samples x0 from the mixture, shape (n, D), float64."""
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        if self.low_rank:
            r = self.factors.shape[-1]
            e2 = torch.randn(n, r, dtype=torch.float64, generator=generator)
            noise = (self.factors.cpu()[k] @ e2.unsqueeze(-1)).squeeze(-1) + self.diag.cpu()[k].sqrt() * eps
        else:
            root = self.evecs.cpu()[k] * self.evals.cpu()[k].sqrt().unsqueeze(-2)
            noise = (root @ eps.unsqueeze(-1)).squeeze(-1)
        return self.means.cpu()[k] + noise


class Gaussian(GaussianMixture):
    """Exact denoiser of N(mean, covariance), with the closed-form probability-flow ODE solution."""

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor) -> None:
        mean = _as64(mean, "mean").reshape(-1)
        cov = _as64(covariance, "covariance")
        if cov.ndim == 1:
            cov = torch.diag(cov)
        super().__init__(mean[None], cov[None], None)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """Exact flow: x(sigma_to) = mu + U diag(sqrt((l + sigma_to^2)/(l + sigma_from^2))) U^T (x - mu)."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64) - self.means[0]
        U, lam = self.evecs[0], self.evals[0]
        scale = ((lam + sigma_to**2) / (lam + sigma_from**2)).sqrt()
        out = self.means[0] + ((xf @ U) * scale) @ U.T
        return out.reshape(x.shape).to(x.dtype)


class EmpiricalDenoiser:
    """Optimal denoiser of a finite data set {y_i}: softmax(-|x - y_i|^2 / 2 sigma^2)-weighted mean of y_i.

    (Karras et al., 2022, eq. 57.) Its ODE carries every sample onto a training point: a memorising model.
    """

    accepts_any_dtype = True  # computes in its own float64 and returns the input's dtype

    def __init__(self, data: torch.Tensor) -> None:
        data = _as64(data, "data")
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError("data must have shape (N, ...) with N >= 1")
        self.shape = tuple(data.shape[1:])
        self.data = data.reshape(data.shape[0], -1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        if xf.shape[1] != self.data.shape[1]:
            raise ValueError(f"x has {xf.shape[1]} features per item, the data set has {self.data.shape[1]}")
        s = sigma_like(sigma, xf).to(torch.float64)  # (B, 1)
        d2 = torch.cdist(xf, self.data, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        w = torch.softmax(-d2 / (2 * s**2), dim=-1)
        return (w @ self.data).reshape(x.shape).to(x.dtype)


class FlowVelocity:
    """Exact rectified-flow velocity of the data distribution of an EDM denoiser (e.g. a GaussianMixture).

    x_t = (1 - t) x0 + t n (Liu et al., 2023; Lipman et al., 2023) is the EDM state x = x0 + sigma n scaled by
    1 - t with sigma = t / (1 - t). The flow-matching target n - x0 has the conditional mean
    v(x_t, t) = E[n - x0 | x_t] = (x_t - E[x0 | x_t]) / t, since n = (x_t - (1 - t) x0) / t, and
    E[x0 | x_t] = D(x_t / (1 - t), t / (1 - t)). ``model(x_t, t)`` with t of shape (B,) or scalar, in (0, 1]
    (at t = 1, pure noise, E[x0 | x_1] is the data mean: evaluated at t = 1 - 1e-9, sigma = 1e9).
    """

    accepts_any_dtype = True  # computes in its own float64 and returns the input's dtype

    def __init__(self, denoiser) -> None:
        self.denoiser = denoiser

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        tt = sigma_like(t, x_t)
        tc = tt.clamp(max=1 - 1e-9)
        x0 = self.denoiser(x_t / (1 - tc), (tc / (1 - tc)).reshape(-1))
        return (x_t - x0) / tt


GMM_MODEL_ID = "gmm-bed:{size}x{size}x3:k{k}:seed{seed}"


def gmm_denoiser(size: int = 8, n_components: int = 10, count: int = 20000, seed: int = 0):
    """The exact denoiser of the Gaussian mixture fitted to ``count`` natural-image patches
    (:func:`fewstep.data.gmm_bed`, cached on disk), with its ``model_id``."""
    from .. import data

    fit = data.gmm_bed(size=size, n_components=n_components, count=count, seed=seed)
    gmm = GaussianMixture(fit["means"], fit["covariances"], fit["weights"])
    gmm.model_id = GMM_MODEL_ID.format(size=size, k=n_components, seed=seed) + ("" if count == 20000 else f":n{count}")
    return gmm
