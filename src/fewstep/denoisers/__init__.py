"""Denoisers: the protocol, feature interface, adapters for other parameterisations, and closed-form test models."""

from .adapters import PREDICTIONS, FlowModel, VPModel
from .analytic import EmpiricalDenoiser, FlowVelocity, Gaussian, GaussianMixture
from .base import Denoiser, model_digest, model_dtype, sigma_like
from .guidance import Guided
from .features import BOTTLENECK_NAMES, HookFeatures, find_bottleneck, provides_features
from .unet import SmallUNet, UNetConfig, default_unet, digits_unet, load_unet, save_unet

__all__ = [
    "Denoiser",
    "sigma_like",
    "model_dtype",
    "model_digest",
    "HookFeatures",
    "find_bottleneck",
    "provides_features",
    "BOTTLENECK_NAMES",
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
    "digits_unet",
    "Guided",
    "load_unet",
    "save_unet",
]
