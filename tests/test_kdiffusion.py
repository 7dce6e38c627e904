"""fewstep.k against the real k-diffusion package (PyPI ``k-diffusion``), as a peer and as a host.

How k-diffusion is installed and imported (see the comment in pyproject.toml):

* ``pip install --no-deps "k-diffusion==0.0.16"`` plus its sampling module's own imports ``torchsde`` and
  ``torchdiffeq`` (both in the ``test`` extra). 0.0.16's ``sampling.py`` and ``external.py`` are identical to those
  of the latest release (0.1.1.post1), which cannot be used: from 0.1.0 on it requires ``dctorch``, which pins
  numpy < 2 and so downgrades numpy. A plain ``pip install k-diffusion`` also pulls wandb, kornia, accelerate,
  clip-anytorch, clean-fid and ``torchvision``; PyPI's torchvision 0.28.0 is a CUDA build that fails to import
  against the CPU torch 2.13.0 ("operator torchvision::nms does not exist"), and a torchvision that fails to import
  breaks ``diffusers`` too, so k-diffusion cannot go into the ``test`` extra with its dependencies.
* ``k_diffusion/__init__.py`` imports every submodule (training, evaluation with CLIP, ...), and ``k_diffusion.utils``
  imports torchvision at module level (used only by its image helpers, never by sampling). :func:`load_k_diffusion`
  therefore imports the installed ``k_diffusion.sampling`` and ``k_diffusion.external`` without running the
  package ``__init__`` and, when torchvision cannot be imported, with an empty stand-in for
  ``torchvision.transforms.functional`` during that import only (no k-diffusion code that runs here uses it).
  The code under test is k-diffusion's own, unmodified.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

import fewstep
from fewstep import k, learned
from conftest import make_gmm


def load_k_diffusion() -> tuple[types.ModuleType, types.ModuleType]:
    """(k_diffusion.sampling, k_diffusion.external) of the installed k-diffusion, see the module docstring."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip('k-diffusion is not installed: pip install --no-deps "k-diffusion==0.0.16" (see pyproject.toml)')
    names = ("k_diffusion", "torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    before = {n: sys.modules.get(n) for n in names}
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = pkg
    try:
        try:
            import torchvision.transforms.functional  # noqa: F401
        except Exception:  # a CUDA torchvision beside a CPU torch, or none: stand-ins for utils.py's import only
            for n in names[1:]:
                sys.modules.pop(n, None)
            tv, tr, fn = (types.ModuleType(n) for n in names[1:])
            tv.transforms, tr.functional = tr, fn
            sys.modules.update(dict(zip(names[1:], (tv, tr, fn))))
        sampling = importlib.import_module("k_diffusion.sampling")
        external = importlib.import_module("k_diffusion.external")
    finally:  # leave sys.modules as it was: nothing else sees the stand-ins or the bare package
        for n in [m for m in sys.modules if m.split(".")[0] in ("k_diffusion", "torchvision")]:
            if before.get(n) is None:
                sys.modules.pop(n)
            else:
                sys.modules[n] = before[n]
    return sampling, external


@pytest.fixture(scope="module")
def kd():
    return load_k_diffusion()


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=6, components=3, seed=2)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# Measured maximum absolute differences (sample values of magnitude ~2, Karras sigmas 0.002..80 of 6 and 10 entries
# with k-diffusion's trailing 0): at most 8.4e-15 in float64 and 9.5e-7 in float32.
TOL = {torch.float64: 1e-13, torch.float32: 5e-6}


def _peer_setup(kd, gmm, dtype, n):
    ks, _ = kd
    sig = ks.get_sigmas_karras(n, 0.002, 80.0).to(dtype)  # ends with k-diffusion's appended 0
    noise = fewstep.noise_for_seeds(range(8), (6,), dtype=dtype)
    model = lambda x, s: gmm(x.double(), s.double()).to(x.dtype)  # noqa: E731
    return ks, sig, noise * sig[0], model


