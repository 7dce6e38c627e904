"""One entry point to train any learned sampler by distillation (:func:`fewstep.learned.distill.distill`), and the
schedule learner for plain solvers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..sampling import ModelCall, count_nfe, seeded_noise, steps_for_nfe
from ..schedules import validate_sigmas
from ..solvers import get_solver
from ..teacher import model_key
from .cost import cost_line, measure_cost
from .distill import LearnedSchedule, Plan, TrainLog, distill, frozen
from .guidance import conditioning_of, guidance_entry, scale_cycle
from .registry import method_class
from .sampler import LearnedSampler
from .trainstate import world
from .settings import Budget, Checkpointing, GuidanceScales, Objective, ScheduleSpec, Teacher, checked

__all__ = ["train", "learn_schedule", "TrainedSchedule"]


def _shape(shape: Any) -> tuple[int, ...]:
    from ..jsonio import check_shape

    return check_shape(tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape)


def _num_steps(nfe: int | None, num_steps: int | None, solver: Any, afs: bool, method: str | None = None,
               schedule: ScheduleSpec | None = None) -> int:
    """Sigmas of the schedule from ``nfe`` (default 5) or ``num_steps``, not both; with given sigmas, their count
    (an ``nfe`` they do not cost with this method's solver is refused, naming the method and what they cost)."""
    if nfe is not None and num_steps is not None:
        raise ValueError("give nfe or num_steps, not both")
    if num_steps is not None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        return num_steps
    who = f"{method} (solver {solver.name})" if method is not None and method != solver.name else \
        (method or solver.name)
    if schedule is not None and schedule.sigmas is not None:  # given sigmas: their count, at the NFE they cost
        n = len(schedule.sigmas)
        cost = count_nfe(solver, n, afs)
        if nfe is not None and cost != nfe:
            raise ValueError(f"the schedule has {n} sigmas: {cost} model evaluations with {who}"
                             f"{' and AFS' if afs else ''}, not nfe={nfe} (--nfe); give a schedule of "
                             f"{_sigmas_for(solver, nfe, afs)} or leave nfe out")
        return n
    try:
        return steps_for_nfe(solver, 5 if nfe is None else nfe, afs)
    except ValueError as e:
        raise ValueError(str(e).replace(f"solver {solver.name!r}", who, 1)) from None


def _sigmas_for(solver: Any, nfe: int, afs: bool) -> str:
    try:
        return f"{steps_for_nfe(solver, nfe, afs)} sigmas"
    except ValueError:
        return "another length (this NFE is not reachable)"


def _guidance(guidance: Any, denoiser: Any) -> GuidanceScales | None:
    if guidance is None:
        return None
    g = checked("guidance", guidance, GuidanceScales, lambda v: GuidanceScales(v))
    w0 = getattr(denoiser, "scale", None)
    if isinstance(w0, bool) or not isinstance(w0, (int, float)):
        raise TypeError("guidance scales need a denoiser whose guidance scale can be set per batch: wrap the "
                        "conditional model in fewstep.denoisers.Guided(model, labels, scale)")
    return g


def _conditioning(denoiser: Any, scales: GuidanceScales | None) -> dict[str, Any] | None:
    """The guidance scale and class labels the sampler is trained under (recorded in the checkpoint and the resume
    fingerprint; sampling under others is refused). A guidance-aware sampler records its labels only: its scales
    are the config's ``guidance`` range."""
    cond = conditioning_of(denoiser)
    if cond is not None and scales is not None:
        cond["guidance"] = None
    return cond


def train(
    method: str,
    denoiser: Callable,
    *,
    shape: Sequence[int],
    nfe: int | None = None,
    num_steps: int | None = None,
    afs: bool = True,
    options: dict[str, Any] | None = None,
    base: str | dict[str, Any] | None = None,
    schedule: ScheduleSpec | str | Any = ScheduleSpec(),
    teacher: Teacher = Teacher(),
    budget: Budget = Budget(),
    objective: Objective = Objective(),
    time_shift: bool | None = None,
    guidance: GuidanceScales | Sequence[float] | None = None,
    checkpoint: Checkpointing = Checkpointing(),
    model_id: str | None = None,
    dtype: torch.dtype = torch.float64,
    model_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> LearnedSampler:
    """Train learned sampler ``method`` (a name in :data:`fewstep.learned.METHODS`: amed, plugin, dyweight, epd, pas,
    gs) for ``denoiser`` on samples of ``shape`` by distillation from ``teacher`` (final-point loss, Adam with cosine
    decay; the one trainer :func:`fewstep.learned.distill.distill`) and return it: ``sampler.save(path)``,
    :func:`fewstep.learned.load`, ``fewstep.sample(denoiser, noise, predictor=sampler)``.

    ``nfe`` counts model evaluations (AFS deducted; EPD's K parallel evaluations count K; default 5), or give
    ``num_steps`` (sigmas). ``options``: the method's own (its ``OPTIONS``, e.g. ``{"window": 3}`` for dyweight,
    ``{"features": "auto"}`` for amed); ``base``: the base solver of methods built on one the user picks (plugin:
    a solver name or ``{"solver": name, "options": {...}}``). ``time_shift``: also learn per-step model-input time
    shifts xi_n (None: the method's default). ``guidance``: train one guidance-aware sampler over these
    classifier-free guidance scales (:class:`GuidanceScales`; ``denoiser`` a :class:`fewstep.denoisers.Guided`).
    Settings objects (:mod:`fewstep.learned.settings`): ``schedule`` (kind, sigma range, learned or not),
    ``teacher`` (solver, M), ``budget`` (batch, samples, lr, seed), ``objective`` (loss, distance, LD3 soft start),
    ``checkpoint`` (out, training state, resume); None fields take the method's measured :class:`Defaults`.
    ``teacher.cache``: keep the teacher's targets in that directory and reuse them (bitwise the same training).
    ``dtype`` is the trajectories' dtype, ``model_dtype`` the one the model is called in (default: its own).
    Under ``torch.distributed`` every rank takes its share of each global batch (gradients summed), so the result
    matches one process up to rounding. Deterministic given ``budget.seed``. The training log (losses, seconds) is
    ``sampler.log``."""
    cls = method_class(method)
    schedule = ScheduleSpec.of(schedule)
    teacher = checked("teacher", teacher, Teacher)
    budget = checked("budget", budget, Budget)
    objective = checked("objective", objective, Objective)
    checkpoint = checked("checkpoint", checkpoint, Checkpointing)
    shape = _shape(shape)
    for name, v in (("afs", afs), ("progress", progress)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False, got {v!r}")
    if time_shift is not None and not isinstance(time_shift, bool):
        raise TypeError(f"time_shift must be True, False or None, got {time_shift!r}")
    if objective.loss not in cls.LOSSES:
        raise ValueError(f"method {method!r} trains with loss {' or '.join(map(repr, cls.LOSSES))}, got "
                         f"{objective.loss!r}")
    scales = _guidance(guidance, denoiser)
    if scales is not None and (options or {}).get("features", "none") != "none":
        raise ValueError("guidance must be null for a feature-based predictor: a guidance-aware sampler is a table "
                         "(options features 'none')")
    d = cls.DEFAULTS
    learn = d.learn_schedule if schedule.learn is None else schedule.learn
    if learn and objective.loss != "final":
        raise ValueError("learning the schedule needs loss='final' (per-step targets move with the schedule)")
    torch.manual_seed(budget.seed)

    def probe(model: Callable) -> torch.Tensor | None:
        """The features of one model evaluation at the schedule's start (a feature network's input size)."""
        call = ModelCall(model, features=True, model_dtype=model_dtype)
        s0 = torch.tensor(schedule.first_sigma(denoiser), dtype=torch.float64)
        with torch.no_grad():
            call(seeded_noise(model, [budget.seed], shape, dtype=dtype) * s0, s0)
        return call.features

    model, options = cls.for_training(denoiser, options, probe, shape)
    options = cls.check_options(options)
    n = _num_steps(nfe, num_steps, cls.probe_solver(options, base, afs), afs, cls.method, schedule)
    sig, sched_cfg = schedule.make(n, denoiser)
    if learn:
        sched_cfg = {"kind": "learned", "num_steps": n, "init": sched_cfg, "init_sigmas": [float(v) for v in sig]}
    plan = Plan(shape=shape, teacher=teacher.solver, teacher_options=teacher.resolved_options(),
                M=d.M if teacher.M is None else teacher.M, batch=d.batch if budget.batch is None else budget.batch,
                total_samples=d.total_samples if budget.total_samples is None else budget.total_samples,
                lr=cls.default_lr(options) if budget.lr is None else budget.lr, lr_decay=budget.lr_decay,
                loss=objective.loss, distance=objective.distance, seed=budget.seed, afs=afs, learn_schedule=learn,
                schedule_lr=schedule.lr, soft_start=objective.soft_start, soft_start_steps=objective.soft_start_steps,
                guidance_scales=None if scales is None else scales.scales, conditioning=_conditioning(denoiser, scales),
                dtype=dtype, model_dtype=model_dtype, desc=method, progress=progress, checkpoint=checkpoint,
                cache=teacher.cache_store(), model_key=model_key(denoiser, model_id), teacher_threads=teacher.threads)
    config = cls.make_config(sig, afs=afs, options=options, base=base,
                             time_shift=d.time_shift if time_shift is None else time_shift, schedule=sched_cfg,
                             model_id=model_id if model_id is not None else getattr(denoiser, "model_id", None),
                             training=plan.record(),
                             guidance=None if scales is None else guidance_entry(scales.scales, scales.degree))
    torch.manual_seed(budget.seed)
    sampler = cls(config)
    if cls.PARAM_DTYPE is None:
        sampler.to(dtype)
    sched = LearnedSchedule(sig) if learn else None
    if progress and world()[0] == 0:  # what the operator costs per step, before the minutes of training
        if scales is not None:  # a guidance-aware sampler's tables exist at a scale (any: the cost is the same)
            sampler.guidance_scale = scales.scales[0]
        try:
            sampler.cost_measured = measure_cost(sampler, denoiser, shape, plan.batch, dtype, model_dtype)
        finally:
            if scales is not None:
                sampler.guidance_scale = None
        if sampler.cost_measured is not None:
            print(cost_line(method, sampler.cost_measured), flush=True)
    with frozen(denoiser), scale_cycle(denoiser, sampler, None if scales is None else list(scales.scales)) as hook:
        sampler.log = distill(model, sampler.solver(), sig, plan, sampler, sched, hook)
    return sampler.eval()


@dataclass(frozen=True)
class TrainedSchedule:
    """What :func:`learn_schedule` found: the sigmas and the training log."""

    sigmas: torch.Tensor
    log: TrainLog


def learn_schedule(
    denoiser: Callable,
    *,
    shape: Sequence[int],
    solver: str = "ipndm",
    solver_options: dict[str, Any] | None = None,
    nfe: int | None = None,
    num_steps: int | None = None,
    afs: bool = False,
    schedule: ScheduleSpec | str | Any = ScheduleSpec(),
    teacher: Teacher = Teacher(),
    budget: Budget = Budget(lr=0.05),
    objective: Objective = Objective(),
    dtype: torch.dtype = torch.float64,
    model_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> TrainedSchedule:
    """Learn the interior sigmas of a schedule for a plain ``solver`` by the same distillation as :func:`train`
    (final-point loss against ``teacher``, Adam on the log-sigma increments with learning rate ``budget.lr``, end
    points fixed), starting from ``schedule``. Give ``nfe`` or ``num_steps``. Save the sigmas with
    :func:`fewstep.schedules.save_schedule`."""
    options = dict(solver_options or {})
    if (nfe is None) == (num_steps is None):
        raise ValueError("give exactly one of nfe and num_steps")
    schedule = ScheduleSpec.of(schedule)
    teacher, budget = checked("teacher", teacher, Teacher), checked("budget", budget, Budget)
    objective = checked("objective", objective, Objective)
    if objective.loss != "final" or objective.soft_start:
        raise ValueError("a schedule is learned with the final-point loss and no soft start")
    solv = get_solver(solver, **options)
    n = _num_steps(nfe, num_steps, solv, afs, schedule=schedule)
    sig, _ = schedule.make(n, denoiser)
    lr = 0.05 if budget.lr is None else budget.lr
    plan = Plan(shape=_shape(shape), teacher=teacher.solver, teacher_options=teacher.resolved_options(),
                M=8 if teacher.M is None else teacher.M, batch=budget.batch or 64,
                total_samples=budget.total_samples or 8192, lr=lr, lr_decay=budget.lr_decay, loss="final",
                distance=objective.distance, seed=budget.seed, afs=afs, learn_schedule=True, schedule_lr=lr,
                dtype=dtype, model_dtype=model_dtype, desc=f"schedule {solver}", progress=progress,
                cache=teacher.cache_store(), model_key=model_key(denoiser), teacher_threads=teacher.threads)
    sched = LearnedSchedule(sig)
    with frozen(denoiser):
        log = distill(denoiser, solv, sig, plan, None, sched)
    with torch.no_grad():
        return TrainedSchedule(validate_sigmas(sched(), "learned schedule"), log)
