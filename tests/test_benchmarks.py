"""The benchmark harness (``make bench``) on a tiny size, and the overhead cuts it motivated (same results)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fewstep
from fewstep.sampling import all_finite
from fewstep.solvers.base import phi

# `benchmarks` (the repository root) and `conftest` (tests/) are importable through pytest's `pythonpath` setting.
from benchmarks import bench
from benchmarks.diffusers_harness import diffusers_sampler, run_diffusers
from conftest import make_gmm


def test_bench_quick_writes_every_section(tmp_path):
    md, js = tmp_path / "B.md", tmp_path / "B.json"
    assert bench.main(["--quick", "--quiet", "--train-students", "amed", "--out", str(md), "--json", str(js)]) == 0
    text, res = md.read_text(), json.loads(js.read_text())
    for heading in ("## Machine and command", "## 1. Quality: analytic bed", "## 1. Quality: demo model",
                    "## 2. Speed", "## 3. AMED training cost", "## 4. No-NaN check", "## GPU"):
        assert heading in text
    assert "benchmarks.bench --quick" in text and "Load average" in text and "torch threads: 1" in text

    # Training cost: the teacher evaluations per sample, computed from teacher / M / steps, match the count.
    (tr,) = res["train"]
    assert tr["teacher_evals_per_sample_computed"] == 3 * (1 + 1)  # AMED-Solver NFE 5: 4 sigmas, M = 1
    assert tr["teacher_evals_per_sample_counted"] == tr["teacher_evals_per_sample_computed"]
    assert tr["teacher_evals_per_sample_logged"] == tr["teacher_evals_per_sample_computed"]
    assert tr["student_evals_per_sample_counted"] == 5
    assert tr["seconds"] > 0 and tr["peak_rss_mib"] > 0

    # Quality: diffusers ran on the same model, seeds and sigmas (equal where the algorithms coincide).
    for q in res["quality"]:
        rows = {r["label"]: r for r in q["rows"]}
        for ours, theirs in (("Euler (DDIM)", "EulerDiscrete"), ("DPM-Solver++(2M)", "DPMSolverMultistep 2M"),
                             ("UniPC(3M) bh2", "UniPCMultistep 3M bh2")):
            a, b = rows[ours]["5"], rows[f"diffusers {theirs}"]["5"]
            assert a == pytest.approx(b, rel=1e-6)
        assert all(math.isfinite(r["fd"]["5"]) for r in q["rows"])
    assert any(r["label"].startswith("AMED-Solver") for r in res["quality"][1]["rows"])

    # No NaN anywhere; every sampler and diffusers scheduler timed with a finite ratio and its pair.
    assert res["nan"]["non_finite"] == [] and res["nan"]["runs"] == len(bench.BASELINES) + len(bench.DIFFUSERS)
    speed = {r["label"]: r for r in res["speed"]["rows"]}
    assert len(speed) == len(bench.BASELINES) + 1 + 4 + len(bench.DIFFUSERS)  # + DEIS logrho, 4 AMED variants
    assert all(0 < r["ratio"] < 100 and 1 <= r["ratio_in_sample"] < 100 and r["nfe"] == 5 for r in speed.values())
    assert sum("vs_diffusers_in_sample" in r for r in speed.values()) == len(bench.DIFFUSERS)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_is_isfinite_all(dtype):
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        t = torch.randn(4, 3, 5, generator=g).to(dtype)
        for _ in range(trial % 3):
            t.view(-1)[int(torch.randint(t.numel(), (), generator=g))] = (math.nan, math.inf, -math.inf)[trial % 3]
        assert all_finite(t) == bool(torch.isfinite(t).all())
    assert all_finite(torch.empty(2, 0, dtype=dtype))
    assert all_finite(torch.arange(6).reshape(2, 3))


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_inf_from_denoiser_is_caught(bad):
    gmm = make_gmm()

    def den(x, s):
        out = gmm(x, s).clone()
        out[1, 2] = bad
        return out

    with pytest.raises(fewstep.NonFiniteError):
        fewstep.sample(den, torch.randn(3, 4, dtype=torch.float64), fewstep.get_schedule("polynomial", 4))


def _phi_where(k, z):
    """phi_k in the torch.where form (both branches everywhere), the reference for the branch shortcut."""
    small = z.abs() < 0.5
    zs = torch.where(small, torch.ones_like(z), z)
    rec = torch.expm1(zs) / zs
    for j in range(1, k):
        rec = (rec - 1.0 / math.factorial(j)) / zs
    zz = torch.where(small, z, torch.zeros_like(z))
    series = sum(zz**j / float(math.factorial(j + k)) for j in range(18))
    return torch.where(small, series, rec)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_shortcut_is_bitwise_the_where_form(k):
    for z in (torch.tensor(0.3, dtype=torch.float64), torch.tensor(-2.7, dtype=torch.float64),
              torch.tensor([0.1, -0.49, 0.5, 3.0, -1e-9], dtype=torch.float64), torch.tensor(1.7)):
        assert torch.equal(phi(k, z), _phi_where(k, z))


def test_diffusers_sampler_reuse_and_native_float32():
    """A scheduler built once and reset by set_timesteps gives a fresh run's result; float32 mode agrees closely."""
    gmm = make_gmm(dim=12, components=4, seed=3)
    noise = fewstep.noise_for_seeds(range(4), (3, 2, 2), dtype=torch.float64)
    for name, opts in (("dpmpp", {"solver_order": 3}), ("unipc", {}), ("deis", {}), ("heun", {"final_euler": True}),
                       ("euler", {})):
        run = diffusers_sampler(name, **opts)
        for n in (6, 4, 6):
            sig = fewstep.get_schedule("polynomial", n)
            again = run(gmm, noise * sig[0], sig)
            assert torch.equal(again, run_diffusers(name, gmm, noise * sig[0], sig, **opts))
        x32 = diffusers_sampler(name, torch.float32, **opts)(gmm, (noise * sig[0]).float(), sig)
        assert x32.dtype == torch.float32
        assert (x32.double() - again).abs().max() <= 1e-4 * again.abs().max()


