"""Schedules: every kind of ``fewstep.get_schedule`` checked against closed-form expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep.schedules import ddpm_alphas_cumprod, vp_sigma, vp_sigma_inv

KINDS = ("polynomial", "logsnr", "time_uniform", "discrete")
CONTINUOUS = ("polynomial", "logsnr", "time_uniform")
RANGES = [(0.002, 80.0), (0.03, 14.6), (1e-3, 1e3)]
BETA_MIN, BETA_D = 0.1, 19.9


def model_sigmas(ac: torch.Tensor) -> torch.Tensor:
    """The sigma set of a discrete VP model: sqrt((1 - abar) / abar), increasing with the index."""
    ac = torch.as_tensor(ac, dtype=torch.float64)
    return ((1 - ac) / ac).sqrt()


def custom_alphas_cumprod() -> torch.Tensor:
    """A non-DDPM discrete model: log abar linear in the index (500 timesteps), sigmas ~0.03 .. ~55."""
    return torch.exp(-torch.linspace(1e-3, 8.0, 500, dtype=torch.float64))


def nearest_index(ms: torch.Tensor, sigma: float) -> int:
    return int(torch.argmin((ms.log() - math.log(sigma)).abs()))


def indices_of(ms: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """Index of every schedule sigma in the model's sigma set (asserting it is an exact member)."""
    hit = sig.reshape(-1, 1) == ms.reshape(1, -1)
    assert hit.any(1).all(), f"schedule sigmas not in the model's sigma set: {sig[~hit.any(1)].tolist()}"
    return hit.to(torch.int64).argmax(1)


# --------------------------------------------------------------------------------------------------
# Common properties of every kind
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 6, 18])
def test_dtype_length_shape_and_strictly_decreasing(kind, n):
    s = fewstep.get_schedule(kind, n, 0.002, 80.0, rho=7.0)
    assert s.dtype == torch.float64
    assert s.shape == (n,)
    assert (s[1:] < s[:-1]).all()
    assert (s > 0).all() and torch.isfinite(s).all()


@pytest.mark.parametrize("kind", CONTINUOUS)
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("smin,smax", RANGES)
def test_continuous_endpoints_to_rounding(kind, rho, smin, smax):
    # a + 1 * (b - a) loses digits when a >> b: up to ~1e-11 relative at sigma_min for rho = 1 (see below)
    for n in (2, 5, 33):
        s = fewstep.get_schedule(kind, n, smin, smax, rho)
        assert s[0].item() == pytest.approx(smax, rel=1e-10, abs=0)
        assert s[-1].item() == pytest.approx(smin, rel=1e-10, abs=0)


# Regression (fixed): the continuous schedules do not end exactly at sigma_max / sigma_min (e.g. polynomial, rho=1,
# 80 -> 0.002 gives s[-1] = 0.001999999999995339, 2.3e-12 relative; logsnr gives s[0] = 79.99999999999997).
# The endpoints are the user's numbers and should be returned bit-exactly (a schedule built from
# sigma_min=0.002 should contain 0.002, e.g. for lookups and for AMED predictors keyed on the schedule).
# Proposed fix in get_schedule, after computing s for polynomial / logsnr / time_uniform:
#     s[0], s[-1] = sigma_max, sigma_min
def test_continuous_endpoints_are_exact():
    bad = []
    for kind in CONTINUOUS:
        for rho in (1.0, 3.0, 7.0):
            for smin, smax in RANGES:
                for n in (2, 5, 33):
                    s = fewstep.get_schedule(kind, n, smin, smax, rho)
                    if s[0].item() != smax or s[-1].item() != smin:
                        bad.append(f"{kind} rho={rho} n={n}: ({s[0].item()!r}, {s[-1].item()!r}) != ({smax}, {smin})")
    assert not bad, f"{len(bad)} schedules miss their endpoints, e.g.\n" + "\n".join(bad[:6])


# --------------------------------------------------------------------------------------------------
# polynomial, logsnr, time_uniform
# --------------------------------------------------------------------------------------------------


def test_polynomial_matches_edm_formula():
    n, smin, smax, rho = 7, 0.002, 80.0, 7.0
    s = fewstep.get_schedule("polynomial", n, smin, smax, rho)
    expected = [
        (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)
    ]
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-13, atol=0)
    # sigma^(1/rho) is evenly spaced
    d = np.diff(s.numpy() ** (1 / rho))
    np.testing.assert_allclose(d, np.full_like(d, d.mean()), rtol=1e-10)


