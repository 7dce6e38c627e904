"""The learned samplers of ``fewstep.learned`` (every method of ``METHODS``, and soft start) under torchrun and
resumed (AMED's learned schedule also in test_schedule_learning.py): `fewstep train --method NAME` on 2 gloo
processes equals 1 process up to float rounding, an interrupted run resumed with --resume writes the bitwise
identical sampler file, and --resume refuses a training state written with other settings, naming what differs.

All on the analytic GMM bed (--model gmm, float64) with tiny budgets (64 samples in batches of 16: 4 Adam steps).
One torchrun launch trains every case (this file is its worker, see ``_worker``): starting Python, torch and the
bed costs several seconds per process, the trainings a fraction of a second each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fewstep.learned import METHODS

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

COMMON = ["train", "--model", "gmm", "--nfe", "5", "--total-samples", "64", "--batch", "16", "--M", "2",
          "--threads", "1"]
# Every method of fewstep.learned.METHODS with its defaults (dyweight: learned schedule; gs: time shifts and learned
# schedule; amed and plugin (on iPNDM): --features auto, i.e. the feature network on the bed's own features), EPD
# with K = 2 parallel directions, and LD3's soft start (per-sample start offsets, 2 gradient steps) with time shifts.
_METHOD_ARGS = {"epd": ["--method-options", '{"K": 2}'], "plugin": ["--base", "ipndm"]}
CASES: dict[str, list[str]] = {
    **{m: ["--method", m, *_METHOD_ARGS.get(m, [])] for m in METHODS},
    "soft": ["--method", "dyweight", "--soft-start", "0.05", "--soft-start-steps", "2", "--time-shift"],
}
# Resumed under torchrun (prepared by ``prepared``): "gs" from a 1-process state at iteration 2 of 4, "dyweight"
# from a 1-process final state whose sampler file failed to save (nothing left to train).
RESUMED = {"gs": "gs_part", "dyweight": "dyweight_final"}


def _cmd(case: str, out: Path, *extra: str) -> list[str]:
    return [*COMMON, *CASES[case], "--out", str(out), *extra]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, config) of a sampler file."""
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        return {k: f.get_tensor(k) for k in names}, json.loads(f.metadata()["config"])


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Make the next training stop (KeyboardInterrupt, as Ctrl-C) right after saving its state at ``iteration``."""
    from fewstep.learned.trainstate import TrainState

    real = TrainState.save

    def save_then_stop(self, it, losses):
        real(self, it, losses)
        if it == iteration:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainState, "save", save_then_stop)


# ----------------------------------------------------------------------------------------- shared trainings


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case trained uninterrupted by one process (in this process)."""
    from fewstep.cli import main

    d = tmp_path_factory.mktemp("single")
    for case in CASES:
        assert main(_cmd(case, d / f"{case}.safetensors")) == 0, case
    assert sorted(p.name for p in d.iterdir()) == sorted(f"{c}.safetensors" for c in CASES)  # no state left
    return {case: d / f"{case}.safetensors" for case in CASES}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1-process training states for torchrun to resume: gs stopped after iteration 2, dyweight complete but with
    the final sampler file unsaved (a full disk)."""
    from fewstep.cli import main
    from fewstep.learned import LearnedSampler

    d = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_after(mp, 2)
        assert main(_cmd("gs", d / "gs_part.safetensors", "--checkpoint-every", "1")) == 130
    with pytest.MonkeyPatch.context() as mp:
        def disk_full(self, path):
            raise OSError(28, "No space left on device")

        mp.setattr(LearnedSampler, "save", disk_full)
        assert main(_cmd("dyweight", d / "dyweight_final.safetensors")) == 2
    # the same state where only rank 0 finds it (no shared folder): refused by both ranks, not a hang
    (d / "split.safetensors.train-state").write_bytes((d / "gs_part.safetensors.train-state").read_bytes())
    assert sorted(p.name for p in d.iterdir()) == ["dyweight_final.safetensors.train-state",
                                                   "gs_part.safetensors.train-state",
                                                   "split.safetensors.train-state"]
    return d


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory, prepared: Path) -> tuple[Path, str, str]:
    """One `torchrun --nproc_per_node=2` launch of ``_worker``: every case from scratch, then the resumes."""
    d = tmp_path_factory.mktemp("multi")
    path = os.pathsep.join([str(TESTS), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(Path(__file__)), str(d), str(prepared)],
                       env=env, cwd=d, capture_output=True, text=True, timeout=240, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return d, p.stdout, p.stderr


def _worker(out: Path, prepared: Path) -> int:
    """Run under torchrun: train every case, then resume the prepared states, all through the CLI. The process group
    is joined once for all of them (the CLI's init_distributed finds it joined; its finish only waits at the barrier
    here): gloo does not reliably re-connect a group destroyed and created again in the same processes."""
    from fewstep import distributed
    from fewstep.cli import main

    info = distributed.init_distributed("cpu")
    finish = distributed.finish
    distributed.finish = lambda info, barrier=True: distributed.barrier(info) if barrier else None
    try:
        cache = ["--cache-dir", str(out / "teachers")]  # each rank caches its own shard of the teacher targets
        for case in CASES:
            if (rc := main(_cmd(case, out / f"{case}.safetensors", *cache))) != 0:
                return rc
        if (rc := main(_cmd("dyweight", out / "dyweight_again.safetensors", *cache))) != 0:  # from the cache
            return rc
        for case, name in RESUMED.items():
            if (rc := main(_cmd(case, prepared / f"{name}.safetensors", "--resume"))) != 0:
                return rc
        split = "split" if info.rank == 0 else "split_elsewhere"
        if main(_cmd("gs", prepared / f"{split}.safetensors", "--resume")) != 2:
            return 1
    finally:
        distributed.finish = finish
    finish(info)
    return 0


# ----------------------------------------------------------------------------------------------- 1. torchrun


def _assert_close_files(a: Path, b: Path, tol: float = 1e-10) -> None:
    """Same config (trained sigmas to ``tol``) and weights within ``tol``. Not bitwise: each rank sums the
    gradient of its half of every global batch and all_reduce adds the two halves, a different float summation
    order than one process's; 4 Adam steps (and the learned schedule) carry those last-bit differences on to
    at most ~1e-13 (measured: 7e-18 for epd, 1e-13 for pas). The residual operator's weights are float32
    (``PARAM_DTYPE``), so its summation-order differences are float32 ones (measured 1e-7 relative)."""
    (wa, ca), (wb, cb) = _read(a), _read(b)
    assert {k: v for k, v in ca.items() if k != "sigmas"} == {k: v for k, v in cb.items() if k != "sigmas"}
    torch.testing.assert_close(torch.tensor(ca["sigmas"]), torch.tensor(cb["sigmas"]), rtol=tol, atol=0)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == (METHODS[ca["method"]].PARAM_DTYPE or torch.float64)
        torch.testing.assert_close(wa[k], wb[k], rtol=tol, atol=tol, msg=k)


def test_teacher_cache_under_torchrun(multi):
    """Every rank cached its shard of each case's targets; a second run read them and trained bitwise the same."""
    d, _, stderr = multi
    entries = [json.loads(p.read_text()) for p in (d / "teachers").glob("*.json") if not p.name.endswith(".recipe.json")]
    shards = [e["shard"] for e in entries if e.get("kind") != "reference"]  # training targets (not the report's)
    # methods on the same sigmas share targets, so there are fewer entries than cases
    assert shards.count([0, 2]) == shards.count([1, 2]) >= 2 and len(shards) == 2 * shards.count([0, 2])
    assert (d / "dyweight_again.safetensors").read_bytes() == (d / "dyweight.safetensors").read_bytes()
    assert "teacher targets: read from" in stderr


