"""fewstep tune: classic configurations measured on the user's model, the best written as a recipe that every
sampling entry point takes."""

from __future__ import annotations

import json

import pytest
import torch

import fewstep
from fewstep import k
from fewstep.learned import load
from fewstep.recipe import Recipe
from fewstep.recipe import make_sigmas, model_timesteps
from fewstep.tune import tune
from conftest import make_gmm

SHAPE = (6,)
SOLVERS = (("euler", {}), ("ipndm", {"max_order": 4}), ("ipndm", {"max_order": 2}), ("dpmpp", {"max_order": 2}),
           ("unipc", {"max_order": 3}), ("heun", {}))


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=6, components=3, seed=2)


@pytest.fixture(scope="module")
def result(gmm):
    return tune(gmm, SHAPE, 5, seeds=16, solvers=SOLVERS, dtype=torch.float64, progress=False, model_id="gmm-test")


def test_the_best_row_is_the_recipe_and_reproduces(gmm, result):
    """The best of the confirmed rows on all seeds (tuning + confirmation) is the recipe, and its pooled RMSE
    reproduces from the recipe on those seeds."""
    good = [r for r in result.rows if r["rmse"] is not None]
    confirmed = [r for r in good if "rmse_pooled" in r]
    assert len(confirmed) == min(fewstep.tune.CONFIRM_TOP, len(good))
    assert sorted(confirmed, key=lambda r: r["rmse"]) == sorted(good, key=lambda r: r["rmse"])[:len(confirmed)]
    assert result.best.rmse == min(r["rmse_pooled"] for r in confirmed)
    extra = result.extra["confirm_seeds"]
    assert len(extra) == 2 * len(result.seeds) and not set(extra) & set(result.seeds)
    noise = fewstep.noise_for_seeds(result.seeds + extra, SHAPE, dtype=torch.float64)
    ref = fewstep.tune.teacher_solution(gmm, noise, *result.sigma_range, 64)
    assert fewstep.tune.rmse_to(fewstep.sample(gmm, noise, predictor=result.best), ref) == pytest.approx(result.best.rmse, rel=1e-9)
    assert result.best.model_id == "gmm-test" and result.best.nfe == 5


def test_tune_beats_the_default_and_euler(result):
    ref = {r["label"]: r["rmse"] for r in result.rows if r["reference"]}
    assert len(ref) == 2  # Euler and iPNDM +AFS on polynomial rho 7, both measured
    assert all(result.best.rmse <= v for v in ref.values())
    assert "/ best" in result.table() and result.best.label().split(",")[0] in result.table()


def test_every_row_costs_the_asked_nfe(gmm, result):
    for r in result.rows:
        rec = Recipe(r["solver"], r["options"], r["afs"], tuple(r["sigmas"]), r["schedule"], 5)
        call = fewstep.ModelCall(gmm)
        assert fewstep.solve(call, torch.zeros(1, *SHAPE, dtype=torch.float64), predictor=rec).nfe == 5


def test_the_seeds_are_the_held_out_tuning_seeds(result):
    from fewstep import seeds

    assert result.seeds == seeds.tune_seeds(16)
    assert min(result.seeds) >= seeds.TUNE


def test_recipe_file_round_trip_and_every_entry_point(gmm, result, tmp_path):
    path = result.best.save(tmp_path / "best.json")
    rec = load(path)
    assert rec == result.best
    assert fewstep.schedules.load_schedule(path).tolist() == list(result.best.sigmas)  # a schedule file too
    noise = fewstep.noise_for_seeds(range(3), SHAPE, dtype=torch.float64)
    x = fewstep.sample(gmm, noise, predictor=rec)
    sig = torch.tensor(rec.sigmas, dtype=torch.float64)
    assert torch.equal(x, fewstep.sample(gmm, noise, sig, rec.solver, afs=rec.afs, **rec.options))
    assert torch.equal(k.sample_learned(gmm, noise * sig[0], predictor=str(path), disable=True), x)


def test_recipe_refuses_another_model_and_settings(gmm, result, tmp_path):
    path = result.best.save(tmp_path / "best.json")
    with pytest.raises(ValueError, match="tuned for model 'gmm-test', not 'other'"):
        load(path, model_id="other")

    class Other:
        model_id = "other"

        def __call__(self, x, s):
            return gmm(x, s)

    with pytest.raises(ValueError, match="tuned for model"):
        fewstep.sample(Other(), torch.zeros(1, *SHAPE, dtype=torch.float64), predictor=result.best)
    with pytest.raises(ValueError, match="tuned with afs"):
        fewstep.sample(gmm, torch.zeros(1, *SHAPE, dtype=torch.float64), predictor=result.best,
                       afs=not result.best.afs)


@pytest.mark.parametrize("key,value,match", [
    ("afs", "false", "afs must be true or false"),
    ("nfe", 5.0, "nfe must be a positive integer"),
    ("nfe", True, "nfe must be a positive integer"),
    ("nfe", 7, "makes 5 model evaluations, not nfe=7"),
    ("options", ["max_order", 2], "options must be a JSON object"),
    ("solver", "rk4", "classic solver name"),
    ("model_id", 3, "model_id must be a string"),
    ("rmse", "small", "rmse must be a finite number"),
    ("extra", 1, "unknown recipe keys extra"),
])
def test_recipe_reader_is_strict(tmp_path, key, value, match):
    rec = Recipe("ipndm", {"max_order": 2}, False, tuple(fewstep.get_schedule("polynomial", 6).tolist()),
                 "polynomial rho=7", 5)
    path = rec.save(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    doc["info"][key] = value
    path.write_text(json.dumps(doc))
    with pytest.raises((ValueError, TypeError), match=match):
        Recipe.load(path)


def test_a_plain_schedule_file_is_not_a_recipe(tmp_path):
    path = fewstep.schedules.save_schedule(tmp_path / "s.json", fewstep.get_schedule("polynomial", 5))
    with pytest.raises(ValueError, match="not a fewstep recipe"):
        load(path)


def test_discrete_schedules_only_for_discrete_models(gmm):
    assert model_timesteps(gmm) is None and make_sigmas("discrete", 6, 0.002, 80.0, 1.0, gmm) is None
    ac = fewstep.schedules.ddpm_alphas_cumprod()
    vp = fewstep.denoisers.VPModel(lambda x, t: torch.zeros_like(x), prediction="eps", alphas_cumprod=ac)
    lo, hi = float(vp.log_sigmas[0].exp()), float(vp.log_sigmas[-1].exp())
    s = make_sigmas("discrete", 6, lo, hi, 1.0, vp)
    assert s is not None and float(s[0]) == hi and float(s[-1]) == lo
    assert make_sigmas("discrete", 6, 0.002, 80.0, 1.0, vp) is None  # ends off the model's timesteps


def test_cli_tune_writes_a_recipe_that_sample_takes(tmp_path, capsys):
    from fewstep.cli import main

    out = tmp_path / "t.json"
    assert main(["tune", "--model", "gmm", "--nfe", "5", "--no-search", "--seeds", "900000000-900000007",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best:" in text and "RMSE" in text and "sigma 80 .. 0.002" in text
    rec = Recipe.load(out)
    assert rec.nfe == 5 and rec.model_id is not None
    assert main(["tune", "--model", "gmm", "--nfe", "5", "--out", str(out)]) == 2  # no silent overwrite
    assert main(["sample", "--model", "gmm", "--predictor", str(out), "--seeds", "0-3",
                 "--out", str(tmp_path / "x.npz")]) == 0
    assert "5 NFE" in capsys.readouterr().out
