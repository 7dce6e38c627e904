"""AMED: learned mean directions for few-step sampling (Zhou et al., CVPR 2024).

``train(...)`` distils a predictor from a teacher; ``predictor.save(path)`` / ``load(path)`` keep it in a safe
checkpoint; ``fewstep.sample(denoiser, noise, predictor=pred)`` samples with the settings it was trained for.
"""

from .checkpoint import CheckpointError, load, read_config, save
from .features import HookFeatures, find_bottleneck, provides_features
from .predictor import AMEDPredictor, LearnedSchedule
from .train import TrainLog, detach_state, learn_schedule, refine_schedule, steps_for_nfe, student_solver, train

AMEDPredictor.save = save  # predictor.save(path)

__all__ = [
    "train",
    "learn_schedule",
    "LearnedSchedule",
    "load",
    "save",
    "read_config",
    "CheckpointError",
    "AMEDPredictor",
    "HookFeatures",
    "find_bottleneck",
    "provides_features",
    "refine_schedule",
    "student_solver",
    "steps_for_nfe",
    "detach_state",
    "TrainLog",
]
