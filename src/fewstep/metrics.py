"""Sample-quality and trajectory-geometry metrics: Fréchet distance, a fixed random feature space, PCA of
sampling trajectories (Zhou et al., 2024, Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import json
import os
import stat
import warnings
import zipfile

import numpy as np
import torch

__all__ = [
    "gaussian_stats", "frechet_distance", "RandomFeatures", "trajectory_pca_error", "trajectory_pca_table",
    "load_images", "FeatureExtractor", "feature_stats", "kid", "load_stats", "knn_radii", "precision_recall",
    "check_images", "FewSamplesWarning", "save_stats", "STATS_FORMAT", "read_npz",
]

STATS_FORMAT = "fewstep-ref-stats"


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) in float64 of (N, F) features."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, F), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd(s: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues clipped at 0, eigenvectors) of the symmetrised ``s``; ValueError if ``s`` is clearly not a
    covariance (not symmetric, or an eigenvalue clearly below 0 rather than rounding noise)."""
    scale = float(np.abs(s).max()) if s.size else 0.0
    if not np.allclose(s, s.T, rtol=1e-6, atol=1e-9 * max(scale, 1e-300)):
        raise ValueError(f"{name} is not symmetric, so it is not a covariance matrix")
    w, v = np.linalg.eigh((s + s.T) / 2)
    top = float(np.abs(w).max()) if w.size else 0.0
    if w.size and w.min() < -1e-6 * top - 1e-12:
        raise ValueError(f"{name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}, largest "
                         f"{w.max():.3g}), so it is not a covariance matrix")
    return np.clip(w, 0, None), v


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau, 1982; FID, Heusel et al., 2017), in float64.

    The covariances are symmetrised and must be finite and positive semi-definite (eigenvalues below 0 only by
    rounding; clearly negative ones are a ValueError). tr((S1 S2)^(1/2)) is computed as the sum of the square roots
    of the eigenvalues of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2), so singular
    covariances need no ridge; the distance of a PSD pair is >= 0, and rounding below 0 is clamped to 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, dtype=np.float64)), np.atleast_2d(np.asarray(s2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics have mismatched shapes: mu {mu1.shape} and {mu2.shape}, sigma {s1.shape} and "
                         f"{s2.shape} (expected (F,) and (F, F))")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or inf values; the statistics are unusable")
    w1, v1 = _psd(s1, "sigma1")
    _psd(s2, "sigma2")
    root1 = (v1 * np.sqrt(w1)) @ v1.T
    m = root1 @ s2 @ root1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(fd, 0.0)


RANDOM_DIM, RANDOM_SEED = 64, 0  # the ``random`` extractor of FeatureExtractor


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


IMAGE_RULE = "uint8 in [0, 255], or floats in [-1, 1] (floats in [0, 1] are ambiguous: give x * 2 - 1 or uint8)"


def check_images(arr: np.ndarray, source: str = "images") -> np.ndarray:
    """Images (N, C, H, W) as float32 in [-1, 1], from exactly two accepted inputs: uint8 in [0, 255] (scaled by
    x / 127.5 - 1) or floating point values that lie in [-1, 1] and are not all >= 0 (float images in [0, 1] or
    [0, 255] would silently give a wrong distance). Everything else (other integer types, bool, NaN / inf, values
    outside [-1, 1]) is a ValueError naming ``source``, the dtype and the range found."""
    arr = np.asarray(arr)
    if arr.size == 0:  # before the dtype rules: an empty uint8 array is no image either
        raise ValueError(f"{source}: no images (shape {arr.shape}, dtype {arr.dtype}); give at least one image of "
                         "positive size")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 127.5 - 1
    if not np.issubdtype(arr.dtype, np.floating):
        lo_hi = f", values {arr.min()}..{arr.max()}" if arr.size and arr.dtype.kind in "biu" else ""
        raise ValueError(f"{source}: images of dtype {arr.dtype}{lo_hi} are not accepted; images must be "
                         f"{IMAGE_RULE}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{source}: {arr.dtype} images with {int((~finite).sum())} NaN or inf pixel values; images "
                         f"must be finite, {IMAGE_RULE}")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{source}: {arr.dtype} images with values in [{lo:.4g}, {hi:.4g}] are outside [-1, 1]; "
                         f"images must be {IMAGE_RULE}")
    if lo >= 0 and hi > 0:
        raise ValueError(f"{source}: {arr.dtype} images with values in [{lo:.4g}, {hi:.4g}] have no negative value, "
                         f"so they look like images in [0, 1], not [-1, 1]; images must be {IMAGE_RULE}")
    return np.clip(arr, -1, 1).astype(np.float32)


