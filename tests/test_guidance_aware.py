"""Guidance-aware learned samplers (fewstep.learned.guidance): one table for every classifier-free guidance scale."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.denoisers import Guided
from fewstep.denoisers.analytic import GaussianMixture
from fewstep.learned import METHODS, CheckpointError
from fewstep.learned.guidance import legendre
from learned_helpers import make_sampler, perturb

torch.set_num_threads(1)

D = 6
SIG = fewstep.get_schedule("polynomial", 5, 0.002, 80.0)
GUIDE = {"scales": [1.0, 6.0], "degree": 2}
OPTIONS = {"amed": None, "plugin": None, "dyweight": None, "epd": {"K": 2}, "pas": None, "gs": None,
           "residual": {"channels": D, "width": 8}}


class CondGMM:
    """A class-conditional analytic denoiser D(x, sigma, y): class y is a 2-component Gaussian mixture, the null
    class (label 3) the mixture of all three classes."""

    null_label = 3

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        means = 2 * torch.randn(3, 2, D, generator=g, dtype=torch.float64)
        covs = torch.stack([torch.eye(D, dtype=torch.float64) * v for v in (0.3, 0.6)])
        self.classes = [GaussianMixture(means[c], covs) for c in range(3)]
        self.null = GaussianMixture(means.reshape(6, D), covs.repeat(3, 1, 1))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for c in labels.unique().tolist():
            i = labels == c
            out[i] = (self.null if c == self.null_label else self.classes[c])(x[i], s[i])
        return out


@pytest.fixture(scope="module")
def cond() -> CondGMM:
    return CondGMM()


def noise(n: int = 4) -> torch.Tensor:
    return fewstep.noise_for_seeds(range(n), (D,), dtype=torch.float64)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("scale", [1.5, 4.0])
def test_neutral_at_every_scale_is_the_base_solver(cond, method, scale):
    p = make_sampler(METHODS[method], SIG, options=OPTIONS[method], guidance=GUIDE)
    plain = make_sampler(METHODS[method], SIG, options=OPTIONS[method])
    den = Guided(cond, 1, scale)
    x = noise()
    a = fewstep.sample(den, x, predictor=p)
    b = fewstep.sample(den, x, predictor=plain)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", list(METHODS))
def test_tables_follow_the_denoiser_scale(cond, method):
    """A trained guidance-aware sampler at scale w samples exactly as a plain sampler holding its tables at w."""
    p = perturb(make_sampler(METHODS[method], SIG, options=OPTIONS[method], time_shift=True, guidance=GUIDE), 3, 0.1)
    x = noise()
    for w in (2.5, 5.0):
        p.guidance_scale = w
        plain = make_sampler(METHODS[method], SIG, options=OPTIONS[method], time_shift=True)
        with torch.no_grad():
            for name, param in plain.named_parameters():  # the value at scale w (parametrized) or the weight itself
                param.copy_(functools.reduce(getattr, name.split("."), p))
        p.guidance_scale = None  # the denoiser's scale is used
        a = fewstep.sample(Guided(cond, 0, w), x, predictor=p)
        b = fewstep.sample(Guided(cond, 0, w), x, predictor=plain)
        assert torch.equal(a, b)
    c = fewstep.sample(Guided(cond, 0, 2.5), x, predictor=p)
    assert not torch.equal(a, c)  # the scale matters


def test_legendre_basis():
    u = 0.3
    assert legendre(u, 3).tolist() == pytest.approx([1, u, (3 * u * u - 1) / 2, (5 * u**3 - 3 * u) / 2])


def test_scale_errors(cond):
    p = perturb(make_sampler(METHODS["dyweight"], SIG, guidance=GUIDE))
    x = noise(2)
    with pytest.raises(ValueError, match="needs the guidance scale"):
        fewstep.sample(lambda x, s: cond(x, s, torch.zeros(len(x), dtype=torch.long)), x, predictor=p)
    p.guidance_scale = 2.0  # a denoiser without a scale: the sampler's own
    fewstep.sample(lambda x, s: cond(x, s, torch.zeros(len(x), dtype=torch.long)), x, predictor=p)
    with pytest.raises(ValueError, match="guidance_scale is 2 but the denoiser guides with scale 3"):
        fewstep.sample(Guided(cond, 0, 3.0), x, predictor=p)
    p.guidance_scale = None
    with pytest.raises(ValueError, match="outside the range .* would be extrapolated"):  # refused (issue 26)
        fewstep.sample(Guided(cond, 0, 9.0), x, predictor=p)
    with pytest.raises(TypeError, match="guidance_scale must be a number"):
        p.guidance_scale = "2"
    with pytest.raises(ValueError, match="no guidance_scale"):
        make_sampler(METHODS["dyweight"], SIG).guidance_scale = 2.0


@pytest.mark.parametrize("bad", [{"scales": [2.0, 1.0], "degree": 2}, {"scales": [1.0, 2.0], "degree": 9},
                                 {"scales": [1.0], "degree": 1}, {"scales": [1, 2], "degree": 1, "x": 0}])
def test_bad_guidance_config_is_refused(bad):
    with pytest.raises(CheckpointError, match="guidance"):
        make_sampler(METHODS["dyweight"], SIG, guidance=bad)


def test_bad_training_scales(cond):
    kw = dict(shape=(D,), nfe=3, budget=learned.Budget(total_samples=8, batch=4), teacher=learned.Teacher(M=1),
              progress=False)
    with pytest.raises(ValueError, match="at least two different"):
        learned.train("dyweight", Guided(cond, 0, 2.0), guidance=[2.0], **kw)
    with pytest.raises(TypeError, match="Guided"):
        learned.train("dyweight", lambda x, s: x, guidance=[1.0, 2.0], **kw)
    with pytest.raises(ValueError, match="guidance degree"):
        learned.train("dyweight", Guided(cond, 0, 2.0), guidance=learned.GuidanceScales([1.0, 2.0], degree=0), **kw)


def test_train_over_scales_round_trip_and_unseen_scale(cond, tmp_path):
    den = Guided(cond, torch.arange(8) % 3, 2.0)
    p = learned.train("dyweight", den, shape=(D,), nfe=3, guidance=[1.0, 3.0, 6.0],
                      budget=learned.Budget(total_samples=96, batch=8, seed=1), teacher=learned.Teacher(M=2),
                      progress=False)
    assert den.scale == 2.0 and p.guidance_scale is None  # restored
    assert p.guidance_aware and p.config["guidance"] == {"scales": [1.0, 6.0], "degree": 2}
    assert p.config["training"]["guidance_scales"] == [1.0, 3.0, 6.0]
    path = p.save(tmp_path / "g.safetensors")
    q = learned.load(path)
    x = fewstep.noise_for_seeds(range(10**8, 10**8 + 8), (D,), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for w in (2.0, 4.5):  # never trained at
            den.scale = w
            a = fewstep.solve(den, x, predictor=p)
            b = fewstep.solve(den, x, predictor=q)
            assert torch.equal(a.x, b.x) and a.nfe == 3
            ref = fewstep.sample(den, x, get_schedule_sig(), "deis", max_order=4)
            base = fewstep.sample(den, x, torch.tensor(p.config["sigmas"]), "ipndm", afs=True)
            assert (a.x - ref).norm() < (base - ref).norm()


def get_schedule_sig() -> torch.Tensor:
    return fewstep.get_schedule("polynomial", 129, 0.002, 80.0)


@pytest.mark.parametrize("method", ["amed", "plugin"])
def test_amed_tables_train_over_scales_and_round_trip(cond, method, tmp_path):
    den = Guided(cond, torch.arange(8) % 3, 2.0)
    x = fewstep.noise_for_seeds(range(10**8, 10**8 + 8), (D,), dtype=torch.float64)
    kw = dict(shape=(D,), nfe=5, teacher=learned.Teacher(M=1), progress=False)
    small = learned.Budget(total_samples=8, batch=8, lr=1e-30)
    neutral = learned.train(method, den, guidance=[1.0, 6.0], budget=small, **kw)  # one step of ~0: the neutral table
    assert neutral.guidance_aware
    for w in (1.5, 5.0):
        den.scale = w
        plain = learned.train(method, den, budget=small, **kw)  # a fixed-scale sampler samples at its own scale only
        assert not plain.guidance_aware
        assert torch.allclose(fewstep.sample(den, x, predictor=neutral), fewstep.sample(den, x, predictor=plain),
                              rtol=0, atol=1e-12)
    den.scale = 2.0
    p = learned.train(method, den, guidance=[1.0, 3.0, 6.0], budget=learned.Budget(total_samples=64, batch=8), **kw)
    assert den.scale == 2.0 and p.config["guidance"] == {"scales": [1.0, 6.0], "degree": 2}
    q = learned.load(p.save(tmp_path / "a.safetensors"))
    assert q.guidance_aware
    for w in (2.0, 4.5):
        den.scale = w
        assert torch.equal(fewstep.sample(den, x, predictor=p), fewstep.sample(den, x, predictor=q))
    with pytest.raises(ValueError, match="needs the guidance scale"):
        fewstep.sample(lambda x, s: cond(x, s, torch.zeros(len(x), dtype=torch.long)), x, predictor=q)


class FeatCondGMM(CondGMM):
    """CondGMM with features of its own (the first 4 coordinates of x), so Guided provides them."""

    def denoise_with_features(self, x, sigma, labels):
        return self(x, sigma, labels), x.flatten(1)[:, :4]


@pytest.mark.parametrize("method", ["amed", "plugin"])
def test_amed_feature_predictor_cannot_be_guidance_aware(method):
    with pytest.raises(ValueError, match="guidance must be null for a feature-based predictor"):
        learned.train(method, Guided(FeatCondGMM(), 0, 2.0), shape=(D,), options={"features": "adapter"},
                      guidance=[1.0, 2.0], num_steps=3, budget=learned.Budget(total_samples=8, batch=4),
                      teacher=learned.Teacher(M=1), progress=False)



def test_cli_train_guidance_aware_and_sample_at_an_unseen_scale(tmp_path, capsys):
    """fewstep train --model digits --guidance-scales: one sampler for all classes and scales (batch rounded up to
    a multiple of the 10 classes), sampled by fewstep sample --class --guidance at a scale it never trained at."""
    import numpy as np

    from fewstep.cli import main
    from fewstep.denoisers import digits_unet

    out = tmp_path / "aware.safetensors"
    assert main(["train", "--model", "digits", "--method", "dyweight", "--nfe", "3", "--guidance-scales", "1,4",
                 "--total-samples", "20", "--M", "1", "--out", str(out)]) == 0
    p = learned.load(out)
    assert p.guidance_aware and p.config["training"]["batch"] == 20  # DyWeight's 16, rounded up to 20
    assert p.config["training"]["guidance_scales"] == [1.0, 4.0]
    assert main(["sample", "--model", "digits", "--class", "2", "--guidance", "3", "--predictor", str(out),
                 "--seeds", "0-1", "--out", str(tmp_path / "s.npz")]) == 0
    x = fewstep.sample(Guided(digits_unet(), 2, 3.0), fewstep.noise_for_seeds(range(2), (1, 16, 16)), predictor=p)
    np.testing.assert_allclose(np.load(tmp_path / "s.npz")["images"], x.clamp(-1, 1).numpy(), atol=1e-6)
    capsys.readouterr()
    assert main(["sample", "--model", "digits", "--predictor", str(out), "--seeds", "0-1",
                 "--out", str(tmp_path / "t.npz")]) == 2
    assert "--guidance W" in capsys.readouterr().err
    bad = [(["--model", "gmm", "--guidance", "2"], "class-conditional"),
           (["--model", "digits", "--guidance", "2", "--batch", "16"], "multiple of 10"),
           (["--model", "digits", "--class", "3"], "--class needs"),
           (["--model", "digits", "--guidance", "2", "--guidance-scales", "1,2"], "not both"),
           (["--model", "digits", "--method", "plugin", "--guidance-scales", "1,2"], "--features none"),
           (["--model", "digits", "--guidance-scales", "1,x"], "numbers separated by commas")]
    for argv, msg in bad:
        assert main(["train", *argv, "--out", str(tmp_path / "bad.safetensors")]) == 2
        assert msg in capsys.readouterr().err, msg
