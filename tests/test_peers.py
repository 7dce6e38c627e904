"""Agreement with the diffusers schedulers where the algorithms coincide (float64, same sigmas, same model).

Bridging (see tests/peers.py): diffusers' schedulers are driven on exactly our sigmas with no final step to 0
(``final_sigmas_type="sigma_min"``), in float64, their VP-space samples converted to EDM space. Order lowering:
diffusers lowers DPM-Solver/DEIS order on the last two steps only when fewer than 15 steps remain
(``lower_order_final and len(timesteps) < 15``); we lower it whenever ``lower_order_final`` is set (order at most
k on the last k steps), which is the same rule for orders <= 3 in the < 15 regime; UniPC has no threshold in
either. Our DEIS ``deis_mode="logrho"`` is diffusers' DEIS (Lagrange extrapolation in log rho).
"""

from __future__ import annotations

import pytest
import torch

import fewstep

from conftest import make_gmm
from peers import run_diffusers

TOL = 1e-5


@pytest.fixture(scope="module")
def bed():
    gmm = make_gmm(dim=12, components=4, seed=3)
    noise = fewstep.noise_for_seeds(range(8), (3, 2, 2), dtype=torch.float64)
    return gmm, noise


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _cases():
    """(steps, our solver, our options, diffusers name, diffusers options)."""
    for n in (8, 20):
        for lof in (True, False):
            # diffusers ignores lower_order_final for DPM-Solver from 15 steps on; we honour it at any length.
            if not (lof and n >= 16):
                for order in (1, 2, 3):
                    yield (n, "dpmpp", dict(max_order=order, lower_order_final=lof),
                           "dpmpp", dict(solver_order=order, lower_order_final=lof, solver_type="midpoint"))
                yield (n, "dpmpp", dict(max_order=2, lower_order_final=lof, solver_type="taylor"),
                       "dpmpp", dict(solver_order=2, lower_order_final=lof, solver_type="heun"))
                for order in (2, 3):
                    yield (n, "dpmpp", dict(max_order=order, lower_order_final=lof, predict_x0=False),
                           "dpmpp", dict(solver_order=order, lower_order_final=lof, algorithm_type="dpmsolver"))
            for order in (1, 2, 3):
                for variant in ("bh1", "bh2"):
                    yield (n, "unipc", dict(max_order=order, variant=variant, lower_order_final=lof),
                           "unipc", dict(solver_order=order, solver_type=variant, lower_order_final=lof))
            yield (n, "unipc", dict(max_order=2, predict_x0=False, lower_order_final=lof),
                   "unipc", dict(solver_order=2, predict_x0=False, lower_order_final=lof))
        for order in (1, 2, 3):
            yield (n, "deis", dict(max_order=order, deis_mode="logrho"),
                   "deis", dict(solver_order=order, lower_order_final=False))
        yield (n, "euler", {}, "euler", {})
        yield (n, "heun", {}, "heun", {})
    yield (8, "dpmpp", dict(max_order=2), "dpmpp", dict(solver_order=2, variant="edm"))
    yield (8, "euler", {}, "euler", dict(variant="edm"))


CASES = list(_cases())


@pytest.mark.parametrize("n,ours,opts,theirs,their_opts", CASES,
                         ids=[f"{c[1]}-{c[0]}-{c[2]}" for c in CASES])
def test_matches_diffusers(bed, n, ours, opts, theirs, their_opts):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", n)
    x_ours = fewstep.sample(gmm, noise, sig, ours, **opts)
    x_theirs = run_diffusers(theirs, gmm, noise * sig[0], sig, **their_opts)
    assert rel(x_ours, x_theirs) <= TOL


def test_peer_difference_is_detectable(bed):
    """The comparison is sensitive: a different order or variant is far outside the tolerance."""
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 8)
    theirs = run_diffusers("unipc", gmm, noise * sig[0], sig, solver_order=2, solver_type="bh2")
    assert rel(fewstep.sample(gmm, noise, sig, "unipc", max_order=2, variant="bh1"), theirs) > 1e-3
    assert rel(fewstep.sample(gmm, noise, sig, "dpmpp", max_order=3, solver_type="taylor"),
               run_diffusers("dpmpp", gmm, noise * sig[0], sig, solver_order=3)) > 1e-3