# (k-diffusion sampler, its keywords, fewstep.k function, its keywords): the same algorithm.
PAIRS = [
    ("sample_euler", {}, k.sample_euler, {}),
    ("sample_heun", {}, k.sample_heun, {}),
    ("sample_dpm_2", {}, k.sample_dpm_2, {}),
    ("sample_dpmpp_2m", {}, k.sample_dpmpp_2m, {}),
    # eta = 0 removes the noise of the ancestral / SDE samplers: the ODE samplers above
    ("sample_euler_ancestral", {"eta": 0.0}, k.sample_euler, {}),
    ("sample_dpm_2_ancestral", {"eta": 0.0}, k.sample_dpm_2, {}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}, k.sample_dpmpp_2m, {}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, k.sample_dpmpp_2m, {"solver_type": "taylor"}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("n", [6, 10])
@pytest.mark.parametrize("kname,kopts,ours,opts", PAIRS, ids=[p[0] + "".join(f"-{v}" for v in p[1].values())
                                                             for p in PAIRS])
def test_peer_same_algorithm(kd, gmm, dtype, n, kname, kopts, ours, opts):
    """Same model, same k-diffusion Karras sigmas (trailing 0), same x: the same result to rounding. Their last
    step to 0 (Euler for heun/dpm_2, x = denoised for the DPM++ ones) is our denoise_to_zero: x0 of the last call."""
    ks, sig, x, model = _peer_setup(kd, gmm, dtype, n)
    ref = getattr(ks, kname)(model, x, sig, disable=True, **kopts)
    got = ours(model, x, sig, disable=True, **opts)
    assert got.dtype == ref.dtype == dtype
    assert _maxdiff(got, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_peer_lms_is_ipndm_v(kd, gmm, dtype):
    """k-diffusion's sample_lms (variable-step Adams-Bashforth in sigma, Lagrange weights integrated with
    scipy.quad) is fewstep's ipndm_v (max_order 4, weights integrated exactly) on positive sigmas. With a trailing 0
    they differ by design: lms extrapolates its polynomial down to sigma = 0, fewstep.k takes x0 = D(x, sigma_min)."""
    ks, sig, x, model = _peer_setup(kd, gmm, dtype, 8)
    pos = sig[:-1]
    assert _maxdiff(k.sample_ipndm_v(model, x, pos, disable=True), ks.sample_lms(model, x, pos, disable=True)) \
        < TOL[dtype]
    d0 = _maxdiff(k.sample_ipndm_v(model, x, sig, disable=True), ks.sample_lms(model, x, sig, disable=True))
    assert TOL[dtype] < d0 < 1e-3  # measured 1.2e-5: at sigma_min = 0.002 both are close to x0


def test_peer_dpmpp_3m_warmup_differs(kd, gmm):
    """k-diffusion has no deterministic 3M; sample_dpmpp_3m_sde(eta=0) is one. Its order-3 update equals ours
    (solver_type "midpoint": half the Taylor weight on the second difference, as in diffusers), but its order-2
    warm-up step uses the Taylor (phi_2) form where ours uses the midpoint form: a difference that shrinks as the
    steps get smaller (measured 8.3e-3 with 6 sigmas, 1.1e-4 with 10)."""
    d = {}
    for n in (6, 10):
        ks, sig, x, model = _peer_setup(kd, gmm, torch.float64, n)
        d[n] = _maxdiff(k.sample_dpmpp_3m(model, x, sig, disable=True),
                        ks.sample_dpmpp_3m_sde(model, x, sig, disable=True, eta=0.0))
    assert 1e-4 < d[6] < 0.02 and d[10] < d[6] / 20


def test_peer_lower_order_final_is_opt_in(kd, gmm):
    """fewstep's own DPM-Solver++ default lowers the order of the final steps (lower_order_final=True); the
    k-named function does not by default, as k-diffusion (which keeps order 2 up to the last positive sigma)."""
    ks, sig, x, model = _peer_setup(kd, gmm, torch.float64, 6)
    ref = ks.sample_dpmpp_2m(model, x, sig, disable=True)
    assert _maxdiff(k.sample_dpmpp_2m(model, x, sig, disable=True), ref) < 1e-13
    assert _maxdiff(k.sample_dpmpp_2m(model, x, sig, disable=True, lower_order_final=True), ref) > 0.05


def test_churn_refused():
    with pytest.raises(ValueError, match="s_churn"):
        k.sample_euler(lambda x, s: x, torch.ones(1, 2), torch.tensor([1.0, 0.5, 0.0]), s_churn=1.0)


# --------------------------------------------------------------------------------------------------- host
class TinyNet(torch.nn.Module):
    """A small fixed network out = tanh(W x + t b + c) @ V (float32), standing in for a U-Net."""

    def __init__(self, dim: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(dim, 16, generator=g) / dim**0.5)
        self.b = torch.nn.Parameter(torch.randn(16, generator=g))
        self.V = torch.nn.Parameter(torch.randn(16, dim, generator=g) / 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x @ self.W + t.reshape(-1, 1) * self.b
        if cond is not None:
            h = h + cond
        return torch.tanh(h) @ self.V


class EpsNet(TinyNet):
    """For DiscreteEpsDDPMDenoiser: the network is called with the discrete timestep (0..999)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, t / 1000, cond)


def _wrapped_models(kd):
    _, ke = kd
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0)
    return {"VDenoiser": ke.VDenoiser(TinyNet().eval()),
            "DiscreteEpsDDPMDenoiser": ke.DiscreteEpsDDPMDenoiser(EpsNet(seed=1).eval(), ac, quantize=False),
            "DiscreteEpsDDPMDenoiser-quantize": ke.DiscreteEpsDDPMDenoiser(EpsNet(seed=2).eval(), ac, quantize=True)}


HOST = [("sample_euler", k.sample_euler), ("sample_heun", k.sample_heun), ("sample_dpm_2", k.sample_dpm_2),
        ("sample_dpmpp_2m", k.sample_dpmpp_2m)]


@pytest.mark.parametrize("wrapper", ["VDenoiser", "DiscreteEpsDDPMDenoiser", "DiscreteEpsDDPMDenoiser-quantize"])
@pytest.mark.parametrize("kname,ours", HOST, ids=[h[0] for h in HOST])
def test_host_calls_like_k_diffusion(kd, wrapper, kname, ours):
    """Called exactly as k-diffusion code calls its own samplers: a k-diffusion model wrapper around a float32
    network, its float32 Karras sigmas with the trailing 0, extra_args, callback and disable. Same result and the
    same callback sequence as k-diffusion's sampler of that name."""
    ks, _ = kd
    model = _wrapped_models(kd)[wrapper]
    lo, hi = (0.03, 14.6) if wrapper != "VDenoiser" else (0.01, 50.0)
    sigmas = ks.get_sigmas_karras(7, lo, hi)  # float32, trailing 0
    assert sigmas.dtype == torch.float32 and float(sigmas[-1]) == 0.0
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    extra = {"cond": torch.linspace(-0.5, 0.5, 16)}
    seen: dict[str, list] = {"k": [], "ours": []}
    with torch.no_grad():
        ref = getattr(ks, kname)(model, x, sigmas, extra_args=extra, disable=True,
                                 callback=lambda d: seen["k"].append(d))
        got = ours(model, x, sigmas, extra_args=extra, disable=True, callback=lambda d: seen["ours"].append(d))
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert _maxdiff(got, ref) < 2e-5 * (1 + float(ref.abs().max()))
    assert len(seen["k"]) == len(seen["ours"]) == len(sigmas) - 1
    for a, b in zip(seen["k"], seen["ours"]):
        assert set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert a["i"] == b["i"] and math.isclose(float(a["sigma"]), float(b["sigma"]), rel_tol=1e-6)
        assert _maxdiff(a["x"], b["x"]) < 2e-5 * (1 + float(a["x"].abs().max()))
        assert _maxdiff(a["denoised"], b["denoised"]) < 2e-5 * (1 + float(a["denoised"].abs().max()))


@pytest.mark.parametrize("kname,ours", HOST, ids=[h[0] for h in HOST])
def test_host_img2img_sigmas_below_sigma_max(kd, kname, ours):
    """Image-to-image in a k-diffusion host: sigmas that start below the model's sigma_max (the tail of a Karras
    schedule) and x = image + noise * sigmas[0]. Works as for any sigmas, and equals k-diffusion's sampler."""
    ks, _ = kd
    model = _wrapped_models(kd)["DiscreteEpsDDPMDenoiser"]
    full = ks.get_sigmas_karras(10, 0.03, 14.6)
    sigmas = full[5:]  # strength ~ 0.5: starts at sigma ~ 0.7
    assert float(sigmas[0]) < 1.0
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 6, generator=g) * 2 - 1
    x = image + torch.randn(2, 6, generator=g) * sigmas[0]
    with torch.no_grad():
        ref = getattr(ks, kname)(model, x, sigmas, disable=True)
        got = ours(model, x, sigmas, disable=True)
    assert _maxdiff(got, ref) < 2e-5 * (1 + float(ref.abs().max()))


def _table_predictor() -> learned.AMEDSampler:
    """A predictor-free AMED table with set values (no AFS: a host's model may not be near N(0, I) data)."""
    cfg = learned.AMEDSampler.make_config([14.0, 2.5, 0.4, 0.03], afs=False,
                                          options={"scale_dir": 0.2, "scale_time": 0.2})
    pred = learned.AMEDSampler(cfg)
    with torch.no_grad():
        pred.table.copy_(torch.tensor([[0.3, 0.5, -0.4], [-0.2, -0.4, 0.3], [0.1, 0.2, 0.5]]))
    return pred.eval()


def test_host_amed_with_predictor(kd):
    """sample_learned with an AMED sampler in a k-diffusion host: its wrapper, a float32 copy of the trained sigmas with
    k-diffusion's trailing 0, extra_args, callback and disable. Equals fewstep.sample with the predictor (plus
    the final denoising); other sigmas are refused."""
    model = _wrapped_models(kd)["DiscreteEpsDDPMDenoiser"]
    pred = _table_predictor()
    sigmas = torch.tensor(pred.config["sigmas"] + [0.0], dtype=torch.float32)
    noise = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    extra = {"cond": torch.full((16,), 0.1)}
    steps = []
    with torch.no_grad():
        got = k.sample_learned(model, noise * sigmas[0], sigmas, extra_args=extra, disable=True, predictor=pred,
                               callback=lambda d: steps.append(d["i"]))
        ref = fewstep.sample(lambda x, s: model(x, s, **extra), noise, predictor=pred, denoise_to_zero=True)
    assert steps == [0, 1, 2, 3]  # one per interval, the last one to 0 included (k-diffusion)
    assert _maxdiff(got, ref) < 1e-5
    with pytest.raises(ValueError, match="trained for sigmas"):
        k.sample_learned(model, noise * 14.0, torch.tensor([14.0, 2.0, 0.4, 0.03, 0.0]), predictor=pred)


def test_host_amed_trained_table(kd, gmm):
    """A table trained quickly on the analytic model (features="none") runs in a host that passes the float32 copy
    of the trained sigmas with a trailing 0, and equals fewstep.sample with it."""
    pred = learned.train("amed", gmm, shape=(6,), num_steps=3, options={"features": "none"}, afs=False,
                         schedule=learned.ScheduleSpec(sigma_min=0.02, sigma_max=20.0),
                         budget=learned.Budget(batch=16, total_samples=64))
    sig32 = torch.tensor(pred.config["sigmas"], dtype=torch.float32)
    noise = fewstep.noise_for_seeds(range(4), (6,), dtype=torch.float64)
    model = lambda x, s: gmm(x, s.double())  # noqa: E731
    got = k.sample_learned(model, noise * float(sig32[0]), torch.cat([sig32, sig32.new_zeros(1)]), predictor=pred,
                           disable=True)
    ref = fewstep.sample(gmm, noise, predictor=pred, denoise_to_zero=True)
    assert _maxdiff(got, ref) < 1e-5  # x / float32(sigmas[0]) * sigmas[0]: float32 rounding of the start only
