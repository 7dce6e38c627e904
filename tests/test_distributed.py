"""Sharded sampling under torchrun (2 gloo processes on CPU), determinism, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep
from fewstep import distributed as fd
from fewstep.cli import main

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


class _SlowGaussian:
    """A float32 analytic model that sleeps per call when FEWSTEP_TEST_SLEEP is set (to kill a run midway)."""

    model_id = "test-slow-gaussian"

    def __init__(self) -> None:
        self.inner = fewstep.denoisers.Gaussian(torch.zeros(12), torch.linspace(0.05, 1.0, 12))
        self.sleep = float(os.environ.get("FEWSTEP_TEST_SLEEP", "0"))

    def __call__(self, x, sigma):
        if self.sleep:
            time.sleep(self.sleep)
        return self.inner(x, sigma)


def slow_gaussian():
    return _SlowGaussian()


MODEL = ["--model", "test_distributed:slow_gaussian", "--shape", "3,2,2", "--solver", "ipndm", "--nfe", "4",
         "--threads", "1"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _torchrun(nproc: int) -> list[str]:
    # --standalone: a local rendezvous on a free port, so tests never collide on a fixed master port.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
            "fewstep", "sample"]


def _files(d: Path) -> dict[str, bytes]:
    """Every file under d (hidden temporaries included), relative path -> bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _assert_same_files(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []


# ------------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("n,batch", [(1, 1), (10, 4), (37, 5), (64, 64), (65, 8)])
def test_batches_do_not_depend_on_world_size(n, batch):
    batches = fd.global_batches(range(n), batch)
    assert [s for b in batches for s in b] == list(range(n)) and all(len(b) <= batch for b in batches)
    for world in (1, 2, 3, 5):
        shards = [fd.rank_batches(batches, r, world) for r in range(world)]
        got = sorted((tuple(b) for sh in shards for b in sh))
        assert got == sorted(tuple(b) for b in batches)  # every batch exactly once, unchanged
        assert [len(sh) for sh in shards] == [len(batches[r::world]) for r in range(world)]


def test_batches_sort_and_deduplicate():
    assert fd.global_batches([5, 1, 3, 1, 9], 2) == [[1, 3], [5, 9]]


@pytest.mark.parametrize("seed,rel", [(0, "000000/000000.png"), (999, "000000/000999.png"),
                                      (1000, "001000/001000.png"), (49999, "049000/049999.png"),
                                      (1234567, "1234000/1234567.png")])
def test_seed_path_layout(tmp_path, seed, rel):
    assert fd.seed_path(tmp_path, seed) == tmp_path / rel


def test_stale_temporaries_of_own_seeds_only_are_removed(tmp_path):
    d = tmp_path / "000000"
    d.mkdir()
    names = [".000003.png.k2j4h.png", ".000004.png.x9.png", "000005.png", ".000005.npy.ab.npy", "notes.txt"]
    for n in names:
        (d / n).write_bytes(b"x")
    assert fd.remove_stale_temporaries(tmp_path, [3, 5], "png") == 1
    assert sorted(p.name for p in d.iterdir()) == sorted(n for n in names if n != ".000003.png.k2j4h.png")


def test_to_uint8_is_edm_rounding():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0]).reshape(1, 1, 1, 7)
    assert fd.to_uint8(x).reshape(-1).tolist() == [0, 0, 64, 128, 255, 255, 255]


def test_not_under_torchrun_is_single_process():
    assert not fd.launched_by_torchrun({"RANK": "0"})
    info = fd.init_distributed("cpu", env={})
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)


# ----------------------------------------------------------------------------------- batch (in)variance


def _run_model(den, shape, dtype, seeds, batch):
    sig = fewstep.get_schedule("polynomial", 6)
    return torch.cat([fewstep.sample(den, fewstep.noise_for_seeds(seeds[i:i + batch], shape, dtype=dtype), sig,
                                     "ipndm") for i in range(0, len(seeds), batch)])


@pytest.fixture(scope="module")
def unet():
    return fewstep.denoisers.default_unet()


def test_unet_world_size_invariance_is_bitwise(tmp_path, unet):
    """Ranks of a 3-process job (run one after another here) write exactly the files of a single process."""
    def sample_batch(seeds):
        return fewstep.sample(unet, fewstep.noise_for_seeds(seeds, (3, 16, 16)), fewstep.get_schedule("polynomial", 4),
                              "ipndm")

    kw = {"batch": 3, "fmt": "npy", "settings": {"model": "unet"}}
    one = fd.sample_seeds_to_dir(sample_batch, range(10), tmp_path / "one", **kw)
    for r in range(3):
        fd.sample_seeds_to_dir(sample_batch, range(10), tmp_path / "three", info=fd.DistInfo(r, 3), **kw)
    assert one == {"seeds": 10, "written": 10, "skipped": 0}
    _assert_same_files(tmp_path / "one", tmp_path / "three")


def test_batch_size_invariance_what_holds(unet):
    """Noise is per seed, but the model's batched kernels are not bitwise batch-invariant (CPU):
    float64 GMM: ~1e-13 differences, PNG bytes equal; float32 U-Net: ~1e-5, a few PNG pixels differ by 1 level.
    (Linear layers switch to GEMV at batch 1, and 1x1 convolutions / GEMMs handle a row-block tail differently.)"""
    seeds = list(range(12))
    gmm = fewstep.denoisers.GaussianMixture(torch.randn(4, 48, dtype=torch.float64),
                                            torch.eye(48, dtype=torch.float64).expand(4, 48, 48) * 0.1)
    for den, shape, dtype, tol, levels in ((gmm, (3, 4, 4), torch.float64, 1e-11, 0),
                                           (unet, (3, 16, 16), torch.float32, 2e-4, 1)):
        ref = _run_model(den, shape, dtype, seeds, 12)
        for batch in (1, 5):
            x = _run_model(den, shape, dtype, seeds, batch)
            assert (x - ref).abs().max() < tol
            diff = np.abs(fd.to_uint8(x).astype(int) - fd.to_uint8(ref).astype(int))
            assert diff.max() <= levels
    # and the same batch composition is bitwise reproducible
    assert torch.equal(_run_model(unet, (3, 16, 16), torch.float32, seeds, 5),
                       _run_model(unet, (3, 16, 16), torch.float32, seeds, 5))


