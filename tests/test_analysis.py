"""Library functions behind ``fewstep analyze`` and ``fewstep schedule export``: fewstep.metrics.trajectory_pca_table,
fewstep.experiments.analysis and fewstep.learned.export."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep import evaluation, learned, metrics
from fewstep.cli import main
from fewstep.experiments import analysis
from fewstep.learned.export import export_schedule
from fewstep.sampling import solve
from fewstep.schedules import get_schedule, save_schedule


@pytest.fixture(scope="module")
def trajectory(gmm4, noise16):
    return solve(gmm4, noise16, get_schedule("polynomial", 7), "heun", trajectory=True).trajectory


def test_trajectory_pca_table_matches_projection_error_and_svd(trajectory):
    rows = metrics.trajectory_pca_table(trajectory, 4)  # T = 7 points in D = 4 dimensions: 4 components
    assert [r["k"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        e = metrics.trajectory_pca_error(trajectory, r["k"])
        assert r["mean_rel_error"] == float(e.mean()) and r["max_rel_error"] == float(e.max())
    x = trajectory.transpose(0, 1).double()
    sv = torch.linalg.svdvals(x - x.mean(1, keepdim=True))
    assert rows[0]["explained_variance"] == pytest.approx(float((sv[:, 0] ** 2 / (sv**2).sum(-1)).mean()), rel=1e-12)
    assert rows[-1]["explained_variance"] == pytest.approx(1.0, rel=1e-12)
    ev = [r["explained_variance"] for r in rows]
    assert ev == sorted(ev)


@pytest.mark.parametrize("max_k", [0, 5, True, 2.0])
def test_trajectory_pca_table_rejects_max_k_beyond_the_components(trajectory, max_k):
    with pytest.raises(ValueError, match=r"max_k must be an int in 1\.\.4 \(trajectories of 7 points in 4 dimensions"):
        metrics.trajectory_pca_table(trajectory, max_k)


def test_trajectory_pca_checks_max_k_before_sampling(noise16):
    def never(x, sigma):
        raise AssertionError("sampled although max_k is out of range")

    with pytest.raises(ValueError, match=r"1\.\.4 .*got 6"):
        analysis.trajectory_pca(never, noise16, "heun", steps=8, max_k=6)


def test_trajectory_pca_samples_on_the_polynomial_schedule(gmm4, noise16, trajectory):
    assert analysis.trajectory_pca(gmm4, noise16, "heun", steps=6, max_k=3) == metrics.trajectory_pca_table(trajectory, 3)


def test_per_step_error_runs_and_labels(gmm4, noise16):
    pred = learned.train("amed", gmm4, shape=(4,), num_steps=3, teacher=learned.Teacher(M=2),
                         budget=learned.Budget(total_samples=16), progress=False)
    runs = analysis.per_step_error(gmm4, noise16, ["ipndm", "euler"], 3, afs=True, teacher_steps=2, predictor=pred)
    assert [r["label"] for r in runs] == ["ipndm +AFS", "euler +AFS", "AMED-Solver"]
    sig = get_schedule("polynomial", 5)  # ipndm with AFS: 4 steps, the first free
    ref = evaluation.trajectory_error(gmm4, noise16, sig, "ipndm", afs=True, teacher_steps=2)
    assert {k: v for k, v in runs[0].items() if k != "label"} == ref
    assert all(r["nfe"][0] == 3 for r in runs)
    assert analysis.predictor_label(pred) == "AMED-Solver"
    plugin = learned.AMEDPluginSampler(learned.AMEDPluginSampler.make_config(sig, afs=True, base="dpm2"))
    assert analysis.predictor_label(plugin) == "AMED-Plugin on dpm2"
    dyw = learned.DyWeightSampler(learned.DyWeightSampler.make_config(sig, afs=True, options={"window": 3}))
    assert analysis.predictor_label(dyw) == dyw.describe() == "dyweight (window=3)"


def test_step_alignment_is_paper_alignment_with_afs(gmm4, noise16):
    res = analysis.step_alignment(gmm4, noise16, ["amed"], 3, grid=3, teacher_steps=2)
    assert len(res) == 2 and all(r["solver"] == "AMED-Solver / DPM-Solver-2" for r in res)


def test_export_schedule_formats(tmp_path):
    sig = get_schedule("polynomial", 4)
    path = save_schedule(tmp_path / "s.json", sig)
    assert export_schedule(path, "list") == sig.tolist()
    assert export_schedule(path, "k") == sig.tolist() + [0.0]
    doc = export_schedule(str(path))
    assert doc["sigmas"] == sig.tolist() and doc["k_diffusion_sigmas"] == sig.tolist() + [0.0]
    with pytest.raises(ValueError, match="fmt must be one of json, list, k"):
        export_schedule(path, "csv")


def test_export_schedule_of_an_amed_table(gmm4, tmp_path):
    pred = learned.train("amed", gmm4, shape=(4,), num_steps=3, teacher=learned.Teacher(M=2),
                         budget=learned.Budget(total_samples=16), progress=False)
    pred.save(tmp_path / "p.safetensors")
    doc = export_schedule(tmp_path / "p.safetensors")
    assert doc["sigmas"] == pred.config["sigmas"] and doc["afs"] is True
    for step, row in zip(doc["steps"], pred.table_values()):
        s = step["t_next"] ** row["r"] * step["t_cur"] ** (1 - row["r"])
        assert step["s"] == pytest.approx(s, rel=1e-12) and step["eval_sigma"] == pytest.approx(row["a"] * s, rel=1e-12)
        assert step["c"] == row["c"]


def test_cli_analyze_pca_max_k_too_large_is_a_clean_error(tmp_path, capsys):
    # 12 features, 2 steps: trajectories of 3 points have 3 principal components (the factory is probed for --shape)
    assert main(["analyze", "pca", "--model", "factory_model:make", "--shape", "12", "--seeds", "0-3", "--steps", "2",
                 "--max-k", "4", "--out", str(tmp_path / "pca"), "--threads", "1"]) == 2
    assert "max_k must be an int in 1..3" in capsys.readouterr().err
    assert not (tmp_path / "pca.csv").exists()


def test_cli_schedule_export_list_writes_out(tmp_path, capsys):
    path = save_schedule(tmp_path / "s.json", get_schedule("logsnr", 3))
    assert main(["schedule", "export", str(path), "--format", "list", "--out", str(tmp_path / "s.txt")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "s.txt").read_text() == text
    assert json.loads("[" + text + "]") == get_schedule("logsnr", 3).tolist()


def test_relative_alignment_is_the_papers_protocol(gmm4, noise16):
    from fewstep.experiments import paper

    res = analysis.relative_alignment(gmm4, noise16, "amed", points=3, grid=3, gt_nfe=4)
    assert res == paper.relative_alignment(gmm4, noise16, ["amed"], 3, grid=3, gt_nfe=4)
    assert [r["step"] for r in res] == [0, 1] and res[0]["solver"] == "AMED-Solver (c = 1)"
