"""FewstepScheduler inside real diffusers pipeline objects (tiny random weights, tests/tiny_pipelines.py, offline):
StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline and
DDPMPipeline, each with ``pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, ...)``.

What is checked: the backbone (UNet / transformer, counted by a forward pre-hook) is called exactly
``num_inference_steps`` times per image batch, at the scheduler's timesteps in order; with classifier-free guidance
every call sees the doubled batch and the images differ from guidance scale 1; the images are finite. Every classic
solver (fewstep.SOLVERS, with and without AFS, and the measured default) and every learned method
(fewstep.learned.METHODS, untrained but perturbed, predictor-free AMED tables) runs on Stable Diffusion (the
cheapest pipeline); a few of them on the others. Image-to-image makes the calls diffusers' own strength slice keeps
(``len(timesteps[t_start:])``); predictors refuse a start above 0. Pipelines that never call ``scale_model_input``
(DDPMPipeline, and StableDiffusion3Pipeline) get a RuntimeError from ``step`` with AFS or a moved first call, and run
at exactly NFE calls otherwise. A few runs are compared with fewstep.solve on the same UNet (DiffusersDenoiser)."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import learned

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from fewstep.integrations.diffusers import DiffusersDenoiser, FewstepScheduler, model_sigma_range  # noqa: E402
from learned_helpers import make_sampler, perturb  # noqa: E402
from tiny_pipelines import HEIGHT, WIDTH, tiny_pipeline  # noqa: E402

PROMPTS = ["a cat", "a red dog"]
GUIDE = 5.0
NO_SCALE_MODEL_INPUT = "did not call scheduler.scale_model_input"


# ------------------------------------------------------------------------------------------------ helpers
class Calls:
    """Counts the forward calls of a backbone (forward pre-hook): the batch size and timestep of each call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.batches, self.timesteps, self.cond = module, [], [], []

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(t).reshape(-1)
        assert bool((t == t[0]).all()), "one timestep per call"
        self.batches.append(x.shape[0])
        self.timesteps.append(float(t[0]))
        self.cond.append(kwargs.get("encoder_hidden_states"))

    def __enter__(self) -> Calls:
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def __len__(self) -> int:
        return len(self.batches)


def backbone(pipe) -> torch.nn.Module:
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def use(pipe, **kw) -> FewstepScheduler:
    """``pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, **kw)``, returned."""
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, **kw)
    return pipe.scheduler


def generate(pipe, nfe, *, guidance=GUIDE, batch=1, seed=0, **kw):
    """Run the pipeline (text-to-image, or DDPM's unconditional loop); returns (images or latents, Calls)."""
    g = torch.Generator().manual_seed(seed)
    with Calls(backbone(pipe)) as calls, torch.no_grad():
        if isinstance(pipe, diffusers.DDPMPipeline):
            out = torch.from_numpy(pipe(batch_size=batch, generator=g, num_inference_steps=nfe, output_type="np",
                                        **kw).images)
        else:
            kw.setdefault("output_type", "pt")
            if "image" not in kw:
                kw.update(height=HEIGHT, width=WIDTH)
            out = pipe(prompt=PROMPTS[:batch], num_inference_steps=nfe, guidance_scale=guidance, generator=g,
                       **kw).images
    return out, calls


def check_calls(pipe, calls, nfe, *, batch, guided, begin=0):
    """Exactly ``nfe - begin`` backbone calls, each on the (doubled, with CFG) image batch, at the scheduler's
    timesteps from ``begin`` on, and every planned call used."""
    sched = pipe.scheduler
    assert len(sched.timesteps) == nfe
    assert len(calls) == nfe - begin
    assert calls.batches == [batch * (2 if guided else 1)] * (nfe - begin)
    assert calls.timesteps == [float(t) for t in sched.timesteps[begin:]]
    assert sched.step_index == nfe