@pytest.mark.parametrize("smin,smax", RANGES)
def test_polynomial_rho1_is_linspace(smin, smax):
    s = fewstep.get_schedule("polynomial", 11, smin, smax, rho=1.0)
    # the last entry carries the cancellation of the endpoint bug above; everything else is linspace to 1e-12
    np.testing.assert_allclose(s[:-1].numpy(), np.linspace(smax, smin, 11)[:-1], rtol=1e-12, atol=0)
    assert s[-1].item() == pytest.approx(smin, rel=1e-10)


@pytest.mark.parametrize("smin,smax", RANGES)
@pytest.mark.parametrize("rho", [1.0, 7.0])
def test_logsnr_is_geometric(smin, smax, rho):
    n = 9
    s = fewstep.get_schedule("logsnr", n, smin, smax, rho=rho)  # rho does not apply to logsnr
    ratios = (s[1:] / s[:-1]).numpy()
    np.testing.assert_allclose(ratios, np.full(n - 1, (smin / smax) ** (1 / (n - 1))), rtol=1e-12)


def test_vp_sigma_closed_form():
    for t in (1e-4, 1e-3, 0.02, 0.3, 0.7, 1.0):
        expected = math.sqrt(math.exp(0.5 * BETA_D * t * t + BETA_MIN * t) - 1)
        assert vp_sigma(t).item() == pytest.approx(expected, rel=1e-10)
    # custom beta schedule
    t, bmin, bd = 0.4, 0.5, 5.0
    assert vp_sigma(t, bmin, bd).item() == pytest.approx(math.sqrt(math.exp(0.5 * bd * t * t + bmin * t) - 1), rel=1e-13)
    assert vp_sigma_inv(vp_sigma(t, bmin, bd), bmin, bd).item() == pytest.approx(t, rel=1e-13)


def test_vp_sigma_inv_inverts_vp_sigma():
    s = torch.logspace(-3, 3, 61, dtype=torch.float64)
    np.testing.assert_allclose(vp_sigma(vp_sigma_inv(s)).numpy(), s.numpy(), rtol=1e-12, atol=0)
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    np.testing.assert_allclose(vp_sigma_inv(vp_sigma(t)).numpy(), t.numpy(), rtol=1e-12, atol=0)
    assert vp_sigma_inv(torch.tensor(80.0)).dtype == torch.float64


