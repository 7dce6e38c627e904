"""Sample-quality and trajectory-geometry metrics: Fréchet distance, a fixed random feature space, PCA of
sampling trajectories (Zhou et al., 2024, Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "gaussian_stats", "frechet_distance", "RandomFeatures", "trajectory_pca_error", "trajectory_pca_table",
    "load_images", "FeatureExtractor", "feature_stats", "kid", "load_stats", "knn_radii", "precision_recall",
]


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


def trajectory_pca_table(trajectory: torch.Tensor, max_k: int = 5) -> list[dict[str, float]]:
    """How flat sampling trajectories are (Zhou et al., 2024, Fig. 4): for k = 1 .. ``max_k`` principal components,
    the mean and max over points of :func:`trajectory_pca_error` and the cumulative explained variance (mean over
    trajectories). ``trajectory``: (T, B, ...); ``max_k`` is at most min(T, D), the number of components of T points
    in D dimensions. Returns rows ``{"k", "mean_rel_error", "max_rel_error", "explained_variance"}``."""
    if trajectory.ndim < 2:
        raise ValueError(f"trajectory must have shape (T, B, ...), got {tuple(trajectory.shape)}")
    T, B = trajectory.shape[:2]
    x = trajectory.reshape(T, B, -1).to(torch.float64).transpose(0, 1)  # (B, T, D)
    n = min(T, x.shape[-1])
    if isinstance(max_k, bool) or not isinstance(max_k, int) or not 1 <= max_k <= n:
        raise ValueError(f"max_k must be an int in 1..{n} (trajectories of {T} points in {x.shape[-1]} dimensions "
                         f"have {n} principal components), got {max_k!r}")
    sv = torch.linalg.svdvals(x - x.mean(1, keepdim=True))  # (B, min(T, D))
    cum = (sv**2).cumsum(-1) / (sv**2).sum(-1, keepdim=True)
    rows = []
    for k in range(1, max_k + 1):
        e = trajectory_pca_error(trajectory, k)  # (T, B)
        rows.append({"k": k, "mean_rel_error": float(e.mean()), "max_rel_error": float(e.max()),
                     "explained_variance": float(cum[:, k - 1].mean())})
    return rows


# ------------------------------------------------------------------------------------------ evaluation


def load_images(path: str | Path) -> np.ndarray:
    """Images as float32 (N, C, H, W) in [-1, 1] from an .npz (key ``images``, or the only array; uint8 or float
    in [-1, 1]) or a folder of PNG files (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        import matplotlib.image as mpimg

        # also fewstep sample's OUT/000000/000123.png layout; skips hidden temporaries of unfinished writes
        files = sorted(p for p in path.rglob("*.png") if not p.name.startswith("."))
        if not files:
            raise ValueError(f"{path} has no .png files")
        def read(f: Path) -> np.ndarray:  # (H, W, C) floats in [0, 1]; greyscale gives one channel
            a = mpimg.imread(f)
            a = a[..., None] if a.ndim == 2 else a
            return a[..., :3] if a.shape[-1] >= 3 else a[..., :1]

        arr = np.stack([read(f) for f in files]).astype(np.float32)
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2) * 2 - 1)
    if path.suffix != ".npz" or not path.is_file():
        raise ValueError(f"{path} must be a folder of PNG files or an .npz file")
    with np.load(path, allow_pickle=False) as z:
        key = "images" if "images" in z.files else (z.files[0] if len(z.files) == 1 else None)
        if key is None:
            raise ValueError(f"{path} has no 'images' array (arrays: {', '.join(z.files)})")
        arr = z[key]
    if arr.ndim != 4:
        raise ValueError(f"{path}: images must have 4 dimensions (N, C, H, W) or (N, H, W, C), got {arr.shape}")
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 127.5 - 1
    return arr.astype(np.float32)


def load_stats(path: str | Path, features: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) from a reference-statistics .npz (EDM / diff-sampler layout), or None if ``path`` is not one.
    A file that records its feature space must match ``features``."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files:
            return None
        if "features" in z.files and str(z["features"]) != features:
            raise ValueError(f"{path} holds {z['features']} statistics, not {features}")
        return z["mu"], z["sigma"]


class FeatureExtractor:
    """Features for Fréchet distances: ``pixels``, ``random`` (:class:`RandomFeatures`, 64-D) or a TorchScript
    Inception network given by path (for standard FID; fewstep downloads nothing)."""

    def __init__(self, kind: str, in_dim: int, path: str | None = None) -> None:
        self.kind = kind
        if kind == "pixels":
            self.fn = lambda x: x.reshape(x.shape[0], -1).to(torch.float64)
        elif kind == "random":
            self.fn = RandomFeatures(in_dim)
        elif kind == "inception":
            if not path or not Path(path).is_file():
                raise ValueError(
                    "the inception extractor needs --inception PATH: a TorchScript Inception-v3 FID network "
                    "(e.g. the pt_inception-2015-12-05 TorchScript file used by EDM/StyleGAN; fewstep never "
                    "downloads it)"
                )
            net = torch.jit.load(str(path), map_location="cpu").eval()

            def fn(x: torch.Tensor) -> torch.Tensor:
                img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                with torch.no_grad():
                    return net(img, return_features=True).to(torch.float64)

            self.fn = fn
        else:
            raise ValueError(f"feature extractor must be one of pixels, random, inception; got {kind!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def feature_stats(images: np.ndarray, extractor: FeatureExtractor, batch: int = 256,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, features) of ``images`` streamed through ``extractor`` in batches."""
    from tqdm.auto import tqdm

    feats = []
    for i in tqdm(range(0, len(images), batch), desc="features", disable=not progress, leave=False):
        feats.append(extractor(torch.from_numpy(images[i:i + batch])).numpy())
    f = np.concatenate(feats)
    mu, sigma = gaussian_stats(f)
    return mu, sigma, f


def kid(f1: np.ndarray, f2: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Bińkowski et al., 2018): unbiased MMD^2 with the cubic polynomial kernel,
    averaged over random subsets."""
    rng = np.random.default_rng(seed)
    n = min(len(f1), len(f2), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = f1.shape[1]
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), n, replace=False)]
        y = f2[rng.choice(len(f2), n, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        m = n * (n - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / m + (kyy.sum() - np.trace(kyy)) / m - 2 * kxy.mean())
    return float(np.mean(vals))


def _as_f64(f: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f), dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N >= 1, F), got {tuple(t.shape)}")
    return t


def knn_radii(f: torch.Tensor | np.ndarray, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row of ``f`` to its k-th nearest other row (the radius of its k-NN ball), computed in
    chunks of ``chunk`` rows (memory O(chunk * N))."""
    x = _as_f64(f, "features")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be an int in [1, {x.shape[0] - 1}] for {x.shape[0]} samples, got {k!r}")
    out = []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the smallest distance is the point itself (0)
    return torch.cat(out)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of ``points`` inside at least one ball (centre, radius)."""
    inside = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i:i + chunk], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, k: int = 3,
                     chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``fake`` against ``real`` features (N, F):
    each set's manifold is the union of balls around its points with radius the distance to the k-th nearest
    neighbour in the same set; precision = fraction of fake points inside the real manifold, recall = fraction
    of real points inside the fake manifold. Float64, chunked distances."""
    r, f = _as_f64(real, "real features"), _as_f64(fake, "fake features")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {r.shape[1]} vs {f.shape[1]}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    precision = _coverage(f, r, knn_radii(r, k, chunk), chunk)
    recall = _coverage(r, f, knn_radii(f, k, chunk), chunk)
    return precision, recall
