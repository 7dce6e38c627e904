"""Denoisers: the protocol, adapters for other parameterisations, and closed-form test models."""

from .adapters import PREDICTIONS, FlowModel, VPModel
from .analytic import EmpiricalDenoiser, FlowVelocity, Gaussian, GaussianMixture
from .base import Denoiser, sigma_like
from .unet import SmallUNet, UNetConfig, default_unet, load_unet, save_unet

__all__ = [
    "Denoiser",
    "sigma_like",
    "VPModel",
    "FlowModel",
    "PREDICTIONS",
    "Gaussian",
    "GaussianMixture",
    "EmpiricalDenoiser",
    "FlowVelocity",
    "SmallUNet",
    "UNetConfig",
    "default_unet",
    "load_unet",
    "save_unet",
]
