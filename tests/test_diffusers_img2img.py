"""Image-to-image with FewstepScheduler as diffusers' img2img pipelines drive it: set_timesteps, the strength slice
``timesteps[t_start:]``, ``set_begin_index(t_start)``, ``add_noise`` at the first kept timestep, then one model call
per kept timestep. Tiny random UNet2DModels and DDPM configs, as in test_diffusers_own_model.py."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import learned

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import DiffusersDenoiser, FewstepScheduler


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2, attention_head_dim=4).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


CFG = diffusers.DDPMScheduler().config


def rel(a, b):
    return float((a - b).norm() / b.norm())


def images_and_noise(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((2, 3, 8, 8), generator=g) * 2 - 1, torch.randn((2, 3, 8, 8), generator=g)


def img2img(unet, sched, nfe, strength, x0, noise, *, begin=True):
    """The loop of StableDiffusionImg2ImgPipeline (get_timesteps + prepare_latents + denoising loop); returns
    (final latents, number of UNet calls, t_start)."""
    sched.set_timesteps(nfe)
    init_timestep = min(int(nfe * strength), nfe)
    t_start = max(nfe - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if begin:
        sched.set_begin_index(t_start * sched.order)
    latents = sched.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
    calls = 0
    with torch.no_grad():
        for t in timesteps:
            inp = sched.scale_model_input(latents, t)
            out = unet(inp, t).sample
            calls += 1
            latents = sched.step(out, t, latents).prev_sample
    return latents, calls, t_start


@pytest.mark.parametrize("solver,nfe", [("ipndm", 6), ("dpmpp", 6), ("euler", 5), ("heun", 7), ("dpm2", 7),
                                        ("amed", 7), ("unipc", 6)])
def test_strength_slice_makes_exactly_the_kept_calls(unet, solver, nfe):
    x0, noise = images_and_noise()
    for strength in (0.2, 0.35, 0.5, 0.6, 0.75, 0.9, 1.0):
        sched = FewstepScheduler.from_config(CFG, solver=solver, schedule="polynomial")
        out, calls, t_start = img2img(unet, sched, nfe, strength, x0, noise)
        assert calls == len(sched.timesteps[t_start:]) == nfe - t_start
        assert sched.step_index == nfe
        assert torch.isfinite(out).all()
    # Every begin index, AFS on (it is switched off for a start above 0).
    for b in range(nfe):
        sched = FewstepScheduler.from_config(CFG, solver=solver, schedule="polynomial", afs=solver != "heun")
        try:
            sched.set_timesteps(nfe)
        except ValueError:
            break
        n = sched.num_inference_steps
        if b >= n:
            break
        sched.set_begin_index(b)
        lat = sched.add_noise(x0, noise, sched.timesteps[b:b + 1])
        calls = 0
        for t in sched.timesteps[b:]:
            lat = sched.step(unet(sched.scale_model_input(lat, t), t).sample.detach(), t, lat).prev_sample
            calls += 1
        assert calls == n - b and torch.isfinite(lat).all()
        with pytest.raises(RuntimeError, match="model calls were made"):
            sched.step(unet(lat, t).sample.detach(), t, lat)


@pytest.mark.parametrize("solver,afs", [("ipndm", False), ("heun", False), ("dpmpp", True)])
def test_begin_index_zero_equals_a_plain_run_bitwise(unet, solver, afs):
    x0, noise = images_and_noise(1)
    nfe = 7 if solver == "heun" else 5
    a = FewstepScheduler.from_config(CFG, solver=solver, afs=afs, schedule="polynomial")
    b = FewstepScheduler.from_config(CFG, solver=solver, afs=afs, schedule="polynomial")
    out_a, calls_a, t0 = img2img(unet, a, nfe, 1.0, x0, noise, begin=True)
    out_b, calls_b, _ = img2img(unet, b, nfe, 1.0, x0, noise, begin=False)
    assert t0 == 0 and a.begin_index == 0 and b.begin_index is None
    assert calls_a == calls_b == nfe
    assert torch.equal(out_a, out_b)


def test_add_noise_matches_the_vp_and_flow_formulas():
    x0, noise = images_and_noise(2)
    sched = FewstepScheduler.from_config(CFG, solver="ipndm", schedule="polynomial")
    sched.set_timesteps(6)
    for b in (0, 2, 4):
        s = sched.sigmas[b].double()
        alpha, sigma_vp = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
        want = (alpha * x0.double() + sigma_vp * noise.double()).float()
        sched.set_begin_index(b)  # by begin index (img2img) ...
        assert torch.allclose(sched.add_noise(x0, noise, sched.timesteps[b:b + 1].repeat(2)), want, atol=1e-6)
        sched.set_timesteps(6)  # ... and by timestep lookup (no begin index)
        assert torch.allclose(sched.add_noise(x0, noise, sched.timesteps[b:b + 1].repeat(2)), want, atol=1e-6)
    # An integer training timestep that is not in the schedule: sigma from alphas_cumprod, as DDPMScheduler.
    ddpm = diffusers.DDPMScheduler()
    t = torch.tensor([10, 500])
    assert torch.allclose(sched.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t), atol=1e-5)
    flow = FewstepScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler().config, solver="euler")
    flow.set_timesteps(4)
    flow.set_begin_index(1)
    tt = flow.sigmas[1].double()  # flow time
    want = ((1 - tt) * x0.double() + tt * noise.double()).float()
    assert torch.allclose(flow.add_noise(x0, noise, flow.timesteps[1:2]), want, atol=1e-6)


@pytest.mark.parametrize("strength", [0.4, 0.6, 0.8])
def test_one_eval_solver_equals_fewstep_sample_on_the_sub_schedule(unet, strength):
    x0, noise = images_and_noise(3)
    nfe = 6
    sched = FewstepScheduler.from_config(CFG, solver="ipndm", schedule="polynomial")
    ours, calls, t_start = img2img(unet, sched, nfe, strength, x0, noise)
    assert t_start > 0 and calls == nfe - t_start
    sub = sched._stepper.sigmas[t_start:]  # one call per interval: call k opens interval k
    res = fewstep.solve(DiffusersDenoiser(unet, CFG), noise.double(), sub, "ipndm", x_init=x0.double(),
                        denoise_to_zero=True)
    assert res.nfe == calls
    assert rel(ours.double(), res.x) <= 1e-5


def test_two_eval_start_is_an_euler_step_to_the_next_schedule_point(unet):
    """DPM-2, begin index on a midpoint call: an Euler step from that sigma to the interval's end, then DPM-2."""
    x0, noise = images_and_noise(4)
    sched = FewstepScheduler.from_config(CFG, solver="dpm2", schedule="polynomial")
    sched.set_timesteps(7)  # calls: s0, mid0, s1, mid1, s2, mid2, zero
    b = 3
    sched.set_begin_index(b)
    lat = sched.add_noise(x0, noise, sched.timesteps[b:b + 1])
    for t in sched.timesteps[b:]:
        lat = sched.step(unet(lat, t).sample.detach(), t, lat).prev_sample
    sig = sched._stepper.sigmas
    s_mid = torch.tensor(sched._plan_info[b][0], dtype=torch.float64)
    den = DiffusersDenoiser(unet, CFG)
    with torch.no_grad():
        x = x0.double() + noise.double() * s_mid
        x = x + (sig[2] - s_mid) * (x - den(x, s_mid)) / s_mid
        ref = fewstep.sample(den, torch.zeros_like(x), sig[2:], "dpm2", x_init=x, denoise_to_zero=True)
    assert rel(lat.double(), ref) <= 1e-5


