"""Learned samplers: AMED-Solver, AMED-Plugin, DyWeight, EPD, PAS, GS (and any method registered in
:data:`METHODS`), with model-input time shifts, LD3's soft start, a learned schedule and guidance-aware tables as
options of every method, trained by the one distillation trainer and stored in one safe checkpoint format.

``train(method, denoiser, shape=..., nfe=5)`` returns a sampler; ``sampler.save(path)``; ``load(path)`` reads any
method's file; ``fewstep.sample(denoiser, noise, predictor=sampler)`` samples with its trained settings. Training
settings are objects (:class:`Teacher`, :class:`Budget`, :class:`Objective`, :class:`ScheduleSpec`,
:class:`Checkpointing`, :class:`GuidanceScales`); adding a method: docs/adding-a-method.md.
"""

from .amed import AMEDPluginSampler, AMEDSampler
from .checkpoint import load, read_config
from .distill import LearnedSchedule, TrainLog
from .dyweight import DyWeightSampler
from .epd import EPDSampler
from .gs import GSSampler
from .pas import PASSampler
from .residual import ResidualSampler
from .registry import METHODS, method_class
from .sampler import CONFIG_KEYS, FORMAT, VERSION, CheckpointError, Defaults, LearnedSampler, Option
from .settings import Budget, Checkpointing, GuidanceScales, Objective, ScheduleSpec, Teacher
from .train import TrainedSchedule, learn_schedule, train

__all__ = ["train", "learn_schedule", "load", "read_config", "METHODS", "method_class", "LearnedSampler", "Option",
           "Defaults", "Teacher", "Budget", "Objective", "ScheduleSpec", "Checkpointing", "GuidanceScales", "TrainLog",
           "TrainedSchedule", "LearnedSchedule", "AMEDSampler", "AMEDPluginSampler", "DyWeightSampler", "EPDSampler",
           "PASSampler", "GSSampler", "ResidualSampler", "CheckpointError", "FORMAT", "VERSION", "CONFIG_KEYS"]
