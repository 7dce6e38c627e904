"""k-diffusion-style functions (fewstep.k) are thin wrappers over fewstep.sample."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import k, learned
from conftest import CountingDenoiser, make_gmm

CASES = [
    (k.sample_euler, "euler", {}),
    (k.sample_heun, "heun", {}),
    (k.sample_dpm_2, "dpm2", {}),
    (k.sample_dpmpp_2m, "dpmpp", {"max_order": 2, "lower_order_final": False}),  # k-diffusion's default
    (k.sample_dpmpp_3m, "dpmpp", {"max_order": 3, "lower_order_final": False}),
    (k.sample_unipc, "unipc", {}),
    (k.sample_ipndm, "ipndm", {}),
    (k.sample_ipndm_v, "ipndm_v", {}),
    (k.sample_deis, "deis", {}),
    (k.sample_amed, "amed", {}),
    (k.sample_amed_plugin, "amed_plugin", {"base": "ipndm"}),
]


@pytest.fixture(scope="module")
def bed():
    return make_gmm(dim=6, components=3, seed=2), fewstep.noise_for_seeds(range(4), (6,), dtype=torch.float64)


class KModel:
    """A k-diffusion denoiser model(x, sigma, **extra_args): the GMM, shifted by an extra argument."""

    def __init__(self, gmm):
        self.gmm, self.sigmas = gmm, []

    def __call__(self, x, sigma, shift=0.0):
        assert sigma.shape == (x.shape[0],)
        self.sigmas.append(float(sigma[0]))
        return self.gmm(x, sigma) + shift


@pytest.mark.parametrize("fn,solver,opts", CASES, ids=[c[1] + str(c[2].get("max_order", "")) for c in CASES])
@pytest.mark.parametrize("zero", [False, True])
def test_equals_fewstep_sample(bed, fn, solver, opts, zero):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 5)
    ksig = torch.cat([sig, torch.zeros(1, dtype=torch.float64)]) if zero else sig
    model = KModel(gmm)
    x = fn(model, noise * sig[0], ksig, extra_args={"shift": 0.01}, disable=True)
    shifted = CountingDenoiser(lambda x, s: gmm(x, s) + 0.01)
    ref = fewstep.sample(shifted, noise, sig, solver, denoise_to_zero=zero, **opts)
    # fewstep.sample starts at noise * sigmas[0]; the wrapper receives x = noise * sigmas[0] and passes x / sigmas[0].
    assert torch.allclose(x, ref, rtol=1e-12, atol=1e-12)
    exact = fewstep.sample(shifted, noise * sig[0] / sig[0], sig, solver, denoise_to_zero=zero, **opts)
    assert torch.equal(x, exact)
    assert len(model.sigmas) == shifted.calls // 2  # same evaluations
    if zero:
        assert model.sigmas[-1] == float(sig[-1])  # the trailing 0 became the final denoising at sigma_min


def test_callback_dict(bed):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 4)
    seen = []
    x0 = noise * sig[0]
    k.sample_heun(lambda x, s: gmm(x, s), x0, torch.cat([sig, torch.zeros(1, dtype=torch.float64)]),
                  callback=seen.append, disable=True)
    assert [d["i"] for d in seen] == [0, 1, 2, 3]  # as k-diffusion: the last call is the step to sigma 0
    assert all(set(d) == {"x", "i", "sigma", "sigma_hat", "denoised"} for d in seen)
    assert torch.equal(seen[0]["x"], x0) and seen[0]["sigma"] == sig[0]
    assert torch.allclose(seen[0]["denoised"], gmm(x0, sig[0]))  # k-diffusion: D at the step's start
    assert not torch.equal(seen[1]["x"], x0)


def test_amed_predictor_and_errors(bed):
    gmm, noise = bed
    pred = learned.train("amed", gmm, shape=(6,), num_steps=3, teacher=learned.Teacher(M=1),
                         budget=learned.Budget(batch=4, total_samples=8), progress=False)
    sig = torch.tensor(pred.config["sigmas"], dtype=torch.float64)
    ref = fewstep.sample(gmm, noise, predictor=pred)
    assert torch.allclose(k.sample_learned(gmm, noise * sig[0], sig, predictor=pred, disable=True), ref, rtol=1e-12)
    assert torch.allclose(k.sample_learned(gmm, noise * sig[0], predictor=pred, disable=True), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="trained for sigmas"):
        k.sample_learned(gmm, noise * sig[0], fewstep.get_schedule("polynomial", 5), predictor=pred, disable=True)
    with pytest.raises(ValueError, match="sigmas"):
        k.sample_euler(gmm, noise, torch.tensor([1.0]), disable=True)
    with pytest.raises(TypeError, match="x must be"):
        k.sample_euler(gmm, [1.0], fewstep.get_schedule("polynomial", 3), disable=True)
