"""The sampling loop: NFE accounting, AFS, determinism per seed, trajectory, callback, gradients."""

from __future__ import annotations

import pytest
import torch

import fewstep
from conftest import CountingDenoiser, make_gmm

ALL = [
    ("euler", {}), ("heun", {}), ("dpm2", {}), ("dpmpp", {"max_order": 3}), ("unipc", {"max_order": 3}),
    ("ipndm", {}), ("ipndm_v", {}), ("deis", {}), ("deis", {"deis_mode": "rhoab"}),
]
SINGLE_STEP_2ND = {"heun", "dpm2"}


@pytest.mark.parametrize("solver,opts", ALL)
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("denoise_to_zero", [False, True])
@pytest.mark.parametrize("num", [2, 3, 6])
def test_nfe_equals_denoiser_calls(gmm4, noise16, solver, opts, afs, denoise_to_zero, num):
    model = CountingDenoiser(gmm4)
    sig = fewstep.get_schedule("polynomial", num)
    res = fewstep.solve(model, noise16, sig, solver, afs=afs, denoise_to_zero=denoise_to_zero, **opts)
    per_step = 2 if solver in SINGLE_STEP_2ND else 1
    expected = per_step * (num - 1) - int(afs) + int(denoise_to_zero)
    assert model.calls == res.nfe == expected
    assert fewstep.count_nfe(fewstep.get_solver(solver, **opts), num, afs, denoise_to_zero) == expected


@pytest.mark.parametrize("solver,afs,nfe,num", [
    ("heun", True, 5, 4), ("dpm2", True, 9, 6), ("ipndm", False, 5, 6), ("ipndm", True, 5, 7), ("dpm2", False, 6, 4),
])
def test_steps_for_nfe(solver, afs, nfe, num):
    assert fewstep.steps_for_nfe(solver, nfe, afs=afs) == num


def test_steps_for_nfe_unreachable():
    with pytest.raises(ValueError, match="nfe=5.*afs=False"):
        fewstep.steps_for_nfe("heun", 5)


def test_afs_replaces_first_evaluation(gmm4, noise16):
    sig = fewstep.get_schedule("polynomial", 4)
    seen = []
    res = fewstep.solve(gmm4, noise16, sig, "euler", afs=True, trajectory=True,
                        callback=lambda info: seen.append(info))
    x1 = res.trajectory[1]
    xT = noise16 * sig[0]
    expected = xT + (sig[1] - sig[0]) * xT / (1 + sig[0] ** 2).sqrt()
    torch.testing.assert_close(x1, expected, rtol=1e-13, atol=0)
    assert [d["i"] for d in seen] == [0, 1, 2] and seen[-1]["nfe"] == 2


def test_trajectory_and_result(gmm4, noise16):
    sig = fewstep.get_schedule("logsnr", 5)
    res = fewstep.solve(gmm4, noise16, sig, "dpmpp", trajectory=True)
    assert isinstance(res, fewstep.Solution) and res.nfe == 4
    assert res.trajectory.shape == (5, *noise16.shape)
    assert torch.equal(res.trajectory[0], noise16 * sig[0])
    assert torch.equal(res.trajectory[-1], res.x)
    assert torch.equal(res.sigmas, sig)
    plain = fewstep.sample(gmm4, noise16, sig, "dpmpp")
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, res.x)
    without = fewstep.solve(gmm4, noise16, sig, "dpmpp")
    assert without.trajectory is None and torch.equal(without.x, res.x)


def test_denoise_to_zero_is_final_denoiser_call(gmm4, noise16):
    sig = fewstep.get_schedule("polynomial", 5)
    x = fewstep.sample(gmm4, noise16, sig, "ipndm")
    x0 = fewstep.sample(gmm4, noise16, sig, "ipndm", denoise_to_zero=True)
    torch.testing.assert_close(x0, gmm4(x, sig[-1]), rtol=0, atol=0)


class BatchInvariant:
    """A GMM denoiser evaluated item by item, so its output for an item cannot depend on the batch."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x, sigma):
        return torch.cat([self.inner(x[i : i + 1], sigma[i : i + 1]) for i in range(x.shape[0])])


@pytest.mark.parametrize("solver,opts", ALL)
def test_per_seed_determinism_across_batches(solver, opts):
    """The same seed gives bitwise the same image in batches of 1, 7 and 64."""
    model = BatchInvariant(make_gmm(dim=12, components=3, seed=1))
    sig = fewstep.get_schedule("polynomial", 5)
    seeds = list(range(100, 164))
    big = fewstep.sample(model, fewstep.noise_for_seeds(seeds, (3, 2, 2)), sig, solver, afs=True, **opts)
    seven = fewstep.sample(model, fewstep.noise_for_seeds(seeds[10:17], (3, 2, 2)), sig, solver, afs=True, **opts)
    one = fewstep.sample(model, fewstep.noise_for_seeds([seeds[12]], (3, 2, 2)), sig, solver, afs=True, **opts)
    assert torch.equal(big[10:17], seven)
    assert torch.equal(big[12:13], one)


def test_noise_for_seeds():
    a = fewstep.noise_for_seeds([3, 1, 4], (2, 5))
    b = fewstep.noise_for_seeds([4], (2, 5))
    assert a.shape == (3, 2, 5) and a.dtype == torch.float32
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    c = fewstep.noise_for_seeds([3, 1, 4], (2, 5), dtype=torch.float64)
    assert torch.equal(c.float(), a)


def test_gradients_off_by_default_and_on_when_asked(gmm4, noise16):
    sig = fewstep.get_schedule("polynomial", 4)
    x = fewstep.sample(gmm4, noise16, sig, "heun")
    assert not x.requires_grad
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y = fewstep.sample(lambda x, s: gmm4(x, s) * scale, noise16, sig, "heun", enable_grad=True)
    y.sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)


def test_model_dtype_cast(gmm4, noise16):
    seen = []

    def model(x, s):
        seen.append((x.dtype, s.dtype, tuple(s.shape)))
        return gmm4(x, s)

    sig = fewstep.get_schedule("polynomial", 3)
    out = fewstep.sample(model, noise16, sig, "euler", model_dtype=torch.float32)
    assert out.dtype == torch.float64
    assert seen == [(torch.float32, torch.float32, (16,))] * 2


def test_float32_sampling_close_to_float64(gmm4, noise16):
    sig = fewstep.get_schedule("polynomial", 6)
    x64 = fewstep.sample(gmm4, noise16, sig, "unipc")
    x32 = fewstep.sample(gmm4, noise16.float(), sig, "unipc")
    assert x32.dtype == torch.float32
    assert ((x32.double() - x64).norm() / x64.norm()).item() < 1e-5


def test_progress_bar_runs(gmm4, noise16, capsys):
    sig = fewstep.get_schedule("polynomial", 4)
    fewstep.sample(gmm4, noise16, sig, "euler", progress=True)
    assert "euler" in capsys.readouterr().err


def test_trajectory_error_per_step(gmm4, noise16):
    from fewstep.evaluation import trajectory_error

    sig = fewstep.get_schedule("polynomial", 6)
    coarse = trajectory_error(gmm4, noise16, sig, "euler")
    fine = trajectory_error(gmm4, noise16, sig, "ipndm_v")
    assert len(coarse["rmse"]) == 6 and coarse["rmse"][0] == 0.0 and coarse["nfe"] == [5]
    assert coarse["rmse"][-1] > fine["rmse"][-1] > 0
    assert max(coarse["teacher_change"]) < 1e-2 * coarse["rmse"][-1]
