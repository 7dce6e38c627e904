"""Learned samplers beyond AMED (fewstep.learned): DyWeight-style learned multistep, EPD, time shifts, soft start,
the shared checkpoint format and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.cli import main
from fewstep.learned import Budget, CheckpointError, DyWeightSampler, EPDSampler, Teacher
from fewstep.learned.distill import soft_start_delta
from fewstep.learned.dyweight import LearnedMultistep
from fewstep.learned.epd import EPD
from fewstep.solvers import AMEDSolver, TimeShift

import learned_helpers
from conftest import CountingDenoiser, make_gmm

SIG7 = learned_helpers.SIG7
_sampler, _perturb = learned_helpers.make_sampler, learned_helpers.perturb


def _reference(gmm, noise):
    sig = fewstep.get_schedule("polynomial", 400, 0.002, 80.0)
    return fewstep.sample(gmm, noise, sig, "deis", max_order=4, deis_mode="logrho")


def _rmse(x, ref):
    return float(((x - ref) ** 2).mean().sqrt())


# ------------------------------------------------------------------ neutral initialisation
@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("window", [1, 2, 3, 4])
@pytest.mark.parametrize("time_shift", [False, True])
def test_neutral_dyweight_is_ipndm_bitwise(gmm4, noise16, afs, window, time_shift):
    p = _sampler(DyWeightSampler, afs=afs, options={"window": window}, time_shift=time_shift)
    got = fewstep.sample(gmm4, noise16, predictor=p)
    want = fewstep.sample(gmm4, noise16, SIG7, "ipndm", afs=afs, max_order=window)
    assert torch.equal(got, want)
    assert torch.equal(fewstep.sample(gmm4, noise16, SIG7, LearnedMultistep(max_order=window), afs=afs), want)


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("time_shift", [False, True])
def test_neutral_epd_is_dpm_solver_2(gmm4, noise16, K, time_shift):
    p = _sampler(EPDSampler, afs=False, options={"K": K}, time_shift=time_shift)
    got = fewstep.sample(gmm4, noise16, predictor=p)
    assert torch.equal(got, fewstep.sample(gmm4, noise16, SIG7, AMEDSolver()))  # the untrained AMED-Solver
    assert torch.equal(got, fewstep.sample(gmm4, noise16, SIG7, EPD(K=K)))
    dpm2 = fewstep.sample(gmm4, noise16, SIG7, "dpm2")
    assert float((got - dpm2).abs().max()) <= 1e-12 * float(dpm2.abs().max())


def test_time_shift_calls_the_model_at_the_shifted_sigma(gmm4, noise16):
    seen = []

    def model(x, sigma):
        seen.append(float(sigma.reshape(-1)[0]))
        return gmm4(x, sigma)

    p = _sampler(DyWeightSampler, afs=False, time_shift=True)
    with torch.no_grad():
        p.xi.copy_(torch.linspace(-0.2, 0.2, len(SIG7) - 1, dtype=torch.float64))
    fewstep.sample(model, noise16, predictor=p)
    want = [float(SIG7[i] * math.exp(float(p.xi[i].detach()))) for i in range(len(SIG7) - 1)]
    assert seen == pytest.approx(want, rel=1e-12)
    assert isinstance(p.solver(), TimeShift)


# ------------------------------------------------------------------ NFE accounting
def _steps_for_nfe(method, nfe, afs, options=None):
    """Sigmas at which learned ``method`` makes ``nfe`` model evaluations."""
    return fewstep.steps_for_nfe(learned.METHODS[method].probe_solver(options, None, afs), nfe, afs)


# (method, options, evaluations per step, sequential model rounds per step); every method of METHODS is here
# (test_nfe_cases_cover_every_method): AMED-Solver 2 evaluations per step, the plugin on iPNDM its base's 1 plus
# one at the intermediate time, EPD K + 1 in 2 rounds.
NFE_CASES = [("dyweight", {"window": 3}, 1, 1), ("epd", {"K": 1}, 2, 2), ("epd", {"K": 2}, 3, 2),
             ("epd", {"K": 4}, 5, 2), ("amed", None, 2, 2), ("plugin", None, 2, 2), ("pas", None, 1, 1),
             ("gs", None, 1, 1), ("residual", {"channels": 4}, 1, 1)]


def test_nfe_cases_cover_every_method():
    assert {c[0] for c in NFE_CASES} == set(learned.METHODS)


@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("method,options,per_step,rounds_per_step", NFE_CASES)
def test_nfe_counts_model_evaluations(gmm4, noise16, afs, method, options, per_step, rounds_per_step):
    p = _perturb(_sampler(learned.METHODS[method], afs=afs, options=options, time_shift=True))
    counting = CountingDenoiser(gmm4)
    res = fewstep.solve(counting, noise16, predictor=p)
    steps = len(SIG7) - 1
    assert res.nfe == counting.calls == p.nfe() == per_step * steps - int(afs)
    assert p.rounds() == rounds_per_step * steps - int(afs)
    n = _steps_for_nfe(method, 5, afs, options) if (5 + int(afs)) % per_step == 0 else None
    if n is not None:
        assert _sampler(learned.METHODS[method], fewstep.get_schedule("polynomial", n), afs=afs,
                        options=options).nfe() == 5


def test_steps_for_nfe_names_reachable_counts():
    with pytest.raises(ValueError, match="cannot use exactly nfe=4"):
        _steps_for_nfe("epd", 4, True, {"K": 2})
    assert _steps_for_nfe("epd", 5, True, {"K": 2}) == 3
    assert _steps_for_nfe("dyweight", 5, True) == 7


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("method,options", [("dyweight", {"window": 3}), ("epd", {"K": 2})])
def test_gradients_reach_every_used_parameter(gmm4, noise16, method, options):
    p = _sampler(learned.METHODS[method], options=options, time_shift=True)
    if method == "epd":
        with torch.no_grad():
            p.lam.fill_(0.3)  # at lam = 0 the extra directions' times get no gradient (by design)
    x = fewstep.sample(gmm4, noise16, predictor=p, enable_grad=True)
    x.square().sum().backward()
    for name, prm in p.named_parameters():
        g = prm.grad
        assert g is not None and bool(torch.isfinite(g).all()), name
        if name == "dw":  # only the entries inside the warm-up window are used
            used = torch.tensor([[j <= i for j in range(options["window"])] for i in range(p.num_intervals)])
            assert bool((g[used] != 0).all()) and bool((g[~used] == 0).all())
        elif name == "xi":
            assert bool((g[1:] != 0).all())  # step 0 is the analytical first step: its shift only moves AFS
        else:
            assert bool((g != 0).all()), name


# ------------------------------------------------------------------ checkpoints
ROUND_TRIP_OPTIONS = {"dyweight": {"window": 3}, "epd": {"K": 2}, "pas": {"order": 4, "coords": 2}, "gs": {"order": 3},
                      "amed": {"scale_dir": 0.1, "scale_time": 0.1}, "plugin": {"scale_dir": 0.1, "scale_time": 0.1},
                      "residual": {"channels": 4, "width": 8}}


@pytest.mark.parametrize("method", list(learned.METHODS))
def test_save_load_round_trip(tmp_path, gmm4, noise16, method):
    options = ROUND_TRIP_OPTIONS.get(method)
    p = _perturb(_sampler(learned.METHODS[method], options=options, time_shift=True, model_id="gmm4"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    p.save(a)
    p.save(b)
    assert a.read_bytes() == b.read_bytes()
    q = learned.load(a, model_id="gmm4")
    assert type(q) is type(p) and q.config == p.config
    assert torch.equal(fewstep.sample(gmm4, noise16, predictor=q), fewstep.sample(gmm4, noise16, predictor=p))
    assert learned.read_config(a)["method"] == method
    with pytest.raises(CheckpointError, match="trained for model"):
        learned.load(a, model_id="another")


def test_load_dispatches_amed_checkpoints(tmp_path, gmm4, noise16):
    pred = learned.train("plugin", gmm4, shape=(4,), base="ipndm", num_steps=4, teacher=Teacher(M=2),
                         budget=Budget(batch=8, total_samples=16), progress=False)
    path = tmp_path / "amed.safetensors"
    pred.save(path)
    q = learned.load(path)
    assert isinstance(q, learned.AMEDPluginSampler) and q.config == pred.config
    assert torch.equal(fewstep.sample(gmm4, noise16, predictor=q), fewstep.sample(gmm4, noise16, predictor=pred))


def _rewrite(path, out, *, config=None, tensors=None, digest=None):
    from fewstep.io import read_safetensors, tensor_digest, write_safetensors

    t, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    if config is not None:
        config(cfg)
    if tensors is not None:
        tensors(t)
    meta = {"format": meta["format"], "config": json.dumps(cfg), "sha256": digest or tensor_digest(t)}
    write_safetensors(out, t, meta)
    return out


def test_load_refuses_bad_files(tmp_path):
    p = _perturb(_sampler(EPDSampler, options={"K": 2}))
    good = p.save(tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    cases = [
        (dict(config=lambda c: c["options"].update(K=3)), "do not match the configuration"),
        (dict(config=lambda c: c.update(extra=1)), "unknown config keys"),
        (dict(config=lambda c: c.update(method="nope")), "method must be"),
        (dict(config=lambda c: c["options"].update(K=99)), "options.K"),
        (dict(config=lambda c: c.update(base={"solver": "euler", "options": {}})), "config base"),
        (dict(config=lambda c: c.update(sigmas=[1.0, 2.0])), "sigmas"),
        (dict(config=lambda c: c.update(version=7)), "version"),
        (dict(tensors=lambda t: t["log_c"].fill_(float("nan"))), "NaN"),
        (dict(digest="0" * 64), "SHA-256"),
        (dict(tensors=lambda t: t.update(log_c=t["log_c"].float())), "float64"),
    ]
    for kw, msg in cases:
        _rewrite(good, bad, **kw)
        with pytest.raises(CheckpointError, match=msg):
            learned.load(bad)
    bad.write_bytes(b"\x80\x04junkjunkjunk")
    with pytest.raises(CheckpointError, match="pickle"):
        learned.load(bad)


def test_sampler_refuses_other_settings(gmm4, noise16):
    p = _sampler(DyWeightSampler, options={"window": 3})
    with pytest.raises(ValueError, match="afs"):
        fewstep.sample(gmm4, noise16, predictor=p, afs=False)
    with pytest.raises(ValueError, match="sigmas"):
        fewstep.sample(gmm4, noise16, fewstep.get_schedule("polynomial", 6), predictor=p)
    with pytest.raises(ValueError, match="trained as dyweight"):
        fewstep.sample(gmm4, noise16, SIG7, LearnedMultistep(max_order=2, predictor=p), afs=True)


# ------------------------------------------------------------------ soft start
def test_soft_start_delta_stays_in_the_ball_and_lowers_the_loss(gmm4):
    noise = fewstep.noise_for_seeds(range(8), (4,), dtype=torch.float64)
    sig = fewstep.get_schedule("polynomial", 4, 0.002, 80.0)
    target = _reference(gmm4, noise)
    solver = fewstep.get_solver("ipndm")
    x0 = noise * sig[0]
    for steps in (1, 3):
        delta = soft_start_delta(gmm4, solver, False, x0, sig, target, 0.01, steps, "l2")
        assert bool((delta.norm(dim=1) <= 0.01 * 80.0 * 2.0 * (1 + 1e-12)).all())
        before = fewstep.sample(gmm4, noise, sig, solver)
        after = fewstep.sample(gmm4, noise + delta / sig[0], sig, solver)
        assert float((after - target).norm(dim=1).sum()) < float((before - target).norm(dim=1).sum())


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("method,options,kw", [("dyweight", {"window": 4}, {}), ("epd", {"K": 1}, {}),
                                                ("epd", {"K": 2}, {"time_shift": True})])
def test_short_training_beats_the_base_solver_at_nfe5(method, options, kw):
    gmm = make_gmm()
    noise = fewstep.noise_for_seeds(range(1000, 1128), (4,), dtype=torch.float64)
    ref = _reference(gmm, noise)
    p = learned.train(method, gmm, shape=(4,), nfe=5, options=options, teacher=Teacher(M=4),
                      budget=Budget(batch=32, total_samples=1024), progress=False, **kw)
    res = fewstep.solve(gmm, noise, predictor=p)
    assert res.nfe == 5 == p.nfe()
    base = p.config["base"]
    name = "dpm2" if base["solver"] == "amed" else base["solver"]
    plain = fewstep.sample(gmm, noise, p.config["sigmas"], name, afs=True, **base["options"])
    assert _rmse(res.x, ref) < 0.7 * _rmse(plain, ref)


def test_training_with_soft_start_and_learned_schedule(tmp_path):
    gmm = make_gmm()
    out = tmp_path / "dw.safetensors"
    p = learned.train("dyweight", gmm, shape=(4,), nfe=4, teacher=Teacher(M=2),
                      budget=Budget(batch=16, total_samples=64), progress=False,
                      objective=learned.Objective(soft_start=0.01, soft_start_steps=2),
                      schedule=learned.ScheduleSpec(learn=True), checkpoint=learned.Checkpointing(out=out))
    sig = torch.tensor(p.config["sigmas"], dtype=torch.float64)
    init = fewstep.get_schedule("polynomial", len(sig), 0.002, 80.0)
    assert not torch.allclose(sig, init) and bool((sig[1:] < sig[:-1]).all())
    assert p.config["training"]["soft_start"] == 0.01
    q = learned.load(out)
    assert q.config["sigmas"] == p.config["sigmas"]


def test_amed_and_plugin_through_learned_train(noise16):
    gmm = make_gmm()
    p = learned.train("plugin", gmm, shape=(4,), nfe=5, base="ipndm", teacher=Teacher(M=2),
                      budget=Budget(batch=8, total_samples=16), progress=False)
    assert isinstance(p, learned.AMEDPluginSampler) and p.config["base"] == {"solver": "ipndm", "options": {}}
    assert p.config["method"] == "plugin" and p.nfe() == 5
    # AMED methods take time shifts and LD3's soft start like every method (they were refused before)
    q = learned.train("amed", gmm, shape=(4,), nfe=5, time_shift=True, teacher=Teacher(M=2),
                      budget=Budget(batch=8, total_samples=16), objective=learned.Objective(soft_start=0.01),
                      progress=False)
    assert isinstance(q, learned.AMEDSampler) and q.config["time_shift"] is True
    assert q.config["training"]["soft_start"] == 0.01 and isinstance(q.solver(), TimeShift)
    assert bool((q.xi.detach() != 0).any())  # the shifts were trained
    res = fewstep.solve(CountingDenoiser(gmm), noise16, predictor=q)
    assert res.nfe == 5 == q.nfe() and bool(torch.isfinite(res.x).all())


# ------------------------------------------------------------------ CLI
def test_cli_train_and_sample_learned_methods(tmp_path, capsys):
    for method, extra, nfe_text in (("dyweight", ["--time-shift", "--method-options", '{"window": 3}'],
                                     "(5 NFE each)"),
                                    ("epd", ["--method-options", '{"K": 2}'], "(5 NFE each, in 3 sequential rounds)")):
        ckpt = tmp_path / f"{method}.safetensors"
        rc = main(["train", "--model", "gmm", "--method", method, "--out", str(ckpt), "--nfe", "5",
                   "--total-samples", "16", "--batch", "8", "--M", "2", "--threads", "1", *extra])
        assert rc == 0 and ckpt.is_file()
        cfg = learned.read_config(ckpt)
        assert cfg["method"] == method and cfg["model_id"].startswith("gmm-bed")
        out = tmp_path / f"{method}.npz"
        assert main(["sample", "--model", "gmm", "--predictor", str(ckpt), "--seeds", "0-2", "--out", str(out),
                     "--threads", "1"]) == 0
        assert nfe_text in capsys.readouterr().out


def test_cli_plugin_method_and_bad_combinations(tmp_path, capsys):
    ckpt = tmp_path / "plug.safetensors"
    assert main(["train", "--model", "gmm", "--method", "plugin", "--base", "ipndm", "--out", str(ckpt),
                 "--total-samples", "16", "--batch", "8", "--M", "2", "--threads", "1"]) == 0
    cfg = learned.read_config(ckpt)
    assert cfg["method"] == "plugin" and cfg["base"] == {"solver": "ipndm", "options": {}}
    # AMED methods accept --time-shift and --soft-start (refused before the redesign)
    ts = tmp_path / "amed_ts.safetensors"
    assert main(["train", "--model", "gmm", "--method", "amed", "--time-shift", "--soft-start", "0.01", "--out",
                 str(ts), "--total-samples", "16", "--batch", "8", "--M", "2", "--threads", "1"]) == 0
    cfg = learned.read_config(ts)
    assert cfg["method"] == "amed" and cfg["time_shift"] is True and cfg["training"]["soft_start"] == 0.01
    capsys.readouterr()
    for args, msg in ((["--method", "dyweight", "--base", "dpmpp"], "--base / --base-options apply to a method "
                       "built on a solver you pick (plugin), not dyweight"),
                      (["--method", "epd", "--features", "none"], "--features applies to methods that read network "
                       "features (amed, plugin), not epd"),
                      (["--method", "amed", "--features", "none", "--method-options", '{"features": "none"}'],
                       "not both"),
                      (["--method", "epd", "--nfe", "4", "--method-options", '{"K": 2}'], "cannot use exactly nfe=4")):
        assert main(["train", "--model", "gmm", "--out", str(tmp_path / "x.safetensors"), *args]) == 2
        assert msg in capsys.readouterr().err


@pytest.mark.parametrize("dw", [0.15, -0.15])
def test_dyweight_calibrated_time_stays_positive(dw):
    """History-weight row sums that move the calibrated time t~ (where the next evaluation is made) down: it stays
    > 0 (the additive form t_next + sum(dW) h went below 0 near sigma_min = 0.002 and the model refused the negative
    sigma); it is DyWeight's additive form down to 0.1 t_next, with a positive exponential tail below."""
    p = learned_helpers.make_sampler(DyWeightSampler)
    with torch.no_grad():
        p.dw.fill_(dw)
    seen = []

    def model(x, s):
        seen.append(float(torch.as_tensor(s).min()))
        return x / (1 + torch.as_tensor(s).reshape(-1, 1) ** 2)

    out = fewstep.sample(model, fewstep.noise_for_seeds(range(2), (3,), dtype=torch.float64), predictor=p)
    assert torch.isfinite(out).all() and min(seen) > 0
    sig = torch.tensor(p.config["sigmas"], dtype=torch.float64)
    solver, x = p.solver(), torch.ones(1, 3, dtype=torch.float64)
    state = solver.init(x, sig)
    went_below = False
    for i in range(len(sig) - 2):
        t_eff = sig[i] if state.t_eff is None else state.t_eff
        x, state = solver.step(model, x, i, sig, state)
        z = dw * min(4, i + 1) * float(sig[i + 1] - t_eff)
        additive = float(sig[i + 1]) + z
        y = additive / float(sig[i + 1])  # DyWeight's additive calibration, floored smoothly at 0.1 t_{i+1}
        went_below |= y < 0.1
        want = float(sig[i + 1]) * (y if y >= 0.1 else 0.1 * math.exp(y - 0.1))
        assert float(state.t_eff) == pytest.approx(want, rel=1e-12)
    assert went_below == (dw > 0)


