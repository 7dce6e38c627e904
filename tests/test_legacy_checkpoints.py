"""Files written before the learned-package redesign (tests/data/legacy, README there) still load and sample the
same values; the trainer, given the same settings, still writes the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fewstep
from fewstep import learned
from fewstep.denoisers import Guided
from fewstep.denoisers.analytic import GaussianMixture
from conftest import make_gmm

DATA = Path(__file__).parent / "data" / "legacy"
EXPECTED = load_file(str(DATA / "expected_samples.safetensors"))
NAMES = sorted(EXPECTED)
D = 6


class FeatGMM:
    """The mixture with 'features' = the first 4 coordinates of x (as the files were written)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x, s):
        return self.inner(x, s)

    def denoise_with_features(self, x, s):
        return self.inner(x, s), x.flatten(1)[:, :4]


class CondGMM:
    """tests/test_guidance_aware.py's class-conditional mixture (as the files were written)."""

    null_label = 3

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        means = 2 * torch.randn(3, 2, D, generator=g, dtype=torch.float64)
        covs = torch.stack([torch.eye(D, dtype=torch.float64) * v for v in (0.3, 0.6)])
        self.classes = [GaussianMixture(means[c], covs) for c in range(3)]
        self.null = GaussianMixture(means.reshape(6, D), covs.repeat(3, 1, 1))

    def __call__(self, x, sigma, labels):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for c in labels.unique().tolist():
            i = labels == c
            out[i] = (self.null if c == self.null_label else self.classes[c])(x[i], s[i])
        return out


@pytest.fixture(scope="module")
def models():
    gmm = make_gmm(dim=12, components=4, seed=5)
    return {"gmm": gmm, "feat": FeatGMM(gmm), "cond": CondGMM()}


def _model(name, models):
    if name.endswith("guided"):
        return Guided(models["cond"], 1, 2.5), (D,)
    return (models["feat"] if name == "amed_features" else models["gmm"]), (3, 2, 2)


def test_every_legacy_file_is_covered():
    assert {p.stem for p in DATA.glob("*.safetensors")} - {"expected_samples"} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_legacy_file_loads_and_samples_the_same(name, models):
    sampler = learned.load(DATA / f"{name}.safetensors")
    den, shape = _model(name, models)
    noise = fewstep.noise_for_seeds(range(100, 104), shape, dtype=torch.float64)
    x = fewstep.sample(den, noise, predictor=sampler)
    _same(x, EXPECTED[name], name)
    assert learned.read_config(DATA / f"{name}.safetensors") == sampler.config


@pytest.mark.parametrize("name,method,kw", [
    ("amed_table", "amed", dict(num_steps=4, options={"scale_time": 0.1})),
    ("plugin_ipndm", "plugin", dict(num_steps=4, base="ipndm")),
    ("plugin_dpmpp_data", "plugin", dict(num_steps=4, base={"solver": "dpmpp", "options": {"max_order": 2}},
                                         options={"c_mode": "data"})),
    ("amed_features", "amed", dict(num_steps=4, options={"features": "adapter", "hidden": 16})),
    ("dyweight", "dyweight", dict(nfe=5)),
    ("epd", "epd", dict(nfe=5, options={"K": 2})),
    ("gs", "gs", dict(nfe=5)),
    ("pas", "pas", dict(nfe=5)),
])
def test_training_writes_the_legacy_weights(name, method, kw, models):
    den, shape = _model(name, models)
    if name == "amed_features":
        den = models["feat"]
    p = learned.train(method, den, shape=shape, budget=learned.Budget(batch=16, total_samples=64, seed=3),
                      teacher=learned.Teacher(M=2), progress=False, **kw)
    old = learned.load(DATA / f"{name}.safetensors")
    _same(torch.tensor(p.config["sigmas"]), torch.tensor(old.config["sigmas"]), "sigmas")
    new, ref = p.state_dict(), old.state_dict()
    assert new.keys() == ref.keys()
    for k in ref:
        _same(new[k], ref[k], k)


def _same(x: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Equal to the recorded float64 values up to the last bits. Not bitwise: the files were written on one CPU, and
    LAPACK / vector kernels differ between CPU families (seen: Intel vs AMD EPYC, 1e-15 relative in the Gaussian
    mixtures' Cholesky solves). Any change of the format or the algorithm is many orders of magnitude above this;
    bitwise determinism on one machine is tested elsewhere (test_learned, test_learned_distributed)."""
    assert x.shape == ref.shape and x.dtype == ref.dtype, what
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    assert float((x - ref).abs().max()) <= 1e-12 * max(scale, 1.0), what