def test_add_noise_at_begin_index_zero_gives_the_schedules_first_sigma():
    """Strength 1: the latents add_noise makes are the solver's initial state at the schedule's first sigma, also when
    the first model call moves (AFS, a learned time shift): scale_model_input and step read them at that sigma."""
    x0, zero = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    dyw = learned.DyWeightSampler(learned.DyWeightSampler.make_config(
        fewstep.get_schedule("polynomial", 5, 0.05, 40.0), afs=False, time_shift=True))
    with torch.no_grad():
        dyw.xi.fill_(0.3)
    for kw in (dict(solver="ipndm"), dict(solver="ipndm", afs=True), dict(predictor=dyw)):
        sched = FewstepScheduler.from_config(CFG, **kw)
        sched.set_timesteps(4)
        s0 = float(sched._stepper.sigmas[0])
        unset = sched.add_noise(x0, zero, sched.timesteps[:1])  # no begin index: found by timestep value
        sched.set_begin_index(0)
        lat = sched.add_noise(x0, zero, sched.timesteps[:1])
        for y in (lat, unset):
            assert float(y.mean()) * (1 + s0**2) ** 0.5 == pytest.approx(1.0, abs=1e-6), kw


def test_predictor_refuses_a_begin_index_above_zero():
    cfg = learned.AMEDSampler.make_config([14.0, 2.5, 0.4, 0.03], afs=False,
                                          options={"scale_dir": 0.2, "scale_time": 0.2, "features": "none"})
    pred = learned.AMEDSampler(cfg).eval()
    sched = FewstepScheduler.from_config(CFG, predictor=pred)
    sched.set_timesteps(sched_nfe := 6)
    assert sched.num_inference_steps == sched_nfe
    sched.set_begin_index(0)
    with pytest.raises(ValueError, match="predictor cannot start mid-schedule"):
        sched.set_begin_index(2)


def test_begin_index_is_validated(unet):
    sched = FewstepScheduler.from_config(CFG, solver="ipndm")
    sched.set_timesteps(4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative int"):
            sched.set_begin_index(bad)
    with pytest.raises(ValueError, match="leaves no model call"):
        sched.set_begin_index(4)
    sched.set_begin_index(2)
    sched.set_timesteps(4)
    assert sched.begin_index is None  # set_timesteps resets it, as in diffusers


@pytest.mark.parametrize("guidance", [None, 4.0])
def test_the_measured_default_runs_image_to_image(unet, guidance):
    """FewstepScheduler without a solver (fewstep's measured default: UniPC +AFS / DEIS) makes exactly the kept calls
    at every strength (AFS is off for a start above 0)."""
    x0, noise = images_and_noise(1)
    for nfe in (5, 8):
        for strength in (0.3, 0.6, 1.0):
            sched = FewstepScheduler.from_config(CFG, guidance_scale=guidance)
            out, calls, t_start = img2img(unet, sched, nfe, strength, x0, noise)
            assert calls == len(sched.timesteps[t_start:]) == nfe - t_start and sched.step_index == nfe
            assert torch.isfinite(out).all() and sched.chosen.startswith("fewstep's measured default")
