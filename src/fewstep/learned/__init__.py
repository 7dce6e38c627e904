"""Learned samplers beyond AMED ("Beyond AMED"): DyWeight-style learned multistep, EPD, PAS, GS, with optional
model-input time shifts, LD3's soft start and a learned schedule, all trained by the one distillation trainer
(:func:`fewstep.amed.distill.distill`) and stored in one safe checkpoint format.

``train(method, denoiser, shape=..., nfe=5)`` returns a sampler; ``sampler.save(path)``; ``load(path)`` reads these
and AMED checkpoints; ``fewstep.sample(denoiser, noise, predictor=sampler)`` samples with its trained settings.
"""

from ..amed.predictor import CheckpointError
from .base import CONFIG_KEYS, FORMAT, METHODS, VERSION, LearnedSampler, load, read_config, register
from .methods import DyWeightSampler, EPDSampler, GSSampler, PASSampler
from .train import DEFAULT_BUDGET, DEFAULT_LR, TRAINABLE, steps_for_nfe, train

__all__ = ["train", "load", "read_config", "steps_for_nfe", "LearnedSampler", "DyWeightSampler", "EPDSampler",
           "PASSampler", "GSSampler",
           "METHODS", "TRAINABLE", "DEFAULT_LR", "DEFAULT_BUDGET", "FORMAT", "VERSION", "CONFIG_KEYS",
           "CheckpointError", "register"]
