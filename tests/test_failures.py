"""Failure behaviour of the sampling loop, training and predictor files (issue 16): non-finite state blamed on the
right party, error messages that cannot crash, no lost training, checks that a solver instance cannot bypass,
float32 host sigmas, reproducible files, determinism whatever torch's global settings."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.learned import AMEDPluginSampler, AMEDSampler, CheckpointError
from fewstep.solvers import AMEDPlugin, AMEDSolver, get_solver

from conftest import make_gmm

SHAPE = (4,)


@pytest.fixture(scope="module")
def gmm():
    g = make_gmm()
    g.model_id = "gmm4"
    return g


@pytest.fixture(scope="module")
def plugin(gmm):
    return _train_plugin(gmm, batch=8, total_samples=16)


def _train_plugin(gmm, *, shape=SHAPE, batch, total_samples, lr=None, options=None, **kw):
    """A small AMED-Plugin on iPNDM (4 sigmas, teacher with M = 1)."""
    return learned.train("plugin", gmm, shape=shape, base="ipndm", num_steps=4, options=options,
                         teacher=learned.Teacher(M=1), budget=learned.Budget(batch=batch, total_samples=total_samples,
                                                                             lr=lr), progress=False, **kw)


def test_noise_does_not_depend_on_the_global_default_dtype():
    ref = fewstep.noise_for_seeds([0, 1], (3, 6, 6))
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert torch.equal(fewstep.noise_for_seeds([0, 1], (3, 6, 6)), ref)
    finally:
        torch.set_default_dtype(old)


def test_nan_message_with_per_sample_sigma_does_not_crash(gmm, plugin):
    calls = {"n": 0}

    def bad(x, sigma):
        calls["n"] += 1
        return gmm(x, sigma) * (float("nan") if calls["n"] > 2 else 1.0)

    bad.model_id = "gmm4"
    with pytest.raises(fewstep.NonFiniteError, match="denoiser returned NaN/inf at step"):
        fewstep.sample(bad, fewstep.noise_for_seeds(range(3), SHAPE, dtype=torch.float64), predictor=plugin)


def test_non_finite_solver_state_blames_the_learned_parameters(gmm):
    sig = fewstep.get_schedule("polynomial", 4)
    pred = AMEDSampler(AMEDSampler.make_config(sig, afs=True))
    assert pred.num_intervals == 3
    with torch.no_grad():
        pred.table[1, 1] = float("nan")
    with pytest.raises(fewstep.NonFiniteError, match="learned parameters or the schedule"):
        fewstep.sample(gmm, fewstep.noise_for_seeds(range(2), SHAPE, dtype=torch.float64), sig,
                       AMEDSolver(predictor=pred), afs=True)


def test_infinite_learning_rate_is_refused(gmm):
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        learned.train("amed", gmm, shape=SHAPE, num_steps=4, budget=learned.Budget(lr=float("inf")), progress=False)
    with pytest.raises(ValueError, match="schedule lr must be a positive finite number"):
        learned.train("amed", gmm, shape=SHAPE, num_steps=4,
                      schedule=learned.ScheduleSpec(learn=True, lr=float("nan")), progress=False)


def test_diverging_training_is_a_clear_error(gmm):
    with pytest.raises(fewstep.NonFiniteError, match="lower the learning rate"):
        _train_plugin(gmm, batch=4, total_samples=16, lr=1e308, options={"scale_dir": 0.5})


def test_failed_final_save_keeps_the_training(gmm, tmp_path, monkeypatch):
    out, state = tmp_path / "p.safetensors", tmp_path / "p.state"
    kw = dict(batch=4, total_samples=12)

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AMEDPluginSampler, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _train_plugin(gmm, checkpoint=learned.Checkpointing(out=out, state=state), **kw)
    assert state.exists() and not out.exists()  # the finished training is kept
    monkeypatch.undo()
    pred = _train_plugin(gmm, checkpoint=learned.Checkpointing(out=out, state=state, resume=True), **kw)
    assert out.exists() and not state.exists()
    assert len(pred.log.losses) == 3  # nothing retrained: the state held all 3 iterations
    ref = _train_plugin(gmm, checkpoint=learned.Checkpointing(out=tmp_path / "q.safetensors"), **kw)
    assert torch.equal(pred.table, ref.table)


def test_a_predictor_inside_a_solver_instance_is_checked(gmm, plugin):
    noise = fewstep.noise_for_seeds(range(2), SHAPE, dtype=torch.float64)
    sig = torch.tensor(plugin.config["sigmas"], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"trained as plugin on ipndm \(without time shifts\); it is inside amed;"):
        fewstep.sample(gmm, noise, sig, AMEDSolver(predictor=plugin), afs=True)
    with pytest.raises(ValueError, match=r"trained as plugin on ipndm \(without time shifts\); it is inside amed_plugin"):
        fewstep.sample(gmm, noise, sig, AMEDPlugin(base=get_solver("euler"), predictor=plugin), afs=True)
    with pytest.raises(ValueError, match="other sigmas"):
        fewstep.sample(gmm, noise, fewstep.get_schedule("logsnr", 4), plugin.solver(), afs=True)
    with pytest.raises(ValueError, match="afs=True"):
        fewstep.sample(gmm, noise, sig, plugin.solver(), afs=False)
    x = fewstep.sample(gmm, noise, sig, plugin.solver(), afs=True)
    assert torch.equal(x, fewstep.sample(gmm, noise, predictor=plugin))


def test_the_refusal_names_the_solver_instance_it_is_inside(gmm, plugin):
    """The refusal describes the solver instance the sampler was put into (its base), not only its class name:
    "inside amed_plugin" alone reads like the trained plugin itself."""
    noise = fewstep.noise_for_seeds(range(2), SHAPE, dtype=torch.float64)
    sig = torch.tensor(plugin.config["sigmas"], dtype=torch.float64)
    with pytest.raises(ValueError, match="trained as plugin on ipndm.*; it is inside [^;]*euler"):
        fewstep.sample(gmm, noise, sig, AMEDPlugin(base=get_solver("euler"), predictor=plugin), afs=True)


def test_float32_copy_of_the_trained_sigmas_is_accepted(gmm, plugin):
    noise = fewstep.noise_for_seeds(range(2), SHAPE, dtype=torch.float64)
    sig32 = torch.tensor(plugin.config["sigmas"]).float()
    assert torch.equal(fewstep.sample(gmm, noise, sig32, predictor=plugin),
                       fewstep.sample(gmm, noise, predictor=plugin))
    x = fewstep.k.sample_learned(gmm, noise * sig32[0].double(), torch.cat([sig32, sig32.new_zeros(1)]),
                                 predictor=plugin, disable=True)
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="trained for sigmas"):
        fewstep.sample(gmm, noise, sig32 * 1.001, predictor=plugin)


def test_checkpoint_with_nan_weights_is_refused(plugin, tmp_path):
    from fewstep.io import tensor_digest, write_safetensors
    import json

    bad = {k: v.clone() for k, v in plugin.state_dict().items()}
    bad["table"][0, 0] = float("nan")
    meta = {"format": learned.FORMAT, "config": json.dumps(plugin.config), "sha256": tensor_digest(bad)}
    write_safetensors(tmp_path / "nan.safetensors", bad, meta)  # digest consistent: only the value is wrong
    with pytest.raises(CheckpointError, match="holds NaN/inf"):
        learned.load(tmp_path / "nan.safetensors")
    p = AMEDSampler(AMEDSampler.make_config(fewstep.get_schedule("polynomial", 3), afs=True))
    assert p.num_intervals == 2
    with torch.no_grad():
        p.table[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN/inf"):
        p.save(tmp_path / "inf.safetensors")
    assert not (tmp_path / "inf.safetensors").exists()


def test_identical_predictors_give_identical_files(plugin, tmp_path):
    a, b = plugin.save(tmp_path / "a.safetensors"), plugin.save(tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


def test_cli_refuses_infinite_lr_and_conflicts(tmp_path, capsys):
    from fewstep.cli import main

    assert main(["train", "--model", "gmm", "--lr", "inf", "--out", str(tmp_path / "p.safetensors")]) == 2
    assert "--lr must be a positive finite number" in capsys.readouterr().err
    assert main(["sample", "--model", "gmm", "--predictor", "x.safetensors", "--solver", "heun", "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "--solver cannot be combined with --predictor" in capsys.readouterr().err
    assert main(["sample", "--model", "gmm", "--shape", "3,16,16", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--shape 3,16,16 does not apply" in capsys.readouterr().err


def test_degenerate_schedules_are_refused(gmm):
    noise = fewstep.noise_for_seeds(range(2), SHAPE, dtype=torch.float64)
    one_ulp = torch.tensor([80.0, 1.0, float(torch.tensor(1.0, dtype=torch.float64).nextafter(torch.tensor(0.0,
                            dtype=torch.float64))), 0.002], dtype=torch.float64)
    with pytest.raises(ValueError, match="closer than a relative"):
        fewstep.sample(gmm, noise, one_ulp, "ipndm")
    with pytest.raises(ValueError, match="meta tensor"):
        fewstep.sample(gmm, noise, torch.empty(4, device="meta"), "ipndm")
    from fewstep.cli import main

    import json
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "s.json").write_text(json.dumps({"sigmas": one_ulp.tolist()}))
    assert main(["sample", "--model", "gmm", "--schedule", str(d / "s.json"), "--out", str(d / "x.npz")]) == 2


def test_forged_huge_config_is_refused_before_allocation(plugin, tmp_path):
    import json

    from fewstep.io import tensor_digest, write_safetensors

    cfg = json.loads(json.dumps(plugin.config))
    cfg["options"].update(features="adapter", feature_dim=60000, hidden=60000, feat_proj=60000)
    t = {"table": torch.zeros(3, 3, dtype=torch.float64)}
    write_safetensors(tmp_path / "big.safetensors", t,
                      {"format": learned.FORMAT, "config": json.dumps(cfg), "sha256": tensor_digest(t)})
    # The shapes implied by the config are computed on the meta device and compared with the file's header
    # before any module is built (a real 60000 x 60000 float64 layer would need 29 GB).
    with pytest.raises(CheckpointError, match="tensors do not match the configuration"):
        learned.load(tmp_path / "big.safetensors")
    cfg["options"]["hidden"] = 10**9
    write_safetensors(tmp_path / "huge.safetensors", t,
                      {"format": learned.FORMAT, "config": json.dumps(cfg), "sha256": tensor_digest(t)})
    with pytest.raises(CheckpointError, match=r"options.hidden must be a int in \[1, 65536\]"):
        learned.load(tmp_path / "huge.safetensors")


def test_deeply_nested_or_huge_numbers_in_a_checkpoint_config(plugin, tmp_path):
    from fewstep.io import tensor_digest, write_safetensors

    t = {k: v.detach() for k, v in plugin.state_dict().items()}
    for fmt in (learned.FORMAT, "fewstep-amed-predictor"):  # the current format and the old AMED one
        for bad in ("[" * 100000 + "]" * 100000, '{"version": ' + "9" * 5000 + "}"):
            write_safetensors(tmp_path / "n.safetensors", t, {"format": fmt, "config": bad,
                                                               "sha256": tensor_digest(t)})
            with pytest.raises(CheckpointError, match="no valid JSON config"):
                learned.load(tmp_path / "n.safetensors")


# ------------------------------------------------------------------------------------ the same classes by the CLI


def _nan_checkpoint(plugin, path):
    import json

    from fewstep.io import tensor_digest, write_safetensors

    bad = {k: v.clone() for k, v in plugin.state_dict().items()}
    bad["table"][0, 0] = float("nan")
    write_safetensors(path, bad, {"format": learned.FORMAT, "config": json.dumps(plugin.config),
                                  "sha256": tensor_digest(bad)})
    return path


def test_cli_refuses_a_nan_predictor_and_writes_nothing(gmm, tmp_path, capsys):
    from fewstep.cli import main

    pred = _train_plugin(fewstep.denoisers.gmm_denoiser(), shape=(3, 8, 8), batch=4, total_samples=4)
    path = _nan_checkpoint(pred, tmp_path / "nan.safetensors")
    assert main(["sample", "--model", "gmm", "--predictor", str(path), "--seeds", "0-1",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "holds NaN/inf" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_cli_failed_final_save_keeps_the_training_and_resumes(tmp_path, monkeypatch, capsys):
    from fewstep.cli import main

    out = tmp_path / "p.safetensors"
    cmd = ["train", "--model", "gmm", "--method", "plugin", "--base", "ipndm", "--nfe", "5", "--M", "1", "--batch", "4",
           "--total-samples", "8", "--out", str(out)]  # no --checkpoint-every: the final state is kept anyway

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AMEDPluginSampler, "save", disk_full)
    assert main(cmd) == 2
    assert "No space left" in capsys.readouterr().err
    assert (tmp_path / "p.safetensors.train-state").exists() and not out.exists()
    monkeypatch.undo()
    assert main(cmd + ["--resume"]) == 0
    assert out.exists() and not (tmp_path / "p.safetensors.train-state").exists()


def test_cli_identical_trainings_write_identical_files(tmp_path):
    from fewstep.cli import main

    for name in ("a", "b"):
        assert main(["train", "--model", "gmm", "--method", "plugin", "--base", "ipndm", "--nfe", "5", "--M", "1",
                     "--batch", "4", "--total-samples", "4", "--out", str(tmp_path / f"{name}.safetensors")]) == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_batch_smaller_than_the_process_count_is_refused(gmm, monkeypatch):
    import fewstep.learned.distill as distill_mod

    monkeypatch.setattr(distill_mod, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match="batch 1 is smaller than the 2 processes"):
        _train_plugin(gmm, batch=1, total_samples=2)


def test_cli_refuses_a_forged_checkpoint_config(plugin, tmp_path, capsys):
    import json

    from fewstep.cli import main
    from fewstep.io import tensor_digest, write_safetensors

    cfg = json.loads(json.dumps(plugin.config))
    cfg["options"]["hidden"] = 10**9
    t = {"table": torch.zeros(3, 3, dtype=torch.float64)}
    write_safetensors(tmp_path / "f.safetensors", t,
                      {"format": learned.FORMAT, "config": json.dumps(cfg), "sha256": tensor_digest(t)})
    assert main(["sample", "--model", "gmm", "--predictor", str(tmp_path / "f.safetensors"),
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "options.hidden must be a int in [1, 65536]" in capsys.readouterr().err


def test_cli_train_refuses_a_batch_smaller_than_the_processes(tmp_path, monkeypatch, capsys):
    from fewstep import distributed
    from fewstep.cli import main

    monkeypatch.setattr(distributed, "init_distributed", lambda device=None: distributed.DistInfo(world_size=2))
    monkeypatch.setattr(distributed, "finish", lambda info, barrier=True: None)
    # A tiny budget, so that a missing check fails in seconds rather than after a full training.
    assert main(["train", "--model", "gmm", "--batch", "1", "--total-samples", "4", "--M", "1",
                 "--out", str(tmp_path / "p.safetensors")]) == 2
    assert "--batch 1 is smaller than the 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "p.safetensors").exists()


def test_cli_rerun_removes_stale_temporaries_of_its_npz(tmp_path):
    import os
    import time

    from fewstep.cli import main

    stale = tmp_path / ".x.npz.k1ll3d.npz"  # what a killed run's atomic write leaves (fewstep.io.atomic_path)
    stale.write_bytes(b"partial")
    old = time.time() - 60
    os.utime(stale, (old, old))
    other = tmp_path / ".x.npz.notes"  # not a temporary of ours
    other.write_text("keep")
    assert main(["sample", "--model", "gmm", "--seeds", "0-1", "--out", str(tmp_path / "x.npz")]) == 0
    assert not stale.exists() and other.exists() and (tmp_path / "x.npz").exists()


def test_cli_samples_do_not_depend_on_the_global_default_dtype(tmp_path):
    import numpy as np

    from fewstep.cli import main

    assert main(["sample", "--model", "gmm", "--seeds", "0-2", "--out", str(tmp_path / "a.npz")]) == 0
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert main(["sample", "--model", "gmm", "--seeds", "0-2", "--out", str(tmp_path / "b.npz")]) == 0
    finally:
        torch.set_default_dtype(old)
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])
