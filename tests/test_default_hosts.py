"""fewstep's measured default (fewstep.defaults) in the hosts: the diffusers FewstepScheduler without a solver and
fewstep.k.sample_default pick the rule for their NFE and guidance scale, make exactly that many model calls and equal
fewstep.sample with fewstep.defaults.default_recipe; a tuned recipe runs through both; explicit settings are as before.
Also the scheduler's "time_uniform" schedule and the checks of every FewstepScheduler config value (issue 26)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fewstep
from fewstep import k
from fewstep.defaults import choice_for_sigmas, default_choice, default_recipe
from fewstep.denoisers import VPModel
from fewstep.solvers import get_solver
from conftest import CountingDenoiser, make_gmm

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler, alphas_cumprod  # noqa: E402

VP_CFG = diffusers.DDPMScheduler().config  # eps prediction, linear betas over 1000 timesteps
FLOW_CFG = diffusers.FlowMatchEulerDiscreteScheduler().config
VP = VPModel(None, alphas_cumprod=alphas_cumprod(), timestep="interp")
LO, HI = float(VP.log_sigmas[0].exp()), float(VP.log_sigmas[-1].exp())  # the model's own range, 0.01 .. 157


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=4, components=3, seed=0)


class Net:
    """An eps network made from the mixture: its k-th call is made at the sigma of fewstep.sample's k-th call (after
    checking that the pipeline's timestep is that sigma's); calls beyond those fail."""

    def __init__(self, gmm, sigmas):
        self.gmm, self.sigmas, self.calls = gmm, sigmas, 0

    def __call__(self, x, t):
        assert self.calls < len(self.sigmas), "more model calls than fewstep.sample makes"
        s = torch.tensor(self.sigmas[self.calls], dtype=torch.float64)
        self.calls += 1
        assert float(torch.as_tensor(t).reshape(-1)[0]) == pytest.approx(float(VP.sigma_to_t(s)), rel=2e-6, abs=1e-4)
        x_edm = x * (1 + s**2).sqrt()
        return (x_edm - self.gmm(x_edm, s.expand(x.shape[0]))) / s


class Recorder(CountingDenoiser):
    def __init__(self, inner):
        super().__init__(inner)
        self.sigmas = []

    def __call__(self, x, sigma):
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return super().__call__(x, sigma)


def pipeline_loop(sched, net, nfe, latents):
    """StableDiffusionPipeline's loop without CFG: scale_model_input, one model call per timestep, step."""
    sched.set_timesteps(nfe)
    sample = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        sample = sched.step(net(sched.scale_model_input(sample, t), t), t, sample).prev_sample
    return sample


def latents(seed=0):
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ the scheduler's default
@pytest.mark.parametrize("nfe,w,solver,afs,kind", [
    (3, None, "unipc", True, "time_uniform rho=1"), (5, None, "unipc", True, "time_uniform rho=1"),
    (8, None, "unipc", True, "logsnr"), (5, 4.0, "deis", False, "time_uniform rho=2"),
    (9, 7.5, "deis", True, "time_uniform rho=2"), (5, 1.0, "unipc", True, "time_uniform rho=1")])
def test_scheduler_default_follows_nfe_and_guidance(nfe, w, solver, afs, kind):
    sched = FewstepScheduler.from_config(VP_CFG, guidance_scale=w)
    sched.set_timesteps(nfe)
    st = sched._stepper
    assert type(st.solver) is type(get_solver(solver)) and st.solver == get_solver(solver, **default_choice(nfe, w).options)
    assert st.afs is afs and not st.denoise_to_zero and len(sched.timesteps) == nfe
    c = default_choice(nfe, w)
    assert (c.solver, c.afs) == (solver, afs)
    assert sched.chosen.startswith(f"fewstep's measured default for NFE {nfe}")
    assert kind in sched.chosen and c.label().split(",")[0] in sched.chosen and f"{nfe} model calls" in sched.chosen
    rec = default_recipe(lambda x, s: x, nfe, w, sigma_min=LO, sigma_max=HI)
    assert torch.equal(st.sigmas, torch.tensor(rec.sigmas, dtype=torch.float64))  # the model's own range


