"""A diffusers model's spaces and fewstep's EDM space: the VP beta schedule (``alphas_cumprod``), the adapter that
converts a model's eps / v / x0 / velocity output, flow time to sigma, and the sigma range a model was trained on."""

from __future__ import annotations

from typing import Any

import torch

from ...denoisers.adapters import FlowModel, VPModel

__all__ = ["PREDICTION_TYPES", "FLOW_T_MAX", "alphas_cumprod", "make_adapter", "to_edm", "is_flow_config",
           "flow_sigma", "model_sigma_range"]

# diffusers prediction_type -> fewstep adapter prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}
# Flow time t = 1 is sigma = inf in EDM terms; the solver starts at this t instead (model time 1000 -> 999.999).
FLOW_T_MAX = 1.0 - 1e-6


def alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                   beta_schedule: str = "linear", trained_betas: Any = None) -> torch.Tensor:
    """alphas_cumprod of a diffusers VP beta schedule, computed in float32 as diffusers does, returned as float64."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

        betas = betas_for_alpha_bar(num_train_timesteps).to(torch.float32)
    else:
        raise ValueError(f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float64)


def make_adapter(prediction_type: str, config: Any, timestep_type: str) -> VPModel | FlowModel:
    """The fewstep VP or flow adapter (no network attached yet) for a diffusers ``prediction_type`` and config."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    if prediction_type == "flow_prediction":
        return FlowModel(None, "velocity", time_scale=float(config["num_train_timesteps"]))
    ac = alphas_cumprod(config["num_train_timesteps"], config.get("beta_start", 1e-4), config.get("beta_end", 0.02),
                        config.get("beta_schedule", "linear"), config.get("trained_betas"))
    return VPModel(None, PREDICTION_TYPES[prediction_type], alphas_cumprod=ac, timestep=timestep_type)


def to_edm(adapter: VPModel | FlowModel, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM state from a pipeline sample at ``sigma`` (inverse of the adapter's ``model_input``)."""
    s = sigma.to(sample)
    return sample * (1 + s) if isinstance(adapter, FlowModel) else sample * (1 + s**2).sqrt()


def is_flow_config(cfg: dict) -> bool:
    """A FlowMatch* scheduler config: named so (saved configs), or flow keys without a VP beta schedule."""
    if str(cfg.get("_class_name", "")).startswith("FlowMatch"):
        return True
    return "prediction_type" not in cfg and "beta_schedule" not in cfg and ("shift" in cfg or "use_dynamic_shifting" in cfg)


def flow_sigma(t: torch.Tensor) -> torch.Tensor:
    """EDM sigma t / (1 - t) of flow time ``t`` (clamped to ``FLOW_T_MAX``)."""
    t = t.clamp(max=FLOW_T_MAX)
    return t / (1 - t)


def model_sigma_range(adapter: VPModel | FlowModel, num_train_timesteps: int) -> tuple[float, float]:
    """(sigma_min, sigma_max) in EDM sigma that a model was trained on: for a VP model the sigmas of its first
    and last training timestep (from alphas_cumprod); for a flow model those of t = 1/T and t = 1 (clamped to
    ``FLOW_T_MAX``). Used by :class:`FewstepScheduler` and :class:`DiffusersDenoiser` alike."""
    if isinstance(adapter, FlowModel):
        T = num_train_timesteps
        return float(flow_sigma(torch.tensor(1.0 / T, dtype=torch.float64))), float(flow_sigma(torch.tensor(1.0)))
    ls = adapter.log_sigmas
    return float(ls[0].exp()), float(ls[-1].exp())
