"""Empirical convergence order of every solver on an analytic Gaussian-mixture ODE.

Reference: DEIS-logrho order 4 on 8001 polynomial steps (its own error is < 1e-10 here). The fitted slope of
log error against log step count over 160/320/640 steps must be within 0.5 of the theoretical order.
Schedule: polynomial rho=7 from 80 to 0.002, where the first-order warm-up of multistep solvers (at sigma=80,
where the flow is nearly linear) contributes negligibly; asymptotically it caps every multistep method at 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fewstep

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
NS = (161, 321, 641)

# (solver, options, theoretical order)
CASES = [
    ("euler", {}, 1),
    ("heun", {}, 2),
    ("dpm2", {}, 2),
    ("dpm2", {"r": 0.75}, 2),
    ("dpmpp", {"max_order": 1}, 1),
    ("dpmpp", {"max_order": 2}, 2),
    ("dpmpp", {"max_order": 2, "solver_type": "taylor"}, 2),
    ("dpmpp", {"max_order": 3, "solver_type": "taylor"}, 3),
    ("dpmpp", {"max_order": 2, "predict_x0": False}, 2),
    ("dpmpp", {"max_order": 3, "predict_x0": False, "solver_type": "taylor"}, 3),
    # The reference implementation's 3M (diffusers, k-diffusion) is second order: see DPMSolverPP.
    ("dpmpp", {"max_order": 3, "solver_type": "midpoint"}, 2),
    ("unipc", {"max_order": 1}, 2),
    ("unipc", {"max_order": 2}, 3),
    ("unipc", {"max_order": 3}, 4),
    ("unipc", {"max_order": 2, "variant": "bh1"}, 3),
    ("unipc", {"max_order": 3, "variant": "bh1"}, 4),
    ("unipc", {"max_order": 2, "predict_x0": False}, 3),
    ("unipc", {"max_order": 2, "corrector": False}, 2),
    ("unipc", {"max_order": 3, "corrector": False}, 3),
    ("ipndm", {"max_order": 1}, 1),
    ("ipndm", {"max_order": 2}, 2),
    # Equal-step weights on a non-uniform grid: second order at best (see test_coefficients for AB exactness).
    ("ipndm", {"max_order": 3}, 2),
    ("ipndm", {"max_order": 4}, 2),
    ("ipndm_v", {"max_order": 2}, 2),
    ("ipndm_v", {"max_order": 3}, 3),
    ("ipndm_v", {"max_order": 4}, 4),
    ("deis", {"max_order": 1}, 1),
    ("deis", {"max_order": 2}, 2),
    ("deis", {"max_order": 3}, 3),
    ("deis", {"max_order": 4}, 4),
    ("deis", {"max_order": 3, "deis_mode": "rhoab"}, 3),
    ("deis", {"max_order": 3, "deis_mode": "logrho"}, 3),
    # AMED without a predictor (r = 0.5, c = a = 1): DPM-Solver-2, and the base solver on the refined schedule.
    ("amed", {}, 2),
    ("amed_plugin", {"base": "euler"}, 1),
    ("amed_plugin", {"base": "ipndm_v", "max_order": 3}, 3),
    ("amed_plugin", {"base": "dpmpp", "max_order": 2, "lower_order_final": False}, 2),
]


@pytest.fixture(scope="module")
def reference(gmm4, noise16):
    sig = fewstep.get_schedule("polynomial", 8001, SIGMA_MIN, SIGMA_MAX)
    return fewstep.sample(gmm4, noise16, sig, "deis", max_order=4, deis_mode="logrho")


def fitted_order(gmm, noise, ref, solver, options):
    errs = []
    for n in NS:
        sig = fewstep.get_schedule("polynomial", n, SIGMA_MIN, SIGMA_MAX)
        opts = dict(options)
        if solver in ("dpmpp", "unipc") or options.get("base") in ("dpmpp", "unipc"):
            opts.setdefault("lower_order_final", False)
        x = fewstep.sample(gmm, noise, sig, solver, **opts)
        errs.append(((x - ref).norm() / ref.norm()).item())
    slope = -np.polyfit(np.log([n - 1 for n in NS]), np.log(errs), 1)[0]
    return slope, errs


@pytest.mark.parametrize("solver,options,order", CASES, ids=[f"{s}-{o}" for s, o, _ in CASES])
def test_convergence_order(gmm4, noise16, reference, solver, options, order):
    slope, errs = fitted_order(gmm4, noise16, reference, solver, options)
    assert math.isfinite(slope)
    assert abs(slope - order) <= 0.5, f"{solver} {options}: slope {slope:.2f}, errors {errs}"


def test_reference_is_converged(gmm4, noise16, reference):
    sig = fewstep.get_schedule("polynomial", 4001, SIGMA_MIN, SIGMA_MAX)
    coarse = fewstep.sample(gmm4, noise16, sig, "deis", max_order=4, deis_mode="logrho")
    assert ((coarse - reference).norm() / reference.norm()).item() < 1e-9


def test_amed_free_solvers_all_covered():
    assert {s for s, _, _ in CASES} == set(fewstep.SOLVERS)
