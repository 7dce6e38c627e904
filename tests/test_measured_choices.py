"""Issue 24's command-line reach: the measured default and what sample says it chose, solver options and rho,
the discrete schedule, the data range, fewstep compare, the model-id override, and train's plan, tuned start and
closing report (trained vs its base vs the best classic configuration)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import fewstep
from fewstep.cli import main
from fewstep.defaults import RULES, default_choice, default_recipe
from fewstep.recipe import Recipe
from fewstep.schedules import ddpm_alphas_cumprod

torch.set_num_threads(1)


class ShrinkEps(torch.nn.Module):
    """eps = 0.2 x: a discrete DDPM-style model (for --model test_measured_choices:ddpm_like)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t):
        return self.w * x


def ddpm_like():
    return fewstep.denoisers.VPModel(ShrinkEps(), prediction="eps", alphas_cumprod=ddpm_alphas_cumprod())


def _sigmas_line(err: str) -> str:
    m = re.search(r"^sigmas: .*$", err, re.M)
    assert m, err
    return m[0]


# ------------------------------------------------------------------ the measured default
def test_every_nfe_and_scale_has_a_default_that_reaches_it():
    for nfe in range(1, 13):
        for w in (None, 1.0, 2.0, 4.0, 7.5, 20.0):
            c = default_choice(nfe, w)
            try:
                fewstep.steps_for_nfe(c.solver, nfe, c.afs, **c.options)
            except ValueError:
                pytest.fail(f"default {c.label()} cannot make NFE {nfe}")
    assert RULES[-1][0] >= 10**9 and RULES[-1][1] == float("inf")  # a rule for every NFE and scale


def test_default_recipe_uses_the_model_range_and_its_nfe():
    den = ddpm_like()
    rec = default_recipe(den, 5)
    assert rec.nfe == 5 and rec.sigmas[0] == pytest.approx(den.sigma_max) and rec.sigmas[-1] == pytest.approx(den.sigma_min)
    x = fewstep.solve(den, torch.zeros(2, 1, 4, 4), predictor=rec)
    assert x.nfe == 5


def test_sample_says_which_default_it_chose(tmp_path, capsys):
    assert main(["sample", "--model", "test_measured_choices:ddpm_like", "--shape", "1,4,4", "--seeds", "0-1",
                 "--out", str(tmp_path / "x.npz")]) == 0
    line = _sigmas_line(capsys.readouterr().err)
    c = default_choice(5)
    assert "measured default for NFE 5" in line and c.label() in line and "the model's own range" in line


