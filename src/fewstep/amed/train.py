"""Distillation of the AMED predictor from a teacher trajectory (Zhou et al., 2024, Algorithm 1)."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch

from ..denoisers.features import HookFeatures, provides_features
from ..sampling import ModelCall, detach_state, noise_for_seeds
from ..sampling import steps_for_nfe as _steps_for_nfe
from ..scale_basis import check_guidance_scales, guidance_entry, scale_cycle
from ..schedules import refine_schedule, validate_sigmas
from ..solvers import SOLVERS, get_solver
from .predictor import AMEDPredictor, LearnedSchedule, student_solver
from .distill import DISTANCES, LOSSES, TrainLog, distill, frozen, training_setup

__all__ = ["train", "learn_schedule", "steps_for_nfe", "TrainLog", "LOSSES", "DISTANCES",
           "refine_schedule", "student_solver", "detach_state", "distill", "training_setup"]

def steps_for_nfe(student: str, nfe: int, afs: bool = True, **student_options: Any) -> int:
    """Deprecated: use ``fewstep.steps_for_nfe("amed", nfe, afs)`` for the AMED-Solver and
    ``fewstep.steps_for_nfe("amed_plugin", nfe, afs, base=student)`` for the AMED-Plugin. Returns the number of
    sigmas (``num_steps`` of :func:`train`) for ``student`` ("amed" or a plugin base solver)."""
    import warnings

    warnings.warn("fewstep.amed.steps_for_nfe is deprecated; use fewstep.steps_for_nfe('amed' | 'amed_plugin', nfe, "
                  "afs, base=...)", DeprecationWarning, stacklevel=2)
    return student_steps_for_nfe(student, nfe, afs, **student_options)


def student_steps_for_nfe(student: str, nfe: int, afs: bool = True, **student_options: Any) -> int:
    """Number of sigmas for ``student`` ("amed" = AMED-Solver, else the AMED-Plugin's base solver) at ``nfe``."""
    if student == "amed":
        return _steps_for_nfe("amed", nfe, afs)
    return _steps_for_nfe("amed_plugin", nfe, afs, base=student, **student_options)


class _Recorder:
    """Passes predictor calls through and keeps r and c for the progress bar."""

    def __init__(self, predictor: AMEDPredictor) -> None:
        self.predictor, self.uses_features = predictor, predictor.uses_features
        self.r: list[torch.Tensor] = []
        self.c: list[torch.Tensor] = []

    def clear(self) -> None:
        self.r, self.c = [], []

    def __call__(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r, c, a = self.predictor(*args)
        self.r.append(r.detach())
        self.c.append(c.detach())
        return r, c, a


def _resolve_features(denoiser: Callable, features: Any, network: Any) -> tuple[Callable, dict[str, Any]]:
    """(denoiser with features or as is, feature config)."""
    if features in (None, "none"):
        return denoiser, {"source": "none", "module": None, "dim": None}
    if features == "adapter":
        if not provides_features(denoiser):
            raise ValueError("features='adapter' needs a denoiser with denoise_with_features(x, sigma)")
        return denoiser, {"source": "adapter", "module": None, "dim": None}
    if features == "auto" or isinstance(features, str):
        wrapped = HookFeatures(denoiser, network, None if features == "auto" else features)
        return wrapped, {"source": "hook", "module": wrapped.module_name, "dim": None}
    raise ValueError(f"features must be 'none', 'adapter', 'auto' or a module name, got {features!r}")


def train(
    denoiser: Callable,
    *,
    shape: Sequence[int],
    student: str = "amed",
    student_options: dict[str, Any] | None = None,
    teacher: str = "deis",
    teacher_options: dict[str, Any] | None = None,
    num_steps: int = 4,
    M: int = 8,
    schedule: str | torch.Tensor = "polynomial",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    afs: bool = True,
    scale_dir: float = 0.01,
    scale_time: float = 0.0,
    features: Any = "none",
    network: torch.nn.Module | None = None,
    batch: int = 64,
    total_samples: int = 8192,
    lr: float | None = None,
    loss: str = "final",
    distance: str = "l2",
    lr_decay: bool = True,
    learn_schedule: bool = False,
    schedule_lr: float = 0.05,
    seed: int = 0,
    model_id: str | None = None,
    dtype: torch.dtype = torch.float64,
    hidden: int = 128,
    progress: bool = True,
    log: list | None = None,
    state_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    model_dtype: torch.dtype | None = None,
    guidance_scales: Sequence[float] | None = None,
    guidance_degree: int = 2,
) -> AMEDPredictor:
    """Train an AMED predictor for ``student`` ("amed" = AMED-Solver, or a base solver name for AMED-Plugin)
    on a schedule of ``num_steps`` sigmas, by distillation from ``teacher`` run with ``M`` extra steps per
    interval. ``student_options``: the base solver's options and the plugin's own (``c_mode``, see
    :class:`fewstep.solvers.AMEDPlugin`); the checkpoint keeps them. ``loss="per_step"``: L2 distance to the
    teacher at every t_n with one backward per step and
    the student's own (detached) state carried on (Algorithm 1); ``"final"``: distance at the last point with
    backpropagation through all steps. ``distance``: "l2" (per-sample L2 norm, the paper's) or "mse".
    Adam with cosine learning-rate decay (``lr_decay``). ``features``: "none" (predictor-free table), "adapter" (the denoiser's
    ``denoise_with_features``), "auto" (middle block of ``network``) or a module name in ``network``.
    ``learn_schedule``: also learn the interior sigmas of the schedule (log-sigma increments, learning rate
    ``schedule_lr``; end points fixed; final-point loss only); the checkpoint then holds the learned sigmas.
    Defaults (teacher DEIS-logrho order 4 with M=8, final-point loss, lr 0.1 for the table and 0.02 for the
    network) are the best measured on the natural-patch bed; the final-point loss beat Algorithm 1's per-step
    loss there, by far for the plugin on multistep solvers. Deterministic given ``seed``.

    Under ``torch.distributed`` (e.g. ``torchrun``) every rank takes its share of each global batch and the
    gradients are summed across ranks, so the result matches a single process up to rounding. With
    ``state_path`` and ``checkpoint_every`` the full training state is saved every that many iterations
    (atomically); ``resume=True`` continues from it to the same final predictor. With ``out`` the predictor is saved
    there (by rank 0) *before* the training state is removed, so no failure loses finished work. ``dtype`` is the
    dtype of the trajectories, ``model_dtype`` the one the model is called in (default: the model's own).
    ``guidance_scales``: one guidance-aware table for every classifier-free guidance scale in [min, max] (a
    :class:`fewstep.denoisers.Guided` denoiser, ``features="none"``; :mod:`fewstep.scale_basis`).
    Returns the predictor."""
    if student != "amed" and (student not in SOLVERS or student in ("heun", "amed_plugin")):
        allowed = ", ".join(n for n in SOLVERS if n not in ("heun", "amed_plugin"))
        raise ValueError(f"student must be one of {allowed}, got {student!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden!r}")
    student_options = dict(student_options or {})
    base_options = student_options
    if student != "amed":
        # The plugin's own options (c_mode) and the base solver's, each checked by its owner; all are stored in the
        # checkpoint's student options and routed back by student_solver.
        plugin = get_solver("amed_plugin", base=student, **student_options)
        base_options = {k: v for k, v in student_options.items() if k not in type(plugin).options()}
    elif student_options:
        raise ValueError(f"student 'amed' takes no student_options, got {', '.join(sorted(student_options))}")
    sig, sched_cfg, tr = training_setup(
        student, base_options, afs, teacher, teacher_options, num_steps, M,
        schedule, sigma_min, sigma_max, rho, batch, total_samples, lr, loss, distance, lr_decay, learn_schedule,
        schedule_lr, seed, shape)
    scales = check_guidance_scales(guidance_scales, guidance_degree, denoiser)
    if scales is not None and features != "none":
        raise ValueError(f"guidance_scales needs features='none' (a guidance-aware table), got features={features!r}")
    model, feat_cfg = _resolve_features(denoiser, features, network)
    torch.manual_seed(seed)
    if feat_cfg["source"] != "none":
        probe = ModelCall(model, features=True, model_dtype=model_dtype)
        with torch.no_grad():
            probe(noise_for_seeds([seed], tr["shape"], dtype=dtype) * sig[0], sig[0])
        f = probe.features
        feat_cfg["dim"] = int(f.reshape(1, -1).shape[1])
    if tr["lr"] is None:  # measured on the natural-patch bed: the 3-number-per-step table wants a large step
        tr["lr"] = 1e-1 if feat_cfg["source"] == "none" else 2e-2
    config = {
        "version": 1,
        "student": {"solver": "amed" if student == "amed" else "amed_plugin",
                    "base": None if student == "amed" else student, "options": student_options},
        "sigmas": [float(v) for v in sig],
        "schedule": sched_cfg,
        "afs": afs,
        "scale_dir": scale_dir,
        "scale_time": scale_time,
        "features": feat_cfg,
        "architecture": {"hidden": hidden, "emb_dim": 8, "feat_proj": 16},
        "model_id": model_id if model_id is not None else getattr(denoiser, "model_id", None),
        "training": tr,
    }
    if scales is not None:
        tr["guidance_scales"] = scales
        config["guidance"] = guidance_entry(scales, guidance_degree)
    pred = AMEDPredictor(num_steps - 1, feat_cfg["dim"], scale_dir, scale_time, hidden=hidden, config=config).to(dtype)
    sched = LearnedSchedule(sig) if learn_schedule else None
    recorder = _Recorder(pred)
    with frozen(denoiser, network), scale_cycle(denoiser, pred, scales) as before_batch:
        distill(model, student_solver(config, recorder), sig, tr, afs, pred, sched, recorder, dtype,
                f"AMED {student}", progress, log, state_path, checkpoint_every, resume, out, model_dtype,
                before_batch)
    if sched is not None:
        with torch.no_grad():
            pred.config["sigmas"] = [float(v) for v in validate_sigmas(sched(), "learned schedule")]
    return pred.eval()


def learn_schedule(
    denoiser: Callable,
    *,
    shape: Sequence[int],
    solver: str = "ipndm",
    solver_options: dict[str, Any] | None = None,
    nfe: int | None = None,
    num_steps: int | None = None,
    afs: bool = False,
    schedule: str | torch.Tensor = "polynomial",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    teacher: str = "deis",
    teacher_options: dict[str, Any] | None = None,
    M: int = 8,
    batch: int = 64,
    total_samples: int = 8192,
    lr: float = 0.05,
    lr_decay: bool = True,
    distance: str = "l2",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
    log: list | None = None,
    model_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Learn the interior sigmas of a schedule for a plain ``solver`` by the same distillation as :func:`train`
    (final-point loss against ``teacher``, Adam on the log-sigma increments, end points fixed), starting from
    ``schedule``. Give ``nfe`` or ``num_steps``. Returns the learned sigmas (save them with
    :func:`fewstep.schedules.save_schedule`)."""
    options = dict(solver_options or {})
    if (nfe is None) == (num_steps is None):
        raise ValueError("give exactly one of nfe and num_steps")
    if num_steps is None:
        num_steps = _steps_for_nfe(solver, nfe, afs, **options)
    solv = get_solver(solver, **options)
    sig, _, tr = training_setup(solver, options, afs, teacher, teacher_options, num_steps, M, schedule, sigma_min,
                                 sigma_max, rho, batch, total_samples, lr, "final", distance, lr_decay, True, lr,
                                 seed, shape)
    sched = LearnedSchedule(sig)
    with frozen(denoiser):
        distill(denoiser, solv, sig, tr, afs, None, sched, None, dtype, f"schedule {solver}", progress, log, None, 0, False,
             None, model_dtype)
    with torch.no_grad():
        return validate_sigmas(sched(), "learned schedule")