# Regression (fixed): vp_sigma_inv computes sqrt(beta_min^2 + 2 beta_d log1p(s^2)) - beta_min, which cancels
# catastrophically for small sigma (s = 1e-5: vp_sigma(vp_sigma_inv(s)) is off by 1.4e-10 relative,
# 1e-6: ~1e-8). Proposed fix (same value, no cancellation):
#     L = torch.log1p(sigma**2)
#     return 2 * L / ((beta_min**2 + 2 * beta_d * L).sqrt() + beta_min)
def test_vp_sigma_inv_accurate_for_tiny_sigma():
    s = torch.logspace(-6, -3, 31, dtype=torch.float64)
    t = vp_sigma_inv(s)
    # independent series: (beta_d/2) t^2 + beta_min t = L with L = log1p(s^2) has the root
    # t = (L / beta_min) sum_n (-1)^n Catalan(n) x^n, x = (beta_d / 2) L / beta_min^2 (|x| <= 1e-3 here)
    L = torch.log1p(s**2)
    x = 0.5 * BETA_D * L / BETA_MIN**2
    catalan = [math.comb(2 * n, n) // (n + 1) for n in range(12)]
    t_ref = L / BETA_MIN * sum((-1) ** n * c * x**n for n, c in enumerate(catalan))
    np.testing.assert_allclose(t.numpy(), t_ref.numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("smin,smax", [(0.002, 80.0), (0.01, 5.0)])
def test_time_uniform_is_uniform_in_vp_time(rho, smin, smax):
    n = 8
    s = fewstep.get_schedule("time_uniform", n, smin, smax, rho)
    t = vp_sigma_inv(s).numpy()
    t_max, t_min = vp_sigma_inv(smax).item(), vp_sigma_inv(smin).item()
    assert t[0] == pytest.approx(t_max, rel=1e-12) and t[-1] == pytest.approx(t_min, rel=1e-12)
    d = np.diff(t ** (1 / rho))
    np.testing.assert_allclose(d, np.full(n - 1, (t_min ** (1 / rho) - t_max ** (1 / rho)) / (n - 1)), rtol=1e-9)


def test_time_uniform_custom_beta():
    s = fewstep.get_schedule("time_uniform", 5, 0.01, 20.0, rho=1.0, beta_min=0.5, beta_d=5.0)
    t = vp_sigma_inv(s, 0.5, 5.0).numpy()
    np.testing.assert_allclose(np.diff(t), np.full(4, (t[-1] - t[0]) / 4), rtol=1e-10)
    # differs from the default-beta schedule in the interior
    s_default = fewstep.get_schedule("time_uniform", 5, 0.01, 20.0, rho=1.0)
    assert not torch.allclose(s[1:-1], s_default[1:-1], rtol=1e-3)


# --------------------------------------------------------------------------------------------------
# discrete
# --------------------------------------------------------------------------------------------------


def test_ddpm_alphas_cumprod_matches_linear_betas():
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(ddpm_alphas_cumprod().numpy(), np.cumprod(1 - betas), rtol=1e-13)


@pytest.mark.parametrize("custom", [False, True], ids=["ddpm", "custom"])
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("n", [2, 5, 10, 16])
def test_discrete_uses_model_sigmas_and_rho_spacing(custom, rho, n):
    if custom:
        ac, smin, smax = custom_alphas_cumprod(), 0.05, 40.0
        s = fewstep.get_schedule("discrete", n, smin, smax, rho, alphas_cumprod=ac)
    else:
        ac, smin, smax = ddpm_alphas_cumprod(), 0.002, 80.0
        s = fewstep.get_schedule("discrete", n, smin, smax, rho)
    ms = model_sigmas(ac)
    assert s.dtype == torch.float64 and s.shape == (n,)
    assert (s[1:] < s[:-1]).all()
    idx = indices_of(ms, s)  # every sigma is one the model was trained on
    hi, lo = nearest_index(ms, smax), nearest_index(ms, smin)
    # exact endpoints: the model's nearest discrete sigmas to sigma_max and sigma_min
    assert int(idx[0]) == hi and int(idx[-1]) == lo
    assert s[0].item() == ms[hi].item() and s[-1].item() == ms[lo].item()
    # spacing: uniform in (index + 1)^(1/rho) (time (index + 1) / T, as DPM-Solver uses for discrete models),
    # up to rounding to the nearest integer; the reference AMED code omitted the 1/rho power on t_max.
    a, b = (hi + 1) ** (1 / rho), (lo + 1) ** (1 / rho)
    target = np.array([(a + k / (n - 1) * (b - a)) ** rho for k in range(n)])
    assert np.all(np.abs(idx.numpy() + 1 - target) <= 0.5 + 1e-9), (idx.tolist(), target.tolist())


def test_discrete_rho1_index_steps_even():
    s = fewstep.get_schedule("discrete", 11, 0.002, 80.0, rho=1.0)
    ms = model_sigmas(ddpm_alphas_cumprod())
    steps = -np.diff(indices_of(ms, s).numpy())
    assert steps.max() - steps.min() <= 1, steps


def test_discrete_rho7_concentrates_near_small_sigma():
    # With rho = 7 the index steps grow towards the high-noise end (opposite of uniform spacing).
    s = fewstep.get_schedule("discrete", 10, 0.002, 80.0, rho=7.0)
    steps = -np.diff(indices_of(model_sigmas(ddpm_alphas_cumprod()), s).numpy())
    assert steps[0] > 5 * steps[-1], steps


def test_discrete_default_and_explicit_ddpm_agree():
    a = fewstep.get_schedule("discrete", 8, 0.002, 80.0, 7.0)
    b = fewstep.get_schedule("discrete", 8, 0.002, 80.0, 7.0, alphas_cumprod=ddpm_alphas_cumprod())
    assert torch.equal(a, b)


def test_discrete_all_timesteps():
    ac = custom_alphas_cumprod()
    ms = model_sigmas(ac)
    lo, hi = nearest_index(ms, 0.05), nearest_index(ms, 40.0)
    s = fewstep.get_schedule("discrete", hi - lo + 1, 0.05, 40.0, rho=1.0, alphas_cumprod=ac)
    assert torch.equal(s, ms[lo : hi + 1].flip(0))


def test_discrete_too_many_steps():
    ac = custom_alphas_cumprod()
    ms = model_sigmas(ac)
    available = nearest_index(ms, 40.0) - nearest_index(ms, 0.05) + 1
    with pytest.raises(ValueError, match="exceeds"):
        fewstep.get_schedule("discrete", available + 1, 0.05, 40.0, rho=1.0, alphas_cumprod=ac)
    with pytest.raises(ValueError):
        fewstep.get_schedule("discrete", 1001, 0.002, 80.0)


def test_discrete_collision_at_high_rho_raises():
    # rho = 7 squeezes steps at the low end: with nearly all timesteps two steps round to the same index.
    ac = custom_alphas_cumprod()
    ms = model_sigmas(ac)
    available = nearest_index(ms, 40.0) - nearest_index(ms, 0.05) + 1
    with pytest.raises(ValueError, match="same discrete timestep"):
        fewstep.get_schedule("discrete", available - 1, 0.05, 40.0, rho=7.0, alphas_cumprod=ac)


@pytest.mark.parametrize(
    "ac",
    [torch.tensor([0.9, 1.0, 0.5]), torch.tensor([0.9, 0.0]), torch.ones(2, 3) * 0.5, torch.tensor([0.5])],
    ids=["one", "zero", "2d", "single"],
)
def test_discrete_bad_alphas_cumprod(ac):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        fewstep.get_schedule("discrete", 2, 0.5, 1.0, alphas_cumprod=ac)


# --------------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------------


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown schedule kind 'karras'"):
        fewstep.get_schedule("karras", 5)


@pytest.mark.parametrize("kind", KINDS)
def test_num_steps_errors(kind):
    for n in (1, 0, -3):
        with pytest.raises(ValueError, match="num_steps"):
            fewstep.get_schedule(kind, n)
    for n in (5.0, "5", None, True):
        with pytest.raises(TypeError, match="num_steps"):
            fewstep.get_schedule(kind, n)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigma_min": 80.0, "sigma_max": 80.0}, "sigma_min"),
        ({"sigma_min": 10.0, "sigma_max": 1.0}, "sigma_min"),
        ({"sigma_min": -0.1}, "sigma_min"),
        ({"sigma_min": 0.0}, "sigma_min"),
        ({"sigma_max": -1.0}, "sigma_max"),
        ({"sigma_min": float("nan")}, "sigma_min"),
        ({"sigma_max": float("nan")}, "sigma_max"),
        ({"sigma_max": float("inf")}, "sigma_max"),
        ({"rho": 0.0}, "rho"),
        ({"rho": -7.0}, "rho"),
        ({"rho": float("nan")}, "rho"),
    ],
)
def test_value_errors(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fewstep.get_schedule(kind, 5, **kwargs)


# --------------------------------------------------------------------------------------------------
# User schedules
# --------------------------------------------------------------------------------------------------


def test_user_tensor_and_list_accepted():
    t = torch.tensor([10.0, 1.0, 0.1], dtype=torch.float32)
    s = fewstep.get_schedule(t)
    assert s.dtype == torch.float64 and torch.equal(s, t.double())
    s = fewstep.get_schedule([10.0, 1.0, 0.1])
    assert s.dtype == torch.float64 and s.tolist() == [10.0, 1.0, 0.1]
    s = fewstep.get_schedule((3, 2))
    assert s.tolist() == [3.0, 2.0]
    assert torch.equal(fewstep.get_schedule(np.array([2.0, 1.0])), torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert fewstep.get_schedule([5.0, 1.0, 0.5], num_steps=3).numel() == 3
    with pytest.raises(ValueError, match="num_steps"):
        fewstep.get_schedule([5.0, 1.0, 0.5], num_steps=4)


@pytest.mark.parametrize(
    "sig,match",
    [
        ([10.0, 1.0, 1.0], "strictly decreasing"),
        ([1.0, 10.0], "strictly decreasing"),
        ([10.0, float("nan"), 0.1], "finite"),
        ([float("inf"), 1.0], "finite"),
        ([10.0, 1.0, 0.0], "positive"),
        ([10.0, -1.0], "positive"),
        ([[10.0, 1.0], [0.5, 0.1]], "1-D"),
        ([10.0], "at least 2"),
        ([], "at least 2"),
    ],
)
def test_user_schedule_validation(sig, match):
    with pytest.raises(ValueError, match=match):
        fewstep.get_schedule(torch.tensor(sig, dtype=torch.float64))
    with pytest.raises(ValueError, match=match):
        fewstep.get_schedule(sig)
    with pytest.raises(ValueError, match=match):
        fewstep.validate_sigmas(sig)


def test_user_schedule_bad_type():
    with pytest.raises(TypeError):
        fewstep.get_schedule(["a", "b"])


def test_validate_sigmas_names_the_entry():
    with pytest.raises(ValueError, match="entry 2"):
        fewstep.validate_sigmas([3.0, 2.0, 2.5])
    with pytest.raises(ValueError, match="entry 1"):
        fewstep.validate_sigmas([3.0, float("nan"), 1.0])
