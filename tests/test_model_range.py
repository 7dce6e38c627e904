"""A model's own noise range: the adapters' sigma_min / sigma_max and the CLI schedules built between them."""

from __future__ import annotations

import argparse
import math
import re

import numpy as np
import pytest
import torch

from fewstep.cli import main
from fewstep.cli.args import describe_sigma_range, sigma_range
from fewstep.denoisers import FlowModel, VPModel
from fewstep.schedules import ddpm_alphas_cumprod, vp_sigma

DDPM = ddpm_alphas_cumprod()


class RecordingEps(torch.nn.Module):
    """eps = 0 (so D(x) = x), remembering the model times it was called with."""

    calls: list[torch.Tensor] = []

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        RecordingEps.calls.append(t.detach().clone())
        return x * self.scale


def tiny_ddpm():  # factory for --model test_model_range:tiny_ddpm
    return VPModel(RecordingEps(), prediction="eps", alphas_cumprod=DDPM)


def _sigma(ac: torch.Tensor, i: int) -> float:
    return math.sqrt((1 - float(ac[i])) / float(ac[i]))


def _used(err: str) -> tuple[int, float, float, str]:
    m = re.search(r"sigmas: (\d+) from (\S+) to (\S+) \((.*)\)", err)
    assert m, err
    return int(m[1]), float(m[2]), float(m[3]), m[4]


def test_discrete_range_is_the_formula():
    den = VPModel(lambda x, t: x, alphas_cumprod=DDPM)
    assert den.sigma_min == pytest.approx(_sigma(DDPM, 0), rel=1e-12)
    assert den.sigma_max == pytest.approx(_sigma(DDPM, -1), rel=1e-12)
    assert den.sigma_min == pytest.approx(0.0100005, rel=1e-5) and den.sigma_max == pytest.approx(157.407, rel=1e-5)
    # any alphas_cumprod: the sigmas of its first and last entry
    ac = torch.cos(torch.linspace(0.05, 1.5, 50, dtype=torch.float64)) ** 2
    den = VPModel(lambda x, t: x, alphas_cumprod=ac)
    assert (den.sigma_min, den.sigma_max) == pytest.approx((_sigma(ac, 0), _sigma(ac, -1)), rel=1e-12)


def test_continuous_vp_range_is_that_of_its_time_range():
    den = VPModel(lambda x, t: x, prediction="v", time_scale=999)
    assert (den.sigma_min, den.sigma_max) == pytest.approx((float(vp_sigma(1e-5)), float(vp_sigma(1.0))), rel=1e-12)
    assert den.sigma_min == pytest.approx(1.0005e-3, rel=1e-4) and den.sigma_max == pytest.approx(152.17, rel=1e-4)
    den = VPModel(lambda x, t: x, time_range=(1e-3, 0.5), beta_min=0.2, beta_d=10.0)
    assert (den.sigma_min, den.sigma_max) == pytest.approx(
        (float(vp_sigma(1e-3, 0.2, 10.0)), float(vp_sigma(0.5, 0.2, 10.0))), rel=1e-12)
    for bad in ((0.0, 1.0), (0.5, 0.1), (1e-3, math.inf), (1e-3,), "ab"):
        with pytest.raises(ValueError, match="time_range"):
            VPModel(lambda x, t: x, time_range=bad)


def test_flow_model_range_only_where_it_has_one():
    den = FlowModel(lambda x, t: x)
    assert den.sigma_min is None and den.sigma_max is None
    den = FlowModel(lambda x, t: x, time_range=(0.01, 0.99))
    assert (den.sigma_min, den.sigma_max) == pytest.approx((0.01 / 0.99, 99.0), rel=1e-12)
    with pytest.raises(ValueError, match="below t = 1"):
        FlowModel(lambda x, t: x, time_range=(0.01, 1.0))


def _ns(lo=None, hi=None) -> argparse.Namespace:
    return argparse.Namespace(sigma_min=lo, sigma_max=hi)


