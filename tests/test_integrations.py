"""diffusers integration: FewstepScheduler inside pipelines, agreement with diffusers' own schedulers, the UNet
denoiser wrapper (CFG, mid-block features) and `fewstep train --diffusers` on tiny, randomly initialised models."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

import fewstep
from fewstep import learned

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import DiffusersDenoiser, FewstepScheduler, load_denoiser  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def cond_unet():
    torch.manual_seed(1)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 5, 12, generator=g), torch.randn(1, 5, 12, generator=g)  # cond (B=2), uncond


def _record(scheduler):
    """Keep every prev_sample the pipeline gets from scheduler.step (the signature stays visible to pipelines)."""
    out, orig = [], scheduler.step

    @functools.wraps(orig)
    def step(*args, **kwargs):
        res = orig(*args, **kwargs)
        out.append(res[0] if isinstance(res, tuple) else res.prev_sample)
        return res

    scheduler.step = step
    return out


def ddpm_run(unet, scheduler, steps, prediction_type="epsilon"):
    """DDPMPipeline end to end; returns (images, final latents before the pipeline's clamp to [0, 1])."""
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    rec = _record(scheduler)
    img = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
               output_type="np").images
    return img, rec[-1], len(rec)


def cfg_loop(unet, scheduler, steps, cond, uncond, guidance=3.0, seed=0):
    """The denoising loop of StableDiffusionPipeline (diffusers 0.42), minus text encoding and VAE: latents scaled by
    init_noise_sigma, scale_model_input on the doubled batch, CFG, step() kwargs chosen by signature."""
    B = cond.shape[0]
    latents = torch.randn((B, 4, 8, 8), generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device="cpu")
    params = set(inspect.signature(scheduler.step).parameters)
    extra = {k: v for k, v in (("eta", 0.0), ("generator", torch.Generator())) if k in params}
    emb = torch.cat([uncond.expand(B, -1, -1), cond])
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            u, c = unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
            latents = scheduler.step(u + guidance * (c - u), t, latents, **extra, return_dict=False)[0]
    return latents


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------- DDPM pipeline
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [4, 9])
def test_ddpm_pipeline_dpmpp_equals_diffusers(unet, prediction_type, steps):
    cfg = diffusers.DDPMScheduler(prediction_type=prediction_type).config
    img_ref, ref, n_ref = ddpm_run(unet, diffusers.DPMSolverMultistepScheduler.from_config(cfg), steps)
    img, ours, n = ddpm_run(unet, FewstepScheduler.from_config(cfg, solver="dpmpp"), steps)
    assert n == n_ref == steps
    assert rel(ours, ref) <= 1e-4
    assert abs(img - img_ref).max() <= 1e-4
    # The same with another solver differs: the comparison can tell solvers apart.
    _, other, _ = ddpm_run(unet, FewstepScheduler.from_config(cfg, solver="ipndm"), steps)
    assert rel(other, ref) > 1e-3


@pytest.mark.parametrize("solver,opts,nfe", [("heun", {}, 7), ("ipndm", {}, 5), ("deis", {"deis_mode": "logrho"}, 5),
                                             ("amed", {}, 5), ("amed_plugin", {"base": "ipndm"}, 5),
                                             ("dpmpp", {"max_order": 3, "lower_order_final": False}, 5)])
def test_ddpm_pipeline_equals_fewstep_sample(unet, solver, opts, nfe):
    """Every solver in a DDPMPipeline gives what fewstep.sample gives with the UNet as a denoiser (multistep solvers
    without lower_order_final: the scheduler counts the final jump there, as diffusers does, fewstep.sample not)."""
    cfg = diffusers.DDPMScheduler().config
    sched = FewstepScheduler.from_config(cfg, solver=solver, solver_options=opts, schedule="polynomial")
    _, ours, n = ddpm_run(unet, sched, nfe)
    assert n == nfe == sched.num_inference_steps
    sig = sched._stepper.sigmas
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).double()
    noise = noise * (1 + sig[0] ** 2).sqrt() / sig[0]  # VP latents ~ N(0, 1): x_edm = n sqrt(1 + sigma^2)
    res = fewstep.solve(DiffusersDenoiser(unet, cfg), noise, sig, solver, denoise_to_zero=True, **opts)
    assert res.nfe == nfe
    assert rel(ours.double(), res.x) <= 1e-5


