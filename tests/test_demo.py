"""The main job end to end on a reduced size (a tiny random U-Net), and the metrics it relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fewstep import evaluation, metrics
from fewstep.demo import DemoConfig, run_demo
from fewstep.denoisers.unet import SmallUNet, UNetConfig


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
    torch.manual_seed(0)
    model = SmallUNet(UNetConfig(img_resolution=8, base_channels=16, channel_mult=(1, 2), emb_dim=32,
                                 noise_features=16, norm_groups=4))
    cfg = DemoConfig(out=tmp_path, seeds=16, nfes=(3, 5), ref_steps=16, train_samples=32, train_batch=16, M=1,
                     fd_patches=200, specs=evaluation.BASELINES[:4], progress=False)
    summary = run_demo(cfg, model=model)
    assert (tmp_path / "results.md").is_file() and (tmp_path / "error_vs_nfe.png").is_file()
    assert len(list((tmp_path / "grids").glob("*.png"))) >= 6
    assert len(list((tmp_path / "predictors").glob("*.safetensors"))) == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model_id"] == model.model_id and summary["rows"][-1]["label"].startswith("AMED-Plugin")
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".*.png"))
