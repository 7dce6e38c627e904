"""PAS and GS learned samplers (fewstep.learned): neutral initialisation equals the base solver, gradients, NFE,
checkpoints, short training beats the base solver at NFE 5; and the quick mode of benchmarks/frontier.py."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.learned import Budget, CheckpointError, GSSampler, PASSampler, Teacher
from fewstep.learned.gs import GeneralisedMultistep
from fewstep.learned.pas import PAS, pas_basis

import learned_helpers
from conftest import CountingDenoiser, make_gmm

SIG7 = learned_helpers.SIG7
_sampler, _perturb = learned_helpers.make_sampler, learned_helpers.perturb


def _rmse(x, ref):
    return float(((x - ref) ** 2).mean().sqrt())


# ------------------------------------------------------------------ neutral initialisation
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("coords,time_shift", [(1, False), (2, True), (4, False)])
def test_neutral_pas_is_ipndm_bitwise(gmm4, noise16, afs, order, coords, time_shift):
    p = _sampler(PASSampler, afs=afs, options={"order": order, "coords": coords}, time_shift=time_shift)
    want = fewstep.sample(gmm4, noise16, SIG7, "ipndm", afs=afs, max_order=order)
    assert torch.equal(fewstep.sample(gmm4, noise16, predictor=p), want)
    assert torch.equal(fewstep.sample(gmm4, noise16, SIG7, PAS(max_order=order, coords=coords), afs=afs), want)


@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("time_shift", [False, True])
def test_neutral_gs_is_dpmpp_bitwise(gmm4, noise16, afs, order, time_shift):
    p = _sampler(GSSampler, afs=afs, options={"order": order}, time_shift=time_shift)
    want = fewstep.sample(gmm4, noise16, SIG7, "dpmpp", afs=afs, max_order=order)
    assert torch.equal(fewstep.sample(gmm4, noise16, predictor=p), want)
    assert torch.equal(fewstep.sample(gmm4, noise16, SIG7, GeneralisedMultistep(max_order=order), afs=afs), want)


def test_pas_first_coordinate_scales_the_step(gmm4, noise16):
    """Order 1, one coordinate c: an Euler step of length (1 + c) h, i.e. Euler to s + (1 + c)(t - s)."""
    sig = fewstep.get_schedule("polynomial", 2, 0.5, 2.0)
    p = _sampler(PASSampler, sig, afs=False, options={"order": 1, "coords": 1})
    with torch.no_grad():
        p.coords.fill_(0.3)
    got = fewstep.sample(gmm4, noise16, predictor=p)
    moved = torch.stack([sig[0], sig[0] + 1.3 * (sig[1] - sig[0])])
    want = fewstep.sample(gmm4, noise16 * (sig[0] / moved[0]), moved, "euler")
    assert float((got - want).abs().max()) <= 1e-12 * float(want.abs().max())


def test_pas_basis_is_orthonormal_and_aligned():
    g = torch.Generator().manual_seed(0)
    dirs = tuple(torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(4))
    cur = dirs[-1] + 0.5 * dirs[0]
    flip = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    basis = pas_basis(dirs, cur, flip, 4)
    assert len(basis) == 3
    vecs = [cur.flatten(1) / cur.flatten(1).norm(dim=1, keepdim=True)] + [u.flatten(1) for u in basis]
    gram = torch.stack(vecs, 1) @ torch.stack(vecs, 1).transpose(1, 2)
    assert torch.allclose(gram, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), atol=1e-12)
    assert all(bool(((u.flatten(1) * flip.flatten(1)).sum(1) >= 0).all()) for u in basis)
    # Two directions give one principal component: the third and fourth vectors are zero.
    short = pas_basis(dirs[:2], cur, flip, 4)
    assert float(short[0].abs().max()) > 0 and all(float(u.abs().max()) == 0 for u in short[1:])


# ------------------------------------------------------------------ NFE, gradients
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("method,options", [("pas", {"order": 3, "coords": 3}), ("gs", {"order": 3})])
def test_nfe_counts_model_evaluations(gmm4, noise16, afs, method, options):
    p = _perturb(_sampler(learned.METHODS[method], afs=afs, options=options, time_shift=True))
    counting = CountingDenoiser(gmm4)
    res = fewstep.solve(counting, noise16, predictor=p)
    steps = len(SIG7) - 1
    assert res.nfe == counting.calls == p.nfe() == p.rounds() == steps - int(afs)
    n = fewstep.steps_for_nfe(learned.METHODS[method].probe_solver(options, None, afs), 5, afs)
    assert n == 6 + int(afs)
    assert _sampler(learned.METHODS[method], fewstep.get_schedule("polynomial", n), afs=afs,
                    options=options).nfe() == 5


@pytest.mark.parametrize("method,options,name", [("pas", {"order": 3, "coords": 3}, "coords"),
                                                 ("gs", {"order": 3}, "dc")])
def test_gradients_reach_every_used_parameter(gmm4, noise16, method, options, name):
    p = _sampler(learned.METHODS[method], options=options, time_shift=True)
    x = fewstep.sample(gmm4, noise16, predictor=p, enable_grad=True)
    x.square().sum().backward()
    width = next(iter(v for k, v in options.items() if k != "order"), options["order"])
    # PAS: coordinate k >= 1 needs k + 1 past directions (a PCA component); GS: the j-th newest prediction.
    used = torch.tensor([[j <= i for j in range(width)] for i in range(p.num_intervals)])
    for pname, prm in p.named_parameters():
        g = prm.grad
        assert g is not None and bool(torch.isfinite(g).all()), pname
        if pname == name:
            assert bool((g[used] != 0).all()) and bool((g[~used] == 0).all()), pname
        elif pname == "xi":
            assert bool((g[1:] != 0).all())  # step 0 is the analytical first step


# ------------------------------------------------------------------ checkpoints
def test_load_refuses_other_shapes_and_options(tmp_path):
    from test_learned import _rewrite

    good = _perturb(_sampler(PASSampler, options={"order": 4, "coords": 2})).save(tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    for edit, msg in ((lambda c: c["options"].update(coords=3), "do not match the configuration"),
                      (lambda c: c["options"].update(coords=9), "options.coords"),
                      (lambda c: c.update(base={"solver": "dpmpp", "options": {"max_order": 3}}), "config base")):
        _rewrite(good, bad, config=edit)
        with pytest.raises(CheckpointError, match=msg):
            learned.load(bad)


def test_solver_built_differently_is_refused(gmm4, noise16):
    p = _sampler(PASSampler, options={"order": 4, "coords": 2})
    with pytest.raises(ValueError, match="trained as pas"):
        fewstep.sample(gmm4, noise16, SIG7, PAS(max_order=4, coords=3, predictor=p), afs=True)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("method,options,threshold", [("pas", {"order": 4, "coords": 2}, 0.7),
                                                      ("gs", {"order": 3}, 0.5)])
def test_short_training_beats_the_base_solver_at_nfe5(method, options, threshold):
    gmm = make_gmm()
    noise = fewstep.noise_for_seeds(range(1000, 1128), (4,), dtype=torch.float64)
    ref = fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", 400, 0.002, 80.0), "deis", max_order=4,
                         deis_mode="logrho")
    p = learned.train(method, gmm, shape=(4,), nfe=5, options=options, teacher=Teacher(M=4),
                      budget=Budget(batch=32, total_samples=1024), progress=False)
    res = fewstep.solve(gmm, noise, predictor=p)
    assert res.nfe == 5 == p.nfe()
    base = p.config["base"]
    sig0 = fewstep.get_schedule("polynomial", len(p.config["sigmas"]), 0.002, 80.0)  # the base on its schedule
    plain = fewstep.sample(gmm, noise, sig0, base["solver"], afs=True, **base["options"])
    assert _rmse(res.x, ref) < threshold * _rmse(plain, ref)
    # GS learns its schedule and time shifts by default; PAS neither.
    learns = method == "gs"
    assert p.config["time_shift"] is learns and p.config["training"]["learn_schedule"] is learns
    assert (p.config["sigmas"] != [float(v) for v in sig0]) is learns
    assert bool((torch.tensor(p.config["sigmas"]).diff() < 0).all())


# ------------------------------------------------------------------ benchmark script
def test_frontier_quick_writes_the_table(tmp_path):
    from benchmarks import frontier

    out, js = tmp_path / "frontier.md", tmp_path / "frontier.json"
    assert frontier.main(["--quick", "--out", str(out), "--json", str(js)]) == 0
    text = out.read_text()
    assert "benchmarks/frontier.py --quick" in text and "Load average" in text
    for label in ("iPNDM", "DPM-Solver++(3M)", "AMED-Solver", "AMED-Plugin", "DyWeight", "EPD", "PAS", "GS"):
        assert label in text, label
    assert "| params |" in text.replace("Params", "params") or "params" in text.lower()
    import json

    res = json.loads(js.read_text())
    learned_rows = [r for r in res["rows"] if r["kind"] == "learned"]
    assert {r["method"] for r in learned_rows} == set(learned.METHODS)
    assert all(r["rmse"] > 0 and r["params"] > 0 and r["seconds"] > 0 and r["teacher_evals"] > 0
               for r in learned_rows)


# ------------------------------------------------------------------ defaults
def test_method_defaults_budget_schedule_and_shifts(monkeypatch):
    import sys

    seen = {}

    def fake_distill(model, solver, sig, plan, sampler, sched, *rest):
        seen[sampler.config["method"]] = (plan, sched is not None)

    monkeypatch.setattr(sys.modules["fewstep.learned.train"], "distill", fake_distill)
    gmm = make_gmm()
    for method, cls in learned.METHODS.items():
        p = learned.train(method, gmm, shape=(4,), nfe=5, progress=False)
        plan, sched = seen[method]
        d = cls.DEFAULTS
        assert (plan.batch, plan.total_samples, plan.M) == (d.batch, d.total_samples, d.M), method
        assert plan.lr == cls.default_lr(p.options)
        assert sched is (method in ("dyweight", "gs", "residual")) is d.learn_schedule and plan.learn_schedule is sched
        assert p.config["time_shift"] is (method == "gs") is d.time_shift
    for method in ("amed", "plugin", "epd", "pas", "gs"):  # the budget of every method but DyWeight
        d = learned.METHODS[method].DEFAULTS
        assert (d.batch, d.total_samples, d.M) == (64, 8192, 8), method
    d = learned.METHODS["dyweight"].DEFAULTS
    assert (d.batch, d.total_samples, d.M) == (16, 4096, 4)
    learned.train("dyweight", gmm, shape=(4,), nfe=5, progress=False, budget=Budget(batch=8), teacher=Teacher(M=2),
                  schedule=learned.ScheduleSpec(learn=False))
    plan, sched = seen["dyweight"]
    assert (plan.batch, plan.total_samples, plan.M, sched) == (8, 4096, 2, False)


def test_pas_on_data_with_fewer_dimensions_than_coords():
    """PAS's PCA basis has at most D components on D-dimensional data (the others are zero vectors)."""
    p = learned_helpers.perturb(learned_helpers.make_sampler(PASSampler, options={"coords": 4}))
    x = fewstep.noise_for_seeds(range(3), (2,), dtype=torch.float64)
    out = fewstep.sample(lambda x, s: x / (1 + torch.as_tensor(s).reshape(-1, 1) ** 2), x, predictor=p)
    assert torch.isfinite(out).all()