def nfe_for(possible) -> int:
    """The first of 5, 4, 6 for which ``possible(nfe)`` does not raise a ValueError."""
    for nfe in (5, 4, 6):
        try:
            possible(nfe)
            return nfe
        except ValueError:
            pass
    raise AssertionError("no NFE among 4, 5, 6")


def solver_nfe(pipe, solver, afs, **extra) -> int:
    return nfe_for(lambda n: FewstepScheduler.from_config(pipe.scheduler.config, solver=solver, afs=afs, **extra)
                   .set_timesteps(n))


def learned_options(method, channels):
    return {"amed": {"scale_dir": 0.2, "scale_time": 0.2, "features": "none"},
            "plugin": {"scale_dir": 0.2, "scale_time": 0.2, "features": "none"},
            "epd": {"K": 2}, "pas": {"order": 4, "coords": 2}, "gs": {"order": 3},
            "residual": {"channels": channels, "width": 8}}.get(method)


def learned_sampler(pipe, method, *, afs, time_shift, channels=4, seed=1, **extra):
    """An untrained learned sampler of ``method`` on a polynomial schedule over the pipeline model's own sigma range,
    with about 5 model calls, every parameter moved off its neutral value."""
    cls = learned.METHODS[method]
    options = learned_options(method, channels)
    probe_solver = cls.probe_solver(options, None, afs)
    n = fewstep.steps_for_nfe(probe_solver, nfe_for(lambda k: fewstep.steps_for_nfe(probe_solver, k, afs)), afs)
    cfg = pipe.scheduler.config
    probe = FewstepScheduler.from_config(cfg, **extra)
    lo, hi = model_sigma_range(probe.adapter, cfg.num_train_timesteps)
    sig = fewstep.get_schedule("polynomial", n, lo, hi)
    return perturb(make_sampler(cls, sig, afs=afs, options=options, time_shift=time_shift), seed=seed).eval()


def finite(x) -> bool:
    return bool(torch.isfinite(torch.as_tensor(x)).all())


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """The module's pipelines by kind, each built once per session and loaded on first use."""
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = tiny_pipeline(kind, tmp_path_factory)
        return cache[kind]

    return get


def _fresh(pipe):
    """``pipe`` with its own scheduler back after the test (a test's FewstepScheduler config never leaks)."""
    original = pipe.scheduler
    yield pipe
    pipe.scheduler = original


@pytest.fixture
def sd(pipes):
    yield from _fresh(pipes("sd"))


@pytest.fixture
def sdxl(pipes):
    yield from _fresh(pipes("sdxl"))


@pytest.fixture
def sd3(pipes):
    yield from _fresh(pipes("sd3"))


@pytest.fixture
def ddpm(pipes):
    yield from _fresh(pipes("ddpm"))


