"""AMED: learned mean directions for few-step sampling (Zhou et al., CVPR 2024).

``train(...)`` distils a predictor from a teacher; ``predictor.save(path)`` / ``load(path)`` keep it in a safe
checkpoint; ``fewstep.sample(denoiser, noise, predictor=pred)`` samples with the settings it was trained for.
"""

from ..denoisers.features import HookFeatures, find_bottleneck, provides_features
from ..sampling import detach_state
from ..schedules import refine_schedule
from .checkpoint import load, read_config, save
from .predictor import AMEDPredictor, CheckpointError, LearnedSchedule, student_solver
from .train import TrainLog, learn_schedule, steps_for_nfe, student_steps_for_nfe, train
from .trainstate import TrainState

__all__ = [
    "train",
    "learn_schedule",
    "LearnedSchedule",
    "load",
    "save",
    "read_config",
    "CheckpointError",
    "AMEDPredictor",
    "TrainState",
    "HookFeatures",
    "find_bottleneck",
    "provides_features",
    "refine_schedule",
    "student_solver",
    "student_steps_for_nfe",
    "steps_for_nfe",
    "detach_state",
    "TrainLog",
]
