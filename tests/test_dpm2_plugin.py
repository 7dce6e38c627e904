"""AMED-Plugin on DPM-Solver-2 as the paper defines it (generalised DPM-Solver-2 with learned r, c, a; 2 evaluations
per step), and where c_n acts in the plugin on DPM-Solver++ (``c_mode``)."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import evaluation, learned
from fewstep.learned import CheckpointError
from fewstep.solvers import DPM2, AMEDPlugin, DPMSolverPP
from conftest import CountingDenoiser, make_gmm


class Const:
    """A predictor giving the same (r, c, a) at every step."""

    uses_features = False

    def __init__(self, r: float, c: float = 1.0, a: float = 1.0) -> None:
        self.values = (r, c, a)

    def __call__(self, i, t_cur, t_next, features, batch):
        return tuple(torch.full((batch,), v, dtype=torch.float64) for v in self.values)


@pytest.fixture(scope="module")
def bed():
    return make_gmm(dim=12, components=4, seed=5), fewstep.noise_for_seeds(range(6), (3, 2, 2), dtype=torch.float64)


# ------------------------------------------------------------------ AMED-Plugin on DPM-Solver-2
@pytest.mark.parametrize("nfe", [3, 5, 7, 9])
def test_nfe_with_afs_is_2_per_step_minus_1(bed, nfe):
    gmm, noise = bed
    n = fewstep.steps_for_nfe("amed_plugin", nfe, afs=True, base="dpm2")
    assert n == (nfe + 3) // 2  # 2 (N - 1) - 1 = nfe
    model = CountingDenoiser(gmm)
    res = fewstep.solve(model, noise, fewstep.get_schedule("polynomial", n), "amed_plugin", base="dpm2", afs=True)
    assert res.nfe == nfe == model.calls
    assert fewstep.get_solver("amed_plugin", base="dpm2").nfe(n) == 2 * (n - 1) == fewstep.get_solver("dpm2").nfe(n)


def _untrained_plugin(sig, afs, feature_dim):
    """An untrained AMED-Plugin sampler on DPM-Solver-2 (float64), a table or a feature network."""
    options = {"scale_dir": 0.1, "scale_time": 0.1}
    if feature_dim is not None:
        options.update(features="adapter", feature_dim=feature_dim)
    cfg = learned.AMEDPluginSampler.make_config(sig, afs=afs, base="dpm2", options=options)
    return learned.AMEDPluginSampler(cfg).double()


@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("n", [2, 4, 6])
def test_untrained_plugin_is_dpm_solver_2(bed, afs, n):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", n)
    want = fewstep.sample(gmm, noise, sig, "dpm2", afs=afs)
    # Without a predictor (r = 0.5, c = a = 1 as plain numbers): bitwise.
    assert torch.equal(fewstep.sample(gmm, noise, sig, "amed_plugin", base="dpm2", afs=afs), want)
    # An untrained predictor (r = sigmoid(0), c = a = 1 + 0.1 tanh(0)) as tensors: to rounding.
    for feature_dim in (None, 4):
        pred = _untrained_plugin(sig, afs, feature_dim)
        solver = pred.solver()
        assert solver == AMEDPlugin(base=DPM2(), predictor=pred)
        got = fewstep.sample(gmm, noise, sig, solver, afs=afs)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("afs", [False, True])
def test_one_step_is_generalised_dpm_solver_2(bed, afs):
    gmm, noise = bed
    r, c, a = 0.3, 1.05, 0.97
    t_cur, t_next = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    x = noise * t_cur
    got = fewstep.sample(gmm, noise, torch.stack([t_cur, t_next]), AMEDPlugin(base=DPM2(), predictor=Const(r, c, a)),
                         afs=afs)
    # By hand (Zhou et al., 2024, Tab. 1, generalised DPM-Solver-2; the reference code's dpm_2_sampler).
    d = x / (1 + t_cur**2).sqrt() if afs else (x - gmm(x, t_cur.expand(6))) / t_cur
    s = t_next**r * t_cur ** (1 - r)
    x_s = x + (s - t_cur) * d
    d_s = (x_s - gmm(x_s, (a * s).expand(6))) / s
    want = x + c * (t_next - t_cur) * (1 / (2 * r) * d_s + (1 - 1 / (2 * r)) * d)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("feature_dim", [None, 4])
def test_gradients_reach_r_c_a(bed, feature_dim):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 4)
    torch.manual_seed(0)
    pred = _untrained_plugin(sig, False, feature_dim)
    assert pred.num_intervals == 3
    x = fewstep.sample(gmm, noise, sig, AMEDPlugin(base=DPM2(), predictor=pred), enable_grad=True)
    x.square().sum().backward()
    if feature_dim is None:
        g = pred.table.grad
        assert g is not None and (g.abs() > 0).all()  # every step's r, c and a
    else:
        g = pred.fc2.weight.grad
        assert g is not None and (g.abs().sum(1) > 0).all()  # rows: r, c, a


def test_plugin_on_heun_or_other_r_is_refused():
    with pytest.raises(ValueError, match="not defined on heun"):
        fewstep.get_solver("amed_plugin", base="heun")
    with pytest.raises(ValueError, match="default r=0.5"):
        fewstep.get_solver("amed_plugin", base="dpm2", r=0.75)
    with pytest.raises(ValueError, match="c_mode='data'"):
        fewstep.get_solver("amed_plugin", base="dpm2", c_mode="data")


def test_short_training_beats_dpm_solver_2_at_nfe_5(tmp_path):
    """Measured (1024 training samples, ~3 s): RMSE 0.215x plain DPM-Solver-2 with AFS at NFE 5 on this bed."""
    gmm = make_gmm(dim=12, components=4, seed=5)
    noise = fewstep.noise_for_seeds(range(10**6, 10**6 + 200), (12,), dtype=torch.float64)  # held out
    ref = fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", 257), "deis", max_order=4, deis_mode="logrho")
    n = fewstep.steps_for_nfe("amed_plugin", 5, afs=True, base="dpm2")
    plain = evaluation.rmse(fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", n), "dpm2", afs=True), ref)
    pred = learned.train("plugin", gmm, shape=(12,), base="dpm2", num_steps=n,
                         budget=learned.Budget(total_samples=1024, batch=32), progress=False)
    res = fewstep.solve(gmm, noise, predictor=pred)
    assert res.nfe == 5
    ratio = evaluation.rmse(res.x, ref) / plain
    assert ratio < 0.4, ratio
    # The checkpoint round-trips to the same solver and samples.
    loaded = learned.load(pred.save(tmp_path / "dpm2.safetensors"))
    assert loaded.config["method"] == "plugin" and loaded.config["base"] == {"solver": "dpm2", "options": {}}
    assert loaded.options["c_mode"] == "increment" and loaded.describe() == "plugin on dpm2"
    assert isinstance(loaded.solver(), AMEDPlugin) and isinstance(loaded.solver().base, DPM2)
    assert torch.equal(fewstep.sample(gmm, noise, predictor=loaded), res.x)


# ------------------------------------------------------------------ c_mode of the plugin on DPM-Solver++
def test_c_modes_agree_at_c_1(bed):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 5)
    out = [fewstep.sample(gmm, noise, sig, AMEDPlugin(base=DPMSolverPP(max_order=3), predictor=Const(0.4, 1.0, 0.98),
                                                      c_mode=mode), afs=True) for mode in ("increment", "data")]
    assert torch.equal(*out)


@pytest.mark.parametrize("max_order", [1, 2])
def test_c_modes_differ_by_the_formula(bed, max_order):
    gmm, noise = bed
    r, c = 0.4, 1.1
    t0, t1 = 3.0, 0.8
    s = t1**r * t0 ** (1 - r)
    sig = torch.tensor([t0, t1], dtype=torch.float64)
    base = DPMSolverPP(max_order=max_order)
    inc, data = (fewstep.sample(gmm, noise, sig, AMEDPlugin(base=base, predictor=Const(r, c), c_mode=m))
                 for m in ("increment", "data"))
    # The base's two sub-steps on the refined schedule t0 -> s -> t1.
    x_s = fewstep.sample(gmm, noise, torch.tensor([t0, s], dtype=torch.float64), base)
    x_b = fewstep.sample(gmm, noise, torch.tensor([t0, s, t1], dtype=torch.float64), base)
    tol = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inc, x_s + c * (x_b - x_s), **tol)  # the whole increment scaled
    torch.testing.assert_close(data, (t1 / s) * x_s + c * (x_b - (t1 / s) * x_s), **tol)  # data terms only
    torch.testing.assert_close(data - inc, (c - 1) * (1 - t1 / s) * x_s, **tol)
    assert (data - inc).abs().max() > 1e-3
    # In noise prediction the step's linear part is x_s itself: the modes coincide.
    noise_base = DPMSolverPP(max_order=max_order, predict_x0=False)
    a, b = (fewstep.sample(gmm, noise, sig, AMEDPlugin(base=noise_base, predictor=Const(r, c), c_mode=m))
            for m in ("increment", "data"))
    assert torch.equal(a, b)


def test_c_mode_is_checked():
    with pytest.raises(ValueError, match="c_mode must be one of 'increment', 'data'"):
        fewstep.get_solver("amed_plugin", base="dpmpp", c_mode="all")
    for base in ("ipndm", "unipc", "euler", "deis"):
        with pytest.raises(ValueError, match="needs base 'dpmpp'"):
            fewstep.get_solver("amed_plugin", base=base, c_mode="data")
    with pytest.raises(ValueError, match="method 'amed' has no option.s. c_mode"):
        learned.train("amed", make_gmm(), shape=(4,), options={"c_mode": "data"}, progress=False)
    with pytest.raises(ValueError, match="method 'amed' is built on amed and takes no base solver"):
        learned.train("amed", make_gmm(), shape=(4,), base={"solver": "dpmpp", "options": {}}, progress=False)
    with pytest.raises(ValueError, match="needs base 'dpmpp'"):
        learned.train("plugin", make_gmm(), shape=(4,), base="ipndm", options={"c_mode": "data"}, progress=False)


def _train_small(gmm, base, **options):
    return learned.train("plugin", gmm, shape=(3, 2, 2), num_steps=4, base=base, options={"scale_dir": 0.1, **options},
                         teacher=learned.Teacher("deis", {"max_order": 4, "deis_mode": "logrho"}, M=4),
                         budget=learned.Budget(batch=16, total_samples=64), progress=False)


def test_c_mode_round_trips_through_the_checkpoint(bed, tmp_path):
    gmm, noise = bed
    pred = _train_small(gmm, {"solver": "dpmpp", "options": {"max_order": 2}}, c_mode="data")
    assert pred.solver().c_mode == "data" and pred.solver().base == DPMSolverPP(max_order=2)
    loaded = learned.load(pred.save(tmp_path / "data.safetensors"))
    assert loaded.config["base"] == {"solver": "dpmpp", "options": {"max_order": 2}}
    assert loaded.options["c_mode"] == "data"
    assert loaded.solver().c_mode == "data"
    x = fewstep.sample(gmm, noise, predictor=loaded)
    assert torch.equal(x, fewstep.sample(gmm, noise, predictor=pred))
    # The learned c_n belong to their mode: the same predictor in the other mode is refused.
    sig = torch.tensor(loaded.config["sigmas"], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"trained as plugin on dpmpp \(max_order=2\) \((.*, )?c_mode=data(, .*)?\) "
                                         r"\(without time shifts\); it is inside amed_plugin on dpmpp;"):
        fewstep.sample(gmm, noise, sig, AMEDPlugin(base=DPMSolverPP(max_order=2), predictor=loaded), afs=True)
    inc = _train_small(gmm, {"solver": "dpmpp", "options": {"max_order": 2}})
    assert inc.solver().c_mode == "increment"
    assert not torch.equal(fewstep.sample(gmm, noise, predictor=inc), x)


def _rewrite_config(path, mutate):
    """Forge the JSON config of a saved sampler (the weights and their digest stay valid)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    mutate(cfg)
    meta["config"] = json.dumps(cfg)
    save_file(tensors, str(path), metadata=meta)