@pytest.mark.parametrize("nfe,w", [(5, None), (8, None), (5, 4.0), (8, 4.0)])
def test_scheduler_default_equals_sample_with_the_default_recipe(gmm, nfe, w):
    """The pipeline makes exactly NFE model calls and ends where fewstep.sample with the default recipe ends."""
    rec = default_recipe(gmm, nfe, w, sigma_min=LO, sigma_max=HI)
    lat = latents(nfe)
    s0 = rec.sigmas[0]
    ref = Recorder(gmm)
    res = fewstep.solve(ref, lat * math.sqrt(1 + s0**2) / s0, predictor=rec)
    assert res.nfe == ref.calls == nfe
    sched = FewstepScheduler.from_config(VP_CFG, guidance_scale=w)
    net = Net(gmm, ref.sigmas)
    out = pipeline_loop(sched, net, nfe, lat)
    assert net.calls == len(sched.timesteps) == nfe
    assert float((out * math.sqrt(1 + rec.sigmas[-1] ** 2) - res.x).abs().max()) < 1e-12


def test_scheduler_runs_a_recipe_object_or_file(gmm, tmp_path):
    """A tuned recipe (here the default one, saved as fewstep tune writes it) through predictor=: object and path."""
    rec = default_recipe(gmm, 6, 3.0, sigma_min=LO, sigma_max=HI)
    path = rec.save(tmp_path / "r.json")
    lat = latents(1)
    ref = Recorder(gmm)
    res = fewstep.solve(ref, lat * math.sqrt(1 + rec.sigmas[0] ** 2) / rec.sigmas[0], predictor=rec)
    for p in (rec, str(path)):
        sched = FewstepScheduler.from_config(VP_CFG, predictor=p)
        net = Net(gmm, ref.sigmas)
        out = pipeline_loop(sched, net, 6, lat)
        assert net.calls == 6 and sched.chosen.startswith("recipe: deis")
        assert float((out * math.sqrt(1 + rec.sigmas[-1] ** 2) - res.x).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="guidance_scale=5.0 only picks"):
        FewstepScheduler.from_config(VP_CFG, predictor=rec, guidance_scale=5.0)
    FewstepScheduler.from_config(VP_CFG, predictor=rec, guidance_scale=3.0)  # the recipe's own scale is fine
    with pytest.raises(ValueError, match="guidance_scale=3.0 only picks"):
        FewstepScheduler.from_config(VP_CFG, predictor=default_recipe(gmm, 6, None, sigma_min=LO, sigma_max=HI),
                                     guidance_scale=3.0)


def test_guidance_scale_is_refused_beside_a_learned_sampler():
    from learned_helpers import make_sampler

    p = make_sampler(fewstep.learned.DyWeightSampler, fewstep.get_schedule("polynomial", 4, 0.05, 40.0))
    with pytest.raises(ValueError, match="guidance_scale=2.0 only picks .* the dyweight predictor fixes"):
        FewstepScheduler.from_config(VP_CFG, predictor=p, guidance_scale=2.0)


def test_scheduler_default_with_jump_to_zero_and_custom_sigmas():
    sched = FewstepScheduler(denoise_to_zero=True)
    sched.set_timesteps(6)  # the default for the other 5 calls, then x0
    assert sched._stepper.denoise_to_zero and len(sched.timesteps) == 6
    assert sched.chosen.startswith("fewstep's measured default for NFE 5") and "jump to zero" in sched.chosen
    with pytest.raises(ValueError, match="leaves no model call"):
        sched.set_timesteps(1)
    sig = fewstep.get_schedule("polynomial", 6, LO, HI).tolist()
    sched = FewstepScheduler(guidance_scale=4.0)
    sched.set_timesteps(sigmas=sig)  # 5 intervals: DEIS without AFS, 5 calls
    assert len(sched.timesteps) == 5 and not sched._stepper.afs and "deis" in sched.chosen
    sched = FewstepScheduler()
    sched.set_timesteps(sigmas=sig)  # UniPC +AFS: 4 calls
    assert len(sched.timesteps) == 4 and sched._stepper.afs and "NFE 4" in sched.chosen
    sched.set_timesteps(sigmas=sig + [0.0])  # the same, then the jump to zero: 5 calls
    assert len(sched.timesteps) == 5 and sched._stepper.afs and sched._stepper.denoise_to_zero
    assert "NFE 4" in sched.chosen and "then the jump to zero; 5 model calls" in sched.chosen


