"""No result lost (issue 26, class 9): an output that is an input is refused, an existing output needs --overwrite
in every command that writes, an interrupted training state is never restarted over, and two runs started together
on one output cannot both succeed (the OUT.lock claim of fewstep.cli.outputs / fewstep.io.claim_output)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_gmm

from fewstep import cli, learned
from fewstep.cli import main, outputs
from fewstep.io import OutputBusyError, claim_output
from fewstep.schedules import get_schedule, save_schedule

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), str(ROOT)]),
       "OMP_NUM_THREADS": "1"}
FEWSTEP = [sys.executable, "-c", "import sys; from fewstep import cli; sys.exit(cli.main(sys.argv[1:]))"]


@pytest.fixture
def gmm_model(monkeypatch):
    gmm = make_gmm()
    gmm.model_id = "test-gmm"
    monkeypatch.setattr(cli.args, "load_model", lambda name, shape=None, *a: (gmm, (4,), "test-gmm", torch.float64))
    return gmm


def test_schedule_export_never_writes_over_its_source(tmp_path, capsys):
    path = save_schedule(tmp_path / "s.json", get_schedule("logsnr", 3))
    before = path.read_bytes()
    for extra in ([], ["--overwrite"], ["--format", "list", "--overwrite"]):
        assert main(["schedule", "export", str(path), "--out", str(path)] + extra) == 2
        assert "is also an input" in capsys.readouterr().err
        assert path.read_bytes() == before
    link = tmp_path / "link.json"
    link.symlink_to(path)  # the same file by another name
    assert main(["schedule", "export", str(path), "--out", str(link), "--overwrite"]) == 2
    assert path.read_bytes() == before and not (tmp_path / "link.json.lock").exists()


def test_every_writing_command_refuses_an_existing_output(tmp_path, capsys, gmm_model):
    sched = save_schedule(tmp_path / "s.json", get_schedule("logsnr", 3))
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    npz = tmp_path / "a.npz"
    assert main(["sample", "--model", "gmm", "--nfe", "3", "--seeds", "0-3", "--out", str(npz)]) == 0
    stem = tmp_path / "fig"
    Path(str(stem) + ".csv").write_text("keep me")
    cases = [
        ["schedule", "export", str(sched), "--out", str(taken)],
        ["compare", str(npz), str(npz), "--json", str(taken)],
        ["analyze", "pca", "--model", "gmm", "--seeds", "0-3", "--steps", "2", "--out", str(stem)],
        ["bench", "paper-table5", "--out", str(taken)],
        ["tune", "--model", "gmm", "--nfe", "3", "--out", str(taken)],
        ["train", "--model", "gmm", "--nfe", "3", "--out", str(taken)],
        ["sample", "--model", "gmm", "--nfe", "3", "--seeds", "0-3", "--out", str(npz)],
        ["demo", "--bed", "--out", str(tmp_path / "demo")],
    ]
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "results.md").write_text("keep me")
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "exists; pass --overwrite" in err, (argv, err)
    assert taken.read_text() == "keep me" and Path(str(stem) + ".csv").read_text() == "keep me"
    assert not list(tmp_path.rglob("*.lock"))
    assert main(["schedule", "export", str(sched), "--out", str(taken), "--overwrite"]) == 0
    assert taken.read_text() != "keep me"


def test_every_writing_command_is_in_the_outputs_table():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        writes = any(o in p._option_string_actions for o in ("--out", "--json", "--save-ref-stats"))
        if writes:
            assert name in outputs.OUTPUTS, name
            assert "--overwrite" in p._option_string_actions, name


def test_train_refuses_to_restart_over_an_interrupted_state(tmp_path, capsys, gmm_model):
    out = tmp_path / "p.safetensors"
    state = tmp_path / "p.safetensors.train-state"
    state.write_bytes(b"an interrupted run")
    argv = ["train", "--model", "gmm", "--method", "amed", "--nfe", "3", "--features", "none", "--no-tune",
            "--total-samples", "16", "--batch", "8", "--M", "1", "--out", str(out)]
    for extra in ([], ["--overwrite"]):
        assert main(argv + extra) == 2
        assert f"a training state exists at {state}" in capsys.readouterr().err
        assert state.read_bytes() == b"an interrupted run" and not out.exists()
    # The library refuses too (a state path given without resume).
    with pytest.raises(ValueError, match="a training state exists"):
        learned.train("amed", gmm_model, shape=(4,), nfe=3, options={"features": "none"},
                      budget=learned.Budget(batch=8, total_samples=16), teacher=learned.Teacher(M=1),
                      checkpoint=learned.Checkpointing(out=out, state=state))
    assert state.read_bytes() == b"an interrupted run"


def test_a_held_output_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "x.json"
    holder = subprocess.Popen(FEWSTEP[:2] + [
        "import sys, time; from fewstep.io import claim_output\n"
        f"with claim_output({str(out)!r}):\n    print('held', flush=True); time.sleep(30)"],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="being written by another run"):
            with claim_output(out):
                pass
        assert main(["schedule", "export", str(save_schedule(tmp_path / "s.json", get_schedule("logsnr", 3))),
                     "--out", str(out)]) == 2
    finally:
        holder.kill()
        holder.wait()
    lock = tmp_path / "x.json.lock"
    assert lock.exists()  # killed: its lock stays, naming a dead process of this host
    with claim_output(out) as p:
        assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}"
        p.write_text("{}")
    assert not lock.exists() and out.read_text() == "{}"


@pytest.mark.parametrize("command", ["sample", "train"])
def test_two_runs_started_together_on_one_output_one_fails(tmp_path, command):
    out = tmp_path / ("s.npz" if command == "sample" else "p.safetensors")
    gmm = ["--model", "factory_model:make", "--shape", "12"]
    argv = {"sample": ["sample", *gmm, "--solver", "heun", "--nfe", "400", "--seeds", "0-3999", "--out", str(out)],
            "train": ["train", *gmm, "--method", "amed", "--nfe", "3", "--features", "none", "--no-tune",
                      "--total-samples", "256", "--batch", "8", "--M", "1", "--out", str(out)]}[command]
    procs = [subprocess.Popen(FEWSTEP + argv, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "being written by another run" in err or "exists; pass --overwrite" in err, err
    assert out.exists() and not list(tmp_path.glob("*.lock"))
