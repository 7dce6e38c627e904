"""Bad input gets a clear exception that names the problem."""

from __future__ import annotations

import math

import pytest
import torch

import fewstep

SIG = fewstep.get_schedule("polynomial", 5)


def ok_model(x, s):
    return x * 0.5


@pytest.fixture
def noise():
    return fewstep.noise_for_seeds(range(2), (3,), dtype=torch.float64)


@pytest.mark.parametrize("sigmas,match", [
    ([80.0, 80.0, 1.0], "strictly decreasing"),
    ([1.0, 2.0, 3.0], "strictly decreasing"),
    ([80.0, math.nan, 1.0], "finite"),
    ([80.0, math.inf, 1.0], "finite"),
    ([80.0, 1.0, 0.0], "positive"),
    ([80.0, -1.0], "positive"),
    ([80.0], "at least 2"),
    ([[80.0, 1.0]], "1-D"),
])
def test_bad_sigmas(noise, sigmas, match):
    with pytest.raises(ValueError, match=match):
        fewstep.sample(ok_model, noise, torch.tensor(sigmas, dtype=torch.float64), "euler")


def test_unknown_solver(noise):
    with pytest.raises(ValueError, match=r"unknown solver 'rk4'; choose one of euler, heun"):
        fewstep.sample(ok_model, noise, SIG, "rk4")


@pytest.mark.parametrize("solver,opts,match", [
    ("euler", {"max_order": 2}, r"unknown option\(s\) max_order; allowed: none"),
    ("dpmpp", {"order": 2}, r"unknown option\(s\) order; allowed: max_order, predict_x0"),
    ("unipc", {"bh": "bh1"}, r"unknown option\(s\) bh; allowed: .*variant"),
    ("deis", {"mode": "tab"}, r"allowed: .*deis_mode"),
])
def test_unknown_option(noise, solver, opts, match):
    with pytest.raises(TypeError, match=match):
        fewstep.sample(ok_model, noise, SIG, solver, **opts)


@pytest.mark.parametrize("solver,opts,exc,match", [
    ("dpmpp", {"max_order": 4}, ValueError, r"max_order must be in 1\.\.3, got 4"),
    ("dpmpp", {"max_order": 0}, ValueError, r"max_order must be in 1\.\.3"),
    ("unipc", {"max_order": 5}, ValueError, r"max_order must be in 1\.\.3"),
    ("ipndm", {"max_order": 5}, ValueError, r"max_order must be in 1\.\.4"),
    ("ipndm_v", {"max_order": 2.0}, TypeError, r"max_order must be an int"),
    ("deis", {"max_order": 0}, ValueError, r"max_order must be in 1\.\.4"),
    ("dpm2", {"r": 0.0}, ValueError, r"r must be a number in \(0, 1\]"),
    ("dpm2", {"r": 1.5}, ValueError, r"r must be a number in \(0, 1\]"),
    ("heun", {"r": 0.5}, ValueError, "heun has r=1"),
    ("unipc", {"variant": "bh3"}, ValueError, r"variant must be one of 'bh1', 'bh2'"),
    ("deis", {"deis_mode": "ab"}, ValueError, r"deis_mode must be one of 'tab', 'rhoab', 'logrho'"),
    ("dpmpp", {"predict_x0": "yes"}, TypeError, "predict_x0 must be True or False"),
    ("dpmpp", {"solver_type": "heun"}, ValueError, r"solver_type must be one of 'taylor', 'midpoint'"),
    ("unipc", {"corrector": 1}, TypeError, "corrector must be True or False"),
])
def test_bad_option_values(noise, solver, opts, exc, match):
    with pytest.raises(exc, match=match):
        fewstep.sample(ok_model, noise, SIG, solver, **opts)


def test_options_with_instance(noise):
    with pytest.raises(TypeError, match="options cannot be given together with a solver instance"):
        fewstep.sample(ok_model, noise, SIG, fewstep.SOLVERS["dpmpp"](), max_order=3)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"num_steps": 1}, ValueError, "num_steps must be >= 2"),
    ({"num_steps": 5.0}, TypeError, "num_steps must be an int"),
    ({"num_steps": 5, "sigma_min": 100.0}, ValueError, "sigma_min .* must be smaller than sigma_max"),
    ({"num_steps": 5, "rho": -1.0}, ValueError, "rho must be a positive finite number"),
    ({"num_steps": 5, "sigma_max": math.inf}, ValueError, "sigma_max must be a positive finite number"),
])
def test_bad_schedule_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fewstep.get_schedule("polynomial", **kwargs)


def test_unknown_schedule_kind():
    with pytest.raises(ValueError, match="unknown schedule kind 'karras'; choose one of polynomial, logsnr"):
        fewstep.get_schedule("karras", 5)


def test_too_few_steps_for_nfe():
    with pytest.raises(ValueError, match=r"solver .heun. cannot use exactly nfe=1 evaluations"):
        fewstep.steps_for_nfe("heun", 1)


@pytest.mark.parametrize("bad_at", [0, 2, 5])
def test_nan_from_denoiser_names_step_and_sigma(noise, bad_at):
    calls = []

    def model(x, s):
        calls.append(1)
        out = x * 0.5
        return out * math.nan if len(calls) == bad_at + 1 else out

    sig = fewstep.get_schedule("polynomial", 7)
    with pytest.raises(fewstep.NonFiniteError, match=rf"step {bad_at} \(sigma={float(sig[bad_at]):.6g}"):
        fewstep.sample(model, noise, sig, "ipndm")


def test_nan_in_second_stage_of_heun_names_its_step(noise):
    calls = []

    def model(x, s):
        calls.append(1)
        return x * (math.inf if len(calls) == 4 else 0.5)

    with pytest.raises(fewstep.NonFiniteError, match=r"step 1 \(sigma=.*evaluation 4"):
        fewstep.sample(model, noise, SIG, "heun")


@pytest.mark.parametrize("bad,exc,match", [
    ([1.0, 2.0], TypeError, "noise must be a torch.Tensor"),
    (torch.zeros(2, 3, dtype=torch.int64), TypeError, "floating-point"),
    (torch.zeros(3), ValueError, r"shape \(B, \.\.\.\)"),
    (torch.zeros(0, 3), ValueError, r"B >= 1"),
    (torch.tensor([[0.0, math.nan]]), ValueError, "noise contains NaN"),
])
def test_bad_noise(bad, exc, match):
    with pytest.raises(exc, match=match):
        fewstep.sample(ok_model, bad, SIG, "euler")


def test_denoiser_wrong_shape(noise):
    with pytest.raises(ValueError, match=r"denoiser must return a tensor of the input's shape \(2, 3\), got \(2,\)"):
        fewstep.sample(lambda x, s: x.sum(-1), noise, SIG, "euler")


def test_not_callable(noise):
    with pytest.raises(TypeError, match="denoiser must be callable"):
        fewstep.sample("model.pt", noise, SIG, "euler")


def test_flag_types(noise):
    with pytest.raises(TypeError, match="afs must be True or False"):
        fewstep.sample(ok_model, noise, SIG, "euler", afs="yes")


@pytest.mark.parametrize("seeds,shape,match", [
    ([], (3,), "seeds must not be empty"),
    ([-1], (3,), "non-negative ints"),
    ([1.5], (3,), "non-negative ints"),
    ([1], (), "shape must be a non-empty tuple"),
    ([1], (3, 0), "shape must be a non-empty tuple"),
])
def test_bad_seeds(seeds, shape, match):
    with pytest.raises(ValueError, match=match):
        fewstep.noise_for_seeds(seeds, shape)
