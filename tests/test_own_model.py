"""A user's own float32 network, end to end (issue 19): a hand-written eps-network and a small diffusers
UNet2DModel behind the README's adapter recipe, trained (AMED-Solver and plugin), sampled and evaluated through
the Python API with float64 trajectories: every model call must get float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fewstep
from fewstep import learned
from fewstep.denoisers import HookFeatures, VPModel, model_dtype

SHAPE = (1, 8, 8)


class EpsNet(nn.Module):
    """A tiny float32 eps-prediction network with a middle block (so AMED can hook its features)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inp = nn.Conv2d(1, 8, 3, padding=1)
        self.mid_block = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 1, 3, padding=1)
        self.freqs = nn.Parameter(torch.randn(8, generator=g), requires_grad=False)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.1

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and t.dtype == torch.float32, (x.dtype, t.dtype)  # what a real net needs
        emb = torch.sin(t.reshape(-1, 1) / 1000 * self.freqs)[:, :, None, None]
        h = torch.tanh(self.inp(x) + emb)
        return self.out(torch.tanh(self.mid_block(h)))


def _ddpm_alphas():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


@pytest.fixture(scope="module")
def net():
    return EpsNet().eval()


def test_model_dtype_is_found_through_the_readme_lambda(net):
    den = VPModel(lambda x, t: net(x, t), alphas_cumprod=_ddpm_alphas())
    assert model_dtype(den) is None  # the adapter converts by itself ...
    assert model_dtype(den.model) == torch.float32  # ... finding the float32 network inside the lambda
    assert model_dtype(net) == torch.float32
    assert model_dtype(lambda x, s: x) is None


def test_a_raw_float32_module_gets_float32_under_a_float64_trajectory(net):
    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma):
            return x - sigma.reshape(-1, 1, 1, 1) * self.net(x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt(),
                                                             sigma * 10)

    noise = fewstep.noise_for_seeds(range(3), SHAPE, dtype=torch.float64)
    res = fewstep.solve(D(), noise, fewstep.get_schedule("polynomial", 4, sigma_max=14.0), "amed", afs=True)
    assert res.x.dtype == torch.float64 and torch.isfinite(res.x).all() and res.nfe == 5


def _num_steps(method, base):
    """Sigmas for 5 model evaluations with AFS (the AMED-Solver: 4; the plugin on iPNDM: 4)."""
    return fewstep.steps_for_nfe(learned.METHODS[method].probe_solver(None, base, True), 5, True)


@pytest.mark.parametrize("method,base", [("amed", None), ("plugin", "ipndm")])
@pytest.mark.parametrize("features", ["none", "hook"])
def test_readme_path_train_sample_eval(net, tmp_path, method, base, features):
    den = VPModel(lambda x, t: net(x, t), alphas_cumprod=_ddpm_alphas())
    den.model_id = "my-eps-net"
    if features == "hook":
        den = HookFeatures(den, network=net, module="mid_block")
    n = _num_steps(method, base)
    # float64 trajectories (the default) and float32: both must give the network float32.
    for dtype in (torch.float64, torch.float32):
        pred = learned.train(method, den, shape=SHAPE, base=base, num_steps=n,
                             schedule=learned.ScheduleSpec(sigma_max=14.0), teacher=learned.Teacher(M=1),
                             budget=learned.Budget(batch=4, total_samples=8),
                             options={"features": "none" if features == "none" else "adapter"}, dtype=dtype,
                             progress=False)
        assert pred.config["model_id"] == "my-eps-net"  # taken from the denoiser
        path = pred.save(tmp_path / f"p{dtype}.safetensors")
        loaded = learned.load(path, model_id="my-eps-net")
        noise = fewstep.noise_for_seeds(range(6), SHAPE, dtype=dtype)
        res = fewstep.solve(den, noise, predictor=loaded)
        assert res.nfe == 5 and res.x.dtype == dtype and torch.isfinite(res.x).all()
    # evaluation of the samples against themselves (the metric pipeline accepts them)
    from fewstep import metrics

    ext = metrics.FeatureExtractor("random", int(torch.tensor(SHAPE).prod()))
    mu, sig, _ = metrics.feature_stats(res.x.clamp(-1, 1).float().numpy(), ext, 6)
    assert metrics.frechet_distance(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-4)


def test_diffusers_unet_through_the_readme_lambda(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    den = VPModel(lambda x, t: unet(x, t).sample, alphas_cumprod=_ddpm_alphas())
    for method, base in (("amed", None), ("plugin", "ipndm")):
        pred = learned.train(method, den, shape=SHAPE, base=base, num_steps=_num_steps(method, base),
                             schedule=learned.ScheduleSpec(sigma_max=14.0), teacher=learned.Teacher(M=1),
                             budget=learned.Budget(batch=2, total_samples=4), progress=False)
        noise = fewstep.noise_for_seeds(range(2), SHAPE, dtype=torch.float64)
        res = fewstep.solve(den, noise, predictor=pred)
        assert res.nfe == 5 and torch.isfinite(res.x).all()