@pytest.mark.parametrize("case", list(CASES))
def test_two_gloo_processes_give_the_single_process_sampler(case, single, multi):
    d, stdout, _ = multi
    _assert_close_files(d / f"{case}.safetensors", single[case], 1e-5 if case == "residual" else 1e-10)
    w, cfg = _read(single[case])
    assert any(bool(v.abs().max() > 1e-3) for k, v in w.items() if k not in ("r_logit",)), "it did not train"
    if case in ("gs", "soft"):
        assert cfg["time_shift"] and "xi" in w
    if case in ("dyweight", "gs", "soft"):
        assert cfg["schedule"]["kind"] == "learned" and cfg["sigmas"] != cfg["schedule"]["init_sigmas"]
    if case == "soft":
        assert cfg["training"]["soft_start"] == 0.05 and cfg["training"]["soft_start_steps"] == 2
    # the summary from rank 0 only; no training state left behind
    assert stdout.count(f"wrote {d / case}.safetensors") == 1
    assert stdout.count("on 2 process(es)") == len(CASES) + len(RESUMED) + 1  # and dyweight again, from the cache
    assert not list(d.glob("*.train-state"))


def test_torchrun_resumes_a_single_process_state(single, multi, prepared):
    """Every rank reads the state rank 0 (here: one process) wrote. From iteration 2 of 4 the rest is trained by two
    processes (equal up to rounding); from a final state nothing is trained and the file is bitwise the same (all
    ranks read it before rank 0 removes it); a state only rank 0 can read is refused by every rank."""
    for name in RESUMED.values():  # resumed by the torchrun launch
        assert f"wrote {prepared / name}.safetensors" in multi[1]
    _assert_close_files(prepared / "gs_part.safetensors", single["gs"])
    assert (prepared / "dyweight_final.safetensors").read_bytes() == single["dyweight"].read_bytes()
    assert [p.name for p in prepared.glob("*.train-state")] == ["split.safetensors.train-state"]
    assert not (prepared / "split.safetensors").exists() and not (prepared / "split_elsewhere.safetensors").exists()
    assert multi[2].count("the processes found") == 2  # each rank refused, naming the iterations
    assert "at different iterations (0 to 2); every process must read the same file" in multi[2]


