"""Every learned sampler (fewstep.learned: DyWeight, EPD, PAS, GS, the residual operator; and AMED tables) in the integrations: the diffusers
FewstepScheduler driven by a pipeline-like loop, and the k-diffusion-style fewstep.k.sample_learned, each equal to
fewstep.solve(denoiser, noise, predictor=p) on an analytic Gaussian mixture, with the sampler's NFE as the number
of model calls, from the object or from its checkpoint path. Nothing is trained: parameters are random, non-zero."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import k, learned
from fewstep.denoisers import VPModel
from conftest import make_gmm
from learned_helpers import make_sampler, perturb

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import FewstepScheduler, alphas_cumprod, run_pipeline_loop  # noqa: E402

VP_CFG = diffusers.DDPMScheduler().config  # eps prediction, linear betas: EDM sigma 0.01..157
FLOW_CFG = diffusers.FlowMatchEulerDiscreteScheduler().config
SIG = fewstep.get_schedule("polynomial", 4, 0.05, 40.0)
VP_TIME = VPModel(None, alphas_cumprod=alphas_cumprod(), timestep="interp")  # sigma -> fractional DDPM timestep

# (id, class, options, time_shift, afs). Perturbed DyWeight / EPD scale their model-input times, so without AFS
# their first model call is already off the schedule's first sigma.
CASES = [
    ("dyweight", learned.DyWeightSampler, None, False, False),
    ("dyweight-w2-shift-afs", learned.DyWeightSampler, {"window": 2}, True, True),
    ("epd-k2", learned.EPDSampler, {"K": 2}, False, True),
    ("epd-k2-shift", learned.EPDSampler, {"K": 2}, True, False),
    ("pas", learned.PASSampler, {"order": 4, "coords": 2}, False, True),
    ("pas-c3-shift", learned.PASSampler, {"order": 3, "coords": 3}, True, False),
    ("gs-shift", learned.GSSampler, {"order": 3}, True, True),
    ("gs-o2", learned.GSSampler, {"order": 2}, False, False),
    # the out-of-span operator (samples of 4 channels at one location): its dry run times the base
    ("residual-ipndm-afs", learned.METHODS["residual"], {"channels": 4, "width": 8}, False, True),
    ("residual-shift", learned.METHODS["residual"], {"channels": 4, "width": 8}, True, False),
]


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=4, components=3, seed=0)


def sampler(case, seed=1):
    _, cls, options, time_shift, afs = case
    return perturb(make_sampler(cls, SIG, afs=afs, options=options, time_shift=time_shift), seed=seed).eval()


def amed_table():
    """A predictor-free AMED-Plugin table on iPNDM with clearly non-default entries (no AFS)."""
    cfg = learned.AMEDPluginSampler.make_config(SIG, afs=False, base="ipndm", options={
        "scale_dir": 0.2, "scale_time": 0.2, "features": "none", "hidden": 128, "emb_dim": 8, "feat_proj": 16})
    pred = learned.AMEDPluginSampler(cfg)
    with torch.no_grad():
        pred.table.copy_(torch.tensor([[0.3, 0.5, -0.4], [-0.2, -0.4, 0.3], [0.1, 0.2, 0.5]]))
    return pred.eval()


def save_legacy_amed(pred, path):
    """``pred`` (amed_table) written as AMED files were before the learned-package redesign (format
    fewstep-amed-predictor, its own config schema; tests/data/legacy/README.md), which fewstep.learned.load converts."""
    import json

    from fewstep.io import tensor_digest, write_safetensors

    o = pred.options
    cfg = {"version": 1, "student": {"solver": "amed_plugin", "base": pred.config["base"]["solver"],
                                     "options": dict(pred.config["base"]["options"])},
           "sigmas": pred.config["sigmas"], "afs": pred.config["afs"], "scale_dir": o["scale_dir"],
           "scale_time": o["scale_time"], "features": {"source": "none", "module": None, "dim": None},
           "architecture": {"hidden": o["hidden"], "emb_dim": o["emb_dim"], "feat_proj": o["feat_proj"]},
           "model_id": None}
    tensors = {k: v.detach().cpu().contiguous() for k, v in pred.state_dict().items()}
    write_safetensors(path, tensors, {"format": "fewstep-amed-predictor", "config": json.dumps(cfg, sort_keys=True),
                                      "sha256": tensor_digest(tensors)})
    return path


class Recorder:
    """The denoiser for fewstep.sample: records the sigma of every model call."""

    def __init__(self, gmm):
        self.gmm, self.sigmas = gmm, []

    def __call__(self, x, sigma):
        self.sigmas.append(float(sigma.reshape(-1)[0]))
        return self.gmm(x, sigma)


class Net:
    """A diffusers-style network (eps for VP, velocity for flow) made from the mixture. Its k-th call is evaluated at
    the sigma of fewstep.sample's k-th model call (float64; the scheduler's timesteps are float32) after checking that
    the pipeline's timestep is that sigma's; calls beyond the reference's fail."""

    def __init__(self, gmm, sigmas, flow=False):
        self.gmm, self.sigmas, self.flow, self.calls = gmm, sigmas, flow, 0

    def __call__(self, x, t):
        assert self.calls < len(self.sigmas), "more model calls than fewstep.sample makes"
        s = torch.tensor(self.sigmas[self.calls], dtype=torch.float64)
        self.calls += 1
        want = s / (1 + s) * 1000 if self.flow else VP_TIME.sigma_to_t(s)
        t = torch.as_tensor(t).reshape(-1)[0]  # run_pipeline_loop passes one timestep per sample
        assert float(t) == pytest.approx(float(want), rel=2e-6, abs=1e-4)  # the timestep is the (shifted) sigma's
        sb = s.expand(x.shape[0])
        if self.flow:  # x_t = x_edm / (1 + s); velocity n - x0 = (x_t - x0) / t
            return (x - self.gmm(x * (1 + s), sb)) * (1 + s) / s
        x_edm = x * (1 + s**2).sqrt()
        return (x_edm - self.gmm(x_edm, sb)) / s

    def unet(self):
        """The same network as a UNet2DModel-like module (``.sample`` output), for run_pipeline_loop."""

        class Out:
            def __init__(self, sample):
                self.sample = sample

        return lambda x, t: Out(self(x, t))


