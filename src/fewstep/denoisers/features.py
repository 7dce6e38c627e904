"""Where a learned sampler's input features come from: an explicit interface, never a hard-coded module name.

A denoiser that provides features implements ``denoise_with_features(x, sigma) -> (x0, features (B, F))``.
:class:`HookFeatures` adds this to any denoiser by a forward hook on a module the user names (or the middle
block of a known U-Net), pooling the module's output over its spatial axes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["HookFeatures", "find_bottleneck", "provides_features", "BOTTLENECK_NAMES"]

# Middle blocks of known U-Nets: ours, diffusers (UNet2DModel / UNet2DConditionModel), guided-diffusion / LDM.
BOTTLENECK_NAMES = ("mid", "mid_block", "middle_block")


def provides_features(denoiser: object) -> bool:
    return callable(getattr(denoiser, "denoise_with_features", None))


def find_bottleneck(network: nn.Module) -> str:
    """Name of the middle block of a known U-Net, or ValueError listing what to pass instead."""
    names = dict(network.named_modules())
    for cand in BOTTLENECK_NAMES:
        if cand in names:
            return cand
    top = ", ".join(n for n, _ in network.named_children()) or "none"
    raise ValueError(
        f"cannot find a middle block ({', '.join(BOTTLENECK_NAMES)}) in {type(network).__name__}; "
        f"name the feature module explicitly (its top-level children are: {top})"
    )


def _pool(out: object) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "sample") and not isinstance(out, torch.Tensor):
        out = out.sample
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"feature module returned {type(out).__name__}, expected a tensor")
    return out.flatten(2).mean(-1) if out.ndim > 2 else out


class HookFeatures:
    """Wrap ``denoiser`` so that each call also returns the pooled output of ``network``'s module ``module``
    (default: the middle block found by :func:`find_bottleneck`)."""

    def __init__(self, denoiser: Callable, network: nn.Module | None = None, module: str | None = None) -> None:
        network = network if network is not None else denoiser
        if not isinstance(network, nn.Module):
            raise TypeError("HookFeatures needs the nn.Module that holds the feature module (network=...)")
        self.denoiser, self.network = denoiser, network
        self.module_name = module if module is not None else find_bottleneck(network)
        try:
            self.module = network.get_submodule(self.module_name)
        except AttributeError:
            raise ValueError(f"{type(network).__name__} has no module named {self.module_name!r}") from None
        self.model_id = getattr(denoiser, "model_id", None)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, sigma)

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.module.register_forward_hook(lambda mod, inp, out: captured.append(_pool(out)))
        try:
            x0 = self.denoiser(x, sigma)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"module {self.module_name!r} was not called during the denoiser's forward pass")
        return x0, captured[-1]
