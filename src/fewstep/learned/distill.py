"""The one distillation trainer of learned samplers (Zhou et al., 2024, Algorithm 1, with a final-point loss by
default): the teacher's solution on a refined schedule is the target, the student runs through the sampling loop
:func:`fewstep.sampling.iterate` with gradients, Adam updates its parameters (and optionally the schedule)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..sampling import ModelCall, NonFiniteError, Solution, count_nfe, iterate, seeded_noise
from ..schedules import validate_sigmas
from ..seeds import training_seeds
from ..solvers import Solver
from ..teacher import TeacherCache, log_cache, provenance, run_teacher, say_once
from .settings import Checkpointing
from .trainstate import TrainState, world

__all__ = ["distill", "Plan", "TrainLog", "LearnedSchedule", "soft_start_delta", "frozen"]


@dataclass
class TrainLog:
    """What a training run did: the loss of every iteration (the mean per-sample distance), wall and CPU seconds of
    this process, and the teacher's model evaluations per training sample."""

    losses: list[float]
    seconds: float
    teacher_nfe_per_sample: int
    cpu_seconds: float = 0.0
    restored: tuple[int, float, float] | None = None  # (iteration, its window loss, the last window's): see distill


@dataclass(frozen=True)
class Plan:
    """Everything a distillation run needs besides the model, the solver and the parameters, resolved (no None left
    for a method default). :meth:`record` is what the checkpoint stores under ``training`` and what a resumed run
    must match."""

    shape: tuple[int, ...]
    teacher: str
    teacher_options: dict[str, Any]
    M: int
    batch: int
    total_samples: int
    lr: float | None
    lr_decay: bool
    loss: str
    distance: str
    seed: int
    afs: bool
    learn_schedule: bool = False
    schedule_lr: float | None = None
    soft_start: float = 0.0
    soft_start_steps: int = 1
    guidance_scales: tuple[float, ...] | None = None
    conditioning: dict[str, Any] | None = None  # guidance scale and class labels (guidance.conditioning_of)
    dtype: torch.dtype = torch.float64
    model_dtype: torch.dtype | None = None
    desc: str = "train"
    progress: bool = True
    checkpoint: Checkpointing = field(default_factory=Checkpointing)
    cache: TeacherCache | None = None
    model_key: dict[str, Any] | None = None
    teacher_threads: int | None = None

    def record(self) -> dict[str, Any]:
        """The training settings as JSON (the checkpoint's ``training``)."""
        rec = {"teacher": self.teacher, "teacher_options": dict(self.teacher_options), "M": self.M,
               "batch": self.batch, "total_samples": self.total_samples, "lr": self.lr, "lr_decay": self.lr_decay,
               "loss": self.loss, "distance": self.distance, "learn_schedule": self.learn_schedule,
               "schedule_lr": self.schedule_lr if self.learn_schedule else None, "seed": self.seed,
               "shape": list(self.shape), "soft_start": float(self.soft_start),
               "soft_start_steps": self.soft_start_steps}
        if self.guidance_scales is not None:
            rec["guidance_scales"] = list(self.guidance_scales)
        if self.conditioning is not None:
            rec["conditioning"] = dict(self.conditioning)
        return rec


class LearnedSchedule(nn.Module):
    """A schedule with fixed end points whose log-sigma increments are a softmax of learnable logits:
    log sigma_k = log sigma_max - (sum_{j<k} softmax(z)_j) (log sigma_max - log sigma_min). Always strictly
    decreasing; initialised to reproduce ``init`` exactly (up to rounding)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        init = torch.as_tensor(init, dtype=torch.float64)
        logs = init.log()
        self.register_buffer("ends", init[[0, -1]].clone())
        self.logits = nn.Parameter((logs[:-1] - logs[1:]).log())

    def forward(self) -> torch.Tensor:
        lo_max, lo_min = self.ends.log()
        frac = torch.softmax(self.logits.to(torch.float64), 0).cumsum(0)[:-1]
        inner = (lo_max - frac * (lo_max - lo_min)).exp()
        return torch.cat([self.ends[:1], inner, self.ends[1:]])


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Gradients of the model's own parameters off while the sampler trains, restored afterwards."""
    seen: list[tuple[torch.nn.Parameter, bool]] = []
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for p in m.parameters():
                seen.append((p, p.requires_grad))
                p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in seen:
            p.requires_grad_(flag)


