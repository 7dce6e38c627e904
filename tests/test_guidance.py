"""Class-conditional SmallUNet, classifier-free guidance (fewstep.denoisers.Guided) and the shipped digits model."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch

import fewstep
from fewstep.denoisers import Guided, HookFeatures, digits_unet
from fewstep.denoisers.unet import (
    DIGITS_ASSET,
    SmallUNet,
    UNetConfig,
    load_unet,
    read_unet_metadata,
    save_unet,
)
from fewstep.sampling import ModelCall, count_nfe

torch.set_num_threads(1)

COND = UNetConfig(img_resolution=8, channels=1, base_channels=8, channel_mult=(1, 2), emb_dim=16, noise_features=8,
                  norm_groups=4, num_classes=4)


def _cond_model(seed: int = 0, dtype=torch.float64) -> SmallUNet:
    """A random conditional model (output layers perturbed off zero, so labels matter), in float64."""
    torch.manual_seed(seed)
    model = SmallUNet(COND).eval().requires_grad_(False).to(dtype)
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    return model


def _x(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Counting:
    """A conditional denoiser that records the batch of every call."""

    def __init__(self, model: SmallUNet) -> None:
        self.model, self.batches = model, []
        self.null_label = model.null_label

    def __call__(self, x, sigma, class_labels):
        self.batches.append((x.shape[0], class_labels.tolist()))
        return self.model(x, sigma, class_labels)


def test_guided_equals_the_cfg_formula():
    m = _cond_model()
    x, sigma, y = _x(), torch.tensor([0.3, 2.0, 11.0], dtype=torch.float64), torch.tensor([0, 3, 1])
    null = torch.full_like(y, 4)
    for w in (2.0, 4.0, 7.5, -0.5):
        expect = m(x, sigma, null) + w * (m(x, sigma, y) - m(x, sigma, null))
        torch.testing.assert_close(Guided(m, y, w)(x, sigma), expect, rtol=1e-10, atol=1e-10)
    # an int label applies to every sample; a scalar sigma to the whole batch; the null label defaults to the model's
    g = Guided(m, 2, 3.0)
    assert g.null_label == 4
    two = torch.full((3,), 2)
    torch.testing.assert_close(g(x, torch.tensor(1.5, dtype=torch.float64)),
                               m(x, 1.5, null) + 3.0 * (m(x, 1.5, two) - m(x, 1.5, null)), rtol=1e-10, atol=1e-10)


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional():
    m = _cond_model()
    x, sigma, y = _x(), torch.tensor(0.7, dtype=torch.float64), torch.tensor([0, 3, 1])
    assert torch.equal(Guided(m, y, 1.0)(x, sigma), m(x, sigma, y))
    assert torch.equal(Guided(m, y, 0.0)(x, sigma), m(x, sigma))  # no labels = the null class
    assert torch.equal(m(x, sigma), m(x, sigma, torch.full((3,), 4)))
    assert not torch.allclose(m(x, sigma, y), m(x, sigma))  # the labels do change the output


def test_one_call_on_the_doubled_batch_per_nfe():
    counting = Counting(_cond_model())
    g = Guided(counting, torch.tensor([1, 2]), 4.0)
    sig = fewstep.get_schedule("polynomial", 4, sigma_min=0.002, sigma_max=80.0)
    res = fewstep.solve(g, _x(2), sig, "heun")
    assert res.nfe == count_nfe(fewstep.SOLVERS["heun"](), 4) == 6
    assert len(counting.batches) == res.nfe  # one call per evaluation of the guided denoiser
    assert all(b == (4, [1, 2, 4, 4]) for b in counting.batches)  # conditional half, then the null half
    counting.batches.clear()
    fewstep.sample(Guided(counting, 1, 1.0), _x(2), sig, "heun")  # w = 1: the conditional half only
    assert all(b == (2, [1, 1]) for b in counting.batches) and len(counting.batches) == 6


def test_features_come_from_the_conditional_half():
    m = _cond_model()
    x, sigma, y = _x(), torch.tensor([0.3, 2.0, 11.0], dtype=torch.float64), torch.tensor([0, 3, 1])
    out, feats = Guided(m, y, 4.0).denoise_with_features(x, sigma)
    torch.testing.assert_close(out, Guided(m, y, 4.0)(x, sigma))
    _, cond = HookFeatures(lambda a, s: m(a, s, y), m).denoise_with_features(x, sigma)
    _, uncond = HookFeatures(lambda a, s: m(a, s), m).denoise_with_features(x, sigma)
    assert feats.shape == (3, COND.level_channels[-1])
    torch.testing.assert_close(feats, cond, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(feats, uncond)
    # the sampler reads them through ModelCall, one evaluation each
    call = ModelCall(Guided(m, y, 4.0), features=True)
    call(x, torch.tensor(2.0, dtype=torch.float64))
    assert call.nfe == 1 and call.features.shape == (3, COND.level_channels[-1])


def test_guided_is_the_same_model_and_checks_its_inputs():
    m = _cond_model()
    assert Guided(m, 1, 4.0).model_id == m.model_id == Guided(m, 2, 7.5).model_id
    with pytest.raises(ValueError, match="2 labels but the batch has 3"):
        Guided(m, torch.tensor([1, 2]), 2.0)(_x(), torch.tensor(1.0))
    x4 = _x(4)
    tiled = Guided(m, torch.tensor([1, 2]), 2.0)(x4, torch.tensor(1.0))  # 2 labels divide a batch of 4: 1, 2, 1, 2
    assert torch.equal(tiled, Guided(m, torch.tensor([1, 2, 1, 2]), 2.0)(x4, torch.tensor(1.0)))
    with pytest.raises(ValueError, match="null_label"):
        Guided(lambda x, s, y: x, 1, 2.0)  # a plain callable must name its null class
    assert Guided(lambda x, s, y: x, 1, 2.0, null_label=7).null_label == 7
    with pytest.raises(TypeError):
        Guided(m, torch.tensor([0.5]), 2.0)
    with pytest.raises(ValueError, match="finite"):
        Guided(m, 1, float("nan"))


def test_conditional_unet_labels_and_files(tmp_path):
    m = _cond_model(dtype=torch.float32)
    x = _x().float()
    with pytest.raises(ValueError, match=r"0\.\.4"):
        m(x, 1.0, torch.tensor([0, 5, 1]))
    with pytest.raises(TypeError):
        m(x, 1.0, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="unconditional"):
        SmallUNet(UNetConfig(channels=1))(torch.zeros(1, 1, 16, 16), 1.0, torch.tensor([0]))
    path = save_unet(m, tmp_path / "cond.safetensors", {"steps": 1})
    loaded = load_unet(path)
    assert loaded.config == COND and loaded.null_label == 4
    y = torch.tensor([0, 3, 1])
    assert torch.equal(loaded(x, 1.0, y), m(x, 1.0, y))


def test_unconditional_config_json_is_unchanged():
    cfg = UNetConfig()
    d = json.loads(cfg.to_json())
    assert "num_classes" not in d  # the files and model ids of unconditional models are those of earlier versions
    assert UNetConfig.from_dict(d) == cfg
    assert "class_embed" not in "".join(SmallUNet(UNetConfig(base_channels=8, norm_groups=4)).state_dict())
    assert json.loads(COND.to_json())["num_classes"] == 4


def _shipped():
    res = resources.files("fewstep").joinpath("assets").joinpath(DIGITS_ASSET)
    if not res.is_file():
        pytest.skip(f"fewstep/assets/{DIGITS_ASSET} not present (train with scripts/train_digits.py)")
    return res


def test_shipped_digits_model():
    with resources.as_file(_shipped()) as p:
        assert p.stat().st_size < 10_000_000
        meta = read_unet_metadata(p)
    model = digits_unet()
    assert model.config.num_classes == 10 and model.null_label == 10 and model.config.channels == 1
    assert model.config.img_resolution == 16
    recipe = meta["recipe"]
    for key in ("steps", "batch", "epochs", "p_uncond", "final_loss", "wall_time_s", "data", "null_label"):
        assert key in recipe, key
    assert recipe["null_label"] == 10 and 0 < recipe["p_uncond"] < 1
    assert model.model_id.startswith("smallunet-") and "digits16" in model.model_id


def test_cli_sample_class_and_guidance(tmp_path):
    from fewstep.cli import main

    _shipped()
    out = tmp_path / "three.npz"
    assert main(["sample", "--model", "digits", "--class", "3", "--guidance", "4", "--seeds", "0-3",
                 "--solver", "ipndm", "--nfe", "5", "--out", str(out)]) == 0
    images = np.load(out)["images"]
    assert images.shape == (4, 1, 16, 16)
    sig = fewstep.get_schedule("polynomial", fewstep.steps_for_nfe("ipndm", 5), sigma_min=0.002, sigma_max=80.0)
    noise = fewstep.noise_for_seeds(range(4), (1, 16, 16))
    x = fewstep.sample(Guided(digits_unet(), torch.full((4,), 3), 4.0), noise, sig, "ipndm")
    np.testing.assert_allclose(images, x.clamp(-1, 1).numpy(), atol=1e-6)
    assert main(["sample", "--model", "digits", "--guidance", "4", "--out", str(tmp_path / "a.npz")]) == 2
    assert main(["sample", "--model", "digits", "--class", "10", "--out", str(tmp_path / "b.npz")]) == 2
    assert main(["sample", "--model", "gmm", "--class", "1", "--out", str(tmp_path / "c.npz")]) == 2
