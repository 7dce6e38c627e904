"""AMED-Solver, AMED-Plugin, predictor, training and checkpoints."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.learned import CheckpointError
from conftest import CountingDenoiser, make_gmm

BASES = [("euler", {}), ("dpmpp", {"max_order": 3}), ("ipndm", {}), ("ipndm_v", {}),
         ("unipc", {"max_order": 3}), ("unipc", {"max_order": 2, "variant": "bh1"}), ("deis", {})]


@pytest.fixture(scope="module")
def bed():
    return make_gmm(dim=12, components=4, seed=5), fewstep.noise_for_seeds(range(6), (3, 2, 2), dtype=torch.float64)


def refined(sig):
    out = []
    for i in range(len(sig) - 1):
        out += [sig[i], sig[i + 1] ** 0.5 * sig[i] ** 0.5]
    return torch.stack(out + [sig[-1]])


@pytest.mark.parametrize("base,opts", BASES)
@pytest.mark.parametrize("afs", [False, True])
def test_plugin_with_defaults_is_base_on_refined_schedule(bed, base, opts, afs):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 5)
    model = CountingDenoiser(gmm)
    plug = fewstep.solve(model, noise, sig, "amed_plugin", base=base, afs=afs, **opts)
    direct = fewstep.solve(gmm, noise, refined(sig), base, afs=afs, **opts)
    assert torch.equal(plug.x, direct.x)
    assert plug.nfe == direct.nfe == model.calls


def test_plugin_with_untrained_predictor_matches_base(bed):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 5)
    pred = learned.AMEDPluginSampler(learned.AMEDPluginSampler.make_config(
        sig, afs=False, base="ipndm", options={"scale_dir": 0.1, "scale_time": 0.1}))
    solver = pred.solver()
    assert isinstance(solver, fewstep.solvers.AMEDPlugin) and solver.base == fewstep.get_solver("ipndm")
    x = fewstep.sample(gmm, noise, sig, solver)
    torch.testing.assert_close(x, fewstep.sample(gmm, noise, refined(sig), "ipndm"), rtol=1e-12, atol=1e-12)


def test_amed_solver_defaults_to_dpm_solver_2(bed):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 5)
    torch.testing.assert_close(fewstep.sample(gmm, noise, sig, "amed", afs=True),
                               fewstep.sample(gmm, noise, sig, "dpm2", afs=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["amed", "plugin"])
@pytest.mark.parametrize("feature_dim", [None, 4])
def test_gradients_reach_r_c_a(bed, method, feature_dim):
    gmm, noise = bed
    sig = fewstep.get_schedule("polynomial", 4)
    torch.manual_seed(0)
    options = {"scale_dir": 0.1, "scale_time": 0.1}
    if feature_dim is not None:
        options.update(features="adapter", feature_dim=feature_dim)
    if method == "amed":
        pred = learned.AMEDSampler(learned.AMEDSampler.make_config(sig, afs=False, options=options)).double()
        solver = pred.solver()
        assert isinstance(solver, fewstep.solvers.AMEDSolver)
    else:
        pred = learned.AMEDPluginSampler(learned.AMEDPluginSampler.make_config(
            sig, afs=False, base="ipndm", options=options)).double()
        solver = pred.solver()
        assert isinstance(solver, fewstep.solvers.AMEDPlugin)
    x = fewstep.sample(gmm, noise, sig, solver, enable_grad=True)
    x.square().sum().backward()
    if feature_dim is None:
        g = pred.table.grad
        assert g is not None and (g[:, 0].abs() > 0).all() and (g[:, 1].abs() > 0).all() and (g[:, 2].abs() > 0).all()
    else:
        g = pred.fc2.weight.grad
        assert g is not None and (g.abs().sum(1) > 0).all()  # rows: r, c, a


def _train_small(gmm, method="amed", *, seed=0, batch=16, total_samples=64, M=4, **kw):
    return learned.train(method, gmm, shape=(3, 2, 2), num_steps=4, progress=False,
                         teacher=learned.Teacher("deis", {"max_order": 4, "deis_mode": "logrho"}, M=M),
                         budget=learned.Budget(batch=batch, total_samples=total_samples, seed=seed), **kw)


def test_training_is_deterministic(bed):
    gmm, _ = bed
    a = _train_small(gmm, seed=3, options={"features": "adapter"})
    b = _train_small(gmm, seed=3, options={"features": "adapter"})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = _train_small(gmm, seed=4, options={"features": "adapter"})
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


@pytest.mark.parametrize("features", ["none", "adapter"])
@pytest.mark.parametrize("method,base", [("amed", None), ("plugin", "ipndm")])
def test_save_load_sample_bitwise(bed, tmp_path, features, method, base):
    gmm, noise = bed
    pred = _train_small(gmm, method, base=base, options={"features": features, "scale_time": 0.1},
                        model_id="gmm-test")
    path = pred.save(tmp_path / "p.safetensors")
    loaded = learned.load(path)
    assert loaded.config == json.loads(json.dumps(pred.config))
    x1 = fewstep.sample(gmm, noise, predictor=pred)
    x2 = fewstep.sample(gmm, noise, predictor=loaded)
    assert torch.equal(x1, x2)
    res = fewstep.solve(gmm, noise, predictor=loaded)
    assert res.nfe == 5 and torch.equal(res.x, x2)


def test_table_export(bed):
    gmm, _ = bed
    pred = _train_small(gmm, options={"scale_dir": 0.05})
    table = pred.table_values()
    assert len(table) == 3 and all(set(row) == {"r", "c", "a"} for row in table)
    assert all(0 < row["r"] < 1 and 0.95 <= row["c"] <= 1.05 for row in table)
    json.dumps(table)


@pytest.fixture
def ckpt(bed, tmp_path):
    gmm, _ = bed
    pred = _train_small(gmm, model_id="gmm-test")
    return pred.save(tmp_path / "p.safetensors")


def test_rejects_corrupted_weights(ckpt):
    data = bytearray(ckpt.read_bytes())
    data[-3] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        learned.load(ckpt)


def test_rejects_truncated(ckpt):
    ckpt.write_bytes(ckpt.read_bytes()[:-20])
    with pytest.raises(CheckpointError):
        learned.load(ckpt)


def test_rejects_pickle(tmp_path):
    p = tmp_path / "evil.pt"
    p.write_bytes(b"\x80\x04\x95" + b"\x00" * 32)  # the opening of a pickle stream; never unpickled
    with pytest.raises(CheckpointError, match="pickle"):
        learned.load(p)


def test_rejects_mismatched_model_and_solver(ckpt, bed):
    with pytest.raises(CheckpointError, match="trained for model 'gmm-test', not 'other'"):
        learned.load(ckpt, model_id="other")
    pred = learned.load(ckpt)
    assert pred.method == "amed" and learned.read_config(ckpt)["method"] == "amed"
    gmm, noise = bed
    with pytest.raises(ValueError, match="trained as amed, got solver 'ipndm'"):
        fewstep.sample(gmm, noise, solver="ipndm", predictor=pred)
    with pytest.raises(ValueError, match="trained with afs=True"):
        fewstep.sample(gmm, noise, afs=False, predictor=pred)
    with pytest.raises(ValueError, match="trained for sigmas"):
        fewstep.sample(gmm, noise, fewstep.get_schedule("logsnr", 4), predictor=pred)

    class Other:
        model_id = "other"

        def __call__(self, x, s):
            return gmm(x, s)

    with pytest.raises(ValueError, match="trained for model 'gmm-test'"):
        fewstep.sample(Other(), noise, predictor=pred)


def _rewrite_config(path, mutate):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    mutate(cfg)
    meta["config"] = json.dumps(cfg)
    save_file(tensors, str(path), metadata=meta)


def test_rejects_unknown_config_key(ckpt):
    _rewrite_config(ckpt, lambda c: c.update(exec="print('hi')"))
    with pytest.raises(CheckpointError, match="unknown config keys exec"):
        learned.load(ckpt)


def test_rejects_future_version(ckpt):
    _rewrite_config(ckpt, lambda c: c.update(version=99))
    with pytest.raises(CheckpointError, match="version 99"):
        learned.load(ckpt)


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c.update(base={"solver": "ipndm", "options": {}}), r"config base must be \{'solver': 'amed'"),
    (lambda c: c.update(method="plugin", options={**c["options"], "c_mode": "increment"}),
     "config base: the base solver of plugin must be one of"),
    (lambda c: c.update(method="heun"), "config method must be one of"),
    (lambda c: c["options"].update(scale_dir="0.1"), "config options.scale_dir must be a float"),
    (lambda c: c["options"].update(scale_dir=1.0), "config options.scale_dir must be a float .*below 1.0"),
    (lambda c: c["options"].update(features="hook"), "options.feature_dim must be an int for a feature source"),
    (lambda c: c["options"].update(c_mode="increment"), "config options must be an object with exactly"),
    (lambda c: c["options"].pop("hidden"), "config options must be an object with exactly"),
    (lambda c: c.update(afs="yes"), "config afs must be true or false"),
    (lambda c: c.update(model_id=7), "config model_id must be a string or null"),
    (lambda c: c.pop("sigmas"), "config lacks sigmas"),
], ids=["base", "method-plugin", "method-unknown", "option-type", "option-range", "features-without-dim",
        "plugin-option", "missing-option", "afs-type", "model-id-type", "missing-sigmas"])
def test_rejects_forged_options_and_base(ckpt, mutate, match):
    _rewrite_config(ckpt, mutate)
    with pytest.raises(CheckpointError, match=match):
        learned.load(ckpt)
    with pytest.raises(CheckpointError, match=match):
        learned.read_config(ckpt)


def test_rejects_non_checkpoint_safetensors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="not a fewstep learned sampler"):
        learned.load(p)


def test_rejects_garbage_header(tmp_path):
    p = tmp_path / "g.safetensors"
    p.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError):
        learned.load(p)


def test_bad_training_arguments(bed):
    gmm, _ = bed
    with pytest.raises(ValueError, match="method must be one of"):
        _train_small(gmm, "heun")
    with pytest.raises(ValueError, match="base solver of plugin must be one of"):
        _train_small(gmm, "plugin", base="heun")
    with pytest.raises(ValueError, match="loss must be one of final, per_step"):
        _train_small(gmm, objective=learned.Objective(loss="l1"))
    with pytest.raises(ValueError, match="option scale_dir of amed must be a float"):
        _train_small(gmm, options={"scale_dir": 1.5})
    with pytest.raises(ValueError, match="features must be"):
        _train_small(gmm, options={"features": 3})
    with pytest.raises(ValueError, match="denoise_with_features"):
        _train_small(lambda x, s: gmm(x, s), options={"features": "adapter"})


def test_training_beats_dpm_solver_2(bed):
    """A short distillation already halves DPM-Solver-2's error at NFE 5 on a small mixture."""
    gmm, _ = bed
    noise = fewstep.noise_for_seeds(range(1000, 1200), (3, 2, 2), dtype=torch.float64)
    ref = fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", 401), "deis", max_order=4, deis_mode="logrho")
    pred = _train_small(gmm, total_samples=1024, batch=64, M=8, options={"features": "adapter", "scale_dir": 0.05})
    err_amed = (fewstep.sample(gmm, noise, predictor=pred) - ref).norm()
    err_dpm2 = (fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", 4), "dpm2", afs=True) - ref).norm()
    assert err_amed < 0.5 * err_dpm2
