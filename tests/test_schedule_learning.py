"""Issue 8: GITS schedule search, schedule files, learned schedules (alone and jointly with AMED), and the training
state that lets AMED training resume (issue 6)."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.learned import CheckpointError, LearnedSchedule
from fewstep.cli import main
from fewstep.schedule_search import cost_matrix, dp_schedule, search_schedule
from fewstep.schedules import load_schedule, save_schedule
from conftest import make_gmm

SHAPE = (3, 2, 2)


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=12, components=4, seed=5)


@pytest.fixture(scope="module")
def noise():
    return fewstep.noise_for_seeds(range(64), SHAPE, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- dynamic programme


def brute_force(cost: torch.Tensor, intervals: int, coeff: float) -> tuple[float, list[int]]:
    G = cost.shape[0]
    best = (float("inf"), [])
    for inner in itertools.combinations(range(1, G - 1), intervals - 1):
        path = [0, *inner, G - 1]
        total = sum(coeff**k * float(cost[path[k], path[k + 1]]) for k in range(intervals))
        if total < best[0]:
            best = (total, path)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("coeff", [1.0, 1.15, 0.8])
def test_dp_matches_brute_force(seed, coeff):
    g = torch.Generator().manual_seed(seed)
    G, K = 9, 1 + seed % 4
    cost = torch.rand(G, G, generator=g, dtype=torch.float64).triu(1)
    cost[torch.ones(G, G).tril().bool()] = float("inf")
    path = dp_schedule(cost, K, coeff)
    total = sum(coeff**k * float(cost[path[k], path[k + 1]]) for k in range(K))
    best, _ = brute_force(cost, K, coeff)
    assert len(path) == K + 1 and path[0] == 0 and path[-1] == G - 1 and path == sorted(set(path))
    assert total == pytest.approx(best, rel=1e-12)


def test_dp_rejects_bad_arguments():
    cost = torch.zeros(5, 5)
    with pytest.raises(ValueError, match="intervals"):
        dp_schedule(cost, 5)
    with pytest.raises(ValueError, match="intervals"):
        dp_schedule(cost, 0)
    with pytest.raises(ValueError, match="coeff"):
        dp_schedule(cost, 2, coeff=0.0)
    with pytest.raises(ValueError, match="square"):
        dp_schedule(torch.zeros(4, 5), 2)


def test_cost_matrix_is_the_euler_error_on_the_teacher_trajectory(gmm, noise):
    grid = fewstep.get_schedule("polynomial", 12)
    C = cost_matrix(gmm, noise, grid)
    lower = torch.ones_like(C).tril().bool()
    assert torch.isinf(C[lower]).all() and (C[~lower] >= 0).all() and (C[1:, 2:][~lower[1:, 2:]] > 0).all()
    traj = fewstep.solve(gmm, noise, grid, "deis", max_order=4, deis_mode="logrho", trajectory=True).trajectory
    i, j = 3, 7
    d = (traj[i] - gmm(traj[i], grid[i].expand(len(noise)))) / grid[i]
    want = (traj[i] + (grid[j] - grid[i]) * d - traj[j]).flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(C[i, j], want, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="teacher"):
        cost_matrix(gmm, noise, grid, teacher="heun")


@pytest.mark.parametrize("solver,nfe,afs", [("ipndm", 5, False), ("ipndm", 5, True), ("dpm2", 4, False), ("amed", 5, True)])
def test_search_gives_a_schedule_for_the_nfe(gmm, solver, nfe, afs):
    info: dict = {}
    sig = search_schedule(gmm, SHAPE, nfe=nfe, solver=solver, afs=afs, grid=25, warmup=32, info=info)
    assert fewstep.count_nfe(fewstep.get_solver(solver), len(sig), afs) == nfe
    assert sig[0] == 80.0 and sig[-1] == 0.002
    assert torch.equal(sig, info["grid"][info["indices"]])
    assert torch.equal(sig, search_schedule(gmm, SHAPE, nfe=nfe, solver=solver, afs=afs, grid=25, warmup=32))


def test_search_beats_the_polynomial_schedule_on_its_warmup_objective(gmm, noise):
    """The searched schedule has a lower DP objective than the polynomial schedule's points on the same grid."""
    grid = fewstep.get_schedule("polynomial", 31)
    info: dict = {}
    search_schedule(gmm, SHAPE, nfe=5, solver="ipndm", grid=grid, warmup=64, coeff=1.0, info=info)
    C, path = info["cost"], info["indices"]
    uniform = [0, 6, 12, 18, 24, 30]  # the 6-point polynomial schedule lies on this grid
    torch.testing.assert_close(grid[uniform], fewstep.get_schedule("polynomial", 6), rtol=1e-12, atol=0)
    assert sum(C[a, b] for a, b in zip(path, path[1:])) < sum(C[a, b] for a, b in zip(uniform, uniform[1:]))


