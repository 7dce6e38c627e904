"""Distillation of the AMED predictor from a teacher trajectory (Zhou et al., 2024, Algorithm 1)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..sampling import _Evaluator, count_nfe, noise_for_seeds, sample, steps_for_nfe as _steps_for_nfe
from ..schedules import get_schedule, validate_sigmas
from ..solvers import SOLVERS, AMEDPlugin, AMEDSolver, Solver, get_solver
from .features import HookFeatures, provides_features
from .predictor import AMEDPredictor

__all__ = ["train", "refine_schedule", "student_solver", "steps_for_nfe", "detach_state", "TrainLog", "LOSSES"]

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
    seed: int = 0,
    model_id: str | None = None,
    dtype: torch.dtype = torch.float64,
    hidden: int = 128,
    progress: bool = True,
    log: list | None = None,
) -> AMEDPredictor:
    """Train an AMED predictor for ``student`` ("amed" = AMED-Solver, or a base solver name for AMED-Plugin)
    on a schedule of ``num_steps`` sigmas, by distillation from ``teacher`` run with ``M`` extra steps per
    interval. ``loss="per_step"``: L2 distance to the teacher at every t_n with one backward per step and
    the student's own (detached) state carried on (Algorithm 1); ``"final"``: distance at the last point with
    backpropagation through all steps. ``distance``: "l2" (per-sample L2 norm, the paper's) or "mse".
    Adam with cosine learning-rate decay (``lr_decay``). ``features``: "none" (predictor-free table), "adapter" (the denoiser's
    ``denoise_with_features``), "auto" (middle block of ``network``) or a module name in ``network``.
    Defaults (teacher DEIS-logrho order 4 with M=8, final-point loss, lr 0.1 for the table and 0.02 for the
    network) are the best measured on the natural-patch bed; the final-point loss beat Algorithm 1's per-step
    loss there, by far for the plugin on multistep solvers. Deterministic given ``seed``. Returns the predictor
    with its sampling config."""
    if student != "amed" and (student not in SOLVERS or student in ("heun", "amed_plugin")):
        allowed = ", ".join(n for n in SOLVERS if n not in ("heun", "amed_plugin"))
        raise ValueError(f"student must be one of {allowed}, got {student!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    for name, v in (("batch", batch), ("total_samples", total_samples), ("num_steps", num_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "num_steps" else 1):
            raise ValueError(f"{name} must be an int >= {2 if name == 'num_steps' else 1}, got {v!r}")
    student_options = dict(student_options or {})
    teacher_options = dict({"max_order": 4, "deis_mode": "logrho"} if teacher_options is None and teacher == "deis"
                           else teacher_options or {})
    get_solver(teacher, **teacher_options)  # validate early

    if isinstance(schedule, str):
        sig = get_schedule(schedule, num_steps, sigma_min, sigma_max, rho)
        sched_cfg = {"kind": schedule, "num_steps": num_steps, "sigma_min": sigma_min, "sigma_max": sigma_max,
                     "rho": rho}
    else:
        sig = validate_sigmas(schedule, "schedule")
        sched_cfg = {"kind": "tensor", "num_steps": int(sig.numel())}
    model, feat_cfg = _resolve_features(denoiser, features, network)

    torch.manual_seed(seed)
    shape = tuple(shape)
    probe_noise = noise_for_seeds([seed], shape, dtype=dtype)
    if feat_cfg["source"] != "none":
        with torch.no_grad():
            _, f = model.denoise_with_features(probe_noise * sig[0], sig[:1].to(dtype))
        feat_cfg["dim"] = int(f.reshape(1, -1).shape[1])
    config = {
        "version": 1,
        "student": {"solver": "amed" if student == "amed" else "amed_plugin",
                    "base": None if student == "amed" else student, "options": student_options},
        "sigmas": [float(s) for s in sig],
        "schedule": sched_cfg,
        "afs": afs,
        "scale_dir": scale_dir,
        "scale_time": scale_time,
        "features": feat_cfg,
        "architecture": {"hidden": hidden, "emb_dim": 8, "feat_proj": 16},
        "model_id": model_id,
        "training": {"teacher": teacher, "teacher_options": teacher_options, "M": M, "batch": batch,
                     "total_samples": total_samples, "lr": lr, "lr_decay": lr_decay, "loss": loss,
                     "distance": distance, "seed": seed, "shape": list(shape)},
    }
    pred = AMEDPredictor(num_steps - 1, feat_cfg["dim"], scale_dir, scale_time, hidden=hidden, config=config).to(dtype)
    if lr is None:  # measured on the natural-patch bed: the 3-number-per-step table wants a large step
        lr = 1e-1 if feat_cfg["source"] == "none" else 2e-2
        config["training"]["lr"] = lr
    frozen = _freeze(denoiser, network)
    try:
        return _distil(pred, model, sig, progress, log)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)


def _freeze(*modules: Any) -> list[tuple[torch.nn.Parameter, bool]]:
    """Turn off gradients of the model's own parameters while the predictor trains (restored afterwards)."""
    seen: list[tuple[torch.nn.Parameter, bool]] = []
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for p in m.parameters():
                seen.append((p, p.requires_grad))
                p.requires_grad_(False)
    return seen


def _distil(pred: AMEDPredictor, model: Callable, sig: torch.Tensor, progress: bool, log: list | None) -> AMEDPredictor:
    """The training loop; every setting comes from ``pred.config`` (so the checkpoint records what was done)."""
    cfg, tr = pred.config, pred.config["training"]
    dtype, shape, batch, seed = next(pred.parameters()).dtype, tuple(tr["shape"]), tr["batch"], tr["seed"]
    num_steps, afs = len(sig), cfg["afs"]
    teacher_sig = refine_schedule(sig, tr["M"])
    recorder = _Recorder(pred)
    solver = student_solver(cfg, recorder)
    opt = torch.optim.Adam(pred.parameters(), lr=tr["lr"])
    iters = math.ceil(tr["total_samples"] / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters) if tr["lr_decay"] else None
    per_step = tr["loss"] == "per_step"
    stride = tr["M"] + 1
    losses: list[float] = []
    t0 = time.perf_counter()
    name = cfg["student"]["base"] or "amed"
    bar = tqdm(range(iters), desc=f"AMED {name} NFE {count_nfe(solver, num_steps, afs)}", disable=not progress)
    for it in bar:
        seeds = range(seed * 10**9 + 1 + it * batch, seed * 10**9 + 1 + (it + 1) * batch)
        noise = noise_for_seeds(seeds, shape, dtype=dtype)
        teach = sample(model, noise, teacher_sig, tr["teacher"], return_trajectory=True, **tr["teacher_options"])
        targets = teach.trajectory[::stride]
        ev = _Evaluator(model, afs, want_features=pred.uses_features)
        x = noise * sig[0]
        state = solver.init(x, sig)
        total = 0.0
        recorder.clear()
        with torch.enable_grad():
            for i in range(num_steps - 1):
                ev.step = i
                x_next, state = solver.step(ev, x, i, sig, state)
                if per_step or i == num_steps - 2:
                    diff = (x_next - targets[i + 1]).flatten(1)
                    step_loss = diff.norm(dim=1).mean() if tr["distance"] == "l2" else diff.square().mean()
                    step_loss.backward()
                    total += step_loss.item()
                if per_step:
                    x_next, state = x_next.detach(), detach_state(state)
                x = x_next
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        losses.append(total)
        r_all, c_all = torch.cat(recorder.r), torch.cat(recorder.c)
        bar.set_postfix(loss=f"{total:.4f}", r=f"{r_all.mean():.3f}±{r_all.std():.3f}",
                        c=f"{c_all.mean():.4f}±{c_all.std():.4f}")
    if log is not None:
        log.append(TrainLog(losses, time.perf_counter() - t0, teach.nfe))
    return pred.eval()
