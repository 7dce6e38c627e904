"""Distillation of the AMED predictor from a teacher trajectory (Zhou et al., 2024, Algorithm 1)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..evaluation import teacher_options as default_teacher_options
from ..io import atomic_path
from ..sampling import _Evaluator, count_nfe, noise_for_seeds, sample
from ..sampling import steps_for_nfe as _steps_for_nfe
from ..schedules import get_schedule, validate_sigmas
from ..solvers import SOLVERS, AMEDPlugin, AMEDSolver, Solver, get_solver
from .features import HookFeatures, provides_features
from .predictor import AMEDPredictor, LearnedSchedule

__all__ = ["train", "learn_schedule", "refine_schedule", "student_solver", "steps_for_nfe", "detach_state", "TrainLog", "LOSSES"]

LOSSES = ("per_step", "final")
DISTANCES = ("l2", "mse")


def refine_schedule(sigmas: torch.Tensor, M: int) -> torch.Tensor:
    """Insert ``M`` points, uniform in log sigma, into every interval (the teacher's schedule)."""
    if not isinstance(M, int) or M < 0:
        raise ValueError(f"M must be a non-negative int, got {M!r}")
    logs = sigmas.log()
    parts = [torch.lerp(logs[i], logs[i + 1], torch.arange(M + 1, dtype=logs.dtype) / (M + 1))
             for i in range(len(sigmas) - 1)]
    out = torch.cat(parts + [logs[-1:]]).exp()
    out[:: M + 1] = sigmas  # the student's sigmas exactly, free of exp/log rounding
    return out


def steps_for_nfe(student: str, nfe: int, afs: bool = True, **student_options: Any) -> int:
    """``num_steps`` for :func:`train` that gives ``nfe`` evaluations: AMED-Solver (``student="amed"``) or
    AMED-Plugin on the base solver ``student``."""
    if student == "amed":
        return _steps_for_nfe("amed", nfe, afs)
    return _steps_for_nfe("amed_plugin", nfe, afs, base=student, **student_options)


def student_solver(config: dict[str, Any], predictor: Any) -> Solver:
    """The solver a predictor was trained for: AMED-Solver, or AMED-Plugin over its base solver."""
    st = config["student"]
    if st["solver"] == "amed":
        return AMEDSolver(predictor=predictor)
    return AMEDPlugin(base=get_solver(st["base"], **st.get("options", {})), predictor=predictor)


def detach_state(state: Any) -> Any:
    """Detach every tensor in a solver state (dataclasses, tuples, lists), for one backward per step."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: detach_state(getattr(state, f.name))
                                             for f in dataclasses.fields(state)})
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state


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
    (atomically); ``resume=True`` continues from it to the same final predictor. Returns the predictor."""
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
        with torch.no_grad():
            _, f = model.denoise_with_features(noise_for_seeds([seed], tr["shape"], dtype=dtype) * sig[0],
                                               sig[:1].to(dtype))
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
        "model_id": model_id,
        "training": tr,
    }
    pred = AMEDPredictor(num_steps - 1, feat_cfg["dim"], scale_dir, scale_time, hidden=hidden, config=config).to(dtype)
    sched = LearnedSchedule(sig) if learn_schedule else None
    recorder = _Recorder(pred)
    with _frozen(denoiser, network):
        _fit(model, student_solver(config, recorder), sig, tr, afs, pred, sched, recorder, dtype,
             f"AMED {student}", progress, log, state_path, checkpoint_every, resume)
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
        _fit(denoiser, solv, sig, tr, afs, None, sched, None, dtype, f"schedule {solver}", progress, log, None, 0, False)
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
    if learn and not (isinstance(schedule_lr, (int, float)) and schedule_lr > 0):
        raise ValueError(f"schedule_lr must be a positive number, got {schedule_lr!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr must be a positive number or None, got {lr!r}")
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