def pipeline_loop(sched, net, nfe, latents, scale=True):
    """The denoising loop of StableDiffusionPipeline (without CFG): latents * init_noise_sigma, scale_model_input,
    one model call per timestep, step."""
    sched.set_timesteps(nfe)
    sample = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(sample, t) if scale else sample
        sample = sched.step(net(inp, t), t, sample).prev_sample
    return sample


def reference(gmm, p, latents, flow=False, denoise_to_zero=False):
    """fewstep.solve with the predictor from the EDM state of the pipeline's initial latents, and the sigmas of its
    model calls."""
    s0 = SIG[0]
    x_T = latents * (1 + s0) if flow else latents * (1 + s0**2).sqrt()
    rec = Recorder(gmm)
    res = fewstep.solve(rec, x_T / s0, predictor=p, denoise_to_zero=denoise_to_zero)
    return res, rec.sigmas


def to_edm_end(sample, flow=False):
    """The pipeline's final sample (at the last schedule sigma, no jump to zero) in EDM space."""
    s = SIG[-1]
    return sample * (1 + s) if flow else sample * (1 + s**2).sqrt()


def latents(seed=0):
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ the scheduler
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_scheduler_equals_sample(gmm, case):
    p = sampler(case)
    lat = latents()
    res, sigmas = reference(gmm, p, lat)
    assert res.nfe == len(sigmas) == p.nfe()
    sched = FewstepScheduler.from_config(VP_CFG, predictor=p)
    net = Net(gmm, sigmas)
    out = pipeline_loop(sched, net, p.nfe(), lat)
    assert net.calls == len(sched.timesteps) == p.nfe()  # EPD: K + 1 calls per step, one after another
    evals = torch.tensor(sigmas, dtype=torch.float64)
    assert torch.allclose(sched.sigmas[:-1].double(), evals, rtol=1e-6)  # the model's (shifted) sigmas
    assert float((to_edm_end(out) - res.x).abs().max()) < 1e-10
    if case[3]:  # time shifts: the model is called off the schedule, the solver steps on it
        assert not set(sigmas) <= set(SIG.tolist())