def test_sigma_range_prefers_options_then_model_then_edm():
    den = tiny_ddpm()
    assert sigma_range(_ns(), den) == (den.sigma_min, den.sigma_max)
    assert describe_sigma_range(_ns(), den) == "the model's own range"
    assert sigma_range(_ns(0.05, 100.0), den) == (0.05, 100.0)
    assert sigma_range(_ns(hi=100.0), den) == (den.sigma_min, 100.0)
    assert describe_sigma_range(_ns(hi=100.0), den).startswith("--sigma-max as given, else the model's own")
    assert sigma_range(_ns(0.01, 157.4), den) == (0.01, 157.4)  # rounded ends of the range are fine
    assert sigma_range(_ns(), lambda x, s: x) == (0.002, 80.0)
    assert "EDM's default" in describe_sigma_range(_ns(), lambda x, s: x)
    # a flow model has a finite sigma_min but no usable sigma_max: it starts at 80
    flow = FlowModel(lambda x, t: x, time_range=(1e-3, 1 - 1e-6))
    assert sigma_range(_ns(), flow) == (pytest.approx(1e-3 / (1 - 1e-3)), 80.0)
    assert sigma_range(_ns(hi=5000.0), flow)[1] == 5000.0  # inside its (huge) range


@pytest.mark.parametrize("lo, hi, match", [
    (0.001, None, r"--sigma-min 0.001 is outside the model's own noise range, sigma 0.0100005 \.\. 157.407"),
    (None, 500.0, "--sigma-max 500 is outside the model's own noise range"),
    (200.0, 300.0, "--sigma-min 200 is outside the model's own noise range"),
    (-1.0, None, "--sigma-min must be a positive finite number"),
    (None, math.nan, "--sigma-max must be a positive finite number"),
    (5.0, 1.0, r"--sigma-min \(5\) must be below --sigma-max \(1\)"),
])
def test_sigma_range_refuses_values_outside_sensible_ones(lo, hi, match):
    with pytest.raises(ValueError, match=match):
        sigma_range(_ns(lo, hi), tiny_ddpm())


def test_cli_samples_in_the_models_own_range(tmp_path, capsys):
    RecordingEps.calls.clear()
    out = tmp_path / "s.npz"
    args = ["sample", "--model", "test_model_range:tiny_ddpm", "--shape", "1,4,4", "--nfe", "3", "--seeds", "0-1",
            "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    n, hi, lo, why = _used(capsys.readouterr().err)
    # the measured default at NFE 3 is a two-step-per-call solver with AFS: 4 intervals, 5 sigmas
    assert (n, hi, lo) == (5, pytest.approx(157.407, rel=1e-5), pytest.approx(0.0100005, rel=1e-5))
    assert why.startswith("fewstep's measured default for NFE 3: ") and ", the model's own range" in why
    # AFS replaces the first call (at t = 999) by its analytical step: the first call is at the second sigma
    assert 700 < max(float(t.max()) for t in RecordingEps.calls) < 999
    assert np.load(out)["images"].shape == (2, 1, 4, 4)
    RecordingEps.calls.clear()  # without AFS the first call is at the model's last training timestep
    assert main(args + ["--overwrite", "--solver", "euler"]) == 0
    assert max(float(t.max()) for t in RecordingEps.calls) == 999.0
    capsys.readouterr()

    RecordingEps.calls.clear()
    assert main(args + ["--overwrite", "--sigma-max", "80", "--sigma-min", "0.05", "--schedule", "logsnr"]) == 0
    n, hi, lo, why = _used(capsys.readouterr().err)
    assert (n, hi, lo, why) == (4, 80.0, 0.05, "ipndm, logsnr schedule, --sigma-min and --sigma-max as given")
    assert 900 < max(float(t.max()) for t in RecordingEps.calls) < 999

    assert main(args + ["--overwrite", "--sigma-min", "0.002"]) == 2
    assert "--sigma-min 0.002 is outside the model's own noise range" in capsys.readouterr().err


def test_cli_model_without_a_range_uses_edm_range(tmp_path, capsys):
    assert main(["sample", "--model", "factory_model:make", "--shape", "3,2,2", "--nfe", "3", "--seeds", "0",
                 "--threads", "1", "--out", str(tmp_path / "s.npz")]) == 0
    n, hi, lo, why = _used(capsys.readouterr().err)
    assert (hi, lo) == (80.0, 0.002) and "EDM's default range (the model declares none)" in why

