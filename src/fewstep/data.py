"""Offline natural-image data: bundled photos, random patches and a patch GMM.

Everything here is deterministic and needs no network: the photos are the RGB
images that ship inside scikit-image and scikit-learn.  A Gaussian mixture
fitted to small patches of them gives a "realistic" data distribution whose
score (and hence ideal denoiser) is known in closed form, which makes it a
good test bed for few-step diffusion solvers. The digits of the shipped class-conditional model (scikit-learn's
8x8 handwritten digits, upsampled to 16x16) and the classifier that judges its samples are here too.
scikit-image and scikit-learn come with ``pip install 'fewstep[demo]'`` (or ``[eval]``); without them these
functions say which extra to install.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ._extras import require

__all__ = [
    "PHOTOS",
    "TRAIN_PHOTOS",
    "HELDOUT_PHOTOS",
    "load_photo",
    "image_patches",
    "fit_gmm",
    "gmm_bed",
    "gmm_log_prob",
    "load_digits16",
    "digit_classifier",
]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        skdata = require("skimage.data", extra="demo", purpose=f"the photo {name!r} (scikit-image's data)")
        return getattr(skdata, name)()

    return load


def _motorcycle() -> np.ndarray:
    skdata = require("skimage.data", extra="demo", purpose="the photo 'motorcycle' (scikit-image's data)")
    return skdata.stereo_motorcycle()[0]  # left view of the stereo pair


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        datasets = require("sklearn.datasets", extra="demo",
                           purpose=f"the photo {name!r} (scikit-learn's sample images)")
        return datasets.load_sample_image(f"{name}.jpg")

    return load


# Only images bundled with the packages themselves (no pooch / download).
_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "motorcycle": _motorcycle,
    "china": _sklearn("china"),
    "flower": _sklearn("flower"),
}

PHOTOS: tuple[str, ...] = tuple(_LOADERS)
"""Names of all available RGB photos."""

HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "china")
"""Photos never used for fitting; reserved for evaluation."""

TRAIN_PHOTOS: tuple[str, ...] = tuple(p for p in PHOTOS if p not in HELDOUT_PHOTOS)
"""Photos used to draw training patches."""


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    img = np.asarray(_LOADERS[name]())
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise RuntimeError(f"photo {name!r} is not an 8-bit RGB image: {img.dtype} {img.shape}")
    out = img.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    out.setflags(write=False)
    return out


def load_photo(name: str) -> np.ndarray:
    """Return photo ``name`` (see :data:`PHOTOS`) as an (H, W, 3) float32 array in [-1, 1]."""
    if name not in _LOADERS:
        raise ValueError(f"name: unknown photo {name!r}; choose from {PHOTOS}")
    return _photo(name).copy()


def _downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``img`` (H, W, C) by an integer ``factor`` (edges are cropped)."""
    if factor == 1:
        return img
    h, w, c = img.shape
    h, w = h // factor, w // factor
    blocks = img[: h * factor, : w * factor].reshape(h, factor, w, factor, c)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def image_patches(
    size: int = 8,
    count: int = 20000,
    photos: str | Iterable[str] = TRAIN_PHOTOS,
    seed: int = 0,
    scales: Sequence[int] = (1, 2, 4),
) -> torch.Tensor:
    """Random RGB patches of shape (count, 3, size, size), float32 in [-1, 1].

    Each patch picks a (photo, scale) pair uniformly, where the photo is first
    area-downscaled by the integer ``scale``, then a uniformly random
    ``size`` x ``size`` crop, flipped horizontally with probability 1/2.
    The result depends only on the arguments (numpy ``Generator`` seeded by ``seed``).
    """
    if not _is_int(size) or size < 1:
        raise ValueError(f"size: must be a positive int, got {size!r}")
    if not _is_int(count) or count < 1:
        raise ValueError(f"count: must be a positive int, got {count!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed: must be a non-negative int, got {seed!r}")
    photos = (photos,) if isinstance(photos, str) else tuple(photos)
    if not photos:
        raise ValueError("photos: must name at least one photo")
    unknown = [p for p in photos if p not in _LOADERS]
    if unknown:
        raise ValueError(f"photos: unknown photo(s) {unknown}; choose from {PHOTOS}")
    scales = tuple(scales)
    if not scales or not all(_is_int(s) and s >= 1 for s in scales):
        raise ValueError(f"scales: must be a non-empty sequence of positive ints, got {scales!r}")

    sources = [_downscale(_photo(p), int(s)) for p in photos for s in scales]
    for (p, s), img in zip([(p, s) for p in photos for s in scales], sources):
        if min(img.shape[:2]) < size:
            raise ValueError(f"scales: photo {p!r} downscaled by {s} is smaller than size={size}")

    rng = np.random.default_rng(seed)
    which = rng.integers(len(sources), size=count)
    u_y, u_x = rng.random(count), rng.random(count)
    flip = rng.random(count) < 0.5

    out = np.empty((count, size, size, 3), dtype=np.float32)
    offs = np.arange(size)
    for k, img in enumerate(sources):
        idx = np.flatnonzero(which == k)
        if idx.size == 0:
            continue
        h, w = img.shape[:2]
        ys = (u_y[idx] * (h - size + 1)).astype(np.int64)
        xs = (u_x[idx] * (w - size + 1)).astype(np.int64)
        out[idx] = img[ys[:, None, None] + offs[None, :, None], xs[:, None, None] + offs[None, None, :]]
    out[flip] = out[flip, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


def fit_gmm(
    patches: torch.Tensor,
    n_components: int = 10,
    seed: int = 0,
    reg: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-2,
) -> dict[str, torch.Tensor]:
    """Fit a full-covariance Gaussian mixture to flattened ``patches`` (N, ...).

    Returns float64 tensors ``means`` (K, D), ``covariances`` (K, D, D) and
    ``weights`` (K,).  EM stops when the mean per-sample log-likelihood gains
    less than ``tol`` nats (1e-2 halves the fit time versus sklearn's 1e-3 at no
    loss in held-out likelihood).  ``reg`` is added to every covariance diagonal
    during EM (sklearn's ``reg_covar``); afterwards the covariances are symmetrised and
    their eigenvalues floored at ``reg``, so they are symmetric positive definite.
    """
    GaussianMixture = require("sklearn.mixture", extra="demo", purpose="fitting a Gaussian mixture").GaussianMixture
    threadpool_limits = require("threadpoolctl", extra="demo", purpose="fitting a Gaussian mixture").threadpool_limits

    x = torch.as_tensor(patches)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"patches: need shape (N, ...) with N >= 2, got {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).to(torch.float64).cpu().numpy()
    if not np.isfinite(x).all():
        raise ValueError("patches: contains non-finite values")
    if not _is_int(n_components) or not 1 <= n_components <= x.shape[0]:
        raise ValueError(f"n_components: must be an int in [1, {x.shape[0]}], got {n_components!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed: must be a non-negative int, got {seed!r}")
    if not reg > 0:
        raise ValueError(f"reg: must be > 0, got {reg!r}")
    if not _is_int(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter: must be a positive int, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol: must be > 0, got {tol!r}")

    gm = GaussianMixture(
        n_components=int(n_components),
        covariance_type="full",
        reg_covar=float(reg),
        max_iter=int(max_iter),
        tol=float(tol),
        n_init=1,
        random_state=int(seed),
    )
    # Single-threaded BLAS: numpy's and scipy's OpenBLAS pools (plus torch's
    # OpenMP) oversubscribe small machines, making EM erratically 5-10x slower;
    # one thread also makes the result independent of the core count.
    with threadpool_limits(limits=1, user_api="blas"):
        gm.fit(x)

    cov = torch.from_numpy(gm.covariances_.copy())
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(cov)
    cov = (evecs * evals.clamp_min(reg).unsqueeze(-2)) @ evecs.transpose(-1, -2)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    weights = torch.from_numpy(gm.weights_.copy())
    return {
        "means": torch.from_numpy(gm.means_.copy()),
        "covariances": cov,
        "weights": weights / weights.sum(),
    }


def gmm_log_prob(gmm: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Log-density (N,) of flattened samples ``x`` (N, ...) under a :func:`fit_gmm` mixture."""
    comps = torch.distributions.MultivariateNormal(gmm["means"], covariance_matrix=gmm["covariances"])
    mix = torch.distributions.Categorical(probs=gmm["weights"])
    model = torch.distributions.MixtureSameFamily(mix, comps)
    x = torch.as_tensor(x).reshape(x.shape[0], -1).to(gmm["means"].dtype)
    return model.log_prob(x)


def cache_dir() -> Path | None:
    """Where fitted beds are cached: ``$FEWSTEP_CACHE`` (empty: no disk cache), else
    ``$XDG_CACHE_HOME/fewstep`` or ``~/.cache/fewstep``."""
    env = os.environ.get("FEWSTEP_CACHE")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fewstep"


@functools.lru_cache(maxsize=8)
def _gmm_bed(size: int, n_components: int, count: int, seed: int) -> dict[str, torch.Tensor]:
    sklearn = require("sklearn", extra="demo", purpose="the natural-patch Gaussian-mixture bed")

    from .io import read_safetensors, write_safetensors

    folder = cache_dir()
    key = f"gmm-bed-v1-{size}-{n_components}-{count}-{seed}-sklearn{sklearn.__version__}-numpy{np.__version__}"
    path = None if folder is None else folder / f"{key}.safetensors"
    if path is not None and path.is_file():
        try:
            tensors, meta = read_safetensors(path, fmt="fewstep-gmm-bed", check_finite=True)
            if meta.get("key") == key and set(tensors) == {"means", "covariances", "weights"}:
                return tensors
        except (OSError, ValueError):
            pass  # a damaged cache entry is refitted and rewritten
    fit = fit_gmm(image_patches(size, count, TRAIN_PHOTOS, seed), n_components, seed)
    if path is not None:
        try:
            write_safetensors(path, fit, {"format": "fewstep-gmm-bed", "key": key})
        except OSError:
            pass  # no writable cache: fit again next time
    return fit


def gmm_bed(size: int = 8, n_components: int = 10, count: int = 20000, seed: int = 0) -> dict[str, torch.Tensor]:
    """GMM fitted to ``count`` patches of :data:`TRAIN_PHOTOS`, cached in memory and on disk (:func:`cache_dir`,
    keyed by the arguments and the scikit-learn and NumPy versions; the cached tensors are the fit's exact values).

    Same keys as :func:`fit_gmm`; returns fresh tensors so callers may modify them.
    """
    return {k: v.clone() for k, v in _gmm_bed(size, n_components, count, seed).items()}


def load_digits16() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as the shipped digits model sees them: (1797, 1, 16, 16) float32 in [-1, 1]
    (bilinear 2x upsampling) and the (1797,) labels."""
    datasets = require("sklearn.datasets", extra="demo", purpose="the digits data set (scikit-learn's)")
    d = datasets.load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0), torch.as_tensor(d.target, dtype=torch.long)


def digit_classifier(seed: int = 0) -> tuple[Any, float]:
    """The class-accuracy judge of the digits model (docs/digits.md): logistic regression (C = 0.1) on
    :func:`load_digits16`; (classifier of flattened images, held-out accuracy on a stratified quarter)."""
    LogisticRegression = require("sklearn.linear_model", extra="demo",
                                 purpose="the digits classifier").LogisticRegression
    train_test_split = require("sklearn.model_selection", extra="demo",
                               purpose="the digits classifier").train_test_split

    x, y = load_digits16()
    xtr, xte, ytr, yte = train_test_split(x.reshape(len(x), -1).numpy(), y.numpy(), test_size=0.25,
                                          random_state=seed, stratify=y.numpy())
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(xtr, ytr)
    return clf, float(clf.score(xte, yte))