# ------------------------------------------------------------------ frontier: the U-Net and flow beds
@pytest.mark.parametrize("bed, method", [("unet", "plugin"), ("flow", "dyweight")])
def test_frontier_other_beds_quick(tmp_path, monkeypatch, bed, method):
    """``--bed unet|flow`` on tiny sizes: one learned method trained at NFE 5, classic solvers at 5 and 9, the goal
    ratio (best learned @5 / best classic @9) and, on the U-Net, FD per sample set; ``make bench``'s frontier
    summary reads the saved JSON."""
    from benchmarks import frontier

    out, js = tmp_path / "f.md", tmp_path / "f.json"
    assert frontier.main(["--quick", "--bed", bed, "--methods", method, "--nfes", "5,9", "--learned-nfes", "5",
                          "--seeds", "4", "--out", str(out), "--json", str(js)]) == 0
    text, res = out.read_text(), json.loads(js.read_text())
    assert f"--quick --bed {bed}" in text and "--seeds 4" in text
    assert "Goal check: best learned at NFE 5 / best classic at NFE 9" in text
    learned_rows = [r for r in res["rows"] if r["kind"] == "learned"]
    assert [(r["method"], r["nfe"]) for r in learned_rows] == [(method, 5)]
    assert {r["nfe"] for r in res["rows"] if r["kind"] == "classic"} == {5, 9}
    assert all(math.isfinite(r["rmse"]) and r["rmse"] > 0 for r in res["rows"])
    assert res["meta"][0]["bed"] == bed and (("## FD by NFE" in text) is (bed == "unet"))
    assert all(("fd" in r) is (bed == "unet") for r in res["rows"])
    monkeypatch.setattr(bench, "FRONTIER_JSON", {bed: str(js)})
    summary = "\n".join(bench._frontier_md())
    assert "## Frontier" in summary and "best learned at NFE 5 / best classic at NFE 9 = **" in summary


def test_frontier_flow_schedule_is_shifted_uniform_flow_time():
    """The flow bed's schedule: exact endpoints, and uniform in flow time of sigma / shift (SD3's shift)."""
    from benchmarks.frontier import flow_schedule

    s = flow_schedule(6, shift=3.0)
    assert float(s[0]) == pytest.approx(80.0, rel=1e-12) and float(s[-1]) == pytest.approx(0.002, rel=1e-12)
    u = (s / 3) / (1 + s / 3)
    assert torch.allclose(u.diff(), u.diff()[:1].expand(5), rtol=1e-10)


