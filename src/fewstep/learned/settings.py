"""Training settings as frozen, validated objects (the arguments of :func:`fewstep.learned.train`).

Every field that depends on the method defaults to None, meaning the method's measured :class:`Defaults`; the
other defaults live here, once. Each object checks its fields when it is made, so a bad value is a ValueError /
TypeError naming the field before any work starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..denoisers import sigma_range
from ..schedules import get_schedule, validate_sigmas
from ..solvers import SOLVERS, get_solver
from ..teacher import teacher_options
from .guidance import MAX_DEGREE

__all__ = ["Teacher", "Budget", "Objective", "ScheduleSpec", "Checkpointing", "GuidanceScales", "LOSSES",
           "DISTANCES", "SCHEDULE_KINDS"]

LOSSES = ("final", "per_step")
DISTANCES = ("l2", "mse")
SCHEDULE_KINDS = ("polynomial", "logsnr", "time_uniform")


MAX_TEACHER_M = 1_000  # teacher steps inserted per interval (the measured defaults use 1-8)
MAX_BATCH = 2**20  # samples per training batch
MAX_TOTAL_SAMPLES = 2**40  # training samples in all (a count of iterations, no allocation)


def _int(name: str, v: Any, lo: int, none: bool = True, hi: int | None = None) -> None:
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}{' or None' if none else ''}, got {v!r}")
    if hi is not None and v > hi:  # bounded before anything is allocated (fewstep.jsonio holds the limits)
        raise ValueError(f"{name} must be at most {hi}, got {v}")


def _positive(name: str, v: Any, none: bool = True) -> None:
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise ValueError(f"{name} must be a positive finite number{' or None' if none else ''}, got {v!r}")


def _flag(name: str, v: Any, none: bool = False) -> None:
    if not (isinstance(v, bool) or (none and v is None)):
        raise TypeError(f"{name} must be True or False{' or None' if none else ''}, got {v!r}")


@dataclass(frozen=True)
class Teacher:
    """The teacher a sampler is distilled from: ``solver`` with ``options`` (None: DEIS-logrho order 4 for "deis",
    the reference solver of :mod:`fewstep.teacher`) run with ``M`` log-uniform points inserted per interval of the
    student's schedule (AMED, Sec. 3.4; None: the method's default). ``cache``: a directory where the teacher's
    targets are kept between runs (:class:`fewstep.teacher.TeacherCache`; ``fewstep train`` uses
    :func:`fewstep.teacher.default_cache_dir`), keyed by everything that determines them; None: computed anew.
    ``threads``: torch threads while the teacher runs (None: as set; ``fewstep train`` gives it the idle cores:
    the teacher makes no gradients, and its outputs were measured bitwise equal across thread counts)."""

    solver: str = "deis"
    options: dict[str, Any] | None = None
    M: int | None = None
    cache: str | os.PathLike | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"teacher solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"teacher options must be a dict or None, got {type(self.options).__name__}")
        get_solver(self.solver, **teacher_options(self.solver, self.options))  # the solver's own checks
        _int("teacher M", self.M, 0, hi=MAX_TEACHER_M)
        _int("teacher threads", self.threads, 1)
        if self.cache is not None and not isinstance(self.cache, (str, os.PathLike)):
            raise TypeError(f"teacher cache must be a directory path or None, got {type(self.cache).__name__}")

    def cache_store(self) -> Any:
        """The :class:`fewstep.teacher.TeacherCache` at ``cache``, or None."""
        from ..teacher import TeacherCache

        return None if self.cache is None else TeacherCache(self.cache)

    def resolved_options(self) -> dict[str, Any]:
        """The options the teacher runs with."""
        return teacher_options(self.solver, self.options)


@dataclass(frozen=True)
class Budget:
    """How much training: ``batch`` samples per Adam step, ``total_samples`` in all, learning rate ``lr`` (cosine
    decay to 0 with ``lr_decay``); None: the method's measured default. ``seed`` chooses the training noise: batch
    ``it`` uses noise seeds seed * 10**9 + 1 + it * batch ..., never the held-out evaluation seeds of
    :mod:`fewstep.seeds` (800000000 ...)."""

    batch: int | None = None
    total_samples: int | None = None
    lr: float | None = None
    lr_decay: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _int("batch", self.batch, 1, hi=MAX_BATCH)
        _int("total_samples", self.total_samples, 1, hi=MAX_TOTAL_SAMPLES)
        _positive("lr", self.lr)
        _flag("lr_decay", self.lr_decay)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**30:
            raise ValueError(f"seed must be a non-negative int below 2**30, got {self.seed!r}")


@dataclass(frozen=True)
class Objective:
    """What is minimised: ``loss`` "final" (distance at the last point, backpropagated through every step) or
    "per_step" (AMED's Algorithm 1: distance at every t_n, one backward per step; AMED methods only); ``distance``
    "l2" (per-sample L2 norm, the paper's) or "mse". ``soft_start``: LD3's relaxation radius r (the student may start
    within ||delta|| <= r sigma_max sqrt(D) of x_T, found by ``soft_start_steps`` gradient steps per batch)."""

    loss: str = "final"
    distance: str = "l2"
    soft_start: float = 0.0
    soft_start_steps: int = 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        s = self.soft_start
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < math.inf:
            raise ValueError(f"soft_start must be a finite number >= 0, got {s!r}")
        _int("soft_start_steps", self.soft_start_steps, 1, none=False)
        if s and self.loss != "final":
            raise ValueError("soft_start needs loss='final' (the student starts away from the teacher's x_T)")


@dataclass(frozen=True)
class ScheduleSpec:
    """The schedule a sampler is trained on: ``kind`` (polynomial, logsnr, time_uniform) over [sigma_min, sigma_max]
    (None: the model's own range, else 0.002..80) with ``rho``, or the given ``sigmas``. ``learn``: also learn the
    interior sigmas (log-sigma increments, end points fixed, learning rate ``lr``; None: the method's default)."""

    kind: str = "polynomial"
    sigmas: Sequence[float] | torch.Tensor | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float = 7.0
    learn: bool | None = None
    lr: float = 0.05

    def __post_init__(self) -> None:
        if self.sigmas is not None:
            sig = validate_sigmas(self.sigmas, "schedule sigmas")
            object.__setattr__(self, "sigmas", tuple(float(v) for v in sig))
            if self.sigma_min is not None or self.sigma_max is not None:
                raise ValueError("sigma_min / sigma_max do not apply to given sigmas")
        elif self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)} (or give sigmas), got "
                             f"{self.kind!r}")
        _positive("sigma_min", self.sigma_min)
        _positive("sigma_max", self.sigma_max)
        _positive("rho", self.rho, none=False)
        _flag("learn", self.learn, none=True)
        _positive("schedule lr", self.lr, none=False)

    @classmethod
    def of(cls, value: Any) -> "ScheduleSpec":
        """A ScheduleSpec as is; a kind name or a tensor/list of sigmas as the ScheduleSpec with that kind/sigmas."""
        if isinstance(value, ScheduleSpec):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, (torch.Tensor, list, tuple)):
            return cls(sigmas=value)
        raise TypeError(f"schedule must be a ScheduleSpec, a kind name or a list of sigmas, got {type(value).__name__}")

    def first_sigma(self, denoiser: Any) -> float:
        """The schedule's largest sigma (its start), before its length is known."""
        return self.sigmas[0] if self.sigmas is not None else sigma_range(denoiser, self.sigma_min, self.sigma_max)[1]

    def make(self, num_steps: int, denoiser: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the ``num_steps`` initial sigmas, the schedule record stored in the config)."""
        _int("num_steps", num_steps, 2, none=False)
        if self.sigmas is not None:
            sig = torch.tensor(self.sigmas, dtype=torch.float64)
            if sig.numel() != num_steps:
                raise ValueError(f"schedule has {sig.numel()} sigmas but num_steps={num_steps}")
            cfg: dict[str, Any] = {"kind": "tensor", "num_steps": num_steps}
        else:
            lo, hi, _ = sigma_range(denoiser, self.sigma_min, self.sigma_max)
            sig = get_schedule(self.kind, num_steps, lo, hi, self.rho)
            cfg = {"kind": self.kind, "num_steps": num_steps, "sigma_min": lo, "sigma_max": hi, "rho": self.rho}
        return sig, cfg


@dataclass(frozen=True)
class Checkpointing:
    """Where the result goes and how a run survives a kill: the sampler is written to ``out`` (by rank 0 under
    torch.distributed) before the training state at ``state`` is removed, so no failure loses finished work; the state
    is saved every ``every`` iterations (0: only at the end, when ``out`` is given); ``resume`` continues from it to the
    same result, bitwise."""

    out: str | os.PathLike | None = None
    state: str | os.PathLike | None = None
    every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        _int("checkpoint every", self.every, 0, none=False)
        _flag("resume", self.resume)
        if self.every and self.state is None:
            raise ValueError("checkpointing every N iterations needs a state path (Checkpointing(state=...))")
        if self.resume and self.state is None:
            raise ValueError("resume needs a state path (Checkpointing(state=...))")


@dataclass(frozen=True)
class GuidanceScales:
    """Train one guidance-aware sampler over these classifier-free guidance scales (one per batch, in turn): every
    table becomes a degree-``degree`` Legendre polynomial in the scale over [min, max]
    (:mod:`fewstep.learned.guidance`); the denoiser must be a :class:`fewstep.denoisers.Guided`."""

    scales: Sequence[float]
    degree: int = 2

    def __post_init__(self) -> None:
        s = self.scales
        if isinstance(s, (str, bytes)) or not hasattr(s, "__iter__"):
            raise TypeError(f"guidance scales must be a sequence of numbers, got {s!r}")
        ws = list(s)
        if len(ws) < 2 or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)
                              for w in ws) or min(ws) == max(ws):
            raise ValueError(f"guidance scales must hold at least two different finite numbers, got {s!r}")
        object.__setattr__(self, "scales", tuple(float(w) for w in ws))
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or not 1 <= self.degree <= MAX_DEGREE:
            raise ValueError(f"guidance degree must be an int in 1..{MAX_DEGREE}, got {self.degree!r}")


def checked(name: str, value: Any, cls: type, make: Callable[[Any], Any] | None = None) -> Any:
    """``value`` if it is a ``cls``, else ``make(value)`` (a shorthand) or a TypeError naming the argument."""
    if isinstance(value, cls):
        return value
    if make is not None:
        return make(value)
    raise TypeError(f"{name} must be a fewstep.learned.{cls.__name__}, got {type(value).__name__}")