# ------------------------------------------------------------------ solver options, rho, discrete schedule
def test_solver_options_rho_and_discrete_schedule(tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert main(["sample", "--model", "test_measured_choices:ddpm_like", "--shape", "1,4,4", "--seeds", "0-1",
                 "--solver", "unipc", "--max-order", "3", "--solver-options", '{"variant": "bh1"}',
                 "--schedule", "discrete", "--rho", "2", "--afs", "--out", str(out)]) == 0
    line = _sigmas_line(capsys.readouterr().err)
    assert "unipc" in line and "'max_order': 3" in line and "'variant': 'bh1'" in line and "discrete schedule (rho 2)" in line
    den = ddpm_like()
    ac = 1 / (1 + den.log_sigmas.exp() ** 2)
    want = fewstep.get_schedule("discrete", 7, den.sigma_min, den.sigma_max, 2.0, alphas_cumprod=ac)
    m = re.search(r"sigmas: (\d+) from (\S+) to (\S+)", line)
    assert int(m[1]) == 7 and float(m[2]) == pytest.approx(float(want[0]), rel=1e-5)


def test_discrete_schedule_needs_a_discrete_model(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--seeds", "0-1", "--solver", "euler", "--schedule", "discrete",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "needs a discrete model" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--max-order", "3", "--solver-options", '{"max_order": 2}'], "contradicts"),
    (["--solver-options", '{"order": 2}'], "unknown option"),
    (["--rho", "-1", "--solver", "euler"], "--rho must be a positive"),
    (["--solver", "euler", "--predictor", "x.json"], "cannot be combined with --predictor"),
])
def test_bad_solver_options_are_refused(tmp_path, capsys, argv, match):
    assert main(["sample", "--model", "gmm", "--seeds", "0-1", "--out", str(tmp_path / "x.npz"), *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


# ------------------------------------------------------------------ data range and compare
def test_data_range_maps_the_models_range_to_the_file(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = ["sample", "--model", "gmm", "--seeds", "0-7", "--solver", "euler", "--nfe", "4"]
    assert main([*common, "--out", str(a)]) == 0
    assert main([*common, "--data-range=-2,2", "--out", str(b)]) == 0
    xa, xb = np.load(a)["images"], np.load(b)["images"]
    inside = np.abs(xa) < 0.999  # not clipped in a: there b holds the same sample mapped from [-2, 2] to [-1, 1]
    assert inside.mean() > 0.5
    np.testing.assert_allclose(xb[inside], xa[inside] / 2, atol=1e-6)
    assert np.abs(xb).max() <= 1
    with pytest.raises(SystemExit):
        main([*common, "--data-range=1,-1", "--out", str(tmp_path / "c.npz")])


def test_compare_reports_rmse_psnr_and_matches_seeds(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", "--model", "gmm", "--seeds", "0-9", "--solver", "euler", "--nfe", "4", "--out", str(a)]) == 0
    assert main(["sample", "--model", "gmm", "--seeds", "5-14", "--solver", "deis", "--nfe", "32", "--out", str(b)]) == 0
    capsys.readouterr()
    assert main(["compare", str(b), str(a), "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    res = json.loads((tmp_path / "c.json").read_text())
    za, zb = np.load(a), np.load(b)
    ia = [list(za["seeds"]).index(s) for s in range(5, 10)]
    ib = [list(zb["seeds"]).index(s) for s in range(5, 10)]
    want = float(np.sqrt(np.mean((za["images"][ia].astype(np.float64) - zb["images"][ib]) ** 2)))
    assert res["seeds"] == 5 and res["rmse"] == pytest.approx(want, rel=1e-6)
    assert "5 common seeds" in text and "PSNR" in text and "no Fréchet distance" in text
    assert main(["compare", str(a), str(tmp_path / "missing.npz")]) == 2


def test_compare_refuses_files_without_common_seeds(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", "--model", "gmm", "--seeds", "0-1", "--solver", "euler", "--nfe", "4", "--out", str(a)]) == 0
    assert main(["sample", "--model", "gmm", "--seeds", "2-3", "--solver", "euler", "--nfe", "4", "--out", str(b)]) == 0
    assert main(["compare", str(a), str(b)]) == 2
    assert "share no seed" in capsys.readouterr().err


# ------------------------------------------------------------------ model identity
def test_a_recipe_for_another_model_is_refused_unless_allowed(tmp_path, capsys):
    path = Recipe("euler", {}, False, tuple(fewstep.get_schedule("polynomial", 5).tolist()), "polynomial rho=7", 4,
                  model_id="someone-elses-model").save(tmp_path / "r.json")
    cmd = ["sample", "--model", "gmm", "--seeds", "0-1", "--predictor", str(path), "--out", str(tmp_path / "x.npz")]
    assert main(cmd) == 2
    assert "tuned for model 'someone-elses-model'" in capsys.readouterr().err
    assert main([*cmd, "--allow-other-model"]) == 0


# ------------------------------------------------------------------ train: plan, tuned start, report
def test_train_prints_its_plan_starts_from_a_tuned_recipe_and_reports(tmp_path, capsys):
    tuned = tmp_path / "t.json"
    assert main(["tune", "--model", "gmm", "--nfe", "5", "--no-search", "--seeds", "900000000-900000007",
                 "--out", str(tuned)]) == 0
    rec = Recipe.load(tuned)
    capsys.readouterr()
    out = tmp_path / "d.safetensors"
    assert main(["train", "--model", "gmm", "--method", "dyweight", "--tuned", str(tuned), "--total-samples", "32",
                 "--batch", "16", "--M", "1", "--report-seeds", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"training dyweight for model \S+ at NFE 5, AFS (on|off); base: its own; schedule: \d+ given "
                     r"sigmas .* \(the tuned configuration's, resampled\)", text), text
    assert "RMS distance to the teacher per element" in text
    rows = re.findall(r"^  (trained .*|untrained .*|best classic: .*) NFE\s+(\d+)\s+(\S+)$", text, re.M)
    assert len(rows) == 3, text
    assert rows[2][0].startswith(f"best classic: {rec.label()}")
    assert "closer to the teacher than the best classic" in text or "WARNING: the trained sampler is NOT better" in text
    sampler = fewstep.learned.load(out)
    assert sampler.config["afs"] == rec.afs
    if rec.solver == "ipndm":
        assert sampler.options["window"] == rec.options.get("max_order", 4)


def test_train_warns_when_it_does_not_beat_the_best_classic(tmp_path, capsys):
    """One iteration of a tiny batch cannot beat a tuned classic solver on the analytic bed: the report must say so."""
    tuned = tmp_path / "t.json"
    assert main(["tune", "--model", "gmm", "--nfe", "5", "--no-search", "--seeds", "900000000-900000007",
                 "--out", str(tuned)]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "gmm", "--method", "epd", "--tuned", str(tuned), "--total-samples", "2",
                 "--batch", "2", "--M", "1", "--report-seeds", "8", "--out", str(tmp_path / "e.safetensors")]) == 0
    assert "WARNING: the trained sampler is NOT better than the best classic solver" in capsys.readouterr().out


def test_train_refuses_a_tuned_file_of_another_nfe(tmp_path, capsys):
    path = Recipe("euler", {}, False, tuple(fewstep.get_schedule("polynomial", 5).tolist()), "polynomial rho=7",
                  4).save(tmp_path / "r.json")
    assert main(["train", "--model", "gmm", "--tuned", str(path), "--nfe", "5", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "tuned at NFE 4, not --nfe 5" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["plugin", "residual"])
def test_a_method_on_a_base_starts_from_the_tuned_solver_with_its_options(tmp_path, capsys, method):
    """The tuned recipe's solver *and options* become the base (an order-2 iPNDM stays order 2). The residual
    operator keeps the base's steps, so its untrained sampler in the closing report is the best classic configuration
    (the same RMSE); the plugin spends half its evaluations on intermediate points, so its steps differ."""
    sig = fewstep.get_schedule("time_uniform", 7, 0.002, 80.0, rho=1.5)
    tuned = Recipe("ipndm", {"max_order": 2}, True, tuple(sig.tolist()), "time_uniform rho=1.5", 5).save(
        tmp_path / "t.json")
    out = tmp_path / "p.safetensors"
    assert main(["train", "--model", "gmm", "--method", method, "--tuned", str(tuned), "--total-samples", "4",
                 "--batch", "4", "--M", "1", "--report-seeds", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert fewstep.learned.load(out).config["base"] == {"solver": "ipndm", "options": {"max_order": 2}}
    rows = dict((k.split()[0], float(v)) for k, v in
                re.findall(r"^  (untrained .*|best classic: .*) NFE\s+\d+\s+(\S+)$", text, re.M))
    if method == "residual":
        assert rows["untrained"] == rows["best"], text
    out2 = tmp_path / "q.safetensors"  # --base-options without --tuned: the default base with those options
    assert main(["train", "--model", "gmm", "--method", method, "--no-tune", "--base-options", '{"max_order": 3}',
                 "--total-samples", "4", "--batch", "4", "--M", "1", "--report-seeds", "4", "--out", str(out2)]) == 0
    assert fewstep.learned.load(out2).config["base"] == {"solver": "ipndm", "options": {"max_order": 3}}