# ------------------------------------------------------------------ defaults: the measured default sampler
def test_defaults_quick_writes_rule_tables_and_accuracy(tmp_path, monkeypatch):
    """benchmarks/defaults.py at tiny size (two solvers, two schedules, NFE 3 and 5, 4/10 seeds): every model is
    screened at NFE 5, the ``--top`` chosen configurations (today's default and Euler first) at NFE 3; a rule per
    regime with its worst ratio per NFE, and the guided class-accuracy table against the teacher; rows are cached."""
    from benchmarks import defaults

    monkeypatch.setattr(defaults, "SOLVERS", (("Euler", "euler", {}), ("iPNDM4", "ipndm", {"max_order": 4})))
    monkeypatch.setattr(defaults, "SCHEDULES", (("polynomial", 7.0), ("logsnr", None)))
    page, js, cache = tmp_path / "d.md", tmp_path / "d.json", tmp_path / "cache"
    argv = ["--quick", "--top", "3", "--cache", str(cache), "--out", str(page), "--json", str(js)]
    assert defaults.main(argv) == 0
    doc = json.loads(js.read_text())
    assert doc["grid_size"] == 8 and doc["selected"][:2] == [defaults.DEFAULT_KEY, defaults.EULER_KEY]
    assert len(doc["selected"]) == 3
    per = {(m, n): sum(r["model"] == m and r["nfe"] == n for r in doc["rows"]) for m in defaults.MODELS for n in (3, 5)}
    assert all(per[(m, 5)] == 8 and per[(m, 3)] == 3 for m in defaults.MODELS)
    assert all(r["rmse"] is None or r["rmse"] > 0 for r in doc["rows"])
    for reg in ("unguided", "guided", "all"):
        assert set(doc["worst"][reg]) == {"3", "5"} and all(v >= 1 for w in doc["worst"][reg].values()
                                                             for v in w.values())
    assert doc["proposal"]["rules"] and doc["cpu_seconds"]["total"] > 0
    teachers = [r for r in doc["accuracy"] if r["role"] == "teacher"]
    assert [r["w"] for r in teachers] == [4.0, 7.5]
    assert any("proposed guided default" in r["role"] for r in doc["accuracy"])
    assert all(len(r["per_class"]) == 10 for r in doc["accuracy"])
    text = page.read_text()
    for heading in ("## The proposed rule", "## Worst ratio per NFE and regime", "## Each model's best",
                    "## Class accuracy of the guided digits model", "load average"):
        assert heading in text
    # A second run measures nothing again (every row comes from the cache).
    n_rows = len((cache / "rows.jsonl").read_text().splitlines())
    assert defaults.main(argv) == 0 and len((cache / "rows.jsonl").read_text().splitlines()) == n_rows


def test_methods_quick_trains_from_the_tuned_start_and_renders(tmp_path, monkeypatch):
    """benchmarks/methods.py at tiny size on the analytic bed: tune files, one training per method, the table with
    the tuned classic rows at each NFE and at NFE 9, and a second call that only evaluates (cached runs)."""
    from benchmarks import methods

    monkeypatch.setattr(methods, "MODELS", {"gmm": ("gmm", None)})
    argv = ["--quick", "--models", "gmm", "--methods", "residual", "--nfes", "5", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "m.md"), "--json", str(tmp_path / "m.json")]
    assert methods.main(argv) == 0
    rows = json.loads((tmp_path / "m.json").read_text())["results"][0]["rows"]
    assert {(r["kind"], r["nfe"]) for r in rows} == {("classic", 5), ("classic", 9), ("learned", 5)}
    assert all(r["rmse"] is not None and r["rmse"] >= 0 for r in rows)
    assert "| residual on " in (tmp_path / "m.md").read_text()
    first = (tmp_path / "w" / "gmm_residual_nfe5.safetensors").read_bytes()
    assert methods.main(argv) == 0  # cached: nothing trained again
    assert (tmp_path / "w" / "gmm_residual_nfe5.safetensors").read_bytes() == first
    assert json.loads((tmp_path / "m.json").read_text())["results"][0]["rows"] == rows
