"""A small DDPM (Ho et al., 2020) on 16x16 handwritten digits, written as a third-party model would be.

The network predicts the noise eps of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps from x_t and the INTEGER
timestep t in 0..999 (DDPM's 1000 discrete linear betas 1e-4..0.02); data lie in [-1, 1]. Nothing here knows
about fewstep except :func:`factory`, which wraps the trained network for it::

    python -m fewstep sample --model examples.ddpm_digits.model:factory --shape 1,16,16 --nfe 5 --out s.npz

(run from the repository root: ``python -m`` puts the current folder on the import path; the ``fewstep`` script
does not, so give it ``PYTHONPATH=.``). Weights: ``ddpm_digits.safetensors`` next to this file, written by
``train.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_TIMESTEPS = 1000
BETAS = torch.linspace(1e-4, 0.02, NUM_TIMESTEPS, dtype=torch.float64)
ALPHAS_CUMPROD = torch.cumprod(1.0 - BETAS, dim=0)
WEIGHTS = Path(__file__).resolve().with_name("ddpm_digits.safetensors")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t, shape (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class EpsUNet(nn.Module):
    """eps_theta(x_t, t): a two-level U-Net (16 -> 8 -> 4 pixels) with a sinusoidal timestep embedding."""

    def __init__(self, ch: int = 24, emb_dim: int = 128) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        c1, c2 = ch, 2 * ch
        self.inp = nn.Conv2d(1, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, emb_dim)              # 16x16
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2 = ResBlock(c1, c2, emb_dim)              # 8x8
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = ResBlock(c2, c2, emb_dim)                # 4x4
        self.up2 = ResBlock(2 * c2, c2, emb_dim)            # 8x8, with the skip
        self.up1 = ResBlock(c2 + c1, c1, emb_dim)           # 16x16, with the skip
        self.out_norm = nn.GroupNorm(8, c1)
        self.out = nn.Conv2d(c1, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        h0 = self.inp(x)
        h1 = self.down1(h0, emb)
        h2 = self.down2(self.pool1(h1), emb)
        h = self.mid(self.pool2(h2), emb)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h2], 1), emb)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), emb)
        return self.out(F.silu(self.out_norm(h)))


def load_net(path: str | Path = WEIGHTS) -> EpsUNet:
    """The trained network (eval mode, float32) from a safetensors file."""
    from safetensors.torch import load_file

    net = EpsUNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


@torch.no_grad()
def ddpm_sample(net: EpsUNet, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's ancestral sampler (Ho et al., 2020, Algorithm 2, sigma_t^2 = beta_t): n samples in [-1, 1]."""
    betas, abar = BETAS.float(), ALPHAS_CUMPROD.float()
    x = torch.randn(n, 1, 16, 16, generator=generator)
    for t in reversed(range(NUM_TIMESTEPS)):
        eps = net(x, torch.full((n,), t))
        x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
        if t > 0:
            x = x + betas[t].sqrt() * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


def factory():
    """The trained DDPM as a fewstep denoiser: eps prediction, timesteps are the indices into ALPHAS_CUMPROD."""
    from fewstep.denoisers import VPModel

    return VPModel(load_net(), prediction="eps", alphas_cumprod=ALPHAS_CUMPROD)