class _TrainState:
    """The whole training state (module weights, Adam moments, learning-rate schedule, iteration, losses) in one
    safetensors file with JSON metadata, written atomically; a resumed run continues bitwise where it stopped."""

    FORMAT = "fewstep-train-state"

    def __init__(self, path: Any, checkpoint_every: int, fingerprint: dict[str, Any], modules: list[torch.nn.Module],
                 opt: torch.optim.Optimizer, lr_sched: Any) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be a non-negative int, got {checkpoint_every!r}")
        if checkpoint_every and path is None:
            raise ValueError("checkpoint_every needs state_path")
        self.path = None if path is None else Path(path)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.modules, self.opt, self.lr_sched = modules, opt, lr_sched

    def save(self, iteration: int, losses: list[float]) -> None:
        tensors = {f"module{k}.{n}": v.detach().cpu().contiguous()
                   for k, m in enumerate(self.modules) for n, v in m.state_dict().items()}
        osd = self.opt.state_dict()
        for pid, st in osd["state"].items():
            for n, v in st.items():
                tensors[f"adam.{pid}.{n}"] = torch.as_tensor(v).detach().cpu().contiguous()
        meta = {"format": self.FORMAT, "fingerprint": self.fingerprint, "iteration": str(iteration),
                "losses": json.dumps(losses), "param_groups": json.dumps(osd["param_groups"]),
                "lr_sched": json.dumps(self.lr_sched.state_dict() if self.lr_sched is not None else None)}
        with atomic_path(self.path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load(self, losses: list[float]) -> int:
        """Restore the state if the file exists (returns the iteration to continue from), else 0."""
        if self.path is None:
            raise ValueError("resume needs state_path")
        if not self.path.exists():
            return 0
        from .checkpoint import CheckpointError, _sniff

        _sniff(self.path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{self.path} is not a readable training state: {e}") from None
        if meta.get("format") != self.FORMAT:
            raise CheckpointError(f"{self.path} is not a fewstep training state")
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{self.path} was saved by a run with other settings; remove it or use the same "
                                  "command to resume")
        try:
            for k, m in enumerate(self.modules):
                pre = f"module{k}."
                m.load_state_dict({n[len(pre):]: v for n, v in tensors.items() if n.startswith(pre)}, strict=True)
            state: dict[int, dict[str, torch.Tensor]] = {}
            for n, v in tensors.items():
                if n.startswith("adam."):
                    _, pid, key = n.split(".", 2)
                    state.setdefault(int(pid), {})[key] = v
            self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
            if self.lr_sched is not None:
                self.lr_sched.load_state_dict(json.loads(meta["lr_sched"]))
            losses.extend(json.loads(meta["losses"]))
            return int(meta["iteration"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{self.path}: training state does not fit this run: {e}") from None

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def _world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _fit(model: Callable, solver: Solver, sig0: torch.Tensor, tr: dict[str, Any], afs: bool,
         pred: AMEDPredictor | None, sched: LearnedSchedule | None, recorder: _Recorder | None, dtype: torch.dtype,
         desc: str, progress: bool, log: list | None, state_path: Any, checkpoint_every: int, resume: bool) -> None:
    """The distillation loop shared by :func:`train` and :func:`learn_schedule`; settings come from ``tr``."""
    rank, world = _world()
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
    stride = tr["M"] + 1
    teacher_sig = refine_schedule(sig0, tr["M"])
    num_steps = len(sig0)
    ckpt = _TrainState(state_path, checkpoint_every, pred.config if pred is not None else tr, [m for m in (pred, sched) if m is not None],
                       opt, lr_sched)
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
        noise = noise_for_seeds(seeds[rank::world], tr["shape"], dtype=dtype)
        teach = sample(model, noise, teacher_sig, tr["teacher"], return_trajectory=per_step, return_result=True,
                       **tr["teacher_options"])
        teacher_nfe = teach.nfe
        targets = teach.trajectory[::stride] if per_step else None  # per step, or only the teacher's solution
        ev = _Evaluator(model, afs, want_features=want_features)
        total = torch.zeros((), dtype=torch.float64)
        if recorder is not None:
            recorder.clear()
        with torch.enable_grad():
            sig = sched() if sched is not None else sig0
            x = noise * sig[0]
            state = solver.init(x, sig)
            for i in range(num_steps - 1):
                ev.step = i
                x_next, state = solver.step(ev, x, i, sig, state)
                if per_step or i == num_steps - 2:
                    diff = (x_next - (targets[i + 1] if per_step else teach.x)).flatten(1)
                    # Sums over this rank's samples, divided by the global batch: the ranks' gradients add up to
                    # the single-process gradient.
                    if tr["distance"] == "l2":
                        step_loss = diff.norm(dim=1).sum() / len(seeds)
                    else:
                        step_loss = diff.square().sum() / (len(seeds) * diff.shape[1])
                    step_loss.backward()
                    total += step_loss.detach()
                if per_step:
                    x_next, state = x_next.detach(), detach_state(state)
                x = x_next
        if world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
            torch.distributed.all_reduce(total)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if lr_sched is not None:
            lr_sched.step()
        losses.append(float(total))
        post = {"loss": f"{float(total):.4f}"}
        if recorder is not None and recorder.r:
            r_all, c_all = torch.cat(recorder.r), torch.cat(recorder.c)
            post.update(r=f"{r_all.mean():.3f}±{r_all.std():.3f}", c=f"{c_all.mean():.4f}±{c_all.std():.4f}")
        if sched is not None:
            with torch.no_grad():
                post["sigmas"] = ",".join(f"{v:.3g}" for v in sched()[1:-1].tolist())
        bar.set_postfix(post)
        if checkpoint_every and (it + 1) % checkpoint_every == 0 and it + 1 < iters and rank == 0:
            ckpt.save(it + 1, losses)
    if state_path is not None and rank == 0:
        ckpt.remove()
    if log is not None:
        log.append(TrainLog(losses, time.perf_counter() - t0, teacher_nfe))
