"""Sample-quality and trajectory-geometry metrics: Fréchet distance, a fixed random feature space, PCA of
sampling trajectories (Zhou et al., 2024, Fig. 4)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

__all__ = ["gaussian_stats", "frechet_distance", "RandomFeatures", "trajectory_pca_error"]


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) in float64 of (N, F) features."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, F), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau, 1982; FID, Heusel et al., 2017),
    in float64; a small ridge is added if the product is singular."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(s1).astype(np.float64), np.atleast_2d(s2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("statistics have mismatched shapes")
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(s1.shape[0])
        covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class RandomFeatures:
    """A fixed (seeded) random projection to ``dim`` features followed by tanh: an offline feature space for
    Fréchet distances on small images. Deterministic across machines (generated on the CPU)."""

    def __init__(self, in_dim: int, dim: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(in_dim, dim, generator=g, dtype=torch.float64) / in_dim**0.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.reshape(x.shape[0], -1).to(torch.float64).cpu() @ self.weight)


def trajectory_pca_error(trajectory: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Relative projection error |x_t - P_k x_t| / |x_t| of each point of each trajectory on the top-k principal
    components of that trajectory (centred at its mean). ``trajectory``: (T, B, ...). Returns (T, B)."""
    T, B = trajectory.shape[:2]
    x = trajectory.reshape(T, B, -1).to(torch.float64).transpose(0, 1)  # (B, T, D)
    mean = x.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    basis = vh[:, :k]  # (B, k, D)
    proj = mean + ((x - mean) @ basis.transpose(1, 2)) @ basis
    return ((x - proj).norm(dim=-1) / x.norm(dim=-1)).transpose(0, 1)
