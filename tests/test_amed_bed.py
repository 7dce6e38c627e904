"""AMED on the natural-patch Gaussian-mixture bed (the issue's acceptance numbers; slow) and the benchmark script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fewstep
from fewstep import evaluation, learned
from fewstep.experiments.bed import Bed

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_script_runs_quick(tmp_path):
    out = tmp_path / "amed_bed.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "amed_bed.py"), "--quick", "--out", str(out),
                    "--threads", "1"], check=True, capture_output=True, timeout=600)
    text = out.read_text()
    assert "| 5 |" in text and "AMED-Plugin" in text


@pytest.fixture(scope="module")
def bed():
    b = Bed.gmm(seeds=range(10**8, 10**8 + 1000), ref_steps=256, check=False)
    return b.denoiser, b.noise, b.ref


def _plain(gmm, noise, ref, solver, nfe):
    n = fewstep.steps_for_nfe(solver, nfe, True)
    return evaluation.rmse(fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", n), solver, afs=True), ref)


@pytest.mark.slow
def test_amed_solver_beats_dpm_solver_2_threefold(bed):
    gmm, noise, ref = bed
    for nfe in (3, 5, 7, 9):
        n = fewstep.steps_for_nfe("amed", nfe, True)
        pred = learned.train("amed", gmm, shape=(3, 8, 8), num_steps=n, progress=False)
        err = evaluation.rmse(fewstep.sample(gmm, noise, predictor=pred), ref)
        assert err * 3 <= _plain(gmm, noise, ref, "dpm2", nfe), nfe


@pytest.mark.slow
def test_amed_plugin_improves_ipndm(bed):
    gmm, noise, ref = bed
    n = fewstep.steps_for_nfe("amed_plugin", 5, True, base="ipndm")
    pred = learned.train("plugin", gmm, shape=(3, 8, 8), base="ipndm", num_steps=n, progress=False)
    err = evaluation.rmse(fewstep.sample(gmm, noise, predictor=pred), ref)
    assert err <= 0.85 * _plain(gmm, noise, ref, "ipndm", 5)


def _plain_no_afs(gmm, noise, ref, solver, nfe):
    n = fewstep.steps_for_nfe(solver, nfe, False)
    return evaluation.rmse(fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", n), solver), ref)


@pytest.mark.slow
def test_amed_plugin_with_learned_schedule_meets_the_issue_ratios(bed):
    """Issue 3: AMED-Plugin on iPNDM (AFS) at NFE 5 <= 0.6x plain iPNDM at NFE 5 (measured 0.55x, with the schedule
    learned jointly; 0.64x on the fixed polynomial schedule), and no worse than plain iPNDM at NFE 7."""
    gmm, noise, ref = bed
    n = fewstep.steps_for_nfe("amed_plugin", 5, True, base="ipndm")
    pred = learned.train("plugin", gmm, shape=(3, 8, 8), base="ipndm", num_steps=n,
                         schedule=learned.ScheduleSpec(learn=True), progress=False)
    err = evaluation.rmse(fewstep.sample(gmm, noise, predictor=pred), ref)
    assert err <= 0.6 * _plain_no_afs(gmm, noise, ref, "ipndm", 5)
    assert err <= _plain_no_afs(gmm, noise, ref, "ipndm", 7)