def test_the_refusal_describes_the_solver_instance(bed):
    """Putting a c_mode='data' sampler into an increment-mode AMEDPlugin on DPM-Solver++ is refused with both
    sides described: what it was trained as, and the instance it is inside (its base, not only the class name)."""
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 4)
    pred = learned.AMEDPluginSampler(learned.AMEDPluginSampler.make_config(
        sig, afs=True, base={"solver": "dpmpp", "options": {"max_order": 2}}, options={"c_mode": "data"}))
    with pytest.raises(ValueError, match=r"trained as plugin on dpmpp \(max_order=2\) \(c_mode=data\).*; "
                                         r"it is inside [^;]*dpmpp"):
        fewstep.sample(gmm, noise, sig, AMEDPlugin(base=DPMSolverPP(max_order=2), predictor=pred), afs=True)


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["options"].update(c_mode="data"), r"base/options: .*c_mode='data'.* needs base 'dpmpp', got 'ipndm'"),
    (lambda c: c["options"].update(c_mode="all"), "options.c_mode must be one of 'increment', 'data'"),
    (lambda c: c["base"]["options"].update(predictor=1), "base: solver 'ipndm' got unknown option.s. predictor"),
    (lambda c: c["base"]["options"].update(base="euler"), "base: solver 'ipndm' got unknown option.s. base"),
    (lambda c: c["options"].update(predictor=1), "options must be an object with exactly"),
], ids=["data-on-ipndm", "unknown-mode", "predictor-in-base", "base-in-base", "predictor-in-options"])
def test_checkpoint_with_bad_c_mode_is_refused(bed, tmp_path, mutate, match):
    gmm, _ = bed
    pred = _train_small(gmm, "ipndm")
    path = pred.save(tmp_path / "bad.safetensors")
    _rewrite_config(path, mutate)
    with pytest.raises(CheckpointError, match=match):
        learned.load(path)
