"""Tests for fewstep.data: bundled photos, random patches and the patch GMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep import data


@pytest.fixture(scope="module")
def small_gmm() -> dict[str, torch.Tensor]:
    return data.fit_gmm(data.image_patches(size=4, count=4000, seed=0), n_components=6, seed=0)


def test_photo_lists_partition() -> None:
    assert set(data.TRAIN_PHOTOS) | set(data.HELDOUT_PHOTOS) == set(data.PHOTOS)
    assert not set(data.TRAIN_PHOTOS) & set(data.HELDOUT_PHOTOS)
    assert data.TRAIN_PHOTOS and data.HELDOUT_PHOTOS
    assert {"astronaut", "china", "flower"} <= set(data.PHOTOS)


@pytest.mark.parametrize("name", data.PHOTOS)
def test_load_photo(name: str) -> None:
    img = data.load_photo(name)
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert min(img.shape[:2]) >= 64
    assert img.min() >= -1.0 and img.max() <= 1.0
    assert img.std() > 0.05
    img[:] = 0.0  # a returned copy must not corrupt the cache
    assert data.load_photo(name).std() > 0.05


def test_load_photo_unknown() -> None:
    with pytest.raises(ValueError, match="name"):
        data.load_photo("lena")


def test_patches_shape_range() -> None:
    x = data.image_patches(size=8, count=3000, seed=0)
    assert x.shape == (3000, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.is_contiguous()
    # varied content: many distinct patches, not all flat
    assert x.flatten(1).std(dim=1).median() > 0.01
    assert torch.unique(x.flatten(1), dim=0).shape[0] > 2900


def test_patches_determinism() -> None:
    a = data.image_patches(size=6, count=500, seed=3)
    b = data.image_patches(size=6, count=500, seed=3)
    c = data.image_patches(size=6, count=500, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _is_crop(img: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether patch ``p`` (3, s, s) equals some crop of ``img`` (3, H, W)."""
    s = p.shape[-1]
    ys, xs = torch.nonzero((img[:, : -s + 1, : -s + 1] == p[:, :1, :1]).all(dim=0), as_tuple=True)
    return any(torch.equal(img[:, y : y + s, x : x + s], p) for y, x in zip(ys.tolist(), xs.tolist()))


def test_patches_are_crops_with_flips() -> None:
    # Single photo, scale 1: every patch is a crop of it, some mirrored.
    img = torch.from_numpy(data.load_photo("astronaut")).permute(2, 0, 1)
    x = data.image_patches(size=5, count=40, photos="astronaut", scales=(1,), seed=0)
    plain = sum(_is_crop(img, p) for p in x)
    flipped = sum(_is_crop(img, p.flip(-1)) for p in x)
    assert plain + flipped >= 40 and plain > 5 and flipped > 5


def test_patches_downscale_area_average() -> None:
    img = data.load_photo("coffee")
    small = data._downscale(img, 2)
    assert small.shape == (img.shape[0] // 2, img.shape[1] // 2, 3)
    np.testing.assert_allclose(small[3, 5], img[6:8, 10:12].mean(axis=(0, 1)), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": 0}, "size"),
        ({"size": 2.5}, "size"),
        ({"count": 0}, "count"),
        ({"count": True}, "count"),
        ({"seed": -1}, "seed"),
        ({"photos": ()}, "photos"),
        ({"photos": ("astronaut", "nope")}, "photos"),
        ({"scales": ()}, "scales"),
        ({"scales": (1, 0)}, "scales"),
        ({"scales": (1.5,)}, "scales"),
        ({"size": 200, "scales": (4,)}, "scales"),
    ],
)
def test_patches_bad_args(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        data.image_patches(**{"count": 10, **kwargs})


def test_gmm_output(small_gmm: dict[str, torch.Tensor]) -> None:
    g = small_gmm
    assert set(g) == {"means", "covariances", "weights"}
    assert g["means"].shape == (6, 48) and g["means"].dtype == torch.float64
    assert g["covariances"].shape == (6, 48, 48) and g["covariances"].dtype == torch.float64
    assert g["weights"].shape == (6,) and g["weights"].dtype == torch.float64
    assert torch.equal(g["covariances"], g["covariances"].transpose(-1, -2))
    assert torch.linalg.eigvalsh(g["covariances"]).min() >= 1e-4 * (1 - 1e-6)
    torch.linalg.cholesky(g["covariances"])
    assert (g["weights"] > 0).all()
    assert abs(g["weights"].sum().item() - 1.0) < 1e-12


def test_gmm_deterministic() -> None:
    x = data.image_patches(size=3, count=1500, seed=1)
    a = data.fit_gmm(x, n_components=3, seed=0)
    b = data.fit_gmm(x, n_components=3, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gmm_beats_single_gaussian_heldout(small_gmm: dict[str, torch.Tensor]) -> None:
    train = data.image_patches(size=4, count=4000, seed=0)
    held = data.image_patches(size=4, count=2000, photos=data.HELDOUT_PHOTOS, seed=1)
    single = data.fit_gmm(train, n_components=1)
    ll_mix = data.gmm_log_prob(small_gmm, held).mean().item()
    ll_one = data.gmm_log_prob(single, held).mean().item()
    assert np.isfinite(ll_mix) and np.isfinite(ll_one)
    assert ll_mix - ll_one > 0.2 * 48  # > 0.2 nats per dimension


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 10_000}, "n_components"),
        ({"reg": 0.0}, "reg"),
        ({"max_iter": 0}, "max_iter"),
        ({"seed": -2}, "seed"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_gmm_bad_args(kwargs: dict, param: str) -> None:
    x = data.image_patches(size=2, count=100)
    with pytest.raises(ValueError, match=param):
        data.fit_gmm(x, **kwargs)


def test_gmm_bad_patches() -> None:
    with pytest.raises(ValueError, match="patches"):
        data.fit_gmm(torch.zeros(5))
    bad = torch.zeros(10, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="patches"):
        data.fit_gmm(bad, n_components=1)


def test_gmm_bed_cached_and_copied() -> None:
    a = data.gmm_bed(size=2, n_components=2, count=800, seed=5)
    a["means"].zero_()
    b = data.gmm_bed(size=2, n_components=2, count=800, seed=5)
    assert b["means"].abs().sum() > 0
    assert data._gmm_bed.cache_info().hits >= 1
    assert b["covariances"].shape == (2, 12, 12)


def test_gmm_bed_disk_cache_is_exact_and_survives_damage(tmp_path, monkeypatch):
    """The fitted bed is cached on disk (issue 19: the bed was refitted on every command); the cached values are
    the fit's exact ones, and a damaged cache file is refitted."""
    import torch

    from fewstep import data

    monkeypatch.setenv("FEWSTEP_CACHE", "")
    data._gmm_bed.cache_clear()
    fresh = data.gmm_bed(size=4, n_components=2, count=400)
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path))
    data._gmm_bed.cache_clear()
    first = data.gmm_bed(size=4, n_components=2, count=400)
    (entry,) = tmp_path.glob("gmm-bed-*.safetensors")
    data._gmm_bed.cache_clear()
    cached = data.gmm_bed(size=4, n_components=2, count=400)
    entry.write_bytes(entry.read_bytes()[:100])  # damaged
    data._gmm_bed.cache_clear()
    refit = data.gmm_bed(size=4, n_components=2, count=400)
    for k in fresh:
        assert torch.equal(fresh[k], first[k]) and torch.equal(fresh[k], cached[k]) and torch.equal(fresh[k], refit[k])
    data._gmm_bed.cache_clear()
