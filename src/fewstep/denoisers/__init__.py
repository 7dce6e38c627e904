"""Denoisers: the protocol, feature interface, adapters for other parameterisations, closed-form test models (among
them the analytic natural-patch model, :func:`gmm_denoiser`) and the shipped U-Nets."""

from .adapters import PREDICTIONS, FlowModel, VPModel
from .analytic import GMM_MODEL_ID, EmpiricalDenoiser, FlowVelocity, Gaussian, GaussianMixture, gmm_denoiser
from .base import EDM_SIGMA_RANGE, Denoiser, model_digest, model_dtype, model_sigma_range, sigma_like, sigma_range
from .guidance import Guided
from .features import BOTTLENECK_NAMES, HookFeatures, find_bottleneck, provides_features
from .unet import SmallUNet, UNetConfig, default_unet, digits_unet, load_unet, save_unet

__all__ = [
    "Denoiser",
    "sigma_like",
    "model_dtype",
    "model_digest",
    "model_sigma_range",
    "sigma_range",
    "EDM_SIGMA_RANGE",
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
    "gmm_denoiser",
    "GMM_MODEL_ID",
    "SmallUNet",
    "UNetConfig",
    "default_unet",
    "digits_unet",
    "Guided",
    "load_unet",
    "save_unet",
]
