"""ComfyUI custom nodes (comfyui/fewstep_nodes) against a stand-in ``comfy.samplers`` (tests/comfy_standin) that
follows ComfyUI's KSAMPLER constructor and ``sample`` call path: each node's output equals fewstep itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_gmm

import fewstep
from fewstep import k, learned
from fewstep.learned import DyWeightSampler

ROOT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "comfy_standin"


@pytest.fixture(scope="module")
def nodes():
    sys.path[:0] = [str(ROOT / "comfyui"), str(STANDIN)]
    try:
        import comfy.samplers as cs
        import fewstep_nodes
        from fewstep_nodes import nodes as mod
        yield fewstep_nodes, mod, cs
    finally:
        for p in (str(ROOT / "comfyui"), str(STANDIN)):
            sys.path.remove(p)
        for m in [m for m in sys.modules if m.split(".")[0] in ("comfy", "fewstep_nodes")]:
            del sys.modules[m]  # leave no stand-in behind for other test files


@pytest.fixture(scope="module")
def gmm():
    return make_gmm()


@pytest.fixture(scope="module")
def noise():
    return fewstep.noise_for_seeds(range(8), (4,), dtype=torch.float64)


def comfy_sigmas(n=6, sigma_max=80.0):
    """What a ComfyUI scheduler returns: float32, descending, trailing 0."""
    s = fewstep.get_schedule("polynomial", n, 0.002, sigma_max)  # Karras (rho 7)
    return torch.cat([s, s.new_zeros(1)]).float()


def run_sampler(cs, sampler, denoiser, noise, sigmas, sigma_max=80.0, callback=None):
    """As CFGGuider.inner_sample does: sampler.sample(guider, sigmas, extra_args, callback, noise, latent, ...)."""
    guider = cs.StandInGuider(denoiser, sigma_max)
    extra_args = {"model_options": {}, "seed": 0}
    out = sampler.sample(guider, sigmas, extra_args, callback, noise, torch.zeros_like(noise), None, True)
    return out, guider


def test_imports_without_comfyui():
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'comfyui')!r}); import fewstep_nodes; "
            "assert 'comfy' not in sys.modules; print(sorted(fewstep_nodes.NODE_CLASS_MAPPINGS))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FewstepSampler" in r.stdout


def test_node_conventions(nodes):
    pkg, mod, _ = nodes
    assert set(pkg.NODE_CLASS_MAPPINGS) == set(pkg.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in pkg.NODE_CLASS_MAPPINGS.items():
        assert isinstance(cls.__dict__["INPUT_TYPES"], classmethod)
        spec = cls.INPUT_TYPES()
        assert isinstance(spec, dict) and isinstance(spec["required"], dict)
        for inp, t in spec["required"].items():
            assert isinstance(t, tuple) and isinstance(t[0], (str, list)), (name, inp)
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
        assert all(isinstance(t, str) for t in cls.RETURN_TYPES)
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert callable(getattr(cls, cls.FUNCTION))
        assert isinstance(cls.CATEGORY, str) and cls.CATEGORY
        # every required input has a default, and calling FUNCTION with the spec's names works (keywords)
        import inspect
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert set(spec["required"]) <= set(params), name
    assert pkg.NODE_CLASS_MAPPINGS["FewstepSampler"].RETURN_TYPES == ("SAMPLER",)
    assert pkg.NODE_CLASS_MAPPINGS["FewstepLearnedSampler"].RETURN_TYPES == ("SAMPLER", "SIGMAS")
    assert pkg.NODE_CLASS_MAPPINGS["FewstepScheduleLoader"].RETURN_TYPES == ("SIGMAS",)
    assert set(mod.FewstepSampler.INPUT_TYPES()["required"]["solver"][0]) == set(mod.SOLVERS)


CASES = [
    ("euler", {}), ("heun", {}), ("dpm_2", {}), ("dpmpp_2m", {}), ("dpmpp_2m", {"lower_order_final": "enable"}),
    ("dpmpp_2m", {"afs": True}), ("dpmpp_3m", {"afs": True, "lower_order_final": "disable"}),
    ("unipc", {}), ("unipc", {"unipc_variant": "bh1", "max_order": 3, "afs": True}),
    ("ipndm", {}), ("ipndm_v", {"max_order": 3}), ("deis", {"deis_mode": "rhoab"}),
    ("amed", {"afs": True}), ("amed_plugin", {}),
]


@pytest.mark.parametrize("solver,inputs", CASES)
def test_sampler_node_equals_fewstep_k(nodes, gmm, noise, solver, inputs):
    _, mod, cs = nodes
    (sampler,) = mod.FewstepSampler().get_sampler(solver, **inputs)
    assert isinstance(sampler, cs.KSAMPLER) and sampler.sampler_function is getattr(k, mod.SOLVERS[solver])
    sigmas = comfy_sigmas()
    steps = []
    out, guider = run_sampler(cs, sampler, gmm, noise, sigmas, callback=lambda *a: steps.append(a))
    # ComfyUI scaled the noise: sigmas[0] == sigma_max -> noise * sqrt(1 + sigma^2) (EPS max-denoise)
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    opts = mod.solver_options(solver, **{("variant" if n == "unipc_variant" else n): v for n, v in inputs.items()})
    ref = getattr(k, mod.SOLVERS[solver])(gmm, x, sigmas, **opts)
    assert torch.equal(out, ref)
    assert steps and all(s[3] == len(sigmas) - 1 for s in steps) and steps[-1][0] == len(sigmas) - 2
    assert all(shape == (noise.shape[0],) and seed == 0 for shape, seed in guider.calls)


@pytest.mark.parametrize("solver,inputs", [("dpmpp_2m", {"afs": True}), ("heun", {}), ("ipndm", {})])
def test_sampler_node_equals_fewstep_sample(nodes, gmm, noise, solver, inputs):
    """Below sigma_max ComfyUI starts at noise * sigmas[0], as fewstep.sample; the trailing 0 is denoise_to_zero."""
    _, mod, cs = nodes
    (sampler,) = mod.FewstepSampler().get_sampler(solver, **inputs)
    sigmas = comfy_sigmas()
    out, guider = run_sampler(cs, sampler, gmm, noise, sigmas, sigma_max=1000.0)
    name = {"dpmpp_2m": "dpmpp"}.get(solver, solver)
    extra = {"max_order": 2, "lower_order_final": False} if solver == "dpmpp_2m" else {}
    res = fewstep.solve(gmm, noise, sigmas[:-1].double(), name, denoise_to_zero=True,
                        **{**extra, **mod.solver_options(solver, **inputs)})
    torch.testing.assert_close(out, res.x, rtol=1e-12, atol=1e-12)
    assert len(guider.calls) == res.nfe


def test_afs_saves_a_call_and_is_refused_where_unsupported(nodes, gmm, noise):
    _, mod, cs = nodes
    sigmas = comfy_sigmas()
    calls = {}
    for afs in (False, True):
        (sampler,) = mod.FewstepSampler().get_sampler("dpmpp_2m", afs=afs)
        calls[afs] = len(run_sampler(cs, sampler, gmm, noise, sigmas)[1].calls)
    assert calls[True] == calls[False] - 1
    with pytest.raises(ValueError, match="unknown fewstep solver"):
        mod.FewstepSampler().get_sampler("lms")


@pytest.mark.parametrize("solver", ["ipndm", "ipndm_v", "deis", "euler", "heun", "dpm_2", "amed_plugin"])
def test_afs_is_offered_wherever_fewstep_k_takes_it(nodes, gmm, noise, solver):
    """The node asks fewstep.k (its signature, the solver registry behind **options) which options a solver takes:
    AFS works for ipndm / ipndm_v / deis (once refused by a hard-coded list) and saves one call."""
    _, mod, cs = nodes
    sigmas = comfy_sigmas()
    assert "afs" in mod.accepted(solver)
    calls = {}
    for afs in (False, True):
        (sampler,) = mod.FewstepSampler().get_sampler(solver, afs=afs)
        out, guider = run_sampler(cs, sampler, gmm, noise, sigmas)
        calls[afs] = len(guider.calls)
        if afs:
            x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
            assert torch.equal(out, getattr(k, mod.SOLVERS[solver])(gmm, x, sigmas, afs=True))
    assert calls[True] == calls[False] - 1
    assert mod.accepted("dpmpp_2m") == ("afs", "lower_order_final")  # the order is the name
    assert mod.accepted("unipc") == ("afs", "max_order", "lower_order_final", "variant")


def test_afs_is_refused_for_a_function_without_it(nodes, monkeypatch):
    _, mod, _ = nodes
    monkeypatch.setattr(k, "sample_plain", lambda model, x, sigmas, extra_args=None, callback=None, disable=None: x,
                        raising=False)
    monkeypatch.setitem(mod.SOLVERS, "plain", "sample_plain")
    with pytest.raises(ValueError, match="does not support AFS"):
        mod.FewstepSampler().get_sampler("plain", afs=True)
    assert mod.solver_options("plain") == {}
    with pytest.raises(ValueError, match="unknown fewstep solver"):
        mod.FewstepSampler().get_sampler("lms")


def _dyweight(tmp_path):
    sig = fewstep.get_schedule("polynomial", 5, 0.002, 80.0)
    s = DyWeightSampler(DyWeightSampler.make_config(sig, afs=True))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.05 * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return s.save(tmp_path / "dyweight.safetensors")


@pytest.mark.parametrize("append_zero", [False, True])
def test_learned_node_equals_fewstep_sample(nodes, gmm, noise, tmp_path, append_zero):
    _, mod, cs = nodes
    path = _dyweight(tmp_path)
    sampler, sigmas = mod.FewstepLearnedSampler().load(str(path), append_zero=append_zero)
    assert isinstance(sampler, cs.KSAMPLER) and sampler.sampler_function is k.sample_learned
    loaded = fewstep.learned.load(path)
    trained = torch.tensor(loaded.config["sigmas"], dtype=torch.float64)
    assert sigmas.dtype == torch.float32
    assert torch.equal(sigmas, torch.cat([trained, trained.new_zeros(int(append_zero))]).float())
    out, guider = run_sampler(cs, sampler, gmm, noise, sigmas, sigma_max=1000.0)
    res = fewstep.solve(gmm, noise, predictor=loaded, denoise_to_zero=append_zero)
    torch.testing.assert_close(out, res.x, rtol=1e-6, atol=1e-9)  # start x = noise * float32(sigmas[0])
    assert len(guider.calls) == res.nfe == loaded.nfe() + int(append_zero)
    # and exactly what fewstep.k does with the same start
    ref = k.sample_learned(gmm, noise * sigmas[0], sigmas, predictor=loaded)
    assert torch.equal(out, ref)


def test_learned_node_refuses_other_sigmas_and_feature_predictors(nodes, gmm, noise, tmp_path):
    _, mod, cs = nodes
    sampler, _ = mod.FewstepLearnedSampler().load(str(_dyweight(tmp_path)))
    with pytest.raises(ValueError, match="trained for sigmas"):
        run_sampler(cs, sampler, gmm, noise, comfy_sigmas(4))
    bed = make_gmm(dim=12, components=4, seed=5)
    pred = learned.train("amed", bed, shape=(3, 2, 2), num_steps=4, options={"features": "adapter"},
                         teacher=learned.Teacher("deis", {"max_order": 4, "deis_mode": "logrho"}, M=4),
                         budget=learned.Budget(batch=16, total_samples=64), progress=False)
    assert pred.uses_features
    path = pred.save(tmp_path / "feat.safetensors")
    with pytest.raises(ValueError, match="features"):
        mod.FewstepLearnedSampler().load(str(path))
    # an AMED table (features "none") is no feature predictor: the node accepts it
    table = learned.AMEDSampler(learned.AMEDSampler.make_config(pred.config["sigmas"], afs=True))
    assert not table.uses_features
    mod.FewstepLearnedSampler().load(str(table.save(tmp_path / "table.safetensors")))
    with pytest.raises(FileNotFoundError):
        mod.FewstepLearnedSampler().load(str(tmp_path / "missing.safetensors"))


def test_schedule_node(nodes, tmp_path):
    _, mod, _ = nodes
    sig = fewstep.get_schedule("polynomial", 6, 0.002, 80.0)
    path = fewstep.schedules.save_schedule(tmp_path / "s.json", sig, how="test")
    (out,) = mod.FewstepScheduleLoader().load(str(path))
    assert out.dtype == torch.float32 and float(out[-1]) == 0.0
    assert torch.equal(out, torch.cat([sig, sig.new_zeros(1)]).float())
    (no_zero,) = mod.FewstepScheduleLoader().load(str(path), append_zero=False)
    assert torch.equal(no_zero, sig.float())
    plain = tmp_path / "k.json"  # a k-diffusion-style list with its trailing 0: one 0, not two
    plain.write_text(json.dumps([14.6, 3.0, 0.5, 0.03, 0.0]))
    (out2,) = mod.FewstepScheduleLoader().load(str(plain))
    assert out2.tolist() == pytest.approx([14.6, 3.0, 0.5, 0.03, 0.0], rel=1e-7)
    with pytest.raises(ValueError):
        bad = tmp_path / "bad.json"
        bad.write_text("[1, 2, 3]")
        mod.FewstepScheduleLoader().load(str(bad))