def test_epd_counts_every_parallel_evaluation(gmm):
    p = sampler(("epd", learned.EPDSampler, {"K": 3}, True, False))
    assert p.rounds() == 6 < p.nfe() == 12
    sched = FewstepScheduler.from_config(VP_CFG, predictor=p)
    with pytest.raises(ValueError, match=r"num_inference_steps: .*12 model calls.*6 sequential rounds"):
        sched.set_timesteps(p.rounds())
    sched.set_timesteps(12)
    assert len(sched.timesteps) == 12


def test_flow_scheduler_with_time_shift(gmm):
    """A rectified-flow pipeline (FlowMatch config, timestep = t * 1000, no input scaling by the pipeline)."""
    p = sampler(CASES[3])  # EPD, K = 2, time shifts, no AFS
    lat = latents(1)
    res, sigmas = reference(gmm, p, lat, flow=True)
    sched = FewstepScheduler.from_config(FLOW_CFG, predictor=p)
    assert sched.config.prediction_type == "flow_prediction"
    net = Net(gmm, sigmas, flow=True)
    out = pipeline_loop(sched, net, p.nfe(), lat)
    assert net.calls == p.nfe()
    assert float((to_edm_end(out, flow=True) - res.x).abs().max()) < 1e-10


def test_denoise_to_zero(gmm):
    p = sampler(CASES[6])  # GS with time shifts and AFS
    lat = latents(2)
    res, sigmas = reference(gmm, p, lat, denoise_to_zero=True)
    sched = FewstepScheduler.from_config(VP_CFG, predictor=p, denoise_to_zero=True)
    net = Net(gmm, sigmas)
    out = pipeline_loop(sched, net, p.nfe() + 1, lat)
    assert net.calls == res.nfe == p.nfe() + 1
    assert float((out - res.x).abs().max()) < 1e-10  # x0: the same in every space


@pytest.mark.parametrize("which", ["dyweight-w2-shift-afs", "epd-k2-shift", "pas-c3-shift", "gs-o2", "amed",
                                   "amed-legacy"])
def test_checkpoint_path_equals_object(gmm, tmp_path, which):
    """predictor= a checkpoint path (fewstep.learned.load: every method's format and AMED's format from before the
    redesign) gives the object's result."""
    p = amed_table() if which.startswith("amed") else sampler(next(c for c in CASES if c[0] == which))
    path = tmp_path / "p.safetensors"
    if which == "amed-legacy":
        save_legacy_amed(p, path)
    else:
        p.save(path)
    lat = latents()
    res, sigmas = reference(gmm, p, lat)
    outs = []
    for pred in (p, path, str(path)):
        sched = FewstepScheduler.from_config(VP_CFG, predictor=pred)
        net = Net(gmm, sigmas)
        outs.append(pipeline_loop(sched, net, res.nfe, lat))
        assert net.calls == res.nfe == (6 if which.startswith("amed") else p.nfe())  # AMED-Plugin: 3 steps + 3 inserted
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert float((to_edm_end(outs[0]) - res.x).abs().max()) < 1e-10
    assert FewstepScheduler(predictor=path).predictor.config == p.config  # the constructor takes a path too


def test_pipeline_without_scale_model_input(gmm):
    """A loop that never calls scale_model_input (DDPMPipeline) would feed the model the unshifted start: refused;
    run_pipeline_loop makes the shifted first call right."""
    p = sampler(CASES[3])  # EPD with time shifts, no AFS: the first call is at sigma_0 * exp(xi_0)
    lat = latents()
    res, sigmas = reference(gmm, p, lat)
    sched = FewstepScheduler.from_config(VP_CFG, predictor=p)
    with pytest.raises(RuntimeError, match=r"predictor makes its first model call at sigma .*scale_model_input"):
        pipeline_loop(sched, Net(gmm, sigmas), p.nfe(), lat, scale=False)
    net = Net(gmm, sigmas)
    out = run_pipeline_loop(net.unet(), sched, lat, p.nfe())
    assert net.calls == p.nfe()
    assert float((to_edm_end(out) - res.x).abs().max()) < 1e-10
    # a sampler whose first call is on the schedule needs no scaling: the DDPM-style loop is right
    q = sampler(CASES[7])  # GS order 2, no shift, no AFS
    res_q, sig_q = reference(gmm, q, lat)
    out = pipeline_loop(FewstepScheduler.from_config(VP_CFG, predictor=q), Net(gmm, sig_q), q.nfe(), lat, scale=False)
    assert float((to_edm_end(out) - res_q.x).abs().max()) < 1e-10