def test_duplicate_timesteps_and_counter(unet):
    """Heun evaluates twice at interval ends: the timesteps repeat, and the counter (not a timestep lookup) keeps
    every call on its own sigma (the duplicate-timestep pitfall of diffusers#5687/#12771)."""
    sched = FewstepScheduler(solver="heun", schedule="polynomial")
    sched.set_timesteps(7)
    t = sched.timesteps.tolist()
    assert len(t) == 7 and len(set(t)) < len(t)
    assert sched.sigmas[-1] == 0 and sched.sigmas.shape == (8,)
    sched.set_timesteps(7)
    x = torch.randn(1, 3, 8, 8)
    for k, tt in enumerate(sched.timesteps):
        assert sched.step_index == (None if k == 0 else k)
        x = sched.step(torch.zeros_like(x), tt, x).prev_sample
    with pytest.raises(RuntimeError, match="all 7 model calls"):
        sched.step(torch.zeros_like(x), t[-1], x)


def test_schedule_options():
    s = FewstepScheduler(solver="euler")
    s.set_timesteps(6)  # diffusers' linspace spacing: integer training timesteps, final jump to zero
    assert s.timesteps.dtype == torch.int64
    ref = diffusers.DPMSolverMultistepScheduler()
    ref.set_timesteps(6)
    assert torch.equal(s.timesteps, ref.timesteps)
    assert torch.allclose(s.sigmas, ref.sigmas, rtol=1e-6)
    s = FewstepScheduler(solver="euler", schedule="polynomial", timestep_type="nearest")
    s.set_timesteps(6)
    assert s.timesteps.dtype == torch.int64
    s = FewstepScheduler(solver="euler", schedule="polynomial")
    s.set_timesteps(6)
    assert s.timesteps.dtype == torch.float32 and s.timesteps[0] == 999
    s = FewstepScheduler(solver="euler", denoise_to_zero=False, schedule="discrete")
    s.set_timesteps(5)
    assert s.sigmas[-1] > 0 and s.timesteps.dtype == torch.int64


