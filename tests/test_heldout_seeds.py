"""Training and evaluation seeds are disjoint in every runner that trains and evaluates (issue 26, class 4): the seed
sets are intercepted where noise is drawn, so a runner that evaluates on its training seeds fails here."""

from __future__ import annotations

import pytest
import torch
from conftest import make_gmm

from fewstep import cli, learned, seeds
from fewstep.experiments import bed as bed_module
from fewstep.experiments import paper
from fewstep.experiments.bed import Bed
from fewstep.learned import distill


@pytest.fixture
def spy(monkeypatch):
    """Records every training seed (distill) and every bed seed (Bed.build) drawn during a test."""
    drawn = {"train": set(), "eval": set()}
    real_training, real_noise = distill.training_seeds, bed_module.noise_for_seeds

    def training(seed, it, batch):
        out = real_training(seed, it, batch)
        drawn["train"].update(out)
        return out

    def noise(seed_list, *a, **k):
        seed_list = list(seed_list)
        drawn["eval"].update(seed_list)
        return real_noise(seed_list, *a, **k)

    monkeypatch.setattr(distill, "training_seeds", training)
    monkeypatch.setattr(bed_module, "noise_for_seeds", noise)
    return drawn


def _disjoint(drawn):
    assert drawn["train"] and drawn["eval"], drawn
    assert not drawn["train"] & drawn["eval"], sorted(drawn["train"] & drawn["eval"])[:5]


@pytest.mark.parametrize("which", ["table2", "table4", "table5"])
def test_paper_table_runners_never_evaluate_on_training_seeds(which, spy):
    bed = Bed.build(make_gmm(), (4,), seeds=8, ref_steps=8, check=False)
    kw = {"table2": {"plugin_base": "dpm2", "rows_only": ["dpm2", "amed"]}, "table4": {"teachers": "paper"},
          "table5": {}}[which]
    paper.run_table(which, bed, [3], total_samples=16, M=1, **kw)
    _disjoint(spy)


def test_bench_cli_evaluates_on_held_out_seeds(spy, monkeypatch, tmp_path):
    gmm = make_gmm()
    monkeypatch.setattr(cli.args, "load_model", lambda name, shape=None: (gmm, (4,), "test-gmm", torch.float64))
    assert cli.main(["bench", "paper-table2", "--seeds", "8", "--ref-steps", "8", "--nfe", "3", "--train-samples",
                     "16", "--M", "1", "--rows", "amed", "--out", str(tmp_path / "t.md")]) == 0
    _disjoint(spy)
    assert "held-out seeds (800000000..800000007)" in (tmp_path / "t.md").read_text()


def test_a_bed_count_means_held_out_seeds_and_overlap_is_refused():
    bed = Bed.build(make_gmm(), (4,), seeds=4, ref_steps=8, check=False)
    assert bed.seeds == tuple(seeds.report_seeds(4)) and bed.info["first_seed"] == seeds.REPORT
    seeds.check_held_out(bed.seeds, 0, 10**6)  # a large training run still misses them
    for train_seed, total in ((0, 16), (0, 1), (1, 10)):
        first = train_seed * 10**9 + 1
        with pytest.raises(ValueError, match="overlap the training seeds"):
            seeds.check_held_out([first + total - 1], train_seed, total)
    overlapping = Bed.build(make_gmm(), (4,), seeds=range(0, 8), ref_steps=8, check=False)
    with pytest.raises(ValueError, match="overlap the training seeds"):
        paper.amed_row(overlapping, "AMED", nfes=[3], total_samples=16, M=1)


def test_analyze_error_refuses_the_predictors_training_seeds(tmp_path, monkeypatch, capsys):
    gmm = make_gmm()
    monkeypatch.setattr(cli.args, "load_model", lambda name, shape=None: (gmm, (4,), "test-gmm", torch.float64))
    pred = learned.train("amed", gmm, shape=(4,), nfe=3, options={"features": "none"},
                         budget=learned.Budget(batch=8, total_samples=16), teacher=learned.Teacher(M=1))
    pred.save(tmp_path / "p.safetensors")
    base = ["analyze", "error", "--model", "gmm", "--nfe", "3", "--predictor", str(tmp_path / "p.safetensors")]
    assert cli.main(base + ["--seeds", "0-7", "--out", str(tmp_path / "bad")]) == 2
    assert "overlap the training seeds 1..16" in capsys.readouterr().err
    assert not list(tmp_path.glob("bad*"))
    assert cli.main(base + ["--out", str(tmp_path / "good")]) == 0  # the default seeds are held out