# ---------------------------------------------------------------------------------------- torchrun


@pytest.mark.parametrize("fmt", ["png", pytest.param("npy", marks=pytest.mark.slow)])
def test_torchrun_two_gloo_processes_equal_single_process(tmp_path, fmt):
    args = MODEL + ["--seeds", "0-9,1500", "--batch", "3", "--format", fmt]
    assert main(["sample", *args, "--out", str(tmp_path / "single")]) == 0
    p = subprocess.run(_torchrun(2) + args + ["--out", str(tmp_path / "multi")], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    _assert_same_files(tmp_path / "single", tmp_path / "multi")
    assert (tmp_path / "multi" / "001000" / f"001500.{fmt}").is_file()
    # progress and the summary come from rank 0 only
    assert p.stdout.count("Wrote 11 of 11 seeds") == 1 and "2 processes" in p.stdout
    assert "sample (rank 0 of 2)" in p.stderr and "rank 1 of 2" not in p.stderr


def test_torchrun_single_npz_file_equals_single_process(tmp_path):
    args = MODEL + ["--seeds", "0-6", "--batch", "2"]
    assert main(["sample", *args, "--out", str(tmp_path / "a.npz")]) == 0
    p = subprocess.run(_torchrun(2) + args + ["--out", str(tmp_path / "b.npz")], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert list(b["seeds"]) == list(range(7)) and np.array_equal(a["images"], b["images"])
    assert p.stdout.count("Wrote 7 samples") == 1


def _descendants(pid: int) -> list[int]:
    """All processes below pid (torchrun starts its workers in sessions of their own, so killing torchrun's
    process group would leave them running)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        me = todo.pop()
        kids = [c for c, pp in parent.items() if pp == me]
        out += kids
        todo += kids
    return out


def _kill_when(cmd: list[str], out: Path, min_files: int, env: dict[str, str], total: int) -> int:
    """Start cmd, SIGKILL it and every process it started once min_files images exist; return how many exist."""
    proc = subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("0*/0*.png"))) < min_files:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.01)
        victims = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in victims:  # wait until they are gone, so no orphan writes on
            while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
                time.sleep(0.01)
    finally:
        proc.wait(timeout=30)
    n = len(list(out.glob("0*/0*.png")))
    assert proc.returncode != 0 and n < total, "the run was not interrupted"
    return n


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_sigkill_then_resume_gives_the_uninterrupted_files(tmp_path):
    args = MODEL + ["--seeds", "0-59", "--batch", "4"]
    assert main(["sample", *args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fewstep", "sample", *args, "--out", str(out)]
    killed_at = _kill_when(cmd, out, 6, _env(FEWSTEP_TEST_SLEEP="0.04"), 60)
    # a temporary file as a kill in the middle of a write leaves it
    (out / "000000" / ".000059.png.zz9.png").write_bytes(b"\x89PNG half")
    p = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"Wrote {60 - killed_at} of 60 seeds to {out} ({killed_at} were already there" in p.stdout
    _assert_same_files(tmp_path / "ref", out)


def test_two_process_run_killed_and_resumed_by_one_process(tmp_path):
    args = MODEL + ["--seeds", "0-39", "--batch", "2"]
    assert main(["sample", *args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    killed_at = _kill_when(_torchrun(2) + args + ["--out", str(out)], out, 4, _env(FEWSTEP_TEST_SLEEP="0.04"), 40)
    time.sleep(0.5)
    assert len(list(out.glob("0*/0*.png"))) == killed_at  # really stopped: no orphaned worker writes on
    assert main(["sample", *args, "--out", str(out)]) == 0
    _assert_same_files(tmp_path / "ref", out)


def test_resume_refuses_other_settings(tmp_path, capsys):
    args = MODEL + ["--seeds", "0-3"]
    assert main(["sample", *args, "--out", str(tmp_path / "o")]) == 0
    before = _files(tmp_path / "o")
    assert main(["sample", *args, "--nfe", "5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds samples made with other settings (sigmas:" in err
    assert main(["sample", *args, "--batch", "3", "--out", str(tmp_path / "o")]) == 2
    assert "(batch: 64 there, 3 now)" in capsys.readouterr().err
    assert _files(tmp_path / "o") == before
    # same settings, more seeds: only the new ones are computed
    assert main(["sample", *MODEL, "--seeds", "0-5", "--out", str(tmp_path / "o")]) == 0
    assert "Wrote 2 of 6 seeds" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_gmm_bed_two_processes(tmp_path):
    """The brief's CI check on the analytic natural-patch GMM (float64): ~15 s to fit the bed in each process."""
    args = ["--model", "gmm", "--seeds", "0-7", "--nfe", "3", "--batch", "3", "--threads", "1"]
    assert main(["sample", *args, "--out", str(tmp_path / "single")]) == 0
    p = subprocess.run(_torchrun(2) + args + ["--out", str(tmp_path / "multi")], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    _assert_same_files(tmp_path / "single", tmp_path / "multi")