def test_errors(unet):
    with pytest.raises(ValueError, match="possible"):
        FewstepScheduler(solver="heun").set_timesteps(6)  # heun + final jump: odd NFE only
    with pytest.raises(ValueError, match="unknown solver"):
        FewstepScheduler(solver="rk45")
    with pytest.raises(TypeError, match="unknown option"):
        FewstepScheduler(solver="heun", solver_options={"max_order": 2})
    with pytest.raises(ValueError, match="schedule must be"):
        FewstepScheduler(schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type"):
        FewstepScheduler(prediction_type="score")
    with pytest.raises(ValueError, match="custom timesteps"):
        FewstepScheduler().set_timesteps(timesteps=[999, 500])
    with pytest.raises(RuntimeError, match="set_timesteps"):
        FewstepScheduler().step(torch.zeros(1, 3), 0, torch.zeros(1, 3))
    # AFS needs scale_model_input, which DDPMPipeline never calls.
    with pytest.raises(RuntimeError, match="scale_model_input"):
        ddpm_run(unet, FewstepScheduler(solver="ipndm", afs=True), 4)


def test_config_round_trip(tmp_path):
    s = FewstepScheduler.from_config(diffusers.DDPMScheduler(beta_schedule="scaled_linear").config, solver="unipc",
                                     solver_options={"max_order": 3})
    s.save_pretrained(tmp_path)
    t = FewstepScheduler.from_pretrained(tmp_path)
    assert t.config.solver == "unipc" and t.config.solver_options == {"max_order": 3}
    assert t.config.beta_schedule == "scaled_linear"
    assert diffusers.DPMSolverMultistepScheduler in t.compatibles


@pytest.mark.parametrize("cls,kw", [
    ("EulerDiscreteScheduler", {"steps_offset": 1, "timestep_type": "continuous", "sigma_min": 0.1, "sigma_max": 10.0,
                                "use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"steps_offset": 1}),
    ("UniPCMultistepScheduler", {"sigma_min": 0.1, "sigma_max": 10.0}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
    ("EDMEulerScheduler", {}),
])
def test_a_saved_foreign_config_sets_no_fewstep_option(tmp_path, cls, kw):
    """Another scheduler's saved config (what a pipeline loaded from a save_pretrained folder holds) gives the
    model's keys, never fewstep's options, some of which share names with its own settings (Euler's timestep_type
    "discrete" | "continuous", its Karras range sigma_min / sigma_max, EDM's rho)."""
    getattr(diffusers, cls)(**kw).save_config(tmp_path)
    cfg = getattr(diffusers, cls).from_pretrained(tmp_path).config
    s = FewstepScheduler.from_config(cfg, solver="dpmpp")
    for key in ("timestep_type", "sigma_min", "sigma_max", "rho"):
        assert s.config[key] == inspect.signature(FewstepScheduler).parameters[key].default, key
    for key in set(kw) & {"steps_offset", "timestep_spacing", "use_karras_sigmas", "shift"}:
        assert s.config[key] == kw[key], key
    s.set_timesteps(5)
    assert len(s.timesteps) == 5
    # a learned sampler refuses sigma_min / sigma_max, but only the user's own
    pred = learned.DyWeightSampler(learned.DyWeightSampler.make_config(fewstep.get_schedule("polynomial", 5, 0.05, 40.0),
                                                                        afs=False))
    assert FewstepScheduler.from_config(cfg, predictor=pred).predictor is pred


def test_an_in_memory_euler_config_and_explicit_options():
    for euler in (diffusers.EulerDiscreteScheduler(), diffusers.EulerDiscreteScheduler(timestep_type="continuous")):
        assert FewstepScheduler.from_config(euler.config, solver="heun").config.timestep_type == "interp"
    cfg = diffusers.EulerDiscreteScheduler().config
    s = FewstepScheduler.from_config(cfg, solver="heun", timestep_type="nearest", schedule="polynomial", sigma_min=0.1)
    assert (s.config.timestep_type, s.config.sigma_min) == ("nearest", 0.1)
    for bad in ("discrete", "linear"):  # an explicit keyword is checked, diffusers' values included
        with pytest.raises(ValueError, match="timestep_type must be one of interp, nearest"):
            FewstepScheduler.from_config(cfg, solver="heun", timestep_type=bad)
    with pytest.raises(ValueError, match="timestep_type must be one of interp, nearest"):
        FewstepScheduler(timestep_type="discrete")


def test_fewstep_options_round_trip(tmp_path):
    kw = dict(solver="heun", afs=True, schedule="polynomial", rho=5.0, sigma_min=0.05, sigma_max=20.0,
              denoise_to_zero=False, timestep_type="nearest", solver_options={})
    FewstepScheduler.from_config(diffusers.EulerDiscreteScheduler().config, **kw).save_pretrained(tmp_path)
    t = FewstepScheduler.from_pretrained(tmp_path)
    assert {k: t.config[k] for k in kw} == kw
    assert dict(FewstepScheduler.from_config(t.config).config) == dict(t.config)


# ----------------------------------------------------------------------------------------------- CFG, conditional UNet
@pytest.mark.parametrize("name,cls", [("dpmpp", "DPMSolverMultistepScheduler"), ("unipc", "UniPCMultistepScheduler")])
@pytest.mark.parametrize("order", [2, 3])
def test_cfg_loop_equals_diffusers(cond_unet, prompts, name, cls, order):
    """Stable Diffusion's loop with CFG: equal to diffusers' scheduler (measured: ~2e-7 relative, float32 latents)."""
    cond, uncond = prompts
    cfg = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    ref = cfg_loop(cond_unet, getattr(diffusers, cls).from_config(cfg, solver_order=order), 6, cond, uncond)
    ours = cfg_loop(cond_unet, FewstepScheduler.from_config(cfg, solver=name, solver_options={"max_order": order}), 6,
                    cond, uncond)
    assert rel(ours, ref) <= 1e-4


@pytest.fixture(scope="module")
def cfg_denoiser(cond_unet, prompts):
    cond, uncond = prompts
    cfg = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    return cfg, DiffusersDenoiser(cond_unet, cfg, encoder_hidden_states=cond, negative_encoder_hidden_states=uncond,
                                  guidance_scale=3.0)


def _vp_noise(sig, seed=0):
    n = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(seed)).double()
    return n * (1 + sig[0] ** 2).sqrt() / sig[0]


def test_cfg_amed_plugin_table_with_afs(cfg_denoiser, prompts):
    """A predictor-free AMED-Plugin table trained on the CFG denoiser, used through the scheduler with AFS (first
    model call after the analytical step, via scale_model_input), equals fewstep.sample with the predictor."""
    cfg, den = cfg_denoiser
    pred = learned.train("plugin", den, shape=(4, 8, 8), base="ipndm", num_steps=4, afs=True,
                         options={"features": "none"}, schedule=learned.ScheduleSpec(sigma_min=0.03, sigma_max=14.0),
                         teacher=learned.Teacher(M=1), budget=learned.Budget(batch=2, total_samples=4), progress=False,
                         dtype=torch.float32)
    with torch.no_grad():
        pred.table.add_(torch.tensor([[0.3, 0.5, 0.0], [-0.2, -0.4, 0.0], [0.1, 0.2, 0.0]]))  # a clearly non-default table
    sched = FewstepScheduler.from_config(cfg, predictor=pred)
    res = fewstep.solve(den, _vp_noise(torch.tensor(pred.config["sigmas"])), predictor=pred)
    assert sched.config.solver is None  # the config is untouched (no solver: the default); the predictor decides
    with pytest.raises(ValueError, match=f"num_inference_steps={res.nfe}"):
        sched.set_timesteps(res.nfe + 1)
    cond, uncond = prompts
    ours = cfg_loop(den.unet, sched, res.nfe, cond, uncond)
    assert len(sched.timesteps) == res.nfe == 5  # 3 intervals x 2 calls, minus one for AFS
    # The predictor ends at its last sigma (no jump to zero): the pipeline's sample there is VP, x_edm * alpha.
    assert rel(ours.double() * (1 + res.sigmas[-1] ** 2).sqrt(), res.x) <= 1e-5


def test_feature_predictor_is_refused(cfg_denoiser):
    cfg, den = cfg_denoiser
    pred = learned.AMEDSampler(learned.AMEDSampler.make_config([14.0, 1.0, 0.03], afs=False,
                                                               options={"features": "adapter", "feature_dim": 16}))
    with pytest.raises(ValueError, match="feature-based amed predictor"):
        FewstepScheduler.from_config(cfg, predictor=pred)


def test_denoiser_features_and_cfg(cfg_denoiser, unet):
    cfg, den = cfg_denoiser
    x, s = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0])
    x0, f = den.denoise_with_features(x, s)
    assert torch.equal(x0, den(x, s)) and f.shape == (2, 32)  # mid block: 16 channels for each CFG half
    plain = DiffusersDenoiser(unet, prediction_type="epsilon", beta_schedule="linear")  # no silent default
    assert plain.denoise_with_features(torch.randn(3, 3, 8, 8), torch.ones(3))[1].shape == (3, 16)
    assert plain.sample_shape == (3, 8, 8)
    g1 = DiffusersDenoiser(den.unet, cfg, encoder_hidden_states=den.cond, negative_encoder_hidden_states=den.uncond,
                           guidance_scale=1.0)
    c_only = DiffusersDenoiser(den.unet, cfg, encoder_hidden_states=den.cond)
    assert torch.allclose(g1(x, s), c_only(x, s), atol=1e-6)
    assert not torch.allclose(den(x, s), c_only(x, s), atol=1e-4)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_train_and_sample_diffusers(unet, tmp_path):
    from fewstep.cli import main

    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(prediction_type="v_prediction")) \
        .save_pretrained(tmp_path / "pipe")
    den = load_denoiser(tmp_path / "pipe")
    assert den.adapter.prediction == "v" and den.sample_shape == (3, 8, 8)
    ckpt = tmp_path / "p.safetensors"
    args = ["train", "--diffusers", str(tmp_path / "pipe"), "--out", str(ckpt), "--num-steps", "3", "--M", "1",
            "--batch", "2", "--total-samples", "2", "--threads", "1", "--method", "amed"]
    assert main(args) == 0
    pred = learned.load(ckpt)
    assert pred.config["method"] == "amed"
    assert pred.uses_features and pred.config["options"]["features"] == "adapter"
    out = tmp_path / "s.npz"
    assert main(["sample", "--diffusers", str(tmp_path / "pipe"), "--predictor", str(ckpt), "--seeds", "0-1",
                 "--out", str(out), "--threads", "1"]) == 0
    assert out.is_file()
    assert main(["train", "--diffusers", str(tmp_path / "nowhere"), "--out", str(tmp_path / "q.safetensors")]) == 2