def _final_distance(x: torch.Tensor, target: torch.Tensor, distance: str) -> torch.Tensor:
    """Per-sample distance of the final point (l2 norm or mean square), shape (B,)."""
    diff = (x - target).flatten(1)
    return diff.norm(dim=1) if distance == "l2" else diff.square().mean(1)


def soft_start_delta(model: Callable, solver: Solver, afs: bool, x_start: torch.Tensor, sig: torch.Tensor,
                     target: torch.Tensor, radius: float, steps: int, distance: str,
                     model_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LD3's relaxation (Tong et al., 2025): the start offset delta, ||delta_b|| <= radius * sigma_max * sqrt(D) per
    sample, that lowers the student's final distance to the teacher, found inside the batch by ``steps`` normalised
    gradient steps from 0 (each of length radius * sigma_max * sqrt(D) / steps, projected onto the ball), with the
    student's parameters fixed (gradients w.r.t. delta only). Returned detached: the parameter update then uses
    the student run from x_T + delta (a min over the ball, approximated)."""
    flat = x_start[0].numel()
    bound = radius * float(sig[0]) * flat ** 0.5
    delta = torch.zeros_like(x_start)
    shape = (-1,) + (1,) * (x_start.ndim - 1)
    for _ in range(steps):
        delta.requires_grad_(True)
        call = ModelCall(model, afs=afs, model_dtype=model_dtype)
        x = None
        for st in iterate(call, solver, x_start.detach() + delta, sig):
            x = st.x
        loss = _final_distance(x, target, distance).sum()
        (g,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(shape)
            delta = delta.detach() - (bound / steps) * g / gn
            dn = delta.flatten(1).norm(dim=1).reshape(shape)
            delta = delta * torch.clamp(bound / dn.clamp_min(1e-300), max=1.0)
    return delta.detach()


def _cache_fields(plan: Plan, sig0: torch.Tensor, iters: int, rank: int, world_size: int,
                  per_step: bool) -> dict[str, Any] | None:
    """Everything that determines this process's teacher targets, as JSON (the cache key), or None when the model
    has no id (said once)."""
    if plan.model_key is None:
        say_once("teacher cache: the denoiser has no model_id, so its teacher targets are not cached (give "
                 "fewstep.learned.train a model_id that identifies the weights)")
        return None
    seeds = hashlib.sha256()
    for it in range(iters):
        seeds.update(",".join(map(str, training_seeds(plan.seed, it, plan.batch)[rank::world_size])).encode() + b";")
    return {**provenance(), "model": plan.model_key, "shape": list(plan.shape),
            "dtype": str(plan.dtype), "model_dtype": str(plan.model_dtype), "teacher": plan.teacher,
            "teacher_options": plan.teacher_options, "M": plan.M, "sigmas": [float(v).hex() for v in sig0.tolist()],
            "seeds": seeds.hexdigest(), "iterations": iters, "batch": plan.batch, "shard": [rank, world_size],
            "trajectory": per_step, "guidance_scales": None if plan.guidance_scales is None else
            list(plan.guidance_scales)}


def _cached_targets(plan: Plan, sig0: torch.Tensor, iters: int, rank: int, world_size: int,
                    per_step: bool) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """(the cache key's fields or None: no caching, the cached targets or None: compute them)."""
    if plan.cache is None:
        return None, None
    try:
        fields = _cache_fields(plan, sig0, iters, rank, world_size, per_step)
        if fields is not None:
            plan.cache.key(fields)
    except (TypeError, ValueError):
        say_once("teacher cache: the teacher settings are not plain JSON; not caching")
        fields = None
    if fields is None:
        return None, None
    local = len(training_seeds(plan.seed, 0, plan.batch)[rank::world_size])
    if plan.cache.expected_bytes(iters * local, plan.shape, plan.dtype, len(sig0) if per_step else 0) > \
            plan.cache.max_bytes:
        say_once(f"teacher cache: {iters * local} teacher targets of shape {plan.shape} exceed the "
                 f"{plan.cache.max_bytes / 2**30:.0f} GiB limit of one entry; not caching")
        return None, None
    expect = {"x": (iters, local, *plan.shape), "nfe": ()}
    if per_step:
        expect["trajectory"] = (iters, len(sig0), local, *plan.shape)
    found = plan.cache.load(fields, expect)
    if plan.progress and rank == 0:
        log_cache(f"teacher targets: {'read from' if found else 'computing; they will be cached in'} "
                  f"{plan.cache.path(fields) if found else plan.cache.directory}")
    return fields, found


class _DivergenceGuard:
    """Keeps the parameters at the best moving-window training loss; if the last window's loss ends above
    ``FACTOR`` times that best (the run diverged: e.g. a learned schedule drifting into a region the method cannot
    follow), :meth:`finish` restores them and says so in the log. A run that does not diverge is untouched (bitwise).
    The window is 1/16 of the run (at least 8 iterations); a resumed run starts the watch at its resume point."""

    FACTOR = 1.5

    def __init__(self, params: list[torch.Tensor], iters: int) -> None:
        self.params, self.window = params, max(8, iters // 16)
        self.best: tuple[float, int, list[torch.Tensor]] | None = None

    def _mean(self, losses: list[float]) -> float:
        return sum(losses[-self.window:]) / min(self.window, len(losses))

    def update(self, losses: list[float], it: int) -> None:
        if len(losses) < self.window:
            return
        m = self._mean(losses)
        if self.best is None or m < self.best[0]:
            self.best = (m, it, [p.detach().clone() for p in self.params])

    def finish(self, losses: list[float]) -> tuple[int, float, float] | None:
        if self.best is None or len(losses) < self.window or self._mean(losses) <= self.FACTOR * self.best[0]:
            return None
        with torch.no_grad():
            for p, v in zip(self.params, self.best[2]):
                p.copy_(v)
        return self.best[1], self.best[0], self._mean(losses)


def distill(model: Callable, solver: Solver, sig0: torch.Tensor, plan: Plan, sampler: Any = None,
            sched: LearnedSchedule | None = None, before_batch: Callable[[int], None] | None = None) -> TrainLog:
    """The distillation loop of every learned sampler: per batch the teacher runs once
    (:func:`fewstep.teacher.run_teacher`), the student ``solver`` runs through :func:`fewstep.sampling.iterate` (the
    loop that samples) with gradients, and Adam updates ``sampler`` (a :class:`fewstep.learned.LearnedSampler`, whose
    ``config`` fingerprints the run) and/or the learned schedule ``sched``. Data-parallel under torch.distributed (each
    rank takes its share of every global batch, gradients summed); ``plan.checkpoint`` makes it resumable and
    writes the sampler before the training state is removed. ``before_batch(it)`` runs at the start of iteration
    ``it``, before the teacher (e.g. to set that batch's guidance scale: a function of ``it`` only, so resumed and
    data-parallel runs see the same scales)."""
    rank, world_size = world()
    if plan.batch < world_size:
        raise ValueError(f"batch {plan.batch} is smaller than the {world_size} processes; every process needs at "
                         "least one sample of each batch")
    ck = plan.checkpoint
    groups = []
    if sampler is not None:
        groups.append({"params": list(sampler.parameters()), "lr": plan.lr})
    if sched is not None:
        groups.append({"params": list(sched.parameters()), "lr": plan.schedule_lr})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.Adam(groups)
    iters = math.ceil(plan.total_samples / plan.batch)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters) if plan.lr_decay else None
    per_step = plan.loss == "per_step"
    num_steps = len(sig0)
    state = TrainState(ck.state, ck.every, sampler.config if sampler is not None else plan.record(),
                       [m for m in (sampler, sched) if m is not None], opt, lr_sched)
    losses: list[float] = []
    if not ck.resume and ck.state is not None and Path(ck.state).exists():  # an interrupted run: never restart it
        raise ValueError(f"a training state exists at {ck.state} (an interrupted run); pass --resume (resume=True) "
                         "to continue it, or remove the file to start over")
    start = state.load(losses) if ck.resume else 0
    t0, c0 = time.perf_counter(), time.process_time()
    want_features = sampler is not None and sampler.uses_features
    fields, cached = _cached_targets(plan, sig0, iters, rank, world_size, per_step)
    bar = tqdm(range(start, iters), desc=f"{plan.desc} NFE {count_nfe(solver, num_steps, plan.afs)}",
               disable=not plan.progress or rank != 0)
    teacher_nfe = 0
    guard = _DivergenceGuard(params, iters)
    computed: list[Solution] | None = [] if fields is not None and cached is None and start == 0 else None
    for it in bar:
        seeds = training_seeds(plan.seed, it, plan.batch)
        noise = seeded_noise(model, seeds[rank::world_size], plan.shape, dtype=plan.dtype)
        if before_batch is not None:
            before_batch(it)
        if cached is not None:  # the targets an earlier run computed for exactly this batch
            teach = Solution(cached["x"][it], int(cached["nfe"]), sig0,
                             cached["trajectory"][it] if per_step else None)
        else:
            with threads(plan.teacher_threads):
                teach = run_teacher(model, noise, sig0, plan.M, plan.teacher, plan.teacher_options,
                                    trajectory=per_step, model_dtype=plan.model_dtype)
            if computed is not None:
                computed.append(teach)
        teacher_nfe = teach.nfe
        targets = teach.trajectory if per_step else None  # per step, or only the teacher's solution
        call = ModelCall(model, afs=plan.afs, features=want_features, model_dtype=plan.model_dtype)
        total = torch.zeros((), dtype=torch.float64)
        with torch.enable_grad():
            sig = sched() if sched is not None else sig0
            x_start = noise * sig[0]
            if plan.soft_start:
                x_start = x_start + soft_start_delta(model, solver, plan.afs, x_start, sig.detach(), teach.x,
                                                     plan.soft_start, plan.soft_start_steps, plan.distance,
                                                     plan.model_dtype)
            for st in iterate(call, solver, x_start, sig, detach=per_step):
                if per_step or st.i == num_steps - 2:
                    diff = (st.x - (targets[st.i + 1] if per_step else teach.x)).flatten(1)
                    # Sums over this rank's samples, divided by the global batch: the ranks' gradients add up to
                    # the single-process gradient.
                    if plan.distance == "l2":
                        step_loss = diff.norm(dim=1).sum() / len(seeds)
                    else:
                        step_loss = diff.square().sum() / (len(seeds) * diff.shape[1])
                    step_loss.backward()
                    total += step_loss.detach()
        if world_size > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
            torch.distributed.all_reduce(total)
        if not math.isfinite(float(total)):
            raise NonFiniteError(
                f"{plan.desc}: the training loss became {float(total)} at iteration {it + 1} of {iters}; lower the "
                "learning rate (lr / schedule lr) or train in float64 (dtype=torch.float64)")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if lr_sched is not None:
            lr_sched.step()
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise NonFiniteError(
                f"{plan.desc}: the learned parameters became NaN/inf at iteration {it + 1} of {iters}; lower the "
                "learning rate or train in float64 (dtype=torch.float64)")
        losses.append(float(total))
        guard.update(losses, it + 1)
        post = {"loss": f"{float(total):.4f}", **(sampler.progress() if sampler is not None else {})}
        if sched is not None:
            with torch.no_grad():
                post["sigmas"] = ",".join(f"{v:.3g}" for v in sched()[1:-1].tolist())
        bar.set_postfix(post)
        last = it + 1 == iters
        if rank == 0 and state.path is not None and (
                (ck.every and (it + 1) % ck.every == 0 and not last) or (last and ck.out is not None)):
            state.save(it + 1, losses)  # the final state too, so a failed save of ``out`` loses nothing
    if computed:
        store = {"x": torch.stack([t.x.detach() for t in computed]), "nfe": torch.tensor(teacher_nfe)}
        if per_step:
            store["trajectory"] = torch.stack([t.trajectory.detach() for t in computed])
        plan.cache.store(fields, store)
    log = TrainLog(losses, time.perf_counter() - t0, teacher_nfe, time.process_time() - c0, guard.finish(losses))
    if sched is not None and sampler is not None:
        with torch.no_grad():
            sampler.config["sigmas"] = [float(v) for v in validate_sigmas(sched(), "learned schedule")]
    if ck.out is not None and rank == 0 and sampler is not None:
        sampler.eval().save(ck.out)  # the sampler is on disk before the training state goes
    if ck.state is not None and rank == 0:
        state.remove()
    return log
