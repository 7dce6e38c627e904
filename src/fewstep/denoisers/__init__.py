"""Denoisers: the protocol, adapters for other parameterisations, and closed-form test models."""

from .adapters import PREDICTIONS, FlowModel, VPModel
from .analytic import EmpiricalDenoiser, Gaussian, GaussianMixture
from .base import Denoiser, sigma_like

__all__ = [
    "Denoiser",
    "sigma_like",
    "VPModel",
    "FlowModel",
    "PREDICTIONS",
    "Gaussian",
    "GaussianMixture",
    "EmpiricalDenoiser",
]
