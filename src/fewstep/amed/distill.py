"""The one distillation trainer of learned samplers (Zhou et al., 2024, Algorithm 1, with a final-point loss by
default): the teacher's solution on a refined schedule is the target, the student runs through the sampling loop
:func:`fewstep.sampling.iterate` with gradients, Adam updates its parameters (and optionally the schedule)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..sampling import ModelCall, NonFiniteError, count_nfe, iterate, noise_for_seeds
from ..schedules import get_schedule, refine_schedule, validate_sigmas
from ..solvers import Solver, get_solver
from ..teacher import run_teacher
from ..teacher import teacher_options as default_teacher_options
from .predictor import LearnedSchedule
from .trainstate import TrainState, world

__all__ = ["distill", "soft_start_delta", "training_setup", "frozen", "TrainLog", "LOSSES", "DISTANCES"]

LOSSES = ("per_step", "final")
DISTANCES = ("l2", "mse")


@dataclasses.dataclass
class TrainLog:
    losses: list[float]
    seconds: float
    teacher_nfe_per_sample: int


def training_setup(student: str, student_options: dict, afs: bool, teacher: str, teacher_options: Any,
                    num_steps: int, M: int, schedule: Any, sigma_min: float, sigma_max: float, rho: float, batch: int,
                    total_samples: int, lr: Any, loss: str, distance: str, lr_decay: bool, learn: bool,
                    schedule_lr: float, seed: int, shape: Sequence[int]) -> tuple[torch.Tensor, dict, dict]:
    """Validate the shared arguments: (initial sigmas, schedule config, training config)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    for name, v in (("batch", batch), ("total_samples", total_samples), ("num_steps", num_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "num_steps" else 1):
            raise ValueError(f"{name} must be an int >= {2 if name == 'num_steps' else 1}, got {v!r}")
    if not isinstance(learn, bool):
        raise TypeError(f"learn_schedule must be True or False, got {learn!r}")
    if not isinstance(afs, bool):
        raise TypeError(f"afs must be True or False, got {afs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**30:
        raise ValueError(f"seed must be a non-negative int below 2**30, got {seed!r}")
    if learn and loss != "final":
        raise ValueError("learn_schedule needs loss='final' (per-step targets move with the schedule)")
    if learn and not (isinstance(schedule_lr, (int, float)) and not isinstance(schedule_lr, bool)
                      and 0 < schedule_lr < math.inf):
        raise ValueError(f"schedule_lr must be a positive finite number, got {schedule_lr!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number or None, got {lr!r}")
    teacher_options = default_teacher_options(teacher, teacher_options)
    get_solver(teacher, **teacher_options)  # validate early
    if student != "amed":
        get_solver(student, **student_options)
    shape = tuple(shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive ints (one sample, no batch), got {shape!r}")
    if isinstance(schedule, str):
        sig = get_schedule(schedule, num_steps, sigma_min, sigma_max, rho)
        sched_cfg: dict[str, Any] = {"kind": schedule, "num_steps": num_steps, "sigma_min": sigma_min,
                                     "sigma_max": sigma_max, "rho": rho}
    else:
        sig = validate_sigmas(schedule, "schedule")
        if sig.numel() != num_steps:
            raise ValueError(f"schedule has {sig.numel()} sigmas but num_steps={num_steps}")
        sched_cfg = {"kind": "tensor", "num_steps": int(sig.numel())}
    if learn:
        sched_cfg = {"kind": "learned", "num_steps": num_steps, "init": sched_cfg,
                     "init_sigmas": [float(v) for v in sig]}
    tr = {"teacher": teacher, "teacher_options": teacher_options, "M": M, "batch": batch,
          "total_samples": total_samples, "lr": lr, "lr_decay": lr_decay, "loss": loss, "distance": distance,
          "learn_schedule": learn, "schedule_lr": schedule_lr if learn else None, "seed": seed, "shape": list(shape)}
    refine_schedule(sig, M)  # validates M
    return sig, sched_cfg, tr


@contextlib.contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Gradients of the model's own parameters off while the predictor trains, restored afterwards."""
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


def distill(model: Callable, solver: Solver, sig0: torch.Tensor, tr: dict[str, Any], afs: bool,
         pred: torch.nn.Module | None, sched: LearnedSchedule | None, recorder: Any, dtype: torch.dtype,
         desc: str, progress: bool, log: list | None, state_path: Any, checkpoint_every: int, resume: bool,
         out: Any = None, model_dtype: torch.dtype | None = None,
         before_batch: Callable[[int], None] | None = None) -> None:
    """The distillation loop of every learned sampler (used by :func:`train` and :func:`learn_schedule`): per batch
    the teacher runs once (:func:`fewstep.teacher.run_teacher`), the student ``solver`` runs through
    :func:`fewstep.sampling.iterate` (the loop that samples) with gradients, and Adam updates ``pred`` (any module
    with parameters whose ``config`` fingerprints the run, e.g. a learned sampler's parameter table) and/or the
    learned schedule ``sched``. Settings in ``tr`` (as built by :func:`training_setup`): teacher, teacher_options,
    M, batch, total_samples, lr, schedule_lr, lr_decay, loss ("final" | "per_step"), distance ("l2" | "mse"), seed,
    shape; optional ``soft_start`` (LD3's relaxation radius r, final loss only; 0 or absent: off) and
    ``soft_start_steps`` (:func:`soft_start_delta`). ``recorder`` (optional) collects r/c for the progress bar. Data-parallel under torch.distributed;
    ``state_path`` / ``checkpoint_every`` / ``resume`` make it resumable; with ``out`` the predictor is saved before
    the training state is removed. ``before_batch(it)`` (optional) runs at the start of iteration ``it``, before the
    teacher, e.g. to set the guidance scale of that batch (a function of ``it`` only, so resumed and data-parallel
    runs see the same scales)."""
    rank, world_size = world()
    if tr["batch"] < world_size:
        raise ValueError(f"batch {tr['batch']} is smaller than the {world_size} processes; every process needs at "
                         "least one sample of each batch")
    groups = []
    if pred is not None:
        groups.append({"params": list(pred.parameters()), "lr": tr["lr"]})
    if sched is not None:
        groups.append({"params": list(sched.parameters()), "lr": tr["schedule_lr"]})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.Adam(groups)
    batch, seed = tr["batch"], tr["seed"]
    iters = math.ceil(tr["total_samples"] / batch)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters) if tr["lr_decay"] else None
    per_step = tr["loss"] == "per_step"
    num_steps = len(sig0)
    ckpt = TrainState(state_path, checkpoint_every, pred.config if pred is not None else tr,
                      [m for m in (pred, sched) if m is not None], opt, lr_sched)
    losses: list[float] = []
    start = ckpt.load(losses) if resume else 0
    t0 = time.perf_counter()
    want_features = pred is not None and pred.uses_features
    bar = tqdm(range(start, iters), desc=f"{desc} NFE {count_nfe(solver, num_steps, afs)}",
               disable=not progress or rank != 0)
    teacher_nfe = 0
    soft_start = float(tr.get("soft_start", 0.0))  # LD3's relaxation; absent (AMED) is 0: the loop is unchanged
    if soft_start and per_step:
        raise ValueError("soft_start needs loss='final' (the student starts away from the teacher's x_T)")
    for it in bar:
        first = seed * 10**9 + 1 + it * batch
        seeds = list(range(first, first + batch))
        noise = noise_for_seeds(seeds[rank::world_size], tr["shape"], dtype=dtype)
        if before_batch is not None:
            before_batch(it)
        teach = run_teacher(model, noise, sig0, tr["M"], tr["teacher"], tr["teacher_options"], trajectory=per_step,
                            model_dtype=model_dtype)
        teacher_nfe = teach.nfe
        targets = teach.trajectory if per_step else None  # per step, or only the teacher's solution
        call = ModelCall(model, afs=afs, features=want_features, model_dtype=model_dtype)
        total = torch.zeros((), dtype=torch.float64)
        if recorder is not None:
            recorder.clear()
        with torch.enable_grad():
            sig = sched() if sched is not None else sig0
            x_start = noise * sig[0]
            if soft_start:
                x_start = x_start + soft_start_delta(model, solver, afs, x_start, sig.detach(), teach.x, soft_start,
                                                     tr.get("soft_start_steps", 1), tr["distance"], model_dtype)
            for st in iterate(call, solver, x_start, sig, detach=per_step):
                if per_step or st.i == num_steps - 2:
                    diff = (st.x - (targets[st.i + 1] if per_step else teach.x)).flatten(1)
                    # Sums over this rank's samples, divided by the global batch: the ranks' gradients add up to
                    # the single-process gradient.
                    if tr["distance"] == "l2":
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
                f"{desc}: the training loss became {float(total)} at iteration {it + 1} of {iters}; lower the "
                "learning rate (lr / schedule_lr) or train in float64 (dtype=torch.float64)")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if lr_sched is not None:
            lr_sched.step()
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise NonFiniteError(
                f"{desc}: the learned parameters became NaN/inf at iteration {it + 1} of {iters}; lower the learning "
                "rate or train in float64 (dtype=torch.float64)")
        losses.append(float(total))
        post = {"loss": f"{float(total):.4f}"}
        if recorder is not None and recorder.r:
            r_all, c_all = torch.cat(recorder.r), torch.cat(recorder.c)
            post.update(r=f"{r_all.mean():.3f}±{r_all.std():.3f}", c=f"{c_all.mean():.4f}±{c_all.std():.4f}")
        if sched is not None:
            with torch.no_grad():
                post["sigmas"] = ",".join(f"{v:.3g}" for v in sched()[1:-1].tolist())
        bar.set_postfix(post)
        last = it + 1 == iters
        if rank == 0 and ckpt.path is not None and (
                (checkpoint_every and (it + 1) % checkpoint_every == 0 and not last) or (last and out is not None)):
            ckpt.save(it + 1, losses)  # the final state too, so a failed save of ``out`` loses nothing
    if log is not None:
        log.append(TrainLog(losses, time.perf_counter() - t0, teacher_nfe))
    if out is not None and rank == 0 and pred is not None:
        if sched is not None:
            with torch.no_grad():
                pred.config["sigmas"] = [float(v) for v in validate_sigmas(sched(), "learned schedule")]
        pred.eval().save(out)  # the predictor is on disk before the training state goes
    if state_path is not None and rank == 0:
        ckpt.remove()
