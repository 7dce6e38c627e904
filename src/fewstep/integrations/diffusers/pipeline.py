"""The denoising loop of a Stable Diffusion-style pipeline, :func:`run_pipeline_loop`, for models whose own
pipeline does not call ``scale_model_input`` (e.g. DDPMPipeline with AFS or a learned time shift)."""

from __future__ import annotations

from typing import Any

import torch

from .model import check_guidance, unet_model_id, unet_output

__all__ = ["run_pipeline_loop"]


def run_pipeline_loop(unet: torch.nn.Module, scheduler: Any, latents: torch.Tensor,
                      num_inference_steps: int | None = None, *, encoder_hidden_states: torch.Tensor | None = None,
                      negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float = 1.0,
                      callback: Any = None) -> torch.Tensor:
    """The denoising loop of a Stable Diffusion-style pipeline (the package docstring shows it), for models whose
    own pipeline does not call ``scale_model_input`` (DDPMPipeline), e.g. to run an AFS-trained AMED table at its
    trained NFE. Makes exactly ``len(scheduler.timesteps)`` UNet calls (CFG: one call on the doubled batch).

    ``latents``: the initial noise, N(0, I) of the pipeline's latent shape (multiplied by
    ``scheduler.init_noise_sigma`` here); ``num_inference_steps``: calls ``set_timesteps`` (None: the scheduler's
    current timesteps); conditioning and guidance as in :class:`DiffusersDenoiser`; ``callback(i, t, latents)``
    after every step. Works with any diffusers scheduler. Returns the final latents (pipeline space, before any
    VAE decoding or the [-1, 1] -> [0, 1] mapping)."""
    check_guidance(encoder_hidden_states, negative_encoder_hidden_states, guidance_scale)
    pred = getattr(scheduler, "predictor", None)
    want = getattr(pred, "config", {}).get("model_id") if pred is not None else None
    if want is not None and str(want).startswith("diffusers:") and want != unet_model_id(unet):
        raise ValueError(f"the scheduler's predictor was trained for model {want!r}, but this UNet is "
                         f"{unet_model_id(unet)!r} (a digest of its weights)")
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
    elif getattr(scheduler, "timesteps", None) is None:
        raise ValueError("pass num_inference_steps, or call scheduler.set_timesteps first")
    sample = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(sample, t)
            out = unet_output(unet, model_input, torch.as_tensor(t), encoder_hidden_states,
                              negative_encoder_hidden_states, guidance_scale)
            sample = scheduler.step(out, t, sample, return_dict=False)[0]
            if callback is not None:
                callback(i, t, sample)
    return sample
