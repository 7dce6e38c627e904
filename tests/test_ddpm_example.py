"""The third-party-style DDPM of examples/ddpm_digits: its factory through the CLI, its identity and range, its
independence from fewstep, and the hand sweep run on it (benchmarks/ddpm_sweep.py, at tiny size)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep.cli import main
from fewstep.cli.args import load_model
from fewstep.denoisers import VPModel, model_digest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddpm_digits"
FACTORY = "examples.ddpm_digits.model:factory"


@pytest.fixture(scope="module")
def ddpm():
    from examples.ddpm_digits import model

    return model


def test_weights_file_is_small_and_says_how_it_was_made(ddpm):
    from safetensors import safe_open

    assert ddpm.WEIGHTS.stat().st_size < 1.5e6
    with safe_open(str(ddpm.WEIGHTS), "pt") as f:
        meta = f.metadata()
    assert int(meta["steps_done"]) > 1000 and float(meta["final_loss_last200"]) < 0.06
    assert int(meta["parameters"]) == sum(p.numel() for p in ddpm.load_net().parameters())


def test_factory_is_a_discrete_eps_vp_model_with_its_own_range_and_id(ddpm):
    den = ddpm.factory()
    assert isinstance(den, VPModel) and den.prediction == "eps"
    ac = ddpm.ALPHAS_CUMPROD
    assert den.sigma_min == pytest.approx(math.sqrt((1 - ac[0]) / ac[0]), rel=1e-12)
    assert den.sigma_max == pytest.approx(math.sqrt((1 - ac[-1]) / ac[-1]), rel=1e-12)
    model_id = load_model(FACTORY, (1, 16, 16))[2]
    assert model_id == f"{FACTORY}@{model_digest(den.model)}" and len(model_id.split("@")[1]) == 12
    # the network takes integer timesteps (and the adapter's float ones, the same values)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(den.model(x, torch.tensor([0, 999])), den.model(x, torch.tensor([0.0, 999.0])))


def test_model_code_imports_fewstep_only_in_the_factory():
    tree = ast.parse((EXAMPLE / "model.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n.split(".")[0] == "fewstep" for n in names):
                owner = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and node in ast.walk(f)]
                assert owner == ["factory"], f"fewstep imported outside factory() at line {node.lineno}"


def test_example_ddpm_through_the_cli(tmp_path, capsys):
    """As examples/ddpm_digits/README.md runs it; the run's settings record the model id with the digest."""
    out = tmp_path / "d"
    assert main(["sample", "--model", FACTORY, "--shape", "1,16,16", "--nfe", "5", "--seeds", "0-3", "--threads", "1",
                 "--format", "npy", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sigmas: 7 from 157.407 to 0.0100005 (fewstep's measured default for NFE 5: " in err
    assert "the model's own range" in err
    images = np.stack([np.load(p) for p in sorted(out.rglob("*.npy"))])
    assert images.shape == (4, 1, 16, 16) and np.isfinite(images).all()
    settings = "".join(p.read_text() for p in out.rglob("*.json"))
    assert f"{FACTORY}@" in settings


def test_sweep_runs_and_writes_page_and_json(tmp_path, monkeypatch):
    from benchmarks import ddpm_sweep

    monkeypatch.setattr(ddpm_sweep, "SOLVERS", (("Euler", "euler", {}), ("iPNDM4", "ipndm", {"max_order": 4})))
    monkeypatch.setattr(ddpm_sweep, "SCHEDULES", (("polynomial", 7.0), ("logsnr", 7.0)))
    monkeypatch.setattr(ddpm_sweep, "DISCRETE", (("discrete", 1.0),))
    page, js = tmp_path / "s.md", tmp_path / "s.json"
    assert ddpm_sweep.main(["--quick", "--models", "ddpm", "--out", str(page), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    rows = doc["results"][0]["rows"]
    assert len(rows) == 2 * 2 * 3 and {r["nfe"] for r in rows} == {5}
    assert all(r["rmse"] is None or r["rmse"] >= 0 for r in rows)
    text = page.read_text()
    assert "### NFE 5 (12 configurations)" in text and "load average" in text
    assert "iPNDM4 +AFS" in text and "Default / best" in text
