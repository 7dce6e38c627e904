"""Coefficient primitives tested like a Butcher tableau: consistency and order (exactness) conditions.

Everything is checked against an independent computation: scipy quadrature of the defining integral, exact
polynomial calculus (numpy.polynomial), or the closed-form solution of a linear ODE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import Polynomial
from scipy.integrate import quad

import fewstep
from fewstep.schedules import vp_sigma_inv
from fewstep.solvers.base import History, lagrange_integrals, phi, taylor_terms
from fewstep.solvers.multistep import ADAMS_BASHFORTH, _exp_update

T64 = dict(dtype=torch.float64)


def T(v):
    return torch.tensor(v, **T64)


def quad_hi(f, a, b, points=None):
    """High-accuracy scalar quadrature: relative 1e-13, or absolute 1e-14 of |b - a| max|f| where the
    integral nearly cancels."""
    size = abs(b - a) * max(abs(f(a)), abs(f(b)), abs(f(0.5 * (a + b))))
    val, err = quad(f, a, b, epsabs=1e-14 * size, epsrel=1e-13, limit=200, points=points)
    return val


# Independent scalar versions of the variables u(sigma) that the multistep solvers extrapolate in.
def _u_vp_time(s: float, beta_min=0.1, beta_d=19.9) -> float:
    L = math.log1p(s * s)  # VP time t with sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1 (stable root)
    return 2 * L / (math.sqrt(beta_min**2 + 2 * beta_d * L) + beta_min)


U_SCALAR = {"identity": lambda s: s, "log": math.log, "vp_time": _u_vp_time}
U_TORCH = {"identity": lambda s: s, "log": torch.log, "vp_time": vp_sigma_inv}


# --------------------------------------------------------------------------------------------------
# phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1} / (k-1)! du
# --------------------------------------------------------------------------------------------------

PHI_Z = [0.0, 1e-12, -1e-12, 1e-6, -1e-6, 0.1, -0.1, 0.3, -0.3, 0.4999, -0.4999, 0.5, -0.5, 0.5001, -0.5001,
         0.7, -0.7, 1.0, -1.0, 2.0, -2.0, 5.0, -5.0, 12.0, -12.0, 30.0, -30.0]


def phi_quad(k: int, z: float) -> float:
    return quad_hi(lambda u: math.exp((1 - u) * z) * u ** (k - 1) / math.factorial(k - 1), 0.0, 1.0)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_matches_its_integral(k):
    z = T(PHI_Z)
    got = phi(k, z)
    assert got.dtype == torch.float64 and got.shape == z.shape
    ref = np.array([phi_quad(k, v) for v in PHI_Z])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11, atol=0)
    # scalar (0-dim) input works the same
    assert phi(k, T(PHI_Z[7])).item() == pytest.approx(ref[7], rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_known_values(k):
    # phi_k(0) = 1/k!; phi_1(z) = (e^z - 1)/z; phi_2(z) = (e^z - 1 - z)/z^2
    assert phi(k, T(0.0)).item() == pytest.approx(1 / math.factorial(k), rel=1e-15)
    z = 3.0
    closed = {1: math.expm1(z) / z, 2: (math.expm1(z) - z) / z**2, 3: (math.expm1(z) - z - z * z / 2) / z**3,
              4: (math.expm1(z) - z - z * z / 2 - z**3 / 6) / z**4}
    assert phi(k, T(z)).item() == pytest.approx(closed[k], rel=1e-13)


def test_phi_rejects_k0():
    with pytest.raises(ValueError):
        phi(0, T(1.0))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("z0", [0.0, 0.3, -0.3, 2.0, -2.0, 0.5])
def test_phi_gradient(k, z0):
    # d/dz phi_k(z) = int_0^1 (1-u) e^{(1-u) z} u^{k-1}/(k-1)! du, finite on both branches
    z = T(z0).requires_grad_(True)
    phi(k, z).backward()
    ref = quad_hi(lambda u: (1 - u) * math.exp((1 - u) * z0) * u ** (k - 1) / math.factorial(k - 1), 0.0, 1.0)
    assert math.isfinite(z.grad.item())
    assert z.grad.item() == pytest.approx(ref, rel=1e-10)


def test_phi_gradient_batched_mixed_branches():
    z = T([0.3, 2.0, -0.1, -4.0]).requires_grad_(True)
    phi(3, z).sum().backward()
    assert torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------------------------------
# taylor_terms: scaled derivatives of the interpolating polynomial, exact for polynomial data
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_taylor_terms_exact_for_polynomials(n):
    rng = np.random.default_rng(n)
    lambdas = [0.7, 0.1, -1.2][:n]  # newest first, unequal spacing
    h = 0.45
    polys = [Polynomial(rng.normal(size=n)) for _ in range(4)]  # degree n-1, one per entry
    values = tuple(T([[p(l) for p in polys[:2]], [p(l) for p in polys[2:]]]) for l in lambdas)  # (2, 2)
    terms = taylor_terms(tuple(T(l) for l in lambdas), values, T(h))
    assert len(terms) == n
    for k, term in enumerate(terms):
        expected = [[h**k * p.deriv(k)(lambdas[0]) for p in polys[:2]], [h**k * p.deriv(k)(lambdas[0]) for p in polys[2:]]]
        np.testing.assert_allclose(term.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_taylor_terms_not_exact_beyond_degree():
    # cubic data with 3 points: the second derivative is off (the test above could fail)
    lam = [0.7, 0.1, -1.2]
    p = Polynomial([0.0, 0.0, 0.0, 1.0])
    terms = taylor_terms(tuple(T(l) for l in lam), tuple(T(p(l)) for l in lam), T(1.0))
    assert abs(terms[2].item() - p.deriv(2)(lam[0])) > 0.1


def test_taylor_terms_too_many_points():
    with pytest.raises(ValueError):
        taylor_terms(tuple(T(float(i)) for i in range(4)), tuple(T(1.0) for _ in range(4)), T(1.0))


# --------------------------------------------------------------------------------------------------
# lagrange_integrals: w_j = int_s^t L_j(u(sigma)) dsigma
# --------------------------------------------------------------------------------------------------

# (nodes newest first = the current sigma and previous, larger ones; target sigma)
LAGRANGE_CASES = [
    ((80.0,), 40.0),
    ((1.2, 2.5), 0.6),
    ((0.9, 3.1, 7.0), 0.25),
    ((0.06, 0.2, 0.7, 2.0), 0.002),  # the wide last step of a few-step EDM schedule
    ((29.0, 80.0), 10.0),
    ((14.0, 25.0, 45.0, 80.0), 7.0),
]


def lagrange_basis(un, j):
    """L_j as a numpy Polynomial in u for nodes un."""
    p = Polynomial([1.0])
    for m, um in enumerate(un):
        if m != j:
            p = p * Polynomial([-um, 1.0]) / (un[j] - um)
    return p


@pytest.mark.parametrize("uname", ["identity", "log", "vp_time"])
@pytest.mark.parametrize("nodes,target", LAGRANGE_CASES)
def test_lagrange_integrals_match_quadrature(uname, nodes, target):
    u = U_SCALAR[uname]
    w = lagrange_integrals(tuple(T(n) for n in nodes), T(nodes[0]), T(target), U_TORCH[uname])
    assert len(w) == len(nodes)
    un = [u(n) for n in nodes]
    ref = [quad_hi(lambda s, j=j: lagrange_basis(un, j)(u(s)), nodes[0], target) for j in range(len(nodes))]
    scale = sum(abs(r) for r in ref)
    for got, r in zip(w, ref):
        assert abs(got.item() - r) <= 1e-10 * scale, (got.item(), r)
    # consistency: the basis sums to 1, so the weights sum to the step length
    assert sum(x.item() for x in w) == pytest.approx(target - nodes[0], rel=1e-12)


@pytest.mark.parametrize("uname", ["identity", "log", "vp_time"])
@pytest.mark.parametrize("nodes,target", LAGRANGE_CASES)
def test_lagrange_integrals_exact_for_polynomials_in_u(uname, nodes, target):
    """sum_j w_j P(u(nodes_j)) = int P(u(sigma)) dsigma for every P of degree < number of nodes."""
    u = U_SCALAR[uname]
    w = [x.item() for x in lagrange_integrals(tuple(T(n) for n in nodes), T(nodes[0]), T(target), U_TORCH[uname])]
    c, scale = u(nodes[0]), max(abs(u(n) - u(nodes[0])) for n in nodes) or 1.0
    for deg in range(len(nodes)):
        P = Polynomial.basis(deg) if deg == 0 else Polynomial([-c / scale, 1 / scale]) ** deg  # ((u - c)/scale)^deg
        approx = sum(wj * P(u(n)) for wj, n in zip(w, nodes))
        exact = quad_hi(lambda s: P(u(s)), nodes[0], target)
        assert approx == pytest.approx(exact, rel=1e-10, abs=1e-12 * abs(target - nodes[0])), (deg, approx, exact)
    if len(nodes) >= 2 and uname == "identity":
        # and not beyond: degree = number of nodes is not integrated exactly
        P = Polynomial([-c / scale, 1 / scale]) ** len(nodes)
        approx = sum(wj * P(u(n)) for wj, n in zip(w, nodes))
        assert abs(approx - quad_hi(lambda s: P(u(s)), nodes[0], target)) > 1e-6 * abs(target - nodes[0])


@pytest.mark.parametrize("nodes,target", LAGRANGE_CASES)
def test_lagrange_integrals_identity_equals_exact_polynomial_integral(nodes, target):
    # for u = sigma the weights are exact integrals of polynomials: no quadrature needed for the reference
    w = lagrange_integrals(tuple(T(n) for n in nodes), T(nodes[0]), T(target), lambda s: s)
    for j, got in enumerate(w):
        antider = lagrange_basis(list(nodes), j).integ()
        ref = antider(target) - antider(nodes[0])
        assert got.item() == pytest.approx(ref, rel=1e-11, abs=1e-13 * abs(target - nodes[0]))


def test_lagrange_integrals_are_differentiable():
    s = T(2.0).requires_grad_(True)
    w = lagrange_integrals((s, T(3.5)), s, T(1.0), lambda x: x)
    w[0].backward()
    assert torch.isfinite(s.grad)
    # d/ds of int_s^1 (sigma - 3.5)/(s - 3.5) dsigma, by finite differences of the closed form
    f = lambda a: ((1 - 3.5) ** 2 - (a - 3.5) ** 2) / (2 * (a - 3.5))
    assert s.grad.item() == pytest.approx((f(2.0 + 1e-6) - f(2.0 - 1e-6)) / 2e-6, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Fixed Adams-Bashforth weights (iPNDM) and variable-step weights (iPNDM-v = DEIS rhoAB)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_ab_fixed_consistency(k):
    assert len(ADAMS_BASHFORTH[k]) == k
    assert sum(ADAMS_BASHFORTH[k]) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_ab_fixed_exact_on_uniform_grid(k):
    s, delta = 2.0, 0.3
    nodes = [s + j * delta for j in range(k)]  # newest first: previous sigmas are larger
    t = s - delta
    for deg in range(k):
        approx = (t - s) * sum(c * ((n - s) / delta) ** deg for c, n in zip(ADAMS_BASHFORTH[k], nodes))
        exact = delta * (-1.0) ** (deg + 1) / (deg + 1)  # int_s^{s - delta} ((x - s) / delta)^deg dx
        assert approx == pytest.approx(exact, rel=1e-13, abs=1e-15), (k, deg)
    # they are the variable-step weights evaluated on a uniform grid
    w = lagrange_integrals(tuple(T(n) for n in nodes), T(s), T(t), lambda x: x)
    np.testing.assert_allclose([x.item() for x in w], [(t - s) * c for c in ADAMS_BASHFORTH[k]], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_ab_fixed_not_exact_on_edm_grid(k):
    """On a non-uniform (EDM, rho=7) grid the fixed weights already miss linear data: iPNDM's global order
    drops to 2 there, while the variable-step weights stay exact."""
    sig = fewstep.get_schedule("polynomial", 8, 0.002, 80.0, 7.0).tolist()
    i = 5
    nodes = [sig[i - j] for j in range(k)]  # sigma_i, sigma_{i-1}, ... (newest first)
    s, t = sig[i], sig[i + 1]
    fixed = (t - s) * sum(c * n for c, n in zip(ADAMS_BASHFORTH[k], nodes))
    exact = (t * t - s * s) / 2  # int_s^t sigma dsigma
    assert abs(fixed - exact) > 1e-2 * abs(exact)
    w = lagrange_integrals(tuple(T(n) for n in nodes), T(s), T(t), lambda x: x)
    assert sum(wj.item() * n for wj, n in zip(w, nodes)) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_v_weights_equal_deis_rhoab(order):
    sig = tuple(T(v) for v in (0.4, 1.1, 2.9, 8.0))
    hist = History(sigmas=sig[:order], values=tuple(torch.zeros(1, **T64) for _ in range(order)))
    s, t = sig[0], T(0.1)
    a = fewstep.solvers.IPNDMV(max_order=4).weights(hist, order, s, t)
    b = fewstep.solvers.DEIS(max_order=4, deis_mode="rhoab").weights(hist, order, s, t)
    assert len(a) == len(b) == order
    for x, y in zip(a, b):
        assert x.item() == pytest.approx(y.item(), rel=1e-14, abs=1e-16)
    # and they differ from the VP-time (tAB) weights, so the comparison means something
    c = fewstep.solvers.DEIS(max_order=4, deis_mode="tab").weights(hist, order, s, t)
    if order >= 2:
        assert max(abs(x.item() - z.item()) for x, z in zip(a, c)) > 1e-4
    # iPNDM (fixed weights) uses the same interface
    f = fewstep.solvers.IPNDM(max_order=4).weights(hist, order, s, t)
    assert [x.item() for x in f] == pytest.approx([(t - s).item() * c for c in ADAMS_BASHFORTH[order]], rel=1e-15)


# --------------------------------------------------------------------------------------------------
# The exponential update: exact for polynomial model outputs in lambda = -log sigma
# --------------------------------------------------------------------------------------------------


def poly_in_lambda(coeffs: np.ndarray):
    """Vector polynomial f(lambda) = sum_k coeffs[k] lambda^k, coeffs of shape (deg + 1, D)."""
    return [Polynomial(coeffs[:, d]) for d in range(coeffs.shape[1])]


def exact_data_step(x_s, s, t, polys):
    """x_t = (s_t/s_s) x_s + s_t int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda, by quadrature."""
    ls, lt = -math.log(s), -math.log(t)
    integ = [quad_hi(lambda l, p=p: math.exp(l) * p(l), ls, lt) for p in polys]
    return (t / s) * x_s + t * np.array(integ)


def exact_noise_step(x_s, s, t, polys):
    """dx/dsigma = eps(lambda(sigma)): x_t = x_s - int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda."""
    ls, lt = -math.log(s), -math.log(t)
    integ = [quad_hi(lambda l, p=p: math.exp(-l) * p(l), ls, lt) for p in polys]
    return x_s - np.array(integ)


STEP_CASES = [(80.0, 30.0, (120.0, 200.0)), (2.0, 0.7, (3.1, 5.0)), (0.05, 0.002, (0.12, 0.4)), (1.0, 0.9, (1.1, 1.3))]


@pytest.mark.parametrize("predict_x0", [True, False], ids=["data", "noise"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("s,t,prev", STEP_CASES)
def test_exp_update_with_taylor_terms_exact(predict_x0, order, s, t, prev):
    rng = np.random.default_rng(order)
    coeffs = rng.normal(size=(order, 3)) / np.array([[1.0], [3.0], [9.0]])[:order]  # degree order-1
    polys = poly_in_lambda(coeffs)
    sig_hist = (s, *prev)[:order]
    lam = tuple(T(-math.log(v)) for v in sig_hist)
    vals = tuple(T([[p(-math.log(v)) for p in polys]]) for v in sig_hist)
    x_s = rng.normal(size=3) * (1 + s)
    h = T(math.log(s / t))
    terms = taylor_terms(lam, vals, h)
    got = _exp_update(T(x_s[None]), T(s), T(t), terms, predict_x0)[0].numpy()
    ref = (exact_data_step if predict_x0 else exact_noise_step)(x_s, s, t, polys)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * (1 + np.abs(x_s).max()))


@pytest.mark.parametrize("predict_x0", [True, False], ids=["data", "noise"])
def test_exp_update_exact_with_four_exact_terms(predict_x0):
    # cubic data with hand-computed Taylor terms h^k f^(k)(lambda_s): exercises phi_4
    s, t = 3.0, 0.4
    p = Polynomial([0.3, -0.2, 0.15, 0.05])
    ls, h = -math.log(s), math.log(s / t)
    terms = [T([[h**k * p.deriv(k)(ls)]]) for k in range(4)]
    got = _exp_update(T([[1.7]]), T(s), T(t), terms, predict_x0).item()
    ref = (exact_data_step if predict_x0 else exact_noise_step)(np.array([1.7]), s, t, [p])[0]
    assert got == pytest.approx(ref, rel=1e-10)
    # dropping the cubic term breaks exactness
    short = _exp_update(T([[1.7]]), T(s), T(t), terms[:3], predict_x0).item()
    assert abs(short - ref) > 1e-6


# --------------------------------------------------------------------------------------------------
# End to end: the multistep solvers integrate polynomial model outputs exactly once warmed up
# --------------------------------------------------------------------------------------------------

SCHED = fewstep.get_schedule("polynomial", 9, 0.002, 80.0, 7.0)


class DataPoly:
    """Denoiser whose output is x-independent: x0 = P(log sigma), P a vector polynomial."""

    def __init__(self, polys):
        self.polys = polys

    def __call__(self, x, sigma):
        L = sigma.log().reshape(-1, 1)
        return torch.cat([sum(float(c) * L**k for k, c in enumerate(p.coef)) for p in self.polys], 1).expand_as(x).clone()


class NoisePoly:
    """Denoiser with x-independent direction: (x - D(x, sigma)) / sigma = P(u(sigma))."""

    def __init__(self, polys, u):
        self.polys, self.u = polys, u

    def __call__(self, x, sigma):
        U = self.u(sigma).reshape(-1, 1)
        eps = torch.cat([sum(float(c) * U**k for k, c in enumerate(p.coef)) for p in self.polys], 1)
        return x - sigma.reshape(-1, 1) * eps


def trajectory(den, solver, sig=SCHED, **opts):
    noise = fewstep.noise_for_seeds([0], (3,), dtype=torch.float64)
    res = fewstep.solve(den, noise, sig, solver, trajectory=True, **opts)
    return res.trajectory[:, 0].numpy()


def step_errors(traj, sig, exact_step):
    """Relative error of every step x_i -> x_{i+1} against the exact step from the computed x_i."""
    out = []
    for i in range(len(sig) - 1):
        ref = exact_step(traj[i], float(sig[i]), float(sig[i + 1]))
        out.append(np.abs(traj[i + 1] - ref).max() / max(1.0, np.abs(ref).max()))
    return np.array(out)


def data_polys(deg, seed=0):
    rng = np.random.default_rng(seed)
    return poly_in_lambda(rng.normal(size=(deg + 1, 3)) / 3.0 ** np.arange(deg + 1)[:, None])


def in_log_sigma_to_lambda(polys):
    """P(log sigma) as a polynomial in lambda = -log sigma."""
    return [Polynomial([c * (-1) ** k for k, c in enumerate(p.coef)]) for p in polys]


@pytest.mark.parametrize(
    "solver,opts,deg",
    [
        ("dpmpp", {"max_order": 3, "solver_type": "taylor"}, 2),
        ("dpmpp", {"max_order": 2, "solver_type": "taylor"}, 1),
        ("dpmpp", {"max_order": 2, "solver_type": "midpoint"}, 0),
        ("dpmpp", {"max_order": 1}, 0),
        ("unipc", {"max_order": 3, "corrector": False}, 2),
        ("unipc", {"max_order": 3, "corrector": False, "variant": "bh1"}, 2),
    ],
)
def test_multistep_data_prediction_exact_after_warmup(solver, opts, deg):
    """x0 = quadratic (resp. linear) polynomial in log sigma, independent of x: the ODE is linear with an
    x-independent forcing, so every step from the (max_order)-th on is exact to rounding."""
    polys = data_polys(deg)
    lam_polys = in_log_sigma_to_lambda(polys)
    traj = trajectory(DataPoly(polys), solver, lower_order_final=False, **opts)
    errs = step_errors(traj, SCHED, lambda x, s, t: exact_data_step(x, s, t, lam_polys))
    warm = opts["max_order"] - 1
    assert errs[warm:].max() < 1e-10, errs
    if deg >= 1:
        # the lower-order warm-up steps are not exact: the comparison can fail
        assert errs[:warm].min() > 1e-6, errs


@pytest.mark.parametrize(
    "solver,opts,deg",
    [
        ("dpmpp", {"max_order": 2, "solver_type": "midpoint"}, 1),
        ("dpmpp", {"max_order": 3, "solver_type": "midpoint"}, 2),
        ("unipc", {"max_order": 2, "corrector": False}, 1),
    ],
)
def test_multistep_data_prediction_not_exact(solver, opts, deg):
    """The 2M/3M midpoint formulas and UniP-2's fixed rho = 1/2 are accurate but not exact at their order."""
    polys = data_polys(deg, seed=1)
    lam_polys = in_log_sigma_to_lambda(polys)
    traj = trajectory(DataPoly(polys), solver, lower_order_final=False, **opts)
    errs = step_errors(traj, SCHED, lambda x, s, t: exact_data_step(x, s, t, lam_polys))
    assert errs[opts["max_order"] - 1 :].max() > 1e-6, errs


