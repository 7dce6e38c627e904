"""Denoisers: closed-form models against independent brute-force posterior means, and exact adapters."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import fewstep
from fewstep.denoisers import EmpiricalDenoiser, FlowModel, Gaussian, GaussianMixture, VPModel
from fewstep.schedules import ddpm_alphas_cumprod, vp_sigma, vp_sigma_inv

from conftest import make_gmm

SIGMAS = (1e-3, 0.1, 1.0, 80.0, 1e3)


def brute_force_posterior_mean(means, covs, weights, x, sigma):
    """E[x0 | x] for sum_k w_k N(mu_k, C_k) observed as x = x0 + sigma n, written independently:
    responsibilities from MultivariateNormal log-probs of N(mu_k, C_k + sigma^2 I), and per component
    E[x0 | x, k] = mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k) (Gaussian conditioning)."""
    K, D = means.shape
    eye = torch.eye(D, dtype=torch.float64)
    logp = torch.stack(
        [MultivariateNormal(means[k], covs[k] + sigma**2 * eye).log_prob(x) + math.log(weights[k]) for k in range(K)], -1
    )  # (B, K)
    r = torch.softmax(logp, -1)
    comp = torch.stack(
        [means[k] + torch.linalg.solve(covs[k] + sigma**2 * eye, (x - means[k]).T).T @ covs[k] for k in range(K)], 1
    )  # (B, K, D); C symmetric so (C (C + s2)^-1 y)^T = y^T (C + s2)^-T C
    return (r.unsqueeze(-1) * comp).sum(1)


def gmm_params(dim=5, K=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(K, dim, dtype=torch.float64, generator=g)
    A = torch.randn(K, dim, dim, dtype=torch.float64, generator=g) * 0.5
    covs = A @ A.transpose(-1, -2) + 0.05 * torch.eye(dim, dtype=torch.float64)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)[:K]
    return means, covs, w / w.sum()


def noisy_points(gmm, sigma, n=6, seed=3):
    """Noisy data x = x0 + sigma n with x0 drawn from the mixture."""
    g = torch.Generator().manual_seed(seed)
    return gmm.sample_data(n, g) + sigma * torch.randn(n, gmm.dim, dtype=torch.float64, generator=g)


# --------------------------------------------------------------------------------------------------
# GaussianMixture
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gmm_equals_brute_force(sigma):
    means, covs, w = gmm_params()
    gmm = GaussianMixture(means, covs, w)
    x = noisy_points(gmm, sigma)
    got = gmm(x, torch.tensor(sigma, dtype=torch.float64))
    ref = brute_force_posterior_mean(means, covs, w.tolist(), x, sigma)
    assert got.dtype == torch.float64 and got.shape == x.shape
    assert torch.isfinite(got).all()
    err = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    assert err < 1e-10, err


def test_gmm_brute_force_sees_mixing():
    # A point between two components at moderate sigma: responsibilities are mixed, so the test above
    # exercises the softmax and not only a single-component Tweedie step.
    means, covs, w = gmm_params()
    x = (0.5 * (means[0] + means[1]))[None]
    lp = torch.stack([MultivariateNormal(means[k], covs[k] + torch.eye(5, dtype=torch.float64)).log_prob(x) for k in range(3)], -1)
    r = torch.softmax(lp + w.log(), -1)
    assert (r.max() < 0.999).item()
    gmm = GaussianMixture(means, covs, w)
    ref = brute_force_posterior_mean(means, covs, w.tolist(), x, 1.0)
    assert torch.allclose(gmm(x, 1.0), ref, rtol=1e-10, atol=0)


def test_gmm_huge_sigma_gives_weighted_mean():
    means, covs, w = gmm_params()
    gmm = GaussianMixture(means, covs, w)
    sigma = 1e3
    x = noisy_points(gmm, sigma)
    got = gmm(x, sigma)
    assert torch.isfinite(got).all()
    mean = (w[:, None] * means).sum(0)
    # correction terms are O(|C| |x - mu| / sigma^2) ~ 1e-3 and O(1/sigma) in the responsibilities
    assert (got - mean).abs().max().item() < 2e-2


def test_gmm_tiny_sigma_returns_x_near_the_data():
    means, covs, w = gmm_params()
    gmm = GaussianMixture(means, covs, w)
    g = torch.Generator().manual_seed(5)
    x0 = gmm.sample_data(8, g)
    x = x0 + 1e-3 * torch.randn(8, gmm.dim, dtype=torch.float64, generator=g)
    got = gmm(x, 1e-3)
    assert torch.isfinite(got).all()
    # D(x) = x - sigma^2 C^{-1}(x - mu) with |C^{-1}| <= 20: moves x by at most ~1e-4
    assert (got - x).abs().max().item() < 1e-3
    assert (got - x).abs().max().item() > 0  # but it is a denoiser, not the identity


def test_gmm_batch_sigma_equals_per_item():
    gmm = make_gmm(dim=4, components=3, seed=7)
    g = torch.Generator().manual_seed(0)
    sig = torch.tensor([1e-3, 0.05, 0.7, 3.0, 80.0, 1e3], dtype=torch.float64)
    x = gmm.sample_data(6, g) + sig[:, None] * torch.randn(6, 4, dtype=torch.float64, generator=g)
    batched = gmm(x, sig)
    for i in range(6):
        single = gmm(x[i : i + 1], sig[i])
        assert torch.allclose(batched[i : i + 1], single, rtol=1e-13, atol=1e-14)
    # and a float sigma is the same as a 0-dim tensor
    assert torch.equal(gmm(x, 0.7), gmm(x, torch.tensor(0.7, dtype=torch.float64)))


def test_gmm_accepts_image_shaped_input():
    gmm = make_gmm(dim=12, components=2, seed=2)
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    out = gmm(x, 0.5)
    assert out.shape == x.shape
    assert torch.equal(out.reshape(3, -1), gmm(x.reshape(3, -1), 0.5))
    out32 = gmm(x.float(), 0.5)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gmm_low_rank_equals_full(sigma):
    g = torch.Generator().manual_seed(11)
    K, D, r = 3, 6, 2
    means = torch.randn(K, D, dtype=torch.float64, generator=g)
    W = torch.randn(K, D, r, dtype=torch.float64, generator=g)
    d = 0.05 + torch.rand(K, D, dtype=torch.float64, generator=g)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    full = W @ W.transpose(-1, -2) + torch.diag_embed(d)
    lr = GaussianMixture(means, (W, d), w)
    fu = GaussianMixture(means, full, w)
    assert lr.low_rank and not fu.low_rank
    x = noisy_points(fu, sigma, n=5)
    a, b = lr(x, sigma), fu(x, sigma)
    assert ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item() < 1e-10
    ll_a, ll_b = lr.component_log_likelihood(x, sigma), fu.component_log_likelihood(x, sigma)
    # log-likelihoods up to the same constant: equal differences
    assert torch.allclose(ll_a - ll_a[:, :1], ll_b - ll_b[:, :1], rtol=1e-10, atol=1e-9)
    ref = brute_force_posterior_mean(means, full, w.tolist(), x, sigma)
    assert ((a - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item() < 1e-10


def test_gmm_weights_normalised_and_default_uniform():
    means, covs, _ = gmm_params()
    a = GaussianMixture(means, covs, torch.tensor([2.0, 2.0, 2.0]))
    b = GaussianMixture(means, covs)
    assert torch.allclose(a.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    x = noisy_points(a, 1.0)
    assert torch.allclose(a(x, 1.0), b(x, 1.0), rtol=1e-14, atol=0)


def test_gmm_sample_data_moments():
    gmm = make_gmm(dim=3, components=2, seed=4)
    x = gmm.sample_data(40000, torch.Generator().manual_seed(0))
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    assert (x.mean(0) - mean).abs().max().item() < 0.05


# --------------------------------------------------------------------------------------------------
# Gaussian: the closed-form ODE solution
# --------------------------------------------------------------------------------------------------


def test_gaussian_ode_solution_matches_fine_solve():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, dtype=torch.float64, generator=g)
    cov = A @ A.T * 0.3 + 0.01 * torch.eye(4, dtype=torch.float64)
    gauss = Gaussian(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64), cov)
    noise = fewstep.noise_for_seeds(range(6), (4,), dtype=torch.float64)
    exact = gauss.ode_solution(noise * 80.0, 80.0, 0.002)
    xs, errs = [], []
    for n in (1001, 2001):
        xs.append(fewstep.sample(gauss, noise, fewstep.get_schedule("logsnr", n, 0.002, 80.0), "heun"))
        errs.append(((xs[-1] - exact).norm(dim=-1) / exact.norm(dim=-1)).max().item())
    assert errs[1] < 1e-5, errs
    # the remaining difference is Heun's own O(h^2) error (halving h divides it by 4) ...
    assert 3.5 < errs[0] / errs[1] < 4.5, errs
    # ... so the Richardson-extrapolated solve agrees with the closed form far more closely
    rich = (4 * xs[1] - xs[0]) / 3
    assert ((rich - exact).norm(dim=-1) / exact.norm(dim=-1)).max().item() < 1e-7
    # the exact flow differs from the identity and from the mean: the comparison is not trivial
    assert (exact - noise * 80.0).abs().max() > 1.0


def test_gaussian_ode_solution_is_a_flow():
    mu, lam = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    gauss = Gaussian(mu, lam)  # diagonal covariance given as a vector
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = gauss.ode_solution(gauss.ode_solution(x, 10.0, 1.0), 1.0, 0.01)
    b = gauss.ode_solution(x, 10.0, 0.01)
    assert torch.allclose(a, b, rtol=1e-13, atol=1e-13)
    # per coordinate: mu + sqrt((l + s_to^2) / (l + s_from^2)) (x - mu)
    expected = mu + ((lam + 0.01**2) / (lam + 100.0)).sqrt() * (x - mu)
    assert torch.allclose(b, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# EmpiricalDenoiser
# --------------------------------------------------------------------------------------------------


def test_empirical_single_point():
    y = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    den = EmpiricalDenoiser(y)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    for s in (1e-3, 1.0, 1e3):
        assert torch.allclose(den(x, s), y.expand(4, 3), rtol=0, atol=1e-15)


def test_empirical_tiny_sigma_returns_nearest_point():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(20, 2, 3, dtype=torch.float64, generator=g)
    den = EmpiricalDenoiser(data)
    x = torch.randn(10, 2, 3, dtype=torch.float64, generator=g)
    out = den(x, 1e-3)
    assert out.shape == x.shape
    nearest = ((x.reshape(10, 1, -1) - data.reshape(1, 20, -1)) ** 2).sum(-1).argmin(1)
    assert torch.allclose(out, data[nearest], rtol=0, atol=1e-12)


def test_empirical_huge_sigma_returns_mean():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(20, 3, dtype=torch.float64, generator=g)
    den = EmpiricalDenoiser(data)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g)
    assert torch.allclose(den(x, 1e6), data.mean(0).expand(5, 3), rtol=0, atol=1e-10)
    # and in between it is the softmax-weighted mean, eq. 57 of Karras et al.
    s = 0.8
    w = torch.softmax(-((x[:, None] - data[None]) ** 2).sum(-1) / (2 * s * s), -1)
    assert torch.allclose(den(x, s), w @ data, rtol=1e-12, atol=1e-13)


def test_empirical_errors():
    with pytest.raises(ValueError):
        EmpiricalDenoiser(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        EmpiricalDenoiser(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="finite"):
        EmpiricalDenoiser(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="features"):
        EmpiricalDenoiser(torch.zeros(3, 4))(torch.zeros(2, 5), 1.0)


# --------------------------------------------------------------------------------------------------
# Adapters: exact VP / flow models built from an analytic denoiser, written from the formulas
# --------------------------------------------------------------------------------------------------

ADAPTER_SIGMAS = (2e-3, 0.05, 0.7, 3.0, 80.0)


class ExactVP:
    """The exact VP model for an EDM denoiser D: x_vp = alpha x0 + sigma_vp n with alpha = 1/sqrt(1+s^2),
    sigma_vp = s alpha; outputs eps = n, v = alpha eps - sigma_vp x0, or x0. ``sigma_of_t`` maps the
    conditioning the model receives to EDM sigma; every received t is recorded."""

    def __init__(self, D, prediction, sigma_of_t):
        self.D, self.prediction, self.sigma_of_t, self.seen = D, prediction, sigma_of_t, []

    def __call__(self, x_vp, t):
        self.seen.append(t.clone())
        s = self.sigma_of_t(t).to(torch.float64).reshape(-1, *([1] * (x_vp.ndim - 1)))
        alpha = 1 / torch.sqrt(1 + s**2)
        sigma_vp = s * alpha
        x0 = self.D(x_vp / alpha, s.reshape(-1))
        eps = (x_vp - alpha * x0) / sigma_vp
        if self.prediction == "eps":
            return eps
        if self.prediction == "v":
            return alpha * eps - sigma_vp * x0
        return x0


class ExactFlow:
    """The exact rectified-flow model: x_t = (1 - t) x0 + t n, sigma = t / (1 - t); outputs velocity n - x0,
    x0 or eps = n."""

    def __init__(self, D, prediction, time_scale=1.0):
        self.D, self.prediction, self.time_scale, self.seen = D, prediction, time_scale, []

    def __call__(self, x_t, t):
        self.seen.append(t.clone())
        t = (t / self.time_scale).to(torch.float64).reshape(-1, *([1] * (x_t.ndim - 1)))
        s = t / (1 - t)
        x0 = self.D(x_t / (1 - t), s.reshape(-1))
        n = (x_t - (1 - t) * x0) / t
        return {"velocity": n - x0, "x0": x0, "eps": n}[self.prediction]


@pytest.fixture(scope="module")
def bed():
    gmm = make_gmm(dim=4, components=3, seed=0)
    x = fewstep.noise_for_seeds(range(5), (4,), dtype=torch.float64) * 2.0
    return gmm, x


def rel_err(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_vp_continuous_adapter_is_exact(bed, prediction, time_scale):
    gmm, x = bed
    model = ExactVP(gmm, prediction, lambda t: vp_sigma(t / time_scale))
    den = VPModel(model, prediction, time_scale=time_scale)
    for s in ADAPTER_SIGMAS:
        sig = torch.tensor(s, dtype=torch.float64)
        xs = x * (1 + s)  # an EDM state at roughly this noise level
        assert rel_err(den(xs, sig), gmm(xs, sig)) < 1e-10, (prediction, s)
        t = model.seen[-1]
        assert t.shape == (x.shape[0],)
        expected_t = vp_sigma_inv(s).item() * time_scale
        assert torch.allclose(t, torch.full_like(t, expected_t), rtol=1e-14, atol=0)


def test_vp_continuous_adapter_custom_beta(bed):
    gmm, x = bed
    model = ExactVP(gmm, "eps", lambda t: vp_sigma(t, 0.5, 5.0))
    den = VPModel(model, "eps", beta_min=0.5, beta_d=5.0)
    sig = torch.tensor([0.01, 0.3, 1.0, 5.0, 40.0], dtype=torch.float64)  # per-item sigma
    assert rel_err(den(x, sig), gmm(x, sig)) < 1e-10
    assert torch.allclose(model.seen[-1], vp_sigma_inv(sig, 0.5, 5.0), rtol=1e-14, atol=0)
    # the default beta schedule would condition on different times
    assert not torch.allclose(model.seen[-1], vp_sigma_inv(sig), rtol=1e-3)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vp_discrete_adapter_nearest(bed, prediction):
    gmm, x = bed
    ac = ddpm_alphas_cumprod()
    ms = ((1 - ac) / ac).sqrt()
    model = ExactVP(gmm, prediction, lambda t: ms[t.round().long()])
    den = VPModel(model, prediction, alphas_cumprod=ac)
    # on the model's own timesteps the wrapped denoiser is exact
    for k in (0, 1, 17, 400, 999):
        assert rel_err(den(x, ms[k]), gmm(x, ms[k])) < 1e-10, k
        assert torch.equal(model.seen[-1], torch.full((x.shape[0],), float(k), dtype=torch.float64))
    # off the grid the model gets the index whose sigma is nearest in log sigma (brute force here)
    g = torch.Generator().manual_seed(0)
    sig = torch.exp(torch.empty(200, dtype=torch.float64).uniform_(math.log(5e-3), math.log(300.0), generator=g))
    for s in sig:
        den(x[:1], s)
        expected = min(range(1000), key=lambda i: abs(math.log(ms[i].item()) - math.log(s.item())))
        assert model.seen[-1].item() == expected, (s.item(), model.seen[-1].item(), expected)
        assert model.seen[-1].dtype == torch.float64


def test_vp_discrete_adapter_interp():
    ac = ddpm_alphas_cumprod()
    ls = ((1 - ac) / ac).sqrt().log()
    den = VPModel(lambda x, t: x, "x0", alphas_cumprod=ac, timestep="interp")
    # on grid: the integer index; between: linear in log sigma; beyond the ends: clamped
    for k in (0, 5, 500, 998, 999):
        assert den.sigma_to_t(ls[k].exp().reshape(1)).item() == pytest.approx(k, abs=1e-9)
    mid = (0.25 * ls[300] + 0.75 * ls[301]).exp()
    assert den.sigma_to_t(mid.reshape(1)).item() == pytest.approx(300.75, abs=1e-9)
    assert den.sigma_to_t(torch.tensor([1e-6, 1e6], dtype=torch.float64)).tolist() == [0.0, 999.0]


@pytest.mark.parametrize("prediction", ["velocity", "x0", "eps"])
@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_flow_adapter_is_exact(bed, prediction, time_scale):
    gmm, x = bed
    model = ExactFlow(gmm, prediction, time_scale)
    den = FlowModel(model, prediction, time_scale=time_scale)
    for s in ADAPTER_SIGMAS:
        sig = torch.tensor(s, dtype=torch.float64)
        xs = x * (1 + s)
        assert rel_err(den(xs, sig), gmm(xs, sig)) < 1e-10, (prediction, s)
        assert torch.allclose(model.seen[-1], torch.full((5,), s / (1 + s) * time_scale, dtype=torch.float64), rtol=1e-14)
    sig = torch.tensor([0.01, 0.3, 1.0, 5.0, 40.0], dtype=torch.float64)
    assert rel_err(den(x, sig), gmm(x, sig)) < 1e-10


def test_adapters_sample_like_the_original(bed):
    gmm, _ = bed
    noise = fewstep.noise_for_seeds(range(4), (4,), dtype=torch.float64)
    sig = fewstep.get_schedule("polynomial", 8, 0.002, 80.0)
    ref = fewstep.sample(gmm, noise, sig, "heun")
    vp = fewstep.sample(VPModel(ExactVP(gmm, "v", vp_sigma), "v"), noise, sig, "heun")
    fl = fewstep.sample(FlowModel(ExactFlow(gmm, "velocity")), noise, sig, "heun")
    assert rel_err(vp, ref) < 1e-9 and rel_err(fl, ref) < 1e-9


# --------------------------------------------------------------------------------------------------
# Constructor and call errors
# --------------------------------------------------------------------------------------------------


def test_gmm_constructor_errors():
    means, covs, w = gmm_params(dim=3)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(means[0], covs, w)  # 1-D means
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture(means, covs[:2], w)  # wrong K
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture(means, covs[:, :2, :2], w)  # wrong D
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, covs, w[:2])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, covs, torch.tensor([0.5, -0.1, 0.6]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, covs, torch.zeros(3))
    bad = covs.clone()
    bad[1] = -torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixture(means, bad, w)
    with pytest.raises(ValueError, match="finite"):
        GaussianMixture(means * float("nan"), covs, w)
    with pytest.raises(TypeError):
        GaussianMixture("abc", covs, w)
    # low-rank form
    W, d = torch.randn(3, 3, 2, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64)
    GaussianMixture(means, (W, d), w)  # valid
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(means, (W, d - 1.0), w)
    with pytest.raises(ValueError):
        GaussianMixture(means, (W[:, :2], d), w)
    with pytest.raises(ValueError):
        GaussianMixture(means, (W, d, d), w)
    # PSD but singular covariances are allowed (data on a subspace)
    sing = torch.zeros(3, 3, 3, dtype=torch.float64)
    sing[:, 0, 0] = 1.0
    out = GaussianMixture(means, sing, w)(torch.randn(2, 3, dtype=torch.float64), 0.5)
    assert torch.isfinite(out).all()


def test_gmm_call_errors():
    gmm = make_gmm(dim=4)
    with pytest.raises(ValueError, match="features"):
        gmm(torch.zeros(2, 5, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="features"):
        gmm(torch.zeros(4, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gmm(torch.zeros(2, 4, dtype=torch.float64), torch.ones(3, dtype=torch.float64))


def test_adapter_constructor_errors():
    with pytest.raises(ValueError, match="prediction"):
        VPModel(lambda x, t: x, "epsilon")
    with pytest.raises(ValueError, match="prediction"):
        FlowModel(lambda x, t: x, "v")
    with pytest.raises(ValueError, match="timestep"):
        VPModel(lambda x, t: x, "eps", alphas_cumprod=ddpm_alphas_cumprod(), timestep="floor")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        VPModel(lambda x, t: x, "eps", alphas_cumprod=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        VPModel(lambda x, t: x, "eps", alphas_cumprod=torch.full((2, 2), 0.5))