def test_dyweight_multiplicative_calibration():
    """Option calibration = 1: neutral is still iPNDM bitwise; below t_next the calibrated time is
    t_next exp(z / t_next), above it additive."""
    sig = learned_helpers.SIG7
    p = learned_helpers.make_sampler(DyWeightSampler, options={"calibration": 1})
    noise = fewstep.noise_for_seeds(range(3), (6,), dtype=torch.float64)

    def gauss(x, s):
        return x / (1 + torch.as_tensor(s).reshape(-1, 1) ** 2)

    assert torch.equal(fewstep.sample(gauss, noise, predictor=p),
                       fewstep.sample(gauss, noise, learned_helpers.SIG7, "ipndm", afs=True, max_order=4))
    for dw in (0.15, -0.15):
        with torch.no_grad():
            p.dw.fill_(dw)
        solver, x = p.solver(), torch.ones(1, 6, dtype=torch.float64)
        state = solver.init(x, sig)
        for i in range(len(sig) - 2):
            t_eff = sig[i] if state.t_eff is None else state.t_eff
            x, state = solver.step(gauss, x, i, sig, state)
            z = dw * min(4, i + 1) * float(sig[i + 1] - t_eff)
            want = float(sig[i + 1]) + z if z >= 0 else float(sig[i + 1]) * math.exp(z / float(sig[i + 1]))
            assert float(state.t_eff) == pytest.approx(want, rel=1e-12)