# ------------------------------------------------------------------------------------------------ 2. resume


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_run_resumes_to_the_identical_file(case, single, tmp_path, monkeypatch):
    from fewstep.learned.trainstate import TrainState
    from fewstep.cli import main

    out = tmp_path / "s.safetensors"
    state = tmp_path / "s.safetensors.train-state"
    cmd = _cmd(case, out, "--checkpoint-every", "1")
    _interrupt_after(monkeypatch, 2)
    assert main(cmd) == 130
    assert state.exists() and not out.exists()
    monkeypatch.undo()
    saved: list[int] = []
    real = TrainState.save
    monkeypatch.setattr(TrainState, "save", lambda self, it, losses: (saved.append(it), real(self, it, losses))[1])
    assert main([*cmd, "--resume"]) == 0
    assert saved == [3, 4]  # it continued after iteration 2 (module weights, Adam moments, schedule restored)
    assert out.read_bytes() == single[case].read_bytes()  # bitwise the uninterrupted sampler
    assert not state.exists()


# ----------------------------------------------------------------------------------------------- 3. refusal


@pytest.fixture(scope="module")
def dyweight_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dyweight training stopped after iteration 2 (its state beside ``out``; the tests leave it unchanged)."""
    from fewstep.cli import main

    out = tmp_path_factory.mktemp("refuse") / "d.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_after(mp, 2)
        assert main(_cmd("dyweight", out, "--checkpoint-every", "2")) == 130
    return out


@pytest.mark.parametrize("extra,names", [
    (["--seed", "1"], ["training.seed: 0 there, 1 now"]),
    (["--soft-start", "0.05"], ["training.soft_start: 0.0 there, 0.05 now"]),
    (["--time-shift"], ["time_shift: false there, true now"]),
    (["--method-options", '{"window": 3}'], ["options.window: 4 there, 3 now", "base.options.max_order"]),
    (["--lr", "0.03", "--M", "3"], ["training.M: 2 there, 3 now", "training.lr: 0.02 there, 0.03 now"]),
])
def test_resume_refuses_a_state_of_other_settings(dyweight_state, extra, names, capsys):
    from fewstep.cli import main

    state = dyweight_state.with_name(dyweight_state.name + ".train-state")
    before = state.read_bytes()
    capsys.readouterr()
    assert main([*_cmd("dyweight", dyweight_state, "--checkpoint-every", "2"), *extra, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was saved by a run with other settings" in err and "use the same command to resume" in err
    for n in names:
        assert n in err
    assert state.read_bytes() == before and not dyweight_state.exists()  # nothing touched, nothing written


def test_resume_refuses_a_state_of_another_method(dyweight_state, capsys):
    from fewstep.cli import main

    capsys.readouterr()
    assert main([*COMMON, *CASES["pas"], "--out", str(dyweight_state), "--resume"]) == 2
    assert 'method: "dyweight" there, "pas" now' in capsys.readouterr().err


def test_api_resume_refuses_other_settings(tmp_path, monkeypatch):
    """The same through fewstep.learned.train (settings differ in the learned schedule and the method's options)."""
    from fewstep import learned
    from fewstep.denoisers import gmm_denoiser
    from fewstep.learned import CheckpointError

    kw = {"shape": (3, 8, 8), "nfe": 5, "teacher": learned.Teacher(M=2),
          "budget": learned.Budget(batch=16, total_samples=64), "progress": False}
    den = gmm_denoiser()
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            learned.train("epd", den, options={"K": 2}, checkpoint=learned.Checkpointing(state=tmp_path / "state",
                                                                                         every=2), **kw)
    with pytest.raises(CheckpointError, match=r"schedule\.kind: .* there, \"learned\" now"):
        learned.train("epd", den, options={"K": 2}, schedule=learned.ScheduleSpec(learn=True),
                      checkpoint=learned.Checkpointing(state=tmp_path / "state", every=2, resume=True), **kw)


if __name__ == "__main__":  # the torchrun worker of ``multi``
    sys.exit(_worker(Path(sys.argv[1]), Path(sys.argv[2])))
