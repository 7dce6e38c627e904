"""What ``FewstepScheduler.set_timesteps`` plans: the fewstep schedule, solver, AFS and final jump for a number of
model calls (or custom sigmas), with diffusers' timestep spacings and flow time shifts, and the list of every model
call the solver will make (:func:`call_plan`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...denoisers.adapters import FlowModel, VPModel
from ...jsonio import MAX_NFE
from ...sampling import steps_for_nfe
from ...schedules import get_schedule
from ..stepper import DRY_RUN_SHAPE, Request, Stepper
from .spaces import flow_sigma, model_sigma_range

__all__ = ["SCHEDULES", "SPACINGS", "method_name", "flow_shift", "spaced_sigmas", "nfe_possible", "plan_schedule",
           "call_plan"]

SCHEDULES = ("diffusers", "polynomial", "logsnr", "discrete")
SPACINGS = ("linspace", "leading", "trailing")


def method_name(predictor: Any) -> str:
    """How messages name a predictor: its learned method (``dyweight``, ``epd``, ``amed``, ...)."""
    return str(getattr(predictor, "config", {}).get("method", "learned"))


def flow_shift(config: Any, t: Any, mu: float | None) -> Any:
    """Flow time shift: static ``shift`` (SD3) or resolution-dependent ``mu`` (exponential, Flux)."""
    if config.use_dynamic_shifting:
        if mu is None:
            raise ValueError("use_dynamic_shifting=True needs mu= in set_timesteps (as the pipeline passes it)")
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    s = config.shift
    return s * t / (1 + (s - 1) * t)


def spaced_sigmas(config: Any, adapter: VPModel | FlowModel, n: int, mu: float | None) -> torch.Tensor:
    """``n`` descending EDM sigmas of the pipeline's own spacing (diffusers' set_timesteps formulas)."""
    T = config.num_train_timesteps
    if isinstance(adapter, FlowModel):
        t_min = 1.0 / T if config.use_dynamic_shifting else flow_shift(config, 1.0 / T, None)
        t = torch.linspace(1.0, t_min, n, dtype=torch.float64)
        return flow_sigma(flow_shift(config, t, mu))
    if config.timestep_spacing == "linspace":
        steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif config.timestep_spacing == "leading":
        steps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + config.steps_offset
    else:
        steps = np.arange(T, 0, -T / n).round() - 1
    idx = torch.from_numpy(steps.astype(np.int64).copy())
    return adapter.log_sigmas[idx].exp()


def nfe_possible(k: int, solver: str, afs: bool, dtz: bool, opts: dict) -> bool:
    """Whether ``solver`` can make exactly ``k`` model calls (``dtz``: one of them is the jump to zero)."""
    try:
        steps_for_nfe(solver, k - int(dtz), afs, **opts)
        return k - int(dtz) >= 1
    except ValueError:
        return False


def plan_schedule(cfg: Any, adapter: VPModel | FlowModel, predictor: Any, nfe: int | None, sigmas: Any,
                  mu: float | None) -> tuple[torch.Tensor, Any, bool, bool, dict]:
    """(schedule, solver, afs, denoise_to_zero, options) for ``nfe`` model calls or custom ``sigmas``, from a
    :class:`FewstepScheduler` config and adapter, or from ``predictor`` (a learned sampler) when not None."""
    if predictor is not None:
        if sigmas is not None:
            raise ValueError(f"sigmas: the {method_name(predictor)} predictor brings its own schedule; "
                             "do not pass sigmas")
        _, sig, solver, afs = predictor.sampling_setup(lambda x, s: x)
        dtz = bool(cfg.denoise_to_zero)
        return sig, solver, afs, dtz, {}
    solver, afs, opts = cfg.solver, bool(cfg.afs), dict(cfg.solver_options or {})
    dtz = True if cfg.denoise_to_zero is None else bool(cfg.denoise_to_zero)
    if sigmas is not None:  # custom grid in the pipeline's convention (flow t, shifted as diffusers does; or sigma)
        s = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
        if s.numel() > 1 and float(s[-1]) == 0.0:
            s, dtz = s[:-1], True
        return (flow_sigma(flow_shift(cfg, s, mu)) if isinstance(adapter, FlowModel) else s), solver, afs, dtz, opts
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"num_inference_steps must be a positive int (the number of model calls), got {nfe!r}")
    if nfe > MAX_NFE:
        raise ValueError(f"num_inference_steps must be at most {MAX_NFE} model calls, got {nfe}")
    try:
        n = steps_for_nfe(solver, nfe - int(dtz), afs, **opts)
    except ValueError:
        ok = [k for k in range(max(1, nfe - 8), nfe + 8) if nfe_possible(k, solver, afs, dtz, opts)]
        raise ValueError(f"solver {solver!r} (afs={afs}, denoise_to_zero={dtz}) cannot make exactly "
                         f"num_inference_steps={nfe} model calls; possible: {ok[:8]}") from None
    kind = "polynomial" if cfg.schedule == "diffusers" and cfg.use_karras_sigmas else cfg.schedule
    model_range = model_sigma_range(adapter, cfg.num_train_timesteps)
    if kind == "diffusers":
        if dtz:
            sig = spaced_sigmas(cfg, adapter, n, mu)
        else:
            sig = torch.cat([spaced_sigmas(cfg, adapter, n - 1, mu),
                             torch.tensor([model_range[0]], dtype=torch.float64)])
    else:
        lo, hi = model_range
        lo, hi = cfg.sigma_min or lo, cfg.sigma_max or hi
        # alphas_cumprod = 1 / (1 + sigma^2) of the training grid
        extra = {"alphas_cumprod": (2 * adapter.log_sigmas).exp().add(1).reciprocal()} \
            if kind == "discrete" else {}
        sig = get_schedule(kind, n, lo, hi, cfg.rho, **extra)
    return sig, solver, afs, dtz, opts


def call_plan(stepper: Stepper) -> list[tuple[float, int, bool]]:
    """For every model call (dry run as :func:`..stepper.evaluation_sigmas`): its sigma, the index of the schedule
    interval it belongs to (the number of intervals for the denoise-to-zero call) and whether it opens the interval
    (made at the interval's start state)."""
    req = stepper.start(torch.zeros(DRY_RUN_SHAPE, dtype=torch.float64))
    out: list[tuple[float, int, bool]] = []
    while isinstance(req, Request):
        out.append((float(req.sigma), stepper.i, stepper.at_interval_start))
        req = stepper.feed(torch.zeros_like(req.x))
    return out
