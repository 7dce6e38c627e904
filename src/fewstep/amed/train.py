"""Distillation of the AMED predictor from a teacher trajectory (Zhou et al., 2024, Algorithm 1)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..denoisers.features import HookFeatures, provides_features
from ..sampling import ModelCall, NonFiniteError, count_nfe, detach_state, iterate, noise_for_seeds
from ..sampling import steps_for_nfe as _steps_for_nfe
from ..schedules import get_schedule, refine_schedule, validate_sigmas
from ..solvers import SOLVERS, Solver, get_solver
from ..teacher import run_teacher
from ..teacher import teacher_options as default_teacher_options
from .predictor import AMEDPredictor, LearnedSchedule, student_solver
from .trainstate import TrainState, world

__all__ = ["train", "learn_schedule", "steps_for_nfe", "TrainLog", "LOSSES", "DISTANCES",
           "refine_schedule", "student_solver", "detach_state"]

LOSSES = ("per_step", "final")
DISTANCES = ("l2", "mse")


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


@dataclasses.dataclass
class TrainLog:
    losses: list[float]
    seconds: float
    teacher_nfe_per_sample: int


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
) -> AMEDPredictor:
    """Train an AMED predictor for ``student`` ("amed" = AMED-Solver, or a base solver name for AMED-Plugin)
    on a schedule of ``num_steps`` sigmas, by distillation from ``teacher`` run with ``M`` extra steps per
    interval. ``loss="per_step"``: L2 distance to the teacher at every t_n with one backward per step and
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
    Returns the predictor."""
    if student != "amed" and (student not in SOLVERS or student in ("heun", "amed_plugin")):
        allowed = ", ".join(n for n in SOLVERS if n not in ("heun", "amed_plugin"))
        raise ValueError(f"student must be one of {allowed}, got {student!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden!r}")
    student_options = dict(student_options or {})
    sig, sched_cfg, tr = _training_setup(
        student, student_options, afs, teacher, teacher_options, num_steps, M,
        schedule, sigma_min, sigma_max, rho, batch, total_samples, lr, loss, distance, lr_decay, learn_schedule,
        schedule_lr, seed, shape)
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
    pred = AMEDPredictor(num_steps - 1, feat_cfg["dim"], scale_dir, scale_time, hidden=hidden, config=config).to(dtype)
    sched = LearnedSchedule(sig) if learn_schedule else None
    recorder = _Recorder(pred)
    with _frozen(denoiser, network):
        _fit(model, student_solver(config, recorder), sig, tr, afs, pred, sched, recorder, dtype,
             f"AMED {student}", progress, log, state_path, checkpoint_every, resume, out, model_dtype)
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
    sig, _, tr = _training_setup(solver, options, afs, teacher, teacher_options, num_steps, M, schedule, sigma_min,
                                 sigma_max, rho, batch, total_samples, lr, "final", distance, lr_decay, True, lr,
                                 seed, shape)
    sched = LearnedSchedule(sig)
    with _frozen(denoiser):
        _fit(denoiser, solv, sig, tr, afs, None, sched, None, dtype, f"schedule {solver}", progress, log, None, 0, False,
             None, model_dtype)
    with torch.no_grad():
        return validate_sigmas(sched(), "learned schedule")


def _training_setup(student: str, student_options: dict, afs: bool, teacher: str, teacher_options: Any,
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
def _frozen(*modules: Any) -> Iterator[None]:
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


def _fit(model: Callable, solver: Solver, sig0: torch.Tensor, tr: dict[str, Any], afs: bool,
         pred: AMEDPredictor | None, sched: LearnedSchedule | None, recorder: _Recorder | None, dtype: torch.dtype,
         desc: str, progress: bool, log: list | None, state_path: Any, checkpoint_every: int, resume: bool,
         out: Any = None, model_dtype: torch.dtype | None = None) -> None:
    """Distillation shared by :func:`train` and :func:`learn_schedule` (settings in ``tr``): per batch the teacher
    runs once, the student runs through :func:`fewstep.sampling.iterate` (the loop that samples) with gradients,
    and Adam updates the predictor and/or the schedule."""
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
    for it in bar:
        first = seed * 10**9 + 1 + it * batch
        seeds = list(range(first, first + batch))
        noise = noise_for_seeds(seeds[rank::world_size], tr["shape"], dtype=dtype)
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
            for st in iterate(call, solver, noise * sig[0], sig, detach=per_step):
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
