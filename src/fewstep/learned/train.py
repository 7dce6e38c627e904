"""One entry point to train any learned sampler by distillation (:func:`fewstep.amed.distill.distill`)."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import torch

from .. import amed
from ..amed.distill import distill, frozen, training_setup
from ..amed.predictor import LearnedSchedule
from ..scale_basis import check_guidance_scales, guidance_entry, scale_cycle
from ..schedules import validate_sigmas
from .base import METHODS, LearnedSampler

__all__ = ["train", "steps_for_nfe", "TRAINABLE", "DEFAULT_LR", "DEFAULT_BUDGET"]

TRAINABLE = ("amed", "plugin", *METHODS)
# Measured on the natural-patch GMM bed at NFE 5 (docs in the report): Adam with cosine decay.
DEFAULT_LR = {"dyweight": 0.02, "epd": 0.05, "pas": 0.02, "gs": 0.01}
# Training budget per method (batch, total_samples, M) where it differs from AMED's 64 / 8192 / 8. DyWeight: batch 16
# (as in the paper), 4096 samples, M = 4, learned schedule: on the natural-patch bed RMSE 0.0169 @5 / 0.0071 @9
# against 0.0175 / 0.0077 with 64 / 8192 / 8 at about 0.5x / 0.7x the CPU time (31 s / 57 s of one core).
DEFAULT_BUDGET = {"dyweight": {"batch": 16, "total_samples": 4096, "M": 4}}
FALLBACK_BUDGET = {"batch": 64, "total_samples": 8192, "M": 8}


def steps_for_nfe(method: str, nfe: int, afs: bool = True, options: dict[str, Any] | None = None) -> int:
    """Number of sigmas at which ``method`` makes exactly ``nfe`` model evaluations (AFS deducted)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    cls = METHODS[method]
    probe = cls(cls.make_config([80.0, 0.002], afs=afs, options=options))
    solver = probe.make_solver()
    costs = []
    for n in range(2, nfe + 4):
        k = solver.nfe(n) - int(afs)
        if k == nfe:
            return n
        costs.append(k)
    raise ValueError(f"{method} with options {probe.options} cannot make exactly {nfe} model evaluations with "
                     f"afs={afs}; it can make {', '.join(str(c) for c in costs if c > 0)}")