def _read_png(f: Path) -> np.ndarray:
    """(H, W, C) uint8 of a PNG file (greyscale -> 1 channel, alpha dropped); ValueError naming a bad file."""
    from PIL import Image, UnidentifiedImageError

    from .jsonio import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

    _regular_file(f, "PNG image")  # a FIFO named *.png would block Image.open forever
    try:
        with Image.open(f) as im:  # reads the header only: the size is checked before any pixel is decoded
            w, h = im.size
            if max(w, h) > MAX_IMAGE_SIDE or w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"{f} is {w}x{h} pixels; images read here are at most {MAX_IMAGE_SIDE} per side and "
                                 f"{MAX_IMAGE_PIXELS} pixels (a larger PNG may be a decompression bomb)")
            im.load()
            mode = im.mode
            if mode in ("1", "L", "LA"):
                a = np.asarray(im.convert("L"))[..., None]
            elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
                a = np.asarray(im.convert("RGB"))
            else:
                raise ValueError(f"{f}: PNG mode {mode!r} (e.g. 16-bit) is not supported; give 8-bit grey or RGB PNGs")
    except Image.DecompressionBombError as e:
        raise ValueError(f"{f} is refused as a decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"{f} is not a readable PNG image: {e}") from None
    return a


def _regular_file(path: Path, what: str) -> None:
    from .io import regular_file

    try:
        regular_file(path, what)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file (no pickles); ValueError naming the file if it is not a readable one."""
    from .jsonio import MAX_ARRAY_BYTES

    _regular_file(path, what)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            size = sum(i.file_size for i in z.zip.infolist())  # uncompressed sizes, before anything is inflated
            if size > MAX_ARRAY_BYTES:
                raise ValueError(f"its arrays take {size} bytes uncompressed; at most {MAX_ARRAY_BYTES} are read")
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, MemoryError) as e:
        raise ValueError(f"{path} is not a readable .npz {what}: {type(e).__name__}: {str(e)[:200]}") from None


def load_images(path: str | Path) -> np.ndarray:
    """Images as float32 (N, C, H, W) in [-1, 1] from an .npz (key ``images``, or the only array) or a folder of
    8-bit PNG files (sorted by name). Accepted values: see :func:`check_images` (uint8, or floats in [-1, 1])."""
    path = Path(path)
    if path.is_dir():
        # also fewstep sample's OUT/000000/000123.png layout; skips hidden temporaries of unfinished writes
        files = sorted(p for p in path.rglob("*.png") if not p.name.startswith("."))
        if not files:
            raise ValueError(f"{path} has no .png files")
        from .jsonio import MAX_ARRAY_BYTES

        arrs, total = [], 0
        for f in files:
            a = _read_png(f)
            total += a.nbytes * 4  # as float32
            if total > MAX_ARRAY_BYTES:
                raise ValueError(f"{path}: the images would take more than {MAX_ARRAY_BYTES} bytes as float32 (at "
                                 f"{f}); evaluate fewer or smaller images")
            if arrs and a.shape != arrs[0].shape:
                raise ValueError(f"{f} has shape {a.shape} (H, W, C), but {files[0]} has {arrs[0].shape}; all images "
                                 "must have the same size and channels")
            arrs.append(a)
        return check_images(np.stack(arrs).transpose(0, 3, 1, 2), str(path))
    if path.suffix != ".npz":
        raise ValueError(f"{path} must be a folder of PNG files or an .npz file")
    z = read_npz(path, "image file")
    key = "images" if "images" in z else (next(iter(z)) if len(z) == 1 else None)
    if key is None:
        raise ValueError(f"{path} has no 'images' array (arrays: {', '.join(z) or 'none'})")
    arr = z[key]
    if arr.ndim != 4:
        raise ValueError(f"{path}: images must have 4 dimensions (N, C, H, W) or (N, H, W, C), got {arr.shape}")
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(check_images(arr, str(path)))


def _describe(record: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in record.items())


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, extractor: "FeatureExtractor",
               image_shape: tuple[int, ...], count: int) -> Path:
    """Cache reference statistics as .npz (``mu``, ``sigma``, ``features`` and a JSON ``record`` of the image shape
    (C, H, W), image count and feature extractor), atomically; :func:`load_stats` refuses a mismatch."""
    from .io import atomic_path

    record = {"format": STATS_FORMAT, "version": 1, "image_shape": [int(v) for v in image_shape], "count": int(count),
              "extractor": extractor.record(), "feature_dim": int(np.asarray(mu).size)}
    path = Path(path)
    try:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, features=np.array(extractor.kind), record=np.array(json.dumps(record)))
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    return path


def load_stats(path: str | Path, features: str | "FeatureExtractor",
               image_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) from a reference-statistics .npz (fewstep's, or the EDM / diff-sampler layout), or None if
    ``path`` is not one (not an .npz with ``mu``).

    ``features``: the extractor (or just its kind) the statistics will be compared in; ``image_shape``: the (C, H, W)
    of the images. A file written by :func:`save_stats` records both and must match them. A file without that record
    is accepted only where its feature count checks it: ``pixels`` (count = C*H*W) and ``inception`` (2048 features
    whatever the image size); ``random`` statistics without a record are refused (64 features for any image size)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return None
    z = read_npz(path, "reference statistics file")
    if "mu" not in z:
        return None
    kind = features if isinstance(features, str) else features.kind
    if "sigma" not in z:
        raise ValueError(f"{path} has 'mu' but no 'sigma' array; it is not a complete reference statistics file")
    mu, sigma = z["mu"], z["sigma"]
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)) or mu.ndim != 1 \
            or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{path}: mu must be floats of shape (F,) and sigma (F, F), got {mu.dtype} {mu.shape} and "
                         f"{sigma.dtype} {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma holds NaN or inf values; the statistics are unusable")
    if "features" in z and str(z["features"]) != kind:
        raise ValueError(f"{path} holds {z['features']} statistics, not {kind}")
    redo = "recompute them with --ref IMAGES --save-ref-stats FILE"
    if "record" in z:
        try:
            from .jsonio import load_json

            record = load_json(str(z["record"]), what="record", max_bytes=2**20, expect=dict)
            if record.get("format") != STATS_FORMAT:
                raise ValueError
        except ValueError:
            raise ValueError(f"{path}: unreadable record of what the statistics were made from; {redo}") from None
        want: dict = {}
        if image_shape is not None:
            want["image_shape"] = [int(v) for v in image_shape]
        if not isinstance(features, str):
            want["extractor"] = features.record()
        diff = {k: (record.get(k), v) for k, v in want.items() if record.get(k) != v}
        if diff:
            detail = "; ".join(f"{k} {a} there, {b} here" for k, (a, b) in diff.items())
            raise ValueError(f"{path} holds statistics of other images or another feature extractor ({detail}); "
                             f"{redo}")
        if record.get("feature_dim") != mu.size:
            raise ValueError(f"{path}: the record says {record.get('feature_dim')} features, mu has {mu.size}")
    elif kind == "random":
        raise ValueError(f"{path} does not record the image shape and feature extractor it was made from, and random "
                         "features have 64 dimensions for any image size, so it cannot be checked against these "
                         f"images; {redo}")
    elif kind == "pixels" and image_shape is not None and mu.size != int(np.prod(image_shape)):
        raise ValueError(f"{path} holds {mu.size} pixel features, but images of shape {tuple(image_shape)} have "
                         f"{int(np.prod(image_shape))}; {redo}")
    return mu.astype(np.float64), sigma.astype(np.float64)


class FewSamplesWarning(UserWarning):
    """Fréchet distance from fewer than about twice as many images as features: heavily biased."""


class FeatureExtractor:
    """Features for Fréchet distances: ``pixels``, ``random`` (:class:`RandomFeatures`, 64-D) or a TorchScript
    Inception network given by path (for standard FID; fewstep downloads nothing)."""

    def __init__(self, kind: str, in_dim: int, path: str | None = None) -> None:
        self.kind = kind
        self.in_dim = int(in_dim)
        self.path = path
        self._digest: str | None = None
        if kind == "pixels":
            self.fn = lambda x: x.reshape(x.shape[0], -1).to(torch.float64)
        elif kind == "random":
            self.fn = RandomFeatures(in_dim, RANDOM_DIM, RANDOM_SEED)
        elif kind == "inception":
            if not path or not Path(path).is_file():
                raise ValueError(
                    "the inception extractor needs --inception PATH: a TorchScript Inception-v3 FID network "
                    "(e.g. the pt_inception-2015-12-05 TorchScript file used by EDM/StyleGAN; fewstep never "
                    "downloads it)" + (f"; {path} is not a file" if path else "")
                )
            try:
                net = torch.jit.load(str(path), map_location="cpu").eval()
            except (RuntimeError, ValueError, OSError, EOFError) as e:
                raise ValueError(f"{path} is not a TorchScript Inception network (torch.jit.load failed: "
                                 f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})"
                                 ) from None

            def fn(x: torch.Tensor) -> torch.Tensor:
                img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                with torch.no_grad():
                    return net(img, return_features=True).to(torch.float64)

            self.fn = fn
        else:
            raise ValueError(f"feature extractor must be one of pixels, random, inception; got {kind!r}")

    def record(self) -> dict:
        """What determines the features (stored with cached statistics): kind, input dimension, and the random
        projection's size and seed or the Inception file's SHA-256."""
        if self.kind == "random":
            return {"kind": "random", "in_dim": self.in_dim, "dim": RANDOM_DIM, "seed": RANDOM_SEED}
        if self.kind == "inception":
            if self._digest is None:
                import hashlib

                from .io import regular_file

                h = hashlib.sha256()
                regular_file(self.path, "Inception weights file")
                with open(self.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                self._digest = h.hexdigest()
            return {"kind": "inception", "sha256": self._digest}
        return {"kind": self.kind, "in_dim": self.in_dim}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            f = self.fn(x)
        except RuntimeError as e:
            what = f"the Inception network {self.path}" if self.kind == "inception" else f"{self.kind} features"
            raise ValueError(f"{what} failed on images of shape {tuple(x.shape)}: "
                             f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}") from None
        if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0]:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{self.kind} features must have shape ({x.shape[0]}, F), got {got}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"{self.kind} features hold NaN or inf values")
        return f


def feature_stats(images: np.ndarray, extractor: FeatureExtractor, batch: int = 256,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, features) of ``images`` streamed through ``extractor`` in batches."""
    from tqdm.auto import tqdm

    feats = []
    for i in tqdm(range(0, len(images), batch), desc="features", disable=not progress, leave=False):
        feats.append(extractor(torch.from_numpy(images[i:i + batch])).numpy())
    if not feats:
        raise ValueError("no images to compute features of")
    f = np.concatenate(feats)
    if len(f) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images, got {len(f)}")
    if len(f) < 2 * f.shape[1]:
        warnings.warn(f"only {len(f)} images for {f.shape[1]} features: the Fréchet distance is heavily biased with "
                      f"fewer than about {2 * f.shape[1]} (2x the features); use more images", FewSamplesWarning,
                      stacklevel=2)
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