def test_dpmpp_lower_order_final_loses_exactness_at_the_end():
    polys = data_polys(2)
    lam_polys = in_log_sigma_to_lambda(polys)
    traj = trajectory(DataPoly(polys), "dpmpp", max_order=3, solver_type="taylor", lower_order_final=True)
    errs = step_errors(traj, SCHED, lambda x, s, t: exact_data_step(x, s, t, lam_polys))
    n = len(SCHED) - 1
    assert errs[2 : n - 2].max() < 1e-10, errs  # third order in the middle
    assert errs[n - 2 :].min() > 1e-6, errs  # orders 2 and 1 in the last two steps


def test_dpmpp_noise_prediction_exact_after_warmup():
    rng = np.random.default_rng(3)
    polys = poly_in_lambda(rng.normal(size=(3, 3)) / np.array([[1.0], [3.0], [9.0]]))  # eps quadratic in lambda
    den = NoisePoly(polys, lambda s: -s.log())
    traj = trajectory(den, "dpmpp", max_order=3, solver_type="taylor", predict_x0=False, lower_order_final=False)
    errs = step_errors(traj, SCHED, lambda x, s, t: exact_noise_step(x, s, t, polys))
    assert errs[2:].max() < 1e-10, errs
    assert errs[:2].min() > 1e-6, errs