# --------------------------------------------------------------------------------------------------- schedule files


def test_schedule_file_round_trip(tmp_path):
    sig = fewstep.get_schedule("logsnr", 7)
    path = save_schedule(tmp_path / "s.json", sig, method="test")
    assert torch.equal(fewstep.get_schedule("file", path=path), sig)
    assert torch.equal(fewstep.get_schedule("file", 7, path=path), sig)
    assert json.loads(path.read_text())["info"] == {"method": "test"}
    (tmp_path / "k.json").write_text(json.dumps(sig.tolist() + [0.0]))
    assert torch.equal(load_schedule(tmp_path / "k.json"), sig)


@pytest.mark.parametrize("text,match", [
    ("[80, 1, 0.002", "not a JSON"),
    ('{"format": "other", "sigmas": [2, 1]}', "unsupported"),
    ('{"version": 2, "sigmas": [2, 1]}', "unsupported"),
    ('{"nothing": 1}', "no 'sigmas'"),
    ('["80", "1"]', "list of numbers"),
    ("[1, 2, 3]", "decreasing"),
    ("[5, -1]", "positive"),
])
def test_bad_schedule_files_are_rejected(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        fewstep.get_schedule("file", path=p)


def test_file_schedule_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="path="):
        fewstep.get_schedule("file", 5)
    with pytest.raises(ValueError, match="only used with kind='file'"):
        fewstep.get_schedule("polynomial", 5, path=tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        fewstep.get_schedule("file", path=tmp_path / "missing.json")
    save_schedule(tmp_path / "s.json", fewstep.get_schedule("polynomial", 4))
    with pytest.raises(ValueError, match="num_steps=5"):
        fewstep.get_schedule("file", 5, path=tmp_path / "s.json")


# ------------------------------------------------------------------------------------------------ learned schedules


def test_learned_schedule_starts_at_its_init_and_stays_valid():
    init = fewstep.get_schedule("polynomial", 6)
    ls = LearnedSchedule(init)
    torch.testing.assert_close(ls(), init, rtol=1e-13, atol=0)
    assert ls()[0] == init[0] and ls()[-1] == init[-1]
    with torch.no_grad():
        ls.logits.copy_(torch.randn(5, dtype=torch.float64) * 5)
    fewstep.validate_sigmas(ls())  # strictly decreasing, positive, whatever the logits


def test_learn_schedule_lowers_the_error_of_a_plain_solver(gmm, noise):
    ref = fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", 200), "deis", max_order=4)
    init = fewstep.get_schedule("polynomial", 5)
    found = learned.learn_schedule(gmm, shape=SHAPE, solver="ipndm", num_steps=5,
                                   budget=learned.Budget(total_samples=1024, lr=0.1), progress=False)
    sig, log = found.sigmas, found.log
    err = lambda s: float((fewstep.sample(gmm, noise, s, "ipndm") - ref).flatten(1).norm(dim=1).mean())
    assert sig[0] == init[0] and sig[-1] == init[-1] and not torch.equal(sig, init)
    assert err(sig) < 0.8 * err(init)
    assert sum(log.losses[-4:]) < sum(log.losses[:4])


def test_joint_training_stores_the_learned_schedule(gmm, noise, tmp_path):
    pred = learned.train("plugin", gmm, shape=SHAPE, base="ipndm", num_steps=4,
                         schedule=learned.ScheduleSpec(learn=True),
                         budget=learned.Budget(total_samples=256, batch=32), progress=False)
    sigmas = torch.tensor(pred.config["sigmas"], dtype=torch.float64)
    assert pred.config["schedule"]["kind"] == "learned"
    assert pred.config["schedule"]["init_sigmas"] == fewstep.get_schedule("polynomial", 4).tolist()
    assert not torch.equal(sigmas, fewstep.get_schedule("polynomial", 4))
    pred.save(tmp_path / "p.safetensors")
    back = learned.load(tmp_path / "p.safetensors")
    res = fewstep.solve(gmm, noise, predictor=back)
    assert torch.equal(res.sigmas, sigmas)
    assert torch.equal(res.x, fewstep.sample(gmm, noise, predictor=pred))
    with pytest.raises(ValueError, match="loss='final'"):
        learned.train("amed", gmm, shape=SHAPE, num_steps=4, schedule=learned.ScheduleSpec(learn=True),
                      objective=learned.Objective(loss="per_step"), progress=False)


# ----------------------------------------------------------------------------------------------- resume (issue 6)


def _train(gmm, tmp_path, checkpoint_every=0, resume=False, seed=0):
    return learned.train("plugin", gmm, shape=SHAPE, base="ipndm", num_steps=4,
                         budget=learned.Budget(total_samples=6 * 16, batch=16, seed=seed),
                         schedule=learned.ScheduleSpec(learn=True), progress=False,
                         checkpoint=learned.Checkpointing(state=tmp_path / "state.safetensors",
                                                          every=checkpoint_every, resume=resume))


def test_interrupted_training_resumes_to_the_same_predictor(gmm, tmp_path, monkeypatch):
    full = _train(gmm, tmp_path / "a", checkpoint_every=2)
    assert not (tmp_path / "a" / "state.safetensors").exists()  # removed when training completes

    from fewstep.learned.trainstate import TrainState

    real_save = TrainState.save

    def save_then_die(self, iteration, losses):
        real_save(self, iteration, losses)
        if iteration == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(gmm, tmp_path / "b", checkpoint_every=2)
    monkeypatch.setattr(TrainState, "save", real_save)
    assert (tmp_path / "b" / "state.safetensors").exists()
    resumed = _train(gmm, tmp_path / "b", checkpoint_every=2, resume=True)
    assert len(resumed.log.losses) == 6
    assert resumed.config["sigmas"] == full.config["sigmas"]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_refuses_a_state_from_other_settings(gmm, tmp_path, monkeypatch):
    from fewstep.learned.trainstate import TrainState

    real_save = TrainState.save

    def save_then_die(self, iteration, losses):
        real_save(self, iteration, losses)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(gmm, tmp_path, checkpoint_every=2)
    monkeypatch.setattr(TrainState, "save", real_save)
    with pytest.raises(CheckpointError, match="other settings"):
        _train(gmm, tmp_path, checkpoint_every=2, resume=True, seed=1)
    (tmp_path / "state.safetensors").write_bytes(b"\x80\x04garbage-pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        _train(gmm, tmp_path, checkpoint_every=2, resume=True)


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_schedule_search_learn_export(tmp_path, capsys):
    out = tmp_path / "gits.json"
    base = ["--model", "factory_model:make", "--shape", "12", "--threads", "1"]
    assert main(["schedule", "search", *base, "--nfe", "4", "--grid", "21", "--warmup", "16", "--out", str(out)]) == 0
    sig = fewstep.get_schedule("file", path=out)
    assert len(sig) == 5 and json.loads(out.read_text())["info"]["method"] == "search"
    assert main(["schedule", "search", *base, "--out", str(out)]) == 2  # exists, no --overwrite
    learned_file = tmp_path / "learned.json"
    assert main(["schedule", "learn", *base, "--nfe", "4", "--init", str(out), "--total-samples", "64",
                 "--out", str(learned_file)]) == 0
    assert len(fewstep.get_schedule("file", path=learned_file)) == 5
    capsys.readouterr()
    assert main(["schedule", "export", str(learned_file), "--format", "k"]) == 0
    ks = json.loads(capsys.readouterr().out)
    assert ks[-1] == 0.0 and ks[:-1] == fewstep.get_schedule("file", path=learned_file).tolist()
    assert main(["schedule", "export"]) == 2
    assert not any(n.startswith(".") or n.endswith(".tmp") for n in os.listdir(tmp_path))


def test_cli_export_of_an_amed_table(gmm, tmp_path, capsys):
    pred = learned.train("amed", gmm, shape=SHAPE, num_steps=3, budget=learned.Budget(total_samples=64, batch=32),
                         progress=False)
    pred.save(tmp_path / "p.safetensors")
    capsys.readouterr()
    assert main(["schedule", "export", str(tmp_path / "p.safetensors")]) == 0
    doc = json.loads(capsys.readouterr().out)
    table = pred.table_values()
    assert [s["r"] for s in doc["steps"]] == [t["r"] for t in table]
    s0 = doc["steps"][0]
    assert s0["s"] == pytest.approx(s0["t_next"] ** s0["r"] * s0["t_cur"] ** (1 - s0["r"]), rel=1e-12)


# ------------------------------------------------------------------------------- data-parallel training (issue 6)


def test_torchrun_training_on_two_gloo_processes_equals_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m fewstep train`: each rank takes half of every global batch and the gradients
    are summed, so the predictor and the learned schedule equal a single process's up to rounding."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent / "src")]))
    args = ["train", "--model", "factory_model:make", "--shape", "12", "--method", "plugin", "--base", "ipndm",
            "--nfe", "5",
            "--total-samples", "96", "--batch", "24", "--learn-schedule", "--threads", "1"]
    run = lambda cmd: subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    multi = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fewstep",
                 *args, "--out", str(tmp_path / "multi.safetensors")])
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert "on 2 process(es)" in multi.stdout and multi.stdout.count("Trained plugin on ipndm") == 1
    single = run([sys.executable, "-m", "fewstep", *args, "--out", str(tmp_path / "single.safetensors")])
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = (learned.load(tmp_path / f"{n}.safetensors") for n in ("multi", "single"))
    torch.testing.assert_close(torch.tensor(a.config["sigmas"]), torch.tensor(b.config["sigmas"]), rtol=1e-5, atol=0)  # float32 model
    wa, wb = load_file(tmp_path / "multi.safetensors"), load_file(tmp_path / "single.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert wa["fc2.weight"].abs().max() > 0  # it did train (zero-initialised output layer)


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """Regression: the sniffer refused valid checkpoints whose header length's low byte is 0x80. One reader
    (fewstep.io) serves checkpoints, U-Nets and training states, so all three accept such files."""
    from fewstep.io import SafetensorsFileError, read_safetensors_header

    p = tmp_path / "x.safetensors"
    p.write_bytes((0x180).to_bytes(8, "little") + b'{"__metadata__": {}}' + b" " * 0x16C)
    assert read_safetensors_header(p) == ({}, {})  # no error
    with pytest.raises(ValueError, match="not a fewstep SmallUNet file"):  # the U-Net loader reads it, then refuses
        fewstep.denoisers.load_unet(p)
    with pytest.raises(CheckpointError, match="not a fewstep learned sampler"):
        learned.load(p)
    p.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    with pytest.raises(SafetensorsFileError, match="pickle"):
        read_safetensors_header(p)
    with pytest.raises(CheckpointError, match="pickle"):
        learned.load(p)
    with pytest.raises(ValueError, match="pickle"):
        fewstep.denoisers.load_unet(p)


def test_schedule_benchmark_runs_on_a_tiny_size(tmp_path):
    """benchmarks/schedules.py (the issue 8 table) at a tiny size, so it cannot rot."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "schedules.py"
    spec = importlib.util.spec_from_file_location("schedules_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "s.md"
    assert mod.main(["--quick", "--nfe", "5", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| AMED-Plugin iPNDM |" in text and "Best at NFE 5" in text
    doc = json.loads(out.with_suffix(".json").read_text())
    assert set(doc["rows"]["iPNDM"]["5"]) == {"polynomial", "searched", "learned"}