@pytest.mark.parametrize("solver", [None, "euler"])
def test_custom_sigmas_and_sigma_range_are_checked(solver):
    s = FewstepScheduler(solver=solver)
    for bad, err, match in (([1e30, 1.0], ValueError, "entry 1e\\+30 is outside the model's own noise range"),
                            ([100.0, 0.001], ValueError, "entry 0.001 is outside the model's own noise range"),
                            (["a", "b"], TypeError, "sigmas must be a flat list of numbers"),
                            ([[1.0, 0.5]], ValueError, "flat list"), ([1.0], ValueError, "at least 2"),
                            ([1.0, 2.0], ValueError, "strictly decreasing")):
        with pytest.raises(err, match=match):
            s.set_timesteps(sigmas=bad)
    s.set_timesteps(sigmas=[HI, 1.0, LO, 0.0])  # the model's own ends are fine
    for kw in ({"sigma_max": 1000.0}, {"sigma_min": 0.001}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} .* is outside the model's own noise range"):
            FewstepScheduler(solver="euler", schedule="logsnr", **kw).set_timesteps(4)
    flow = FewstepScheduler.from_config(FLOW_CFG, solver=solver)
    with pytest.raises(ValueError, match=r"flow times in \(0, 1\]"):
        flow.set_timesteps(sigmas=[80.0, 1.0])
    flow.set_timesteps(sigmas=[1.0, 0.5, 0.1])


def test_choice_for_sigmas_gives_the_nfe_it_makes():
    for n in range(2, 14):
        for w in (None, 4.0):
            c, nfe = choice_for_sigmas(n, w)
            assert get_solver(c.solver, **c.options).nfe(n) - int(c.afs) == nfe
            if nfe >= 1 and default_choice(nfe, w).afs == c.afs:
                assert (c.solver, c.options) == (default_choice(nfe, w).solver, default_choice(nfe, w).options)
    # guided, 8 intervals: the rule at NFE 8 has AFS (7 calls), the one at 7 none (8 calls): DEIS without AFS, 8 calls
    assert choice_for_sigmas(9, 4.0) == (default_choice(7, 4.0), 8)
    assert choice_for_sigmas(10, 4.0) == (default_choice(8, 4.0), 8)


def test_explicit_settings_are_unchanged_and_the_default_is_refused_partial():
    a, b = FewstepScheduler(solver="dpmpp"), FewstepScheduler(solver="dpmpp", schedule="diffusers", afs=False, rho=7.0)
    for s in (a, b):
        s.set_timesteps(6)
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.sigmas, b.sigmas) and a._stepper.denoise_to_zero
    assert a.chosen == "dpmpp, the pipeline's linspace spacing, then the jump to zero; 6 model calls"
    for kw in ({"afs": True}, {"schedule": "logsnr"}, {"rho": 2.0}, {"solver_options": {"max_order": 2}}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} given without a solver"):
            FewstepScheduler(**kw)
    with pytest.raises(ValueError, match="guidance_scale=4.0 only picks"):
        FewstepScheduler(solver="euler", guidance_scale=4.0)
    with pytest.raises(ValueError, match="a flow model does not use it"):
        FewstepScheduler.from_config(FLOW_CFG, guidance_scale=4.0)


def test_flow_models_keep_dpmpp_without_a_solver():
    a = FewstepScheduler.from_config(FLOW_CFG)
    b = FewstepScheduler.from_config(FLOW_CFG, solver="dpmpp")
    for s in (a, b):
        s.set_timesteps(6)
    assert torch.equal(a.timesteps, b.timesteps) and a.chosen == b.chosen and a.chosen.startswith("dpmpp")


def test_time_uniform_schedule_is_get_schedules_on_the_model_range():
    for rho, lo, hi in ((1.0, None, None), (2.0, None, None), (2.0, 0.05, 40.0)):
        s = FewstepScheduler(solver="euler", schedule="time_uniform", rho=rho, sigma_min=lo, sigma_max=hi,
                             denoise_to_zero=False)
        s.set_timesteps(5)
        want = fewstep.get_schedule("time_uniform", 6, lo or LO, hi or HI, rho)
        assert torch.equal(s._stepper.sigmas, want), (rho, lo, hi)
        assert f"time_uniform rho={rho:g}" in s.chosen


def test_sigma_min_acts_and_zero_is_refused():
    s = FewstepScheduler(solver="euler", schedule="logsnr", sigma_min=0.05, denoise_to_zero=False)
    s.set_timesteps(4)
    assert float(s._stepper.sigmas[-1]) == pytest.approx(0.05) and "sigma_min/sigma_max" in s.chosen
    for kw in ({"sigma_min": 0.0}, {"sigma_max": 0.0}, {"sigma_min": -1.0}, {"sigma_max": math.inf},
               {"sigma_min": 5.0, "sigma_max": 1.0}):
        with pytest.raises(ValueError, match=r"sigma_(min|max)"):
            FewstepScheduler(solver="euler", schedule="logsnr", **kw)