def train(
    method: str,
    denoiser: Callable,
    *,
    shape: Sequence[int],
    nfe: int | None = None,
    num_steps: int | None = None,
    afs: bool = True,
    base: str = "ipndm",
    options: dict[str, Any] | None = None,
    schedule: str | torch.Tensor = "polynomial",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    teacher: str = "deis",
    teacher_options: dict[str, Any] | None = None,
    M: int | None = None,
    batch: int | None = None,
    total_samples: int | None = None,
    lr: float | None = None,
    lr_decay: bool = True,
    distance: str = "l2",
    seed: int = 0,
    soft_start: float = 0.0,
    soft_start_steps: int = 1,
    time_shift: bool | None = None,
    learn_schedule: bool | None = None,
    schedule_lr: float = 0.05,
    model_id: str | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = True,
    log: list | None = None,
    state_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    model_dtype: torch.dtype | None = None,
    guidance_scales: Sequence[float] | None = None,
    guidance_degree: int = 2,
    **amed_options: Any,
) -> Any:
    """Train learned sampler ``method`` by distillation from ``teacher`` (final-point loss, Adam with cosine decay;
    the one trainer :func:`fewstep.amed.distill.distill`) and return it (``save(path)``; load with
    :func:`fewstep.learned.load`; sample with ``fewstep.sample(denoiser, noise, predictor=p)``).

    ``method``: "dyweight" (learned multistep, ``options={"window": 1..4}``), "epd" (``options={"K": 1..8}``),
    "pas" (PCA-basis correction of iPNDM, ``options={"order": 1..4, "coords": 1..4}``), "gs" (generalised
    DPM-Solver++(3M), ``options={"order": 1..3}``; time shifts and a learned schedule by default), "amed"
    (AMED-Solver) or "plugin" (AMED-Plugin on ``base``); the last two call :func:`fewstep.amed.train`
    (``amed_options`` go there). ``nfe`` counts model evaluations (AFS deducted; EPD's K parallel evaluations count
    K); or give ``num_steps`` (sigmas). ``time_shift``: also learn per-step model-input time shifts xi_n
    (zero-initialised; None: the method's default, on for gs only). ``soft_start``: LD3's relaxation radius r (the
    student starts within ||delta|| <= r sigma_max sqrt(D) of x_T; :func:`fewstep.amed.distill.soft_start_delta`,
    ``soft_start_steps`` gradient steps per batch). ``learn_schedule``: learn the interior sigmas jointly (AMED's
    LearnedSchedule; None: the method's default, on for gs and dyweight). ``M`` / ``batch`` / ``total_samples``:
    None takes the method's budget (:data:`DEFAULT_BUDGET`; otherwise 8 / 64 / 8192). ``guidance_scales``: train
    one guidance-aware sampler over these classifier-free guidance scales (``denoiser`` a
    :class:`fewstep.denoisers.Guided`; batch ``it`` uses scale ``guidance_scales[it % len]``): every table becomes
    a degree-``guidance_degree`` polynomial in the scale over [min, max] (:mod:`fewstep.scale_basis`), and the
    sampler then works at any scale in that range, read from the denoiser at sampling time."""
    if method not in TRAINABLE:
        raise ValueError(f"method must be one of {', '.join(TRAINABLE)}, got {method!r}")
    cls_default = METHODS.get(method)
    budget = {**FALLBACK_BUDGET, **DEFAULT_BUDGET.get(method, {})}
    M = budget["M"] if M is None else M
    batch = budget["batch"] if batch is None else batch
    total_samples = budget["total_samples"] if total_samples is None else total_samples
    if time_shift is None:
        time_shift = bool(cls_default is not None and cls_default.time_shift_by_default)
    if learn_schedule is None:
        learn_schedule = bool(cls_default is not None and cls_default.learns_schedule_by_default)
    for name, v in (("time_shift", time_shift), ("learn_schedule", learn_schedule), ("afs", afs)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {v!r}")
    if isinstance(soft_start, bool) or not isinstance(soft_start, (int, float)) or not 0 <= soft_start < math.inf:
        raise ValueError(f"soft_start must be a finite number >= 0, got {soft_start!r}")
    if isinstance(soft_start_steps, bool) or not isinstance(soft_start_steps, int) or soft_start_steps < 1:
        raise ValueError(f"soft_start_steps must be a positive int, got {soft_start_steps!r}")
    if (nfe is None) == (num_steps is None) and not (nfe is None and num_steps is None):
        raise ValueError("give nfe or num_steps, not both")
    if nfe is None and num_steps is None:
        nfe = 5
    if method in ("amed", "plugin"):
        if time_shift or soft_start:
            raise ValueError(f"time_shift and soft_start are not available for method {method!r} yet (its AMED "
                             "checkpoint has no place for them); use dyweight or epd")
        if options:
            raise ValueError(f"method {method!r} takes no options; pass AMED's own keywords (scale_dir, ...)")
        student = "amed" if method == "amed" else base
        if num_steps is None:
            num_steps = amed.student_steps_for_nfe(student, nfe, afs)
        return amed.train(denoiser, shape=shape, student=student, teacher=teacher, teacher_options=teacher_options,
                          num_steps=num_steps, M=M, schedule=schedule, sigma_min=sigma_min, sigma_max=sigma_max,
                          rho=rho, afs=afs, batch=batch, total_samples=total_samples, lr=lr, distance=distance,
                          lr_decay=lr_decay, learn_schedule=learn_schedule, schedule_lr=schedule_lr, seed=seed,
                          model_id=model_id, dtype=dtype, progress=progress, log=log, state_path=state_path,
                          checkpoint_every=checkpoint_every, resume=resume, out=out, model_dtype=model_dtype,
                          guidance_scales=guidance_scales, guidance_degree=guidance_degree, **amed_options)
    scales = check_guidance_scales(guidance_scales, guidance_degree, denoiser)
    if amed_options:
        raise TypeError(f"unknown argument(s) for method {method!r}: {', '.join(sorted(amed_options))}")
    cls: type[LearnedSampler] = METHODS[method]
    if num_steps is None:
        num_steps = steps_for_nfe(method, nfe, afs, options)
    base_cfg = cls.base_solver_config({**{k: v[0] for k, v in cls.OPTIONS.items()}, **(options or {})})
    val_solver = base_cfg["solver"] if base_cfg["solver"] != "amed" else "dpm2"
    sig, sched_cfg, tr = training_setup(
        val_solver, base_cfg["options"], afs, teacher, teacher_options, num_steps, M, schedule, sigma_min, sigma_max,
        rho, batch, total_samples, lr, "final", distance, lr_decay, learn_schedule, schedule_lr, seed, shape)
    if tr["lr"] is None:
        tr["lr"] = DEFAULT_LR[method]
    tr.update({"soft_start": float(soft_start), "soft_start_steps": soft_start_steps})
    if scales is not None:
        tr["guidance_scales"] = scales
    config = cls.make_config(sig, afs=afs, options=options, time_shift=time_shift, schedule=sched_cfg,
                             model_id=model_id if model_id is not None else getattr(denoiser, "model_id", None),
                             training=tr, guidance=guidance_entry(scales, guidance_degree))
    torch.manual_seed(seed)
    sampler = cls(config)  # float64 parameters whatever the trajectory dtype (0-dim: they do not promote x)
    sched = LearnedSchedule(sig) if learn_schedule else None
    with frozen(denoiser), scale_cycle(denoiser, sampler, scales) as before_batch:
        distill(denoiser, sampler.solver(), sig, tr, afs, sampler, sched, None, dtype, f"{method}", progress, log,
                state_path, checkpoint_every, resume, out, model_dtype, before_batch)
    if sched is not None:
        with torch.no_grad():
            sampler.config["sigmas"] = [float(v) for v in validate_sigmas(sched(), "learned schedule")]
    return sampler.eval()
