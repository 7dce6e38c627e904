"""The small EDM U-Net: architecture, preconditioning, dtypes, safe weights files, features, shipped weights."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

import fewstep
from fewstep.denoisers import HookFeatures
from fewstep.io import tensor_digest
from fewstep.denoisers.unet import (
    DEFAULT_ASSET, SmallUNet, UNetConfig, default_unet, load_unet, read_unet_metadata, save_unet,
)

torch.set_num_threads(1)

TINY = UNetConfig(base_channels=8, channel_mult=(1, 2), emb_dim=16, noise_features=8, norm_groups=4)


def _randomised(config: UNetConfig = TINY, seed: int = 0) -> SmallUNet:
    """A model whose zero-initialised output layers are perturbed, so that F is not identically zero."""
    torch.manual_seed(seed)
    model = SmallUNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _x(batch: int = 3, res: int = 16, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_default_architecture_size_and_shapes():
    model = SmallUNet()
    assert 500_000 <= model.num_parameters() <= 2_000_000
    assert isinstance(model.mid, torch.nn.Module)
    x = _x(2)
    with torch.no_grad():
        assert model(x, torch.tensor([0.5, 2.0])).shape == x.shape
        # Any resolution divisible by 2^(levels-1) works; other shapes are refused clearly.
        assert model(_x(1, res=8), 1.0).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 1, 16, 16), 1.0)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 3, 15, 15), 1.0)


@pytest.mark.parametrize("bad", [{"channel_mult": ()}, {"base_channels": 0}, {"norm_groups": 5},
                                 {"img_resolution": 10, "channel_mult": (1, 2, 2)}, {"noise_features": 7},
                                 {"sigma_data": 0.0}, {"dropout": 1.0}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        UNetConfig(**bad)


def test_fresh_model_is_pure_skip():
    """Zero-initialised output: a fresh model is D(x, sigma) = c_skip(sigma) x with c_skip = sd^2 / (sigma^2 + sd^2)."""
    model, x, sigma = SmallUNet(TINY), _x(), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        out = model(x, sigma)
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(out, c_skip[:, None, None, None] * x)


def test_preconditioning_limits():
    model, x = _randomised(), _x(dtype=torch.float64)
    model.double()
    with torch.no_grad():
        assert torch.equal(model(x, 0.0), x)  # D(x, 0) = x exactly (c_out = 0, c_noise clamped finite)
        for s in (1e-4, 1e-6):
            err = (model(x, s) - x).abs().max()
            assert err < 50 * s  # |D - x| <= c_skip-defect + c_out |F| = O(sigma)
        # Large sigma: c_skip -> 0, so D no longer follows x, and the output stays bounded.
        big = model(x, 1e4)
        assert torch.isfinite(big).all() and big.abs().max() < 10
        # c_in = 1/sqrt(sigma^2 + sd^2) ~ 1e-4 shrinks a shift of x to a 1e-7 shift of the network input.
        torch.testing.assert_close(model(x + 1e-3, 1e4), big, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="non-negative"):
        model(x, -1.0)


def test_sigma_scalar_batched_and_dtypes():
    model, x = _randomised(), _x()
    with torch.no_grad():
        ref = model(x, torch.tensor([0.7, 0.7, 0.7]))
        assert torch.equal(model(x, torch.tensor(0.7)), ref)
        assert torch.equal(model(x, 0.7), ref)
        # Each batch element uses its own sigma.
        per = model(x, torch.tensor([0.1, 0.7, 3.0]))
        torch.testing.assert_close(per[1], ref[1])
        assert not torch.allclose(per[0], ref[0])
        # float64 input through a float32 model: cast in and back out.
        out64 = model(x.double(), torch.tensor(0.7, dtype=torch.float64))
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64, ref.double(), rtol=0, atol=0)
        # A float64 model accepts float32 input and returns float32, close to the float32 model.
        m64 = _randomised().double()
        out = m64(x, 0.7)
        assert out.dtype == torch.float32 and next(m64.parameters()).dtype == torch.float64
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        model(x, torch.ones(2))


def test_sample_with_unet_float64_noise():
    model = _randomised()
    noise = fewstep.noise_for_seeds(range(2), (3, 16, 16), dtype=torch.float64)
    res = fewstep.solve(model, noise, fewstep.get_schedule("polynomial", 4), "heun")
    assert res.x.dtype == torch.float64 and res.nfe == 6 and torch.isfinite(res.x).all()


def test_model_id_depends_on_config_and_weights(tmp_path):
    a, b = SmallUNet(TINY), SmallUNet(UNetConfig(base_channels=8, channel_mult=(1, 2), norm_groups=4))
    assert a.model_id != b.model_id and a.model_id.startswith("smallunet-")
    p1 = save_unet(_randomised(seed=0), tmp_path / "m.safetensors", {})
    id1 = load_unet(p1).model_id
    id2 = load_unet(save_unet(_randomised(seed=1), tmp_path / "m.safetensors", {})).model_id
    assert id1 != id2 and "-m-" in id1


def test_save_load_round_trip(tmp_path):
    model = _randomised()
    recipe = {"steps": 3, "lr": 1e-3, "note": "test"}
    path = save_unet(model, tmp_path / "sub" / "tiny.safetensors", recipe, name="tiny")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    loaded = load_unet(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.recipe == recipe and read_unet_metadata(path)["recipe"] == recipe
    assert all(not p.requires_grad for p in loaded.parameters())
    x, sigma = _x(), torch.tensor([0.02, 0.5, 20.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma), model(x, sigma))
    # float64 weights round-trip as float64.
    p64 = save_unet(model.double(), tmp_path / "tiny64.safetensors", recipe)
    assert next(load_unet(p64).parameters()).dtype == torch.float64


def _rewrite(src, dst, tensors=None, **meta_changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    save_file(t if tensors is None else tensors(t), str(dst), metadata={k: v for k, v in meta.items() if v is not None})
    return dst


def test_bad_files_rejected(tmp_path):
    good = save_unet(_randomised(), tmp_path / "good.safetensors", {"steps": 1})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    pickled = tmp_path / "pickled.pt"
    torch.save(_randomised().state_dict(), pickled)
    with pytest.raises(FileNotFoundError):
        load_unet(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="readable"):
        load_unet(garbage)
    with pytest.raises(ValueError, match="pickle"):
        load_unet(pickled)
    cases = {
        "format": _rewrite(good, tmp_path / "fmt.st", format="other"),
        "version": _rewrite(good, tmp_path / "ver.st", version="99"),
        "lacks": _rewrite(good, tmp_path / "nocfg.st", config=None),
        "JSON": _rewrite(good, tmp_path / "json.st", config="{not json"),
        "config": _rewrite(good, tmp_path / "keys.st", config=json.dumps({"base_channels": 8})),
        "SHA-256": _rewrite(good, tmp_path / "sha.st",
                            tensors=lambda t: {k: (v + 1 if k == "stem.bias" else v) for k, v in t.items()}),
    }
    for match, path in cases.items():
        with pytest.raises(ValueError, match=match):
            load_unet(path)
    # Weights that do not fit the config (consistent SHA-256, wrong shapes).

    t = {k: v for k, v in _randomised().state_dict().items() if k != "stem.bias"}
    mismatch = _rewrite(good, tmp_path / "shape.st", tensors=lambda _: t, sha256=tensor_digest(t))
    with pytest.raises(ValueError, match="tensors do not match the configuration"):
        load_unet(mismatch)
    with pytest.raises(TypeError):
        save_unet(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", {})


def test_hook_features_find_mid():
    model = _randomised()
    hooked = HookFeatures(model)
    assert hooked.module_name == "mid" and hooked.model_id == model.model_id
    x = _x()
    with torch.no_grad():
        x0, feats = hooked.denoise_with_features(x, torch.tensor([0.1, 1.0, 10.0]))
        assert torch.equal(x0, model(x, torch.tensor([0.1, 1.0, 10.0])))
    assert feats.shape == (3, TINY.level_channels[-1]) and torch.isfinite(feats).all()


def _shipped():
    res = resources.files("fewstep").joinpath("assets").joinpath(DEFAULT_ASSET)
    if not res.is_file():
        pytest.skip(f"shipped weights fewstep/assets/{DEFAULT_ASSET} not present (train with scripts/train_model.py)")
    return res


def test_shipped_weights():
    res = _shipped()
    with resources.as_file(res) as p:
        assert p.stat().st_size <= 20e6
        meta = read_unet_metadata(p)
    model = default_unet()
    cfg = model.config
    assert (cfg.img_resolution, cfg.channels, cfg.sigma_data) == (16, 3, 0.5)
    assert 500_000 <= model.num_parameters() <= 2_000_000
    for key in ("steps", "batch", "lr", "ema", "seed", "final_loss", "wall_time_s", "torch"):
        assert key in meta["recipe"], key
    assert model.model_id.startswith("smallunet-") and meta["name"] in model.model_id
    x = _x(4, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, torch.tensor(1.0, dtype=torch.float64))
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()
    assert HookFeatures(model).module_name == "mid"


def test_default_unet_missing_is_clear(monkeypatch):
    from fewstep.denoisers import unet as unet_mod

    monkeypatch.setattr(unet_mod, "DEFAULT_ASSET", "does-not-exist.safetensors")
    with pytest.raises(FileNotFoundError, match="train_model.py"):
        unet_mod.default_unet()