# ------------------------------------------------------------------ config checks (issue 26, classes 5 and 8)
BAD = [
    ({"num_train_timesteps": 0}, ValueError, "num_train_timesteps must be an int in 2 .. 100000"),
    ({"num_train_timesteps": -5}, ValueError, "num_train_timesteps must be an int in 2"),
    ({"num_train_timesteps": 10**12}, ValueError, "num_train_timesteps must be an int in 2 .. 100000"),
    ({"num_train_timesteps": "1000"}, TypeError, "num_train_timesteps must be an int"),
    ({"num_train_timesteps": 1000.0}, TypeError, "num_train_timesteps must be an int"),
    ({"num_train_timesteps": True}, TypeError, "num_train_timesteps must be an int"),
    ({"trained_betas": [0.01] * 999}, ValueError, "trained_betas has 999 entries but num_train_timesteps is 1000"),
    ({"trained_betas": [0.0] * 1000}, ValueError, r"trained_betas must be finite numbers in \(0, 1\)"),
    ({"trained_betas": [1.0] * 1000}, ValueError, r"trained_betas must be finite numbers in \(0, 1\)"),
    ({"trained_betas": [float("nan")] * 1000}, ValueError, "trained_betas must be finite"),
    ({"trained_betas": "0.01"}, TypeError, "trained_betas must be a list"),
    ({"trained_betas": [[0.01]] * 1000}, ValueError, "flat list"),
    ({"beta_start": 0.0}, ValueError, r"beta_start must be a number in \(0, 1\)"),
    ({"beta_end": 1.5}, ValueError, r"beta_end must be a number in \(0, 1\)"),
    ({"beta_end": float("nan")}, ValueError, "beta_end"),
    ({"beta_start": "1e-4"}, TypeError, "beta_start"),
    ({"beta_schedule": "cosine"}, ValueError, "beta_schedule must be one of"),
    ({"steps_offset": 10**9}, ValueError, "steps_offset must be an int in 0 .. 999"),
    ({"steps_offset": -1}, ValueError, "steps_offset"),
    ({"steps_offset": 1.5}, TypeError, "steps_offset must be an int"),
    ({"shift": 0.0}, ValueError, "shift must be a positive finite number"),
    ({"shift": float("inf")}, ValueError, "shift"),
    ({"rho": 0.0, "solver": "euler"}, ValueError, "rho must be a positive finite number"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale must be a finite number >= 0"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"guidance_scale": "4"}, TypeError, "guidance_scale"),
    ({"afs": "false", "solver": "euler"}, TypeError, "afs must be true or false"),
    ({"denoise_to_zero": "yes"}, TypeError, "denoise_to_zero must be true or false"),
    ({"use_karras_sigmas": 1}, TypeError, "use_karras_sigmas must be true or false"),
    ({"schedule": 3, "solver": "euler"}, TypeError, "schedule must be one of"),
    ({"schedule": "cosine", "solver": "euler"}, ValueError, "schedule must be one of"),
    ({"prediction_type": ["epsilon"]}, TypeError, "prediction_type must be one of"),
    ({"timestep_spacing": None}, TypeError, "timestep_spacing must be one of"),
    ({"solver": 3}, TypeError, "solver must be a solver name"),
]


@pytest.mark.parametrize("kw,err,match", BAD, ids=[f"{next(iter(b[0]))}-{i}" for i, b in enumerate(BAD)])
def test_scheduler_config_is_checked(kw, err, match):
    with pytest.raises(err, match=match):
        FewstepScheduler(**kw)
    with pytest.raises(err, match=match):  # a config read from someone's scheduler_config.json
        FewstepScheduler.from_config({**{k: v for k, v in VP_CFG.items() if not k.startswith("_")}, **kw})


def test_good_edge_configs_still_work():
    s = FewstepScheduler(num_train_timesteps=50, trained_betas=np.linspace(1e-3, 0.2, 50), solver="euler")
    s.set_timesteps(5)
    assert len(s.timesteps) == 5
    s = FewstepScheduler(solver="euler", timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(10)
    assert len(s.timesteps) == 10


def test_set_timesteps_arguments_are_bounded():
    with pytest.raises(ValueError, match="num_inference_steps must be an int in 1 .. 100000"):
        FewstepScheduler(solver="heun").set_timesteps(10**9)  # refused at once, no listing of every reachable NFE
    with pytest.raises(ValueError, match="possible: "):
        FewstepScheduler(solver="heun").set_timesteps(99_998)
    with pytest.raises(ValueError, match="only num_train_timesteps=1000 timesteps"):
        FewstepScheduler(solver="euler").set_timesteps(2000)
    with pytest.raises(ValueError, match="steps_offset=990 .* beyond the last training timestep 999"):
        FewstepScheduler(solver="euler", timestep_spacing="leading", steps_offset=990).set_timesteps(10)
    dyn = FewstepScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config,
                                       solver="euler")
    for mu in (1e6, float("nan"), -50.0):
        with pytest.raises(ValueError, match=r"mu must be a finite number in \[-10, 10\]"):
            dyn.set_timesteps(4, mu=mu)
    with pytest.raises(TypeError, match="mu must be"):
        dyn.set_timesteps(4, mu="1")
    dyn.set_timesteps(4, mu=1.1)
    assert len(dyn.timesteps) == 4


# ------------------------------------------------------------------ fewstep.k
@pytest.mark.parametrize("nfe,w", [(3, None), (5, None), (8, None), (5, 4.0), (9, 4.0)])
def test_k_sample_default_equals_sample_with_the_default_recipe(gmm, nfe, w):
    noise = fewstep.noise_for_seeds(range(3), (4,), dtype=torch.float64)
    rec = default_recipe(gmm, nfe, w)
    ref = fewstep.sample(gmm, noise, predictor=rec)
    sig = k.default_sigmas(gmm, nfe, w)
    assert sig.tolist() == list(rec.sigmas)
    m = CountingDenoiser(gmm)
    out = k.sample_default(m, noise * sig[0], nfe=nfe, guidance=w, disable=True)
    assert m.calls == nfe
    assert float((out - ref).abs().max()) < 1e-12
    m2 = CountingDenoiser(gmm)
    out2 = k.sample_default(m2, noise * sig[0], sig, guidance=w, disable=True)  # the same sigmas from the host
    assert m2.calls == nfe and torch.equal(out, out2)
    text = k.describe_default(gmm, nfe=nfe, guidance=w)
    assert text.startswith(f"fewstep's measured default for NFE {nfe}") and rec.label() in text
    assert f"({nfe} model calls)" in text and ("unguided" in text) == (w is None)


def test_k_sample_default_on_host_sigmas(gmm):
    noise = fewstep.noise_for_seeds(range(2), (4,), dtype=torch.float64)
    sig = fewstep.get_schedule("polynomial", 7, 0.002, 80.0)
    host = torch.cat([sig, sig.new_zeros(1)])  # k-diffusion's trailing 0: one more call returns x0
    m = CountingDenoiser(gmm)
    out = k.sample_default(m, noise * sig[0], host, disable=True)
    c, nfe = choice_for_sigmas(7, None)  # 6 intervals: the rule for NFE 5 (UniPC +AFS), then the jump to zero
    assert (c.solver, c.afs, nfe) == ("unipc", True, 5) and m.calls == 6
    ref = fewstep.sample(gmm, noise, sig, "unipc", afs=True, denoise_to_zero=True, **c.options)
    assert float((out - ref).abs().max()) < 1e-12
    text = k.describe_default(gmm, host)
    assert text.startswith("fewstep's measured default for NFE 5, unguided: unipc (max_order=2) +AFS on the given 8 "
                           "sigmas, the last 0 a jump to zero (6 model calls)"), text

    class Guided:  # a model that knows its guidance scale (as fewstep.denoisers.Guided)
        scale = 4.0

        def __call__(self, x, s):
            return gmm(x, s)

    assert "deis" in k.describe_default(Guided(), sig) and "guidance scale 4" in k.describe_default(Guided(), sig)
    with pytest.raises(ValueError, match="needs sigmas .* or nfe="):
        k.sample_default(gmm, noise)
    with pytest.raises(ValueError, match="with sigmas given, nfe"):
        k.sample_default(gmm, noise, sig, nfe=5)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        k.sample_default(gmm, noise, sig, guidance=-2.0)


def test_options_that_would_be_ignored_are_refused(gmm):
    with pytest.raises(ValueError, match="schedule='diffusers' .* has the model's ends"):
        FewstepScheduler(solver="euler", sigma_min=0.05).set_timesteps(4)
    s = FewstepScheduler(solver="euler", use_karras_sigmas=True, sigma_min=0.05, denoise_to_zero=False)
    s.set_timesteps(4)  # use_karras_sigmas: polynomial, whose end sigma_min sets
    assert float(s._stepper.sigmas[-1]) == pytest.approx(0.05)
    rec = default_recipe(gmm, 5, None, sigma_min=LO, sigma_max=HI)
    for kw in ({"sigma_min": 0.05}, {"sigma_max": 40.0}, {"solver": "euler", "afs": True},
               {"solver": "euler", "schedule": "logsnr"}):
        with pytest.raises(ValueError, match=f"{next(k for k in kw if k != 'solver')}: the recipe predictor brings"):
            FewstepScheduler.from_config(VP_CFG, predictor=rec, **kw)
