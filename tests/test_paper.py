"""Paper tables (fewstep bench paper-table2/4/5), Fig. 5 alignment, per-step error analysis, precision/recall."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_gmm

import fewstep
from fewstep import cli, learned, metrics
from fewstep.evaluation import reference_solution, rmse
from fewstep.experiments import paper
from fewstep.experiments.bed import Bed
from fewstep.sampling import noise_for_seeds, sample, solve
from fewstep.schedules import get_schedule, refine_schedule
from fewstep.seeds import report_seeds

TINY = ["--seeds", "8", "--ref-steps", "32", "--nfe", "3", "--train-samples", "16", "--M", "2"]


@pytest.fixture
def small_model(monkeypatch):
    """fewstep.cli.args.load_model -> a 4-D Gaussian mixture (the natural-patch bed takes ~20 s to fit)."""
    gmm = make_gmm()
    gmm.model_id = "test-gmm"
    monkeypatch.setattr(cli.args, "load_model", lambda name, shape=None: (gmm, (4,), "test-gmm", torch.float64))
    return gmm


# ------------------------------------------------------------------------------------------ precision / recall


def test_precision_recall_identical_sets_are_one():
    x = torch.randn(200, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert metrics.precision_recall(x, x) == (1.0, 1.0)
    assert metrics.precision_recall(x.numpy(), x.numpy()[::-1].copy(), chunk=7) == (1.0, 1.0)


def test_precision_recall_far_disjoint_set_is_zero():
    x = torch.randn(100, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_known_small_case():
    # real 0,1,2,3 (k=1 radii all 1); fake 1/8, 1/2, 10, 11 (radii 3/8, 3/8, 1, 1).
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.125], [0.5], [10.0], [11.0]])
    assert metrics.knn_radii(real, k=1).tolist() == [1.0, 1.0, 1.0, 1.0]
    # precision: 1/8 and 1/2 lie within 1 of a real point, 10 and 11 do not -> 2/4;
    # recall: only the real 0 lies within 3/8 of 1/8 -> 1/4.
    assert metrics.precision_recall(real, fake, k=1) == (0.5, 0.25)
    assert metrics.precision_recall(real, fake, k=1, chunk=1) == (0.5, 0.25)
    # k=3: real radii 3, 2, 2, 3 cover 1/8 and 1/2 only; the fake radii (9.875 and more) cover every real point.
    p, r = metrics.precision_recall(real, fake, k=3)
    assert (p, r) == (0.5, 1.0)


def test_precision_recall_mode_collapse_keeps_precision_loses_recall():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(400, 4, dtype=torch.float64, generator=g)
    narrow = 0.2 * torch.randn(400, 4, dtype=torch.float64, generator=g)
    p, r = metrics.precision_recall(real, narrow)
    assert p > 0.95 and r < 0.2


@pytest.mark.parametrize("k", [0, 4, True])
def test_precision_recall_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_recall(np.zeros((4, 2)), np.ones((4, 2)), k=k)


def test_eval_pr_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = np.clip(rng.normal(0, 0.5, (120, 3, 4, 4)), -1, 1).astype(np.float32)
    np.savez(tmp_path / "a.npz", images=a)
    np.savez(tmp_path / "b.npz", images=np.clip(a + 0.9, -1, 1))  # shifted (keeps some negative values: [-1, 1])
    assert cli.main(["eval", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "a.npz"), "--pr", "--threads", "1"]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    assert cli.main(["eval", str(tmp_path / "b.npz"), "--ref", str(tmp_path / "a.npz"), "--pr", "--threads", "1"]) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["precision"] < 0.5 and other["recall"] < 0.5


# ------------------------------------------------------------------------------------------ bench


@pytest.mark.parametrize("which", ["paper-table2", "paper-table4", "paper-table5"])
def test_bench_writes_table(which, small_model, tmp_path):
    out = tmp_path / f"{which}.md"
    assert cli.main(["bench", which, "--out", str(out)] + TINY) == 0
    text = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert text.startswith("# Table") and f"Command: `fewstep bench {which} --model gmm --seeds 8" in text
    assert data["command"] in text
    rows = data["rows"]
    assert all(np.isfinite(r["3"]) for r in rows if r["3"] is not None)
    learned = [r for r in rows if r["solver"].startswith("amed")]
    assert learned and all(len(r["tables"]["3"]) == 2 for r in learned)  # NFE 3 with AFS: 3 sigmas, 2 steps
    labels = [r["label"] for r in rows]
    assert "## Beside the paper" in text and "ours / paper" in text and "| pattern |" in text
    if which == "paper-table2":
        assert labels[:6] == [s.label + (" +AFS" if s.afs else "") for s in paper.TABLE2_BASELINES]
        assert labels[6] == "AMED-Solver" and labels[7].startswith("AMED-Plugin on ")
        assert data["plugin_base"] in labels[7]
        assert labels[8] == "AMED-Plugin on DPM-Solver-2 +AFS" and rows[8]["solver"] == "amed_plugin:dpm2"
        assert all(f"Paper Table 2({x})" in text for x in "abcd")
        # The paper's 2(d) row AMED-Plugin on DPM-Solver-2 sits beside ours.
        assert "| AMED-Plugin on DPM-Solver-2 (ours: AMED-Plugin on DPM-Solver-2 +AFS) |" in text
    elif which == "paper-table4":
        assert [lab.split(",")[0] for lab in labels] == [t[0].split(",")[0] for t in paper.TEACHERS]
        assert labels[0] == "Heun (EDM), M=2" and labels[-2].startswith("Heun, M=1")
        assert len(data["teacher_rows"]) == len(paper.TEACHERS)
    else:
        assert len(rows) == 2 * len(paper.SCHEDULES)
        # The baseline cells are plain sampling on the named schedule (rho passed through: time-uniform rho=1).
        gmm = small_model
        noise = noise_for_seeds(report_seeds(8), (4,), dtype=torch.float64)  # the bed's held-out seeds
        ref, _ = reference_solution(gmm, noise, steps=32)
        for (label, kind, rho), row in zip(paper.SCHEDULES, rows[::2]):
            x = sample(gmm, noise, get_schedule(kind, 4, rho=rho), "dpmpp", max_order=3)
            assert row["3"] == pytest.approx(rmse(x, ref), rel=1e-12), label


def test_bench_render_only_reproduces_the_report(small_model, tmp_path):
    out = tmp_path / "t5.md"
    assert cli.main(["bench", "paper-table5", "--out", str(out)] + TINY) == 0
    text = out.read_text()
    machine = next(line for line in text.splitlines() if line.startswith("Machine: ")).split("; total")[0][9:]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert paper.render("table5", saved, machine) == text
    out.write_text("stale")
    assert cli.main(["bench", "paper-table5", "--render-only", "--out", str(out)]) == 2  # replaces the .md
    assert out.read_text() == "stale"
    assert cli.main(["bench", "paper-table5", "--render-only", "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().split("Machine: ")[0] == text.split("Machine: ")[0]
    assert out.read_text().split("; total")[1] == text.split("; total")[1]


def test_bench_table4_paper_teachers_two_students(small_model, tmp_path):
    out = tmp_path / "t4.md"
    assert cli.main(["bench", "paper-table4", "--teachers", "paper", "--method", "amed,plugin", "--base", "ipndm", "--out", str(out)]
                    + TINY) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert "--teachers paper --method amed,plugin --base ipndm" in data["command"]
    labels = [r["label"] for r in data["rows"]]
    assert labels == [f"{s} / {t[0]}, M=2" for s in ("AMED-Solver", "AMED-Plugin on iPNDM") for t in paper.PAPER_TEACHERS]
    assert [(r["student"], r["teacher"], r["M"]) for r in data["teacher_rows"]][:2] == [("amed", "dpmpp", 2),
                                                                                         ("amed", "ipndm", 2)]
    text = out.read_text()
    assert "Paper Table 4, AMED-Solver" in text and "Paper Table 4, AMED-Plugin on iPNDM" in text
    assert "best teacher resembles the student" in text
    for bad in (["--method", "nope"], ["--method", "ipndm"], ["--method", "plugin", "--base", "nope"]):
        assert cli.main(["bench", "paper-table4", *bad, "--out", str(out)] + TINY) == 2
    with pytest.raises(SystemExit):  # --student is retired: --method plugin --base ... (argparse's error)
        cli.main(["bench", "paper-table4", "--student", "amed", "--out", str(out)] + TINY)


@pytest.mark.parametrize("which,name", [("table2", "table2"), ("table4", "table4"), ("table4", "table4_paper_teachers"),
                                        ("table5", "table5"), ("table2", "table2_c4_even_nfe"),
                                        ("table2", "table2_unet_dpm2"), ("table2", "table2_paper_schedules")])
def test_docs_paper_tables_are_rendered_from_their_json(which, name):
    """docs/paper/<name>.md is exactly what `fewstep bench paper-<table> --render-only` makes of its JSON."""
    from pathlib import Path

    md = Path(__file__).resolve().parents[1] / "docs" / "paper" / f"{name}.md"
    text = md.read_text()
    machine = next(line for line in text.splitlines() if line.startswith("Machine: ")).split("; total")[0][9:]
    assert paper.render(which, json.loads(md.with_suffix(".json").read_text()), machine) == text


# ------------------------------------------------------------------------------------------ the paper's numbers


def _specs_with_labels():
    """(where, label, solver, options) of every labelled solver spec in the library, the paper tables and the
    benchmarks (there: every literal tuple ("label", "solver", {options}, ...), read without importing them)."""
    import ast
    from pathlib import Path

    from fewstep.evaluation import BASELINES

    out = [("evaluation.BASELINES", s.label, s.solver, s.options) for s in BASELINES]
    out += [("paper.TABLE2_BASELINES", s.label, s.solver, s.options) for s in paper.TABLE2_BASELINES]
    out += [(f"paper.{name}", t[0], t[1], t[2]) for name in ("TEACHERS", "PAPER_TEACHERS") for t in getattr(paper, name)]
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.Call)):
                elts = node.elts if isinstance(node, ast.Tuple) else node.args
                if (len(elts) >= 2 and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts[:2])):
                    opts = ast.literal_eval(elts[2]) if len(elts) > 2 and isinstance(elts[2], ast.Dict) else {}
                    out.append((path.name, elts[0].value, elts[1].value, opts))
    return out


def test_deis_tab_labels_count_points_as_the_deis_paper():
    """DEIS (Zhang & Chen) tABk extrapolates eps with a degree-k polynomial through k + 1 points: fewstep's
    ``deis`` ``max_order`` counts points, so a label "DEIS tABk" needs max_order = k + 1 (tAB2 = max_order 3)."""
    import re

    from fewstep.solvers import get_solver

    found = 0
    for where, label, solver, options in _specs_with_labels():
        m = re.search(r"tAB\s*-?\s*(\d+)", label)
        if not m:
            continue
        found += 1
        k = int(m.group(1))
        s = get_solver(solver, **options)
        assert solver == "deis" and s.deis_mode == "tab", (where, label)
        assert s.max_order == k + 1, f"{where}: {label!r} has max_order {s.max_order}, DEIS tAB{k} is {k + 1} points"
    assert found >= 2


def test_paper_numbers_match_the_papers_own_cross_checks():
    """The tables were read from extracted text whose stacked cells run down one NFE column; the paper's own
    statements and the numbers it repeats across tables confirm that reading."""
    t2 = {name: {k: v for _, k, v in sub["rows"]} for name, sub in paper.PAPER_TABLE2.items()}
    # "AMED-Plugin on iPNDM improves the FID by 6.98, 4.68 and 5.16 on CIFAR10, ImageNet 64 and FFHQ 64 in 5 NFE"
    for name, gain in (("cifar10", 6.98), ("imagenet64", 4.68), ("ffhq64", 5.16)):
        assert t2[name]["ipndm"][1] - t2[name]["amed_plugin:ipndm"][1] == pytest.approx(gain, abs=1e-9)
    assert "amed_plugin:dpm2" in t2["lsun_bedroom"] and "heun" not in t2["lsun_bedroom"]
    # Table 4's plugin row with the iPNDM teacher is Table 2(a)'s plugin; Table 2(a)'s AMED-Solver is the better of
    # the DPM-Solver-2 and EDM teachers (the paper's two AMED-Solver teachers) at each NFE.
    t4 = {s: {k: v for _, k, v in rows} for s, rows in paper.PAPER_TABLE4.items()}
    assert t4["ipndm"]["ipndm"] == t2["cifar10"]["amed_plugin:ipndm"]
    assert tuple(map(min, t4["amed"]["dpm2"], t4["amed"]["heun"])) == t2["cifar10"]["amed"]
    # Table 5's logSNR DPM-Solver++(3M) is Table 2(a)'s (the paper runs DPM-Solver++ on logSNR).
    t5 = {s: {k: v for _, k, v in rows} for s, rows in paper.PAPER_TABLE5.items()}
    assert t5["dpmpp"]["logsnr"] == t2["cifar10"]["dpmpp"]
    # "Our AMED-Plugin consistently improves the results" (Table 5): on every schedule at every NFE.
    assert all(p < b for k in t5["dpmpp"] for p, b in zip(t5["amed_plugin:dpmpp"][k], t5["dpmpp"][k]))
    assert paper.PAPER_TABLE2_CIFAR10["AMED-Plugin (iPNDM)"] == t2["cifar10"]["amed_plugin:ipndm"]


def test_compare_verdicts_on_a_known_case():
    rows = [{"label": "iPNDM", "solver": "ipndm", 3: 2.0, 5: 1.0, 7: 0.5, 9: 0.4},
            {"label": "AMED-Plugin on iPNDM", "solver": "amed_plugin:ipndm", 3: 1.0, 5: 2.0, 7: 0.4, 9: 0.3}]
    (title, side, pat), *_ = paper.compare("table2", {"rows": rows})
    assert title.startswith("Paper Table 2(a)")
    assert "| iPNDM | 2.0000 / 47.98 | 1.0000 / 13.59 |" in side
    line = next(x for x in pat.splitlines() if x.startswith("| AMED-Plugin on iPNDM / iPNDM"))
    assert "ours 0.50 · paper 0.23" in line and "disagrees at NFE 5 (3/4)" in line


def test_bench_rejects_unknown_plugin_base(small_model, tmp_path, capsys):
    assert cli.main(["bench", "paper-table2", "--plugin-base", "nope", "--out", str(tmp_path / "t.md")] + TINY) == 2
    assert "plugin_base must be" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()


# ------------------------------------------------------------------------------------------ Fig. 5 and errors


def test_alignment_half_matches_dpm_solver_2_and_grid_never_worse(gmm4, noise16):
    res = paper.alignment(gmm4, noise16, nfe=5, solvers=("amed", "ipndm"), grid=9, M=2)
    assert [r["solver"] for r in res] == ["AMED-Solver / DPM-Solver-2"] * 3 + ["AMED-Plugin on ipndm"] * 3
    for r in res:
        assert 0 < r["r_opt"] < 1 and r["rmse_opt"] <= r["rmse_half"] and r["ratio"] >= 1
    # Step 0 at r = 0.5 is one DPM-Solver-2 step with AFS, measured against the teacher at sigma_1.
    sig = get_schedule("polynomial", 4)
    x1 = sample(gmm4, noise16, sig[:2], "dpm2", afs=True)
    teach = solve(gmm4, noise16, refine_schedule(sig, 2), "deis", max_order=4, deis_mode="logrho",
                  trajectory=True).trajectory[3]
    assert res[0]["rmse_half"] == pytest.approx(rmse(x1, teach), rel=1e-10)
    # On this bed the first step of DPM-Solver-2 wants an intermediate time far from the midpoint (r << 0.5).
    assert res[0]["r_opt"] < 0.3 and res[0]["ratio"] > 1.5


def test_analyze_align_and_error_cli(small_model, tmp_path):
    assert cli.main(["analyze", "align", "--nfe", "3", "--seeds", "0-7", "--grid", "5", "--teacher-steps", "2",
                     "--out", str(tmp_path / "align"), "--threads", "1"]) == 0
    lines = (tmp_path / "align.csv").read_text().splitlines()
    assert lines[0].startswith("solver,nfe,step,sigma_cur") and len(lines) == 1 + 3 * 2
    assert (tmp_path / "align.png").stat().st_size > 0

    pred = learned.train("amed", small_model, shape=(4,), num_steps=3, teacher=learned.Teacher(M=2),
                         budget=learned.Budget(total_samples=16), progress=False, model_id="test-gmm")
    pred.save(tmp_path / "p.safetensors")
    assert cli.main(["analyze", "error", "--solver", "ipndm,euler", "--nfe", "3", "--seeds", "800000000-800000007",
                     "--teacher-steps", "2", "--predictor", str(tmp_path / "p.safetensors"),
                     "--out", str(tmp_path / "err"), "--threads", "1"]) == 0
    rows = (tmp_path / "err.csv").read_text().splitlines()
    assert rows[0] == "solver,nfe,step,sigma,rmse,l2,teacher_change"
    by = {}
    for line in rows[1:]:
        by.setdefault(line.split(",")[0], []).append(line.split(","))
    assert sorted(by) == ["AMED-Solver", "euler", "ipndm"]
    assert len(by["ipndm"]) == 4 and len(by["AMED-Solver"]) == 3  # 4 sigmas at NFE 3; AMED-Solver 3 sigmas
    assert all(r[1] == "3" for v in by.values() for r in v)
    assert float(by["ipndm"][0][4]) == 0.0 and float(by["euler"][-1][4]) > float(by["ipndm"][-1][4])
    assert (tmp_path / "err.png").stat().st_size > 0


def test_trajectory_error_with_predictor_matches_sampling(gmm4, noise16):
    pred = learned.train("amed", gmm4, shape=(4,), num_steps=3, teacher=learned.Teacher(M=2),
                         budget=learned.Budget(total_samples=16), progress=False)
    e = fewstep.evaluation.trajectory_error(gmm4, noise16, None, predictor=pred, teacher_steps=2)
    x = sample(gmm4, noise16, predictor=pred)
    sig = torch.tensor(pred.config["sigmas"], dtype=torch.float64)
    teach = sample(gmm4, noise16, refine_schedule(sig, 2), "deis", max_order=4, deis_mode="logrho")
    assert e["nfe"] == [3] and e["rmse"][-1] == pytest.approx(rmse(x, teach), rel=1e-10)


def test_analyze_error_unreachable_nfe_is_a_clean_error(small_model, tmp_path, capsys):
    assert cli.main(["analyze", "error", "--solver", "dpm2", "--nfe", "4", "--afs", "--seeds", "0-3",
                     "--out", str(tmp_path / "e"), "--threads", "1"]) == 2
    assert "cannot use exactly nfe=4" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Fig. 5, the paper's protocol


def test_relative_alignment_follows_the_papers_protocol(gmm4, noise16):
    res = paper.relative_alignment(gmm4, noise16, ("amed", "dpm2", "ipndm"), points=4, grid=5, gt_nfe=12)
    assert [r["form"] for r in res] == ["amed"] * 3 + ["dpm2"] * 3 + ["ipndm"] * 3
    assert all(r["gt_nfe"] == 12 for r in res)  # Heun, 2 evaluations per step, 2 steps per interval
    sig = get_schedule("polynomial", 4)
    gt = solve(gmm4, noise16, refine_schedule(sig, 1), "heun", trajectory=True).trajectory[::2]
    base = solve(gmm4, noise16, sig, "dpm2", trajectory=True).trajectory  # r = 0.5, no AFS
    for r in res:
        assert r["rel_align"] == pytest.approx(r["l2_base"] - r["l2_searched"], abs=1e-15)
        assert 0 < r["r_opt"] < 1
    for amed_r, dpm2_r in zip(res[:3], res[3:6]):  # both are DPM-Solver-2 at r = 0.5: one shared baseline
        assert amed_r["l2_base"] == pytest.approx(dpm2_r["l2_base"], rel=1e-12)
        i = amed_r["step"]
        assert amed_r["l2_base"] == pytest.approx(float((base[i + 1] - gt[i + 1]).norm(dim=1).mean()), rel=1e-10)
    # The first step starts from the same x_T and the grid holds r = 0.5: the search cannot lose there.
    assert all(r["rel_align"] >= 0 for r in res if r["step"] == 0)
    with pytest.raises(ValueError, match="gt_nfe must be a positive multiple of 2"):
        paper.relative_alignment(gmm4, noise16, ("amed",), points=4, gt_nfe=13)
    with pytest.raises(ValueError, match="points must be"):
        paper.relative_alignment(gmm4, noise16, ("amed",), points=1)


def test_analyze_align_paper_protocol_cli(small_model, tmp_path):
    assert cli.main(["analyze", "align", "--protocol", "paper", "--points", "4", "--gt-nfe", "12", "--seeds", "0-7",
                     "--grid", "3", "--solver", "amed,dpm2", "--out", str(tmp_path / "a"), "--threads", "1"]) == 0
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0].startswith("solver,form,points,step,") and "rel_align" in lines[0] and len(lines) == 1 + 2 * 3
    assert all(line.count(",") == lines[0].count(",") for line in lines)  # no label breaks the CSV
    assert (tmp_path / "a.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------ Table 2 options


def test_bench_table2_rows_dpm2_plugin_only(small_model, tmp_path):
    out = tmp_path / "t2.md"
    assert cli.main(["bench", "paper-table2", "--rows", "dpm2,plugin", "--plugin-base", "dpm2", "--batch", "8",
                     "--out", str(out)] + TINY) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["solver"] for r in data["rows"]] == ["dpm2", "amed_plugin:dpm2"]
    assert "--rows dpm2,plugin" in data["command"] and "--batch 8" in data["command"]
    assert data["rows"][1]["3"] is not None and data["settings"]["batch"] == 8
    text = out.read_text()
    assert "Paper Table 2(d)" in text and "batch 8," in text
    machine = next(line for line in text.splitlines() if line.startswith("Machine: ")).split("; total")[0][9:]
    assert paper.render("table2", data, machine) == text
    assert cli.main(["bench", "paper-table2", "--rows", "dpm2,nope", "--out", str(out)] + TINY) == 2


def test_table2_without_afs_reaches_even_nfe_only_and_paper_schedules(gmm4):
    bed = Bed.build(gmm4, (4,), seeds=8, ref_steps=16)
    res = paper.table2(bed, [4, 5], total_samples=16, plugin_base="dpm2", M=1, rows_only=["dpm2", "ipndm", "amed",
                                                                                           "plugin"], afs=False)
    by = {r["solver"]: r for r in res["rows"]}
    assert by["dpm2"][4] is not None and by["dpm2"][5] is None and not by["dpm2"]["afs"]
    assert by["amed"][4] is not None and by["amed"][5] is None and not by["amed"]["afs"]
    assert by["amed_plugin:dpm2"][4] is not None and by["amed_plugin:dpm2"][5] is None
    assert by["ipndm"][4] is not None and by["ipndm"][5] is not None
    x = sample(gmm4, bed.noise, get_schedule("polynomial", 3), "dpm2")  # 2 steps, no AFS: NFE 4
    assert by["dpm2"][4] == pytest.approx(rmse(x, bed.ref), rel=1e-12)
    text = paper.report("table2", res, bed, [4], "cmd", {"total_samples": 16, "M": 1}, 1.0)
    assert "No AFS anywhere" in text and "AFS off" in text and "Appendix C.4" in text

    res = paper.table2(bed, [3], total_samples=16, plugin_base="dpmpp", M=1, rows_only=["dpmpp", "amed", "plugin"],
                       schedules="paper")
    assert [r["schedule"] for r in res["rows"]] == ["logsnr", "time_uniform", "logsnr"]
    x = sample(gmm4, bed.noise, get_schedule("logsnr", 4), "dpmpp", max_order=3)
    assert res["rows"][0][3] == pytest.approx(rmse(x, bed.ref), rel=1e-12)
    assert paper.paper_schedule("euler") == ("polynomial", 7.0)
    with pytest.raises(ValueError, match="rows must be"):
        paper.table2(bed, [3], rows_only=["nope"])
