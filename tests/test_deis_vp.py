"""DEIS tAB's VP time: the VP options of the solver, the reference code's fitted VP (vp_fit), and an independent
check of a tAB coefficient by scipy quadrature."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

import fewstep
from fewstep.schedules import vp_sigma, vp_sigma_inv
from fewstep.solvers import DEIS, History, lagrange_integrals, vp_fit


def test_vp_fit_passes_through_sigma_min_at_eps_and_sigma_max_at_1():
    for smin, smax, eps in [(0.002, 80.0, 1e-3), (0.03, 14.6, 1e-3), (0.002, 80.0, 1e-5)]:
        b0, bd = vp_fit(smin, smax, eps)
        assert float(vp_sigma(eps, b0, bd)) == pytest.approx(smin, rel=1e-9)
        assert float(vp_sigma(1.0, b0, bd)) == pytest.approx(smax, rel=1e-12)
    # The reference code's edm2t (zju-pi/diff-sampler), written out: its numbers for sigma in [0.002, 80].
    bd = 2 * (math.log(0.002**2 + 1) / 1e-3 - math.log(80.0**2 + 1)) / (1e-3 - 1)
    assert vp_fit(0.002, 80.0) == pytest.approx((math.log(80.0**2 + 1) - 0.5 * bd, bd), rel=1e-12)
    assert vp_fit() == vp_fit(0.002, 80.0, 1e-3)


@pytest.mark.parametrize("bad", [(0.0, 80.0, 1e-3), (80.0, 0.002, 1e-3), (0.002, 80.0, 1.0), (0.002, math.inf, 1e-3)])
def test_vp_fit_refuses_bad_input(bad):
    with pytest.raises(ValueError, match="vp_fit"):
        vp_fit(*bad)


def _tab_weights_by_quad(beta_min: float, beta_d: float, nodes: tuple[float, ...], s: float, t: float) -> list[float]:
    """w_j = int_{tau(s)}^{tau(t)} L_j(tau) dsigma/dtau dtau: the Lagrange basis on the nodes' VP times,
    integrated in VP time with the VP's own sigma(tau) (written here, independently of fewstep)."""

    def tau(sig: float) -> float:  # root of beta_d tau^2 / 2 + beta_min tau = log(1 + sig^2)
        return (math.sqrt(beta_min**2 + 2 * beta_d * math.log(1 + sig**2)) - beta_min) / beta_d

    def dsigma(u: float) -> float:
        e = math.exp(0.5 * beta_d * u**2 + beta_min * u)
        return (beta_d * u + beta_min) * e / (2 * math.sqrt(e - 1))

    taus = [tau(n) for n in nodes]
    out = []
    for j in range(len(nodes)):
        def basis(u: float, j: int = j) -> float:
            return math.prod((u - taus[m]) / (taus[j] - taus[m]) for m in range(len(nodes)) if m != j)

        val, err = integrate.quad(lambda u: basis(u) * dsigma(u), tau(s), tau(t), epsabs=0, epsrel=1e-13, limit=200)
        assert err < 1e-11 * abs(val)
        out.append(val)
    return out


@pytest.mark.parametrize("vp", ["fitted", "custom"])
@pytest.mark.parametrize("interval", [(1.2, 0.6, 2.5), (40.0, 12.0, 80.0), (0.05, 0.02, 0.11)])
def test_tab_coefficients_with_a_non_default_vp_match_quadrature(vp, interval):
    b0, bd = vp_fit(0.002, 80.0) if vp == "fitted" else (0.5, 8.0)
    s, t, prev = interval  # a two-point step: extrapolate from (prev, s) over s -> t
    solver = fewstep.get_solver("deis", max_order=2, vp_beta_min=b0, vp_beta_d=bd)
    hist = History(tuple(torch.tensor(v, dtype=torch.float64) for v in (s, prev)), (None, None))
    got = [float(w) for w in solver.weights(hist, 2, torch.tensor(s, dtype=torch.float64),
                                             torch.tensor(t, dtype=torch.float64))]
    want = _tab_weights_by_quad(b0, bd, (s, prev), s, t)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-13)
    assert sum(got) == pytest.approx(t - s, rel=1e-12)  # consistency: the basis sums to 1
    # The VP matters: the standard VP's weights differ.
    std = [float(w) for w in fewstep.get_solver("deis", max_order=2).weights(
        hist, 2, torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64))]
    assert abs(std[1] - got[1]) > 1e-6 * abs(got[1])


def test_defaults_reproduce_the_standard_vp_bitwise():
    sig = fewstep.get_schedule("polynomial", 7)
    hist = History(tuple(sig[:3].flip(0)), (None,) * 3)  # nodes sigma_2, sigma_1, sigma_0 (newest first)
    old = lagrange_integrals(hist.sigmas, sig[2], sig[3], vp_sigma_inv)  # the formula before the options existed
    for solver in (DEIS(max_order=3), DEIS(max_order=3, vp_beta_min=0.1, vp_beta_d=19.9)):
        new = solver.weights(hist, 3, sig[2], sig[3])
        assert all(torch.equal(a, b) for a, b in zip(old, new))
    assert (DEIS().vp_beta_min, DEIS().vp_beta_d) == (0.1, 19.9)
    # Anchor: the order-3 weights of this step as computed before the change (platform rounding aside).
    assert [float(w) for w in old] == pytest.approx(
        [-15.589223901921084, 14.285291435045789, -5.904049912237682], rel=1e-13)


def test_sampling_with_explicit_default_vp_is_bitwise_default(gmm4, noise16):
    sig = fewstep.get_schedule("polynomial", 8)
    a = fewstep.sample(gmm4, noise16, sig, "deis", max_order=3)
    b = fewstep.sample(gmm4, noise16, sig, "deis", max_order=3, vp_beta_min=0.1, vp_beta_d=19.9)
    assert torch.equal(a, b)
    b0, bd = vp_fit()
    c = fewstep.sample(gmm4, noise16, sig, "deis", max_order=3, vp_beta_min=b0, vp_beta_d=bd)
    assert not torch.equal(a, c) and (a - c).norm() < 0.05 * a.norm()


@pytest.mark.parametrize("opts,match", [
    ({"deis_mode": "rhoab", "vp_beta_d": 10.0}, "deis_mode='rhoab' does not use them"),
    ({"deis_mode": "logrho", "vp_beta_min": 0.2}, "deis_mode='logrho' does not use them"),
    ({"vp_beta_d": -1.0}, "vp_beta_d >= 0"),
    ({"vp_beta_d": 0.0, "vp_beta_min": 0.0}, "vp_beta_min > 0"),
    ({"vp_beta_d": math.nan}, "vp_beta_d must be a finite number"),
    ({"vp_beta_min": "0.1"}, "vp_beta_min must be a finite number"),
])
def test_vp_options_are_checked(opts, match):
    with pytest.raises(ValueError, match=match):
        fewstep.get_solver("deis", **opts)
