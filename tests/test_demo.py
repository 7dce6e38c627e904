"""The main job end to end on a reduced size (a tiny random U-Net; the digits part on a few seeds), and the metrics
it relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewstep import evaluation, metrics
from fewstep.experiments.demo import DemoConfig, DigitsDemoConfig, run_demo
from fewstep.denoisers.unet import SmallUNet, UNetConfig
from fewstep.io import pyplot


def test_frechet_distance_closed_form():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    # diagonal case: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5 + 1 + 1 + 0, abs=1e-9)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_order_invariant():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    a = metrics.gaussian_stats(x)
    b = metrics.gaussian_stats(x[torch.randperm(200, generator=torch.Generator().manual_seed(1))])
    assert metrics.frechet_distance(*a, *b) == pytest.approx(0, abs=1e-9)


def test_trajectory_pca_error_planar_is_zero():
    t = torch.linspace(0, 1, 10, dtype=torch.float64)
    u, v = torch.randn(2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    traj = (t[:, None] * u + t[:, None] ** 2 * v + 3.0)[:, None, :]  # a curve inside a 2-D affine plane
    assert metrics.trajectory_pca_error(traj, 2).max() < 1e-12
    assert metrics.trajectory_pca_error(traj, 1).max() > 1e-3


@pytest.mark.slow
def test_demo_end_to_end_reduced(tmp_path):
    """A model with no shipped sampler: the demo trains one (the default method from the measured default recipe)
    and reports the frontier (learned at each NFE it has against the best classic at NFE 9)."""
    torch.manual_seed(0)
    model = SmallUNet(UNetConfig(img_resolution=8, base_channels=16, channel_mult=(1, 2), emb_dim=32,
                                 noise_features=16, norm_groups=4))
    cfg = DemoConfig(out=tmp_path, seeds=16, nfes=(3, 5, 9), ref_steps=16, train_samples=16, fd_patches=200,
                     specs=evaluation.BASELINES[:4], progress=False,
                     digits=DigitsDemoConfig(per_class=2, grid_seeds=1, ref_steps=4, specs=evaluation.BASELINES[:4],
                                             train_samples=10, train_batch=10, M=1))
    summary = run_demo(cfg, model=model)
    assert (tmp_path / "results.md").is_file() and (tmp_path / "error_vs_nfe.png").is_file()
    assert len(list((tmp_path / "grids").glob("*.png"))) >= 6
    # the tiny U-Net's, trained now; the digits part uses the sampler shipped for the digits model at w = 2
    assert [p.name for p in (tmp_path / "predictors").glob("*.safetensors")] == ["residual_nfe5.safetensors"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model_id"] == model.model_id
    labels = [r["label"] for r in summary["rows"]]
    assert labels[-2:] == ["fewstep default (docs/defaults.md)", "learned (trained now)"]  # nothing tuned for it
    learned_row = summary["rows"][-1]
    assert {k for k in learned_row if k.isdigit()} == {"5"}  # (JSON-ready: NFE keys as strings)
    f = saved["frontier"]["5"]
    assert f["learned_over_best_classic_at_9"] == pytest.approx(f["learned"] / saved["frontier"]["9"]["best_classic"])
    assert f["best_classic"] == min(r["5"] for r in summary["rows"] if r.get("5") is not None and not r.get("learned"))
    # The conditional part: rows = classes 0-9, three groups of 1 seed + 2 white separators, 17 px per tile, x4.
    grid = pyplot().imread(tmp_path / "digits_nfe5.png")
    assert grid.shape[:2] == (4 * (10 * 17 + 1), 4 * (5 * 17 + 1))
    digits = saved["digits"]
    assert [c["column"] for c in digits["columns"]] == ["teacher", "classic", "learned"]
    assert digits["columns"][2]["sampler"].endswith(", shipped") and digits["train"] == {
        "shipped": "sampler_digits_nfe5.safetensors"}
    assert digits["columns"][0]["rmse"] == 0 and all(0 <= c["accuracy"] <= 1 for c in digits["columns"])
    assert digits["columns"][1]["rmse"] == min(v for v in digits["classic_rmse"].values() if v is not None)
    assert "## Conditional model: digits" in (tmp_path / "results.md").read_text()
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".*.png"))


def test_demo_cli_digits_switch(monkeypatch, tmp_path):
    import fewstep.experiments.demo
    from fewstep.cli import main

    seen: list[DemoConfig] = []
    monkeypatch.setattr(fewstep.experiments.demo, "run_demo", seen.append)
    assert main(["demo", "--out", str(tmp_path)]) == 0 and main(["demo", "--no-digits", "--out", str(tmp_path)]) == 0
    assert isinstance(seen[0].digits, DigitsDemoConfig) and seen[1].digits is None
    assert not seen[0].train and seen[0].seeds == 128
    assert main(["demo", "--train", "--train-samples", "64", "--out", str(tmp_path)]) == 0
    assert seen[2].train and seen[2].digits.train and seen[2].train_samples == 64
    assert main(["demo", "--train-samples", "64", "--out", str(tmp_path)]) == 2  # applies with --train only