def test_scheduler_errors(tmp_path):
    p = sampler(CASES[0])
    sched = FewstepScheduler.from_config(VP_CFG, predictor=p)
    with pytest.raises(ValueError, match=r"num_inference_steps: the dyweight predictor makes 3 model calls"):
        sched.set_timesteps(4)
    with pytest.raises(ValueError, match="sigmas: the dyweight predictor brings its own schedule"):
        sched.set_timesteps(sigmas=[10.0, 1.0])
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="dyweight predictor cannot start mid-schedule"):
        sched.set_begin_index(1)
    with pytest.raises(TypeError, match="predictor must be a learned sampler"):
        FewstepScheduler.from_config(VP_CFG, predictor=object())
    with pytest.raises(FileNotFoundError):
        FewstepScheduler.from_config(VP_CFG, predictor=tmp_path / "missing.safetensors")
    feat = learned.AMEDSampler(learned.AMEDSampler.make_config([14.0, 1.0, 0.03], afs=False,
                                                               options={"features": "adapter", "feature_dim": 16}))
    with pytest.raises(ValueError, match="predictor: a feature-based amed predictor"):
        FewstepScheduler.from_config(VP_CFG, predictor=feat)


# ------------------------------------------------------------------------------------------------ fewstep.k
class KModel:
    """A k-diffusion model(x, sigma, **extra_args) -> x0 that counts its calls."""

    def __init__(self, gmm):
        self.gmm, self.calls = gmm, 0

    def __call__(self, x, sigma, shift=0.0):
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return self.gmm(x, sigma) + shift


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_k_sample_learned_equals_sample(gmm, case):
    p = sampler(case)
    noise = latents()
    model = KModel(gmm)
    x = noise * SIG[0]
    steps = []
    got = k.sample_learned(model, x, extra_args={"shift": 0.01}, callback=lambda d: steps.append(d["i"]),
                           disable=True, predictor=p)
    ref = fewstep.solve(lambda x, s: gmm(x, s) + 0.01, x / SIG[0], predictor=p)
    assert torch.equal(got, ref.x)  # the same call of fewstep.sample
    assert model.calls == ref.nfe == p.nfe()
    assert steps == [0, 1, 2]  # one callback per step of the schedule


def test_k_path_trailing_zero_and_errors(gmm, tmp_path):
    p = sampler(CASES[3])  # EPD, K = 2, time shifts
    path = tmp_path / "epd.safetensors"
    p.save(path)
    noise = latents()
    x = noise * SIG[0]
    ref = fewstep.sample(gmm, x / SIG[0], predictor=p, denoise_to_zero=True)
    sig32 = torch.cat([SIG.float(), torch.zeros(1)])  # a host's float32 copy of the trained sigmas with its 0
    for pred in (p, path, str(path)):
        model = KModel(gmm)
        got = k.sample_learned(model, x, sig32, disable=True, predictor=pred)
        assert float((got - ref).abs().max()) < 1e-10 and model.calls == p.nfe() + 1
    # without sigmas: the trained ones (no trailing zero), the same call of fewstep.sample
    assert torch.equal(k.sample_learned(gmm, x, predictor=p, disable=True),
                       fewstep.sample(gmm, x / SIG[0], predictor=p))
    with pytest.raises(ValueError, match="trained amed sampler, got epd"):  # k.sample_amed takes AMED's own only
        k.sample_amed(gmm, x, SIG, predictor=p, disable=True)
    with pytest.raises(ValueError, match="trained for sigmas"):
        k.sample_learned(gmm, x, fewstep.get_schedule("polynomial", 5), predictor=p, disable=True)
    with pytest.raises(ValueError, match="needs predictor="):
        k.sample_learned(gmm, x, SIG, disable=True)
    with pytest.raises(TypeError, match="predictor must be a learned sampler"):
        k.sample_learned(gmm, x, SIG, disable=True, predictor=42)