@pytest.fixture
def img2img(pipes):
    """StableDiffusionImg2ImgPipeline from the Stable Diffusion components (the original DDIM scheduler's)."""
    sd = pipes("sd")
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**sd.components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def init_images(batch=1, seed=0):
    return torch.rand((batch, 3, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(seed))


SOLVER_CASES = [(s, afs) for s in fewstep.SOLVERS for afs in (False, True)]
LEARNED_CASES = [(m, afs) for m in learned.METHODS for afs in (False, True)]  # afs=True also shifts the times


# ------------------------------------------------------------------------------------------------ Stable Diffusion
@pytest.mark.parametrize("solver,afs", SOLVER_CASES, ids=[f"{s}{'-afs' if a else ''}" for s, a in SOLVER_CASES])
def test_sd_every_solver_makes_exactly_nfe_guided_calls(sd, solver, afs):
    nfe = solver_nfe(sd, solver, afs)
    sched = use(sd, solver=solver, afs=afs)
    images, calls = generate(sd, nfe, batch=2)
    check_calls(sd, calls, nfe, batch=2, guided=True)
    assert images.shape == (2, 3, HEIGHT, WIDTH) and finite(images)
    assert sched.chosen.startswith(solver) and f"{nfe} model calls" in sched.chosen


@pytest.mark.parametrize("nfe", [4, 5, 8])
def test_sd_measured_default(sd, nfe):
    sched = use(sd, guidance_scale=GUIDE)
    images, calls = generate(sd, nfe)
    check_calls(sd, calls, nfe, batch=1, guided=True)
    assert finite(images) and sched.chosen.startswith(f"fewstep's measured default for NFE {nfe}, guidance scale 5")


@pytest.mark.parametrize("method,afs", LEARNED_CASES, ids=[f"{m}{'-afs-shift' if a else ''}" for m, a in LEARNED_CASES])
def test_sd_every_learned_method_makes_exactly_its_nfe(sd, method, afs):
    p = learned_sampler(sd, method, afs=afs, time_shift=afs)
    sched = use(sd, predictor=p)
    images, calls = generate(sd, p.nfe(), batch=2)
    check_calls(sd, calls, p.nfe(), batch=2, guided=True)
    assert finite(images) and sched.chosen.startswith(method)
    with pytest.raises(ValueError, match=f"predictor makes {p.nfe()} model calls"):
        generate(sd, p.nfe() + 1)


@pytest.mark.parametrize("kw", [{"solver": "ipndm", "afs": True}, {"solver": "heun"}, {"predictor": "dyweight"}],
                         ids=["ipndm-afs", "heun", "dyweight-afs-shift"])
def test_sd_guidance_is_applied(sd, kw):
    """Guidance scale 1: one call on the plain batch; above 1: the doubled batch, and other images."""
    if "predictor" in kw:
        kw = {"predictor": learned_sampler(sd, kw["predictor"], afs=True, time_shift=True)}
        nfe = kw["predictor"].nfe()
    else:
        nfe = solver_nfe(sd, kw["solver"], kw.get("afs", False))
    use(sd, **kw)
    plain, calls1 = generate(sd, nfe, guidance=1.0, output_type="latent")
    check_calls(sd, calls1, nfe, batch=1, guided=False)
    guided, calls5 = generate(sd, nfe, guidance=GUIDE, output_type="latent")
    check_calls(sd, calls5, nfe, batch=1, guided=True)
    assert finite(plain) and finite(guided)
    assert float((plain - guided).abs().max()) > 1e-3 * float(plain.abs().max())
    again, _ = generate(sd, nfe, guidance=GUIDE, output_type="latent")  # set_timesteps resets the scheduler
    assert torch.equal(again, guided)


def reference(pipe, calls, noise, sigmas, guidance, **solve_kw):
    """fewstep.solve(den, noise, sigmas, ...) (from x = x_init + noise * sigmas[0], or noise * sigmas[0]) with the
    pipeline's UNet as ``den``: DiffusersDenoiser with the prompt embeddings the pipeline passed it, same CFG."""
    emb = calls.cond[0]
    uncond, cond = emb.chunk(2) if guidance > 1 else (None, emb)
    den = DiffusersDenoiser(pipe.unet, pipe.scheduler.config, encoder_hidden_states=cond,
                            negative_encoder_hidden_states=uncond, guidance_scale=guidance, model_id="tiny")
    return fewstep.solve(den, noise, sigmas, **solve_kw)


@pytest.mark.parametrize("kw", [{"solver": "ipndm", "afs": True}, {"solver": "heun"}, {"solver": "euler"},
                                {"predictor": "dyweight"}], ids=["ipndm-afs", "heun", "euler", "dyweight-afs-shift"])
def test_sd_equals_fewstep_solve_on_the_same_unet(sd, kw):
    """The pipeline's final latents (denoised to zero) are fewstep.solve's on the UNet the pipeline runs."""
    if "predictor" in kw:
        p = learned_sampler(sd, kw["predictor"], afs=True, time_shift=True)
        kw, nfe = {"predictor": p}, p.nfe()
    else:
        nfe = solver_nfe(sd, kw["solver"], kw.get("afs", False))
    sched = use(sd, **kw)
    lat = torch.randn((1, 4, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(3))
    out, calls = generate(sd, nfe, latents=lat, output_type="latent")
    check_calls(sd, calls, nfe, batch=1, guided=True)
    st = sched._stepper
    s0 = st.sigmas[0]
    noise = lat.double() * (1 + s0**2).sqrt() / s0  # pipeline latents (init_noise_sigma 1) in EDM space at s0
    with torch.no_grad():
        if "predictor" in kw:
            res = reference(sd, calls, noise, None, GUIDE, predictor=kw["predictor"])
            want = res.x / (1 + st.sigmas[-1] ** 2).sqrt()  # the predictor ends at its last sigma (VP latents)
        else:
            res = reference(sd, calls, noise, st.sigmas, GUIDE, solver=kw["solver"], afs=st.afs,
                            denoise_to_zero=True)
            want = res.x
    assert res.nfe == nfe
    assert float((out.double() - want).norm() / want.norm()) < 1e-4


# ------------------------------------------------------------------------------------------------ image-to-image
IMG2IMG = [("ipndm", False), ("dpmpp", True), ("dpm2", False), ("heun", False), ("amed", True), (None, None)]


@pytest.mark.parametrize("solver,afs", IMG2IMG, ids=[f"{s}{'-afs' if a else ''}" for s, a in IMG2IMG])
@pytest.mark.parametrize("strength", [0.5, 0.8, 1.0])
def test_img2img_makes_the_calls_of_diffusers_strength_slice(img2img, solver, afs, strength):
    if solver is None:  # the measured default
        kw, nfe = {"guidance_scale": GUIDE}, 5
    else:
        kw, nfe = {"solver": solver, "afs": afs}, solver_nfe(img2img, solver, afs)
    sched = use(img2img, **kw)
    images, calls = generate(img2img, nfe, batch=2, image=init_images(2), strength=strength)
    t_start = nfe - min(int(nfe * strength), nfe)  # StableDiffusionImg2ImgPipeline.get_timesteps
    assert (t_start > 0) == (strength < 1)
    assert sched.begin_index == t_start and len(calls) == len(sched.timesteps[t_start:])
    check_calls(img2img, calls, nfe, batch=2, guided=True, begin=t_start)
    assert images.shape == (2, 3, HEIGHT, WIDTH) and finite(images)


@pytest.mark.parametrize("method", ["dyweight", "amed"])
def test_img2img_predictor_runs_at_strength_one_and_refuses_a_later_start(img2img, method):
    p = learned_sampler(img2img, method, afs=False, time_shift=False)
    use(img2img, predictor=p)
    images, calls = generate(img2img, p.nfe(), image=init_images(), strength=1.0)
    check_calls(img2img, calls, p.nfe(), batch=1, guided=True)
    assert finite(images)
    with pytest.raises(ValueError, match="predictor cannot start mid-schedule"):
        generate(img2img, p.nfe(), image=init_images(), strength=0.6)


class AddNoise:
    """Records the arguments of the scheduler's add_noise (the pipeline's encoded image latents and its noise)."""

    def __init__(self, sched):
        self.inner, self.args = sched.add_noise, None
        sched.add_noise = self

    def __call__(self, x0, noise, t):
        self.args = (x0.clone(), noise.clone())
        return self.inner(x0, noise, t)


def img2img_vs_solve(pipe, afs, strength, nfe=5):
    """(pipeline's final latents, fewstep.solve's) for iPNDM image-to-image: solve starts at the kept tail's first
    sigma from the image latents the pipeline encoded, noised with the pipeline's noise (x_init + noise * sigma)."""
    sched = use(pipe, solver="ipndm", afs=afs)
    rec = AddNoise(sched)
    out, calls = generate(pipe, nfe, image=init_images(seed=5), strength=strength, output_type="latent", seed=2)
    t_start = nfe - int(nfe * strength)
    check_calls(pipe, calls, nfe, batch=1, guided=True, begin=t_start)
    x0, noise = rec.args
    sigmas = sched._stepper.sigmas
    # One call per interval; a start above 0 runs the tail from its call's interval without AFS, a start at 0 the
    # whole schedule (with AFS, whose call 0 opens interval 1).
    tail = sigmas[sched._plan_info[t_start][1]:] if t_start else sigmas
    assert float(tail[0]) == pytest.approx(sched._plan_info[t_start][0] if t_start else float(sigmas[0]))
    with torch.no_grad():
        res = reference(pipe, calls, noise.double(), tail, GUIDE, solver="ipndm", afs=afs and t_start == 0,
                        x_init=x0.double(), denoise_to_zero=True)
    assert res.nfe == len(calls)
    return out.double(), res.x


@pytest.mark.parametrize("afs,strength", [(False, 0.6), (False, 1.0), (True, 0.6)])
def test_img2img_equals_fewstep_solve_from_the_noised_image(img2img, afs, strength):
    out, want = img2img_vs_solve(img2img, afs, strength)
    assert float((out - want).norm() / want.norm()) < 1e-4


def test_img2img_strength_one_with_afs_equals_fewstep_solve(img2img):
    out, want = img2img_vs_solve(img2img, True, 1.0)
    assert float((out - want).norm() / want.norm()) < 1e-4


# ------------------------------------------------------------------------------------------------ SDXL
SDXL_CASES = [{"solver": "dpmpp", "afs": True}, {"solver": "heun"}, {"solver": "unipc"}, {"guidance_scale": GUIDE},
              {"predictor": ("epd", True)}, {"predictor": ("amed", False)}]


def _kw(pipe, kw, channels=4, **extra):
    """(scheduler keywords, NFE) of a case: a solver, the measured default, or (learned method, afs = time shift);
    ``extra``: more FewstepScheduler keywords."""
    if "predictor" in kw:
        p = learned_sampler(pipe, kw["predictor"][0], afs=kw["predictor"][1], time_shift=kw["predictor"][1],
                            channels=channels, **extra)
        return {"predictor": p, **extra}, p.nfe()
    if "solver" in kw:
        return {**kw, **extra}, solver_nfe(pipe, kw["solver"], kw.get("afs", False), **extra)
    return {**kw, **extra}, 5


def _id(kw):
    if "predictor" in kw:
        return kw["predictor"][0] + ("-afs-shift" if kw["predictor"][1] else "")
    return kw.get("solver", "default") + ("-afs" if kw.get("afs") else "")


# SDXL's EulerDiscreteScheduler config, as save_pretrained writes it, has diffusers' own timestep_type="discrete" (its
# "discrete" | "continuous"), which FewstepScheduler leaves out (not its "interp" | "nearest"); every SDXL run checks it.
def test_sdxl_scheduler_from_its_own_config(sdxl):
    use(sdxl, solver="dpmpp")
    images, calls = generate(sdxl, 5)
    check_calls(sdxl, calls, 5, batch=1, guided=True)


@pytest.mark.parametrize("kw", SDXL_CASES, ids=[_id(k) for k in SDXL_CASES])
def test_sdxl_makes_exactly_nfe_guided_calls(sdxl, kw):
    kw, nfe = _kw(sdxl, kw)
    use(sdxl, **kw)
    images, calls = generate(sdxl, nfe, batch=2)
    check_calls(sdxl, calls, nfe, batch=2, guided=True)
    assert images.shape == (2, 3, HEIGHT, WIDTH) and finite(images)


def test_sdxl_guidance_is_applied(sdxl):
    use(sdxl, solver="ipndm", afs=True)
    plain, calls = generate(sdxl, 5, guidance=1.0, output_type="latent")
    check_calls(sdxl, calls, 5, batch=1, guided=False)
    guided, calls = generate(sdxl, 5, output_type="latent")
    check_calls(sdxl, calls, 5, batch=1, guided=True)
    assert finite(plain) and finite(guided)
    assert float((plain - guided).abs().max()) > 1e-3 * float(plain.abs().max())


# ------------------------------------------------------------------------------------------------ SD3 (flow)
SD3_CASES = [{"solver": "dpmpp"}, {"solver": "heun"}, {"solver": "euler"}, {"guidance_scale": None},
             {"predictor": ("gs", False)}, {"predictor": ("amed", False)}]


@pytest.mark.parametrize("kw", SD3_CASES, ids=[_id(k) for k in SD3_CASES])
def test_sd3_makes_exactly_nfe_guided_calls(sd3, kw):
    kw, nfe = _kw(sd3, kw)
    sched = use(sd3, **kw)
    assert sched.is_flow and sched.config.prediction_type == "flow_prediction"
    images, calls = generate(sd3, nfe, batch=2)
    check_calls(sd3, calls, nfe, batch=2, guided=True)
    assert images.shape == (2, 3, HEIGHT, WIDTH) and finite(images)


def test_sd3_guidance_is_applied(sd3):
    use(sd3, solver="dpmpp")
    plain, calls = generate(sd3, 5, guidance=1.0, output_type="latent")
    check_calls(sd3, calls, 5, batch=1, guided=False)
    guided, calls = generate(sd3, 5, output_type="latent")
    check_calls(sd3, calls, 5, batch=1, guided=True)
    assert finite(plain) and finite(guided)
    assert float((plain - guided).abs().max()) > 1e-3 * float(plain.abs().max())


@pytest.mark.parametrize("kw", [{"solver": "dpmpp", "afs": True}, {"predictor": ("dyweight", True)}],
                         ids=["dpmpp-afs", "dyweight-afs-shift"])
def test_sd3_never_calls_scale_model_input_so_a_moved_first_call_is_refused(sd3, kw):
    """StableDiffusion3Pipeline feeds its latents to the transformer without scale_model_input (as DDPMPipeline):
    AFS or a learned time shift would give the first call the wrong input, so step raises instead."""
    kw, nfe = _kw(sd3, kw)
    use(sd3, **kw)
    with pytest.raises(RuntimeError, match=NO_SCALE_MODEL_INPUT):
        generate(sd3, nfe)


# ------------------------------------------------------------------------------------------------ DDPM
@pytest.mark.parametrize("kw", [{"solver": "ipndm"}, {"solver": "dpm2"}, {"solver": "unipc"},
                                {"predictor": ("gs", False)}, {"predictor": ("residual", False)}],
                         ids=["ipndm", "dpm2", "unipc", "gs", "residual"])
def test_ddpm_without_afs_makes_exactly_nfe_calls(ddpm, kw):
    kw, nfe = _kw(ddpm, kw, channels=3)
    use(ddpm, **kw)
    images, calls = generate(ddpm, nfe, batch=2)
    check_calls(ddpm, calls, nfe, batch=2, guided=False)
    assert images.shape == (2, HEIGHT, WIDTH, 3) and finite(images)


@pytest.mark.parametrize("kw", [{"solver": "ipndm", "afs": True}, {"solver": "heun", "afs": True},
                                {"predictor": ("dyweight", True)}, {"predictor": ("pas", True)}],
                         ids=["ipndm-afs", "heun-afs", "dyweight-afs-shift", "pas-afs-shift"])
def test_ddpm_with_afs_raises_at_the_first_step(ddpm, kw):
    """DDPMPipeline never calls scale_model_input: with AFS (or a moved first call) step refuses, naming the fix,
    after the one model call the pipeline already made."""
    kw, nfe = _kw(ddpm, kw, channels=3)
    use(ddpm, **kw)
    with Calls(ddpm.unet) as calls, pytest.raises(RuntimeError, match=NO_SCALE_MODEL_INPUT + ".*run_pipeline_loop"):
        ddpm(batch_size=1, num_inference_steps=nfe, output_type="np")
    assert len(calls) == 1