def exact_direction_step(polys, u):
    """dx/dsigma = P(u(sigma)), x-independent: x_t = x_s + int_s^t P(u(sigma)) dsigma."""
    return lambda x, s, t: x + np.array([quad_hi(lambda v, p=p: p(u(v)), s, t) for p in polys])


def direction_polys(deg, u, sig, seed=0):
    """Random polynomial of degree deg in ((u - u_min) / (u_max - u_min)), as a polynomial in u."""
    rng = np.random.default_rng(seed)
    lo, hi = u(float(sig[-1])), u(float(sig[0]))
    z = Polynomial([-lo / (hi - lo), 1.0 / (hi - lo)])
    return [sum((float(c) * z**k for k, c in enumerate(rng.normal(size=deg + 1))), Polynomial([0.0])) for _ in range(3)]


@pytest.mark.parametrize(
    "solver,opts,uname",
    [
        ("ipndm_v", {"max_order": 2}, "identity"),
        ("ipndm_v", {"max_order": 3}, "identity"),
        ("ipndm_v", {"max_order": 4}, "identity"),
        ("deis", {"max_order": 3, "deis_mode": "rhoab"}, "identity"),
        ("deis", {"max_order": 2, "deis_mode": "tab"}, "vp_time"),
        ("deis", {"max_order": 3, "deis_mode": "tab"}, "vp_time"),
        ("deis", {"max_order": 4, "deis_mode": "tab"}, "vp_time"),
        ("deis", {"max_order": 3, "deis_mode": "logrho"}, "log"),
        ("deis", {"max_order": 4, "deis_mode": "logrho"}, "log"),
    ],
)
def test_lagrange_multistep_exact_after_warmup(solver, opts, uname):
    """A direction that is a polynomial of degree < order in the solver's variable u is integrated exactly
    by every step from the (order)-th on (EDM schedule, rho = 7: non-uniform)."""
    k = opts["max_order"]
    u = U_SCALAR[uname]
    polys = direction_polys(k - 1, u, SCHED)
    traj = trajectory(NoisePoly(polys, U_TORCH[uname]), solver, **opts)
    errs = step_errors(traj, SCHED, exact_direction_step(polys, u))
    assert errs[k - 1 :].max() < 1e-10, errs
    assert errs[: k - 1].min() > 1e-6, errs


@pytest.mark.parametrize("k", [2, 3, 4])
def test_ipndm_exact_on_uniform_grid_only(k):
    u = U_SCALAR["identity"]
    uniform = fewstep.get_schedule("polynomial", 9, 1.0, 17.0, rho=1.0)  # spacing 2
    polys = direction_polys(k - 1, u, uniform)
    traj = trajectory(NoisePoly(polys, U_TORCH["identity"]), "ipndm", sig=uniform, max_order=k)
    errs = step_errors(traj, uniform, exact_direction_step(polys, u))
    assert errs[k - 1 :].max() < 1e-10, errs
    # on the EDM grid the fixed weights are not exact, even for a linear direction
    polys = direction_polys(1, u, SCHED)
    traj = trajectory(NoisePoly(polys, U_TORCH["identity"]), "ipndm", max_order=k)
    errs = step_errors(traj, SCHED, exact_direction_step(polys, u))
    assert errs[k - 1 :].max() > 1e-6, errs
