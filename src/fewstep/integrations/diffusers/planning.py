"""What ``FewstepScheduler.set_timesteps`` plans: the fewstep schedule, solver, AFS and final jump for a number of
model calls (or custom sigmas), with diffusers' timestep spacings and flow time shifts, and the list of every model
call the solver will make (:func:`call_plan`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...defaults import choice_for_sigmas, default_choice
from ...denoisers.adapters import FlowModel, VPModel
from ...denoisers.base import RANGE_SLACK
from ...jsonio import MAX_NFE
from ...sampling import steps_for_nfe
from ...schedules import get_schedule
from ..stepper import DRY_RUN_SHAPE, Request, Stepper
from .checks import MAX_INFERENCE_STEPS, check_steps
from .spaces import flow_sigma, model_sigma_range

__all__ = ["SCHEDULES", "SPACINGS", "method_name", "flow_shift", "spaced_sigmas", "nfe_possible", "uses_default",
           "pipeline_default_flow_times", "pipeline_spacing", "plan_schedule", "call_plan"]

SCHEDULES = ("diffusers", "polynomial", "logsnr", "time_uniform", "discrete")
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
    if n > T:
        raise ValueError(f"the pipeline's timestep spacing has only num_train_timesteps={T} timesteps, not the {n} "
                         "schedule points asked for; use fewer num_inference_steps or schedule='logsnr'")
    if config.timestep_spacing == "linspace":
        steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif config.timestep_spacing == "leading":
        steps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + config.steps_offset
    else:
        steps = np.arange(T, 0, -T / n).round() - 1
    idx = torch.from_numpy(steps.astype(np.int64).copy())
    if int(idx.min()) < 0 or int(idx.max()) > T - 1:
        raise ValueError(f"steps_offset={config.steps_offset} with timestep_spacing={config.timestep_spacing!r} and "
                         f"{n} steps reaches timestep {int(idx.max())}, beyond the last training timestep {T - 1}; "
                         "use a smaller steps_offset")
    return adapter.log_sigmas[idx].exp()


def nfe_possible(k: int, solver: str, afs: bool, dtz: bool, opts: dict) -> bool:
    """Whether ``solver`` can make exactly ``k`` model calls (``dtz``: one of them is the jump to zero)."""
    try:
        steps_for_nfe(solver, k - int(dtz), afs, **opts)
        return k - int(dtz) >= 1
    except ValueError:
        return False


def uses_default(cfg: Any, adapter: VPModel | FlowModel) -> bool:
    """Whether the scheduler runs fewstep's measured default (:mod:`fewstep.defaults`): no solver given, a VP model
    (the defaults were measured on VP / EDM models; a flow model without a solver keeps DPM-Solver++ on its own
    shifted flow times)."""
    return cfg.solver is None and not isinstance(adapter, FlowModel)


def pipeline_default_flow_times(sigmas: Any) -> bool:
    """Whether ``sigmas`` is FluxPipeline's default list for n steps, ``np.linspace(1, 1/n, n)``."""
    try:
        arr = np.asarray(sigmas, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    n = arr.size
    return arr.ndim == 1 and 1 <= n <= MAX_INFERENCE_STEPS and np.allclose(arr, np.linspace(1.0, 1 / n, n),
                                                                            rtol=1e-9, atol=0)


def pipeline_spacing(cfg: Any, predictor: Any, nfe: int) -> list[float] | None:
    """FluxPipeline's spacing rule for ``nfe`` model calls of the configured solver: its n schedule points at flow
    times linspace(1, 1/n, n) (before the shift), then the jump to zero, which is the pipeline's own schedule for
    Euler (FlowMatchEulerDiscreteScheduler). None where it does not apply (a predictor, another ``schedule``, no
    jump to zero, or an NFE the solver cannot make: the plain NFE path then plans or says why)."""
    if predictor is not None or cfg.schedule not in (None, "diffusers") or cfg.denoise_to_zero is False \
            or cfg.use_karras_sigmas or isinstance(nfe, bool) or not isinstance(nfe, int) or not 2 <= nfe <= MAX_NFE:
        return None
    try:
        n = steps_for_nfe(cfg.solver or "dpmpp", nfe - 1, bool(cfg.afs), **dict(cfg.solver_options or {}))
    except (ValueError, TypeError):
        return None
    return [*np.linspace(1.0, 1 / n, n).tolist(), 0.0]


def plan_schedule(cfg: Any, adapter: VPModel | FlowModel, predictor: Any, nfe: int | None, sigmas: Any,
                  mu: float | None) -> tuple[torch.Tensor, Any, bool, bool, dict, str]:
    """(schedule, solver, afs, denoise_to_zero, options, what was chosen in words) for ``nfe`` model calls or custom
    ``sigmas``, from a :class:`FewstepScheduler` config and adapter, or from ``predictor`` (a learned sampler or a
    tuned recipe) when not None. Without a solver (VP models) the measured default for that NFE and the config's
    ``guidance_scale`` (:func:`fewstep.defaults.default_choice`) on the model's own sigma range."""
    if predictor is not None:
        if sigmas is not None:
            raise ValueError(f"sigmas: the {method_name(predictor)} predictor brings its own schedule; "
                             "do not pass sigmas")
        _, sig, solver, afs = predictor.sampling_setup(lambda x, s: x)
        dtz = bool(cfg.denoise_to_zero)
        describe = getattr(predictor, "describe", None)
        what = describe() if callable(describe) else method_name(predictor)
        return sig, solver, afs, dtz, {}, f"{method_name(predictor)}: {what}"
    default = uses_default(cfg, adapter)
    w = cfg.guidance_scale
    guided = f", guidance scale {w:g}" if w is not None and w > 1 else ", unguided"
    # The measured default ends at the model's sigma_min, as it was measured; a jump to zero is asked for.
    dtz = (not default) if cfg.denoise_to_zero is None else bool(cfg.denoise_to_zero)
    model_range = model_sigma_range(adapter, cfg.num_train_timesteps)
    if sigmas is not None:  # custom grid in the pipeline's convention (flow t, shifted as diffusers does; or sigma)
        s = _custom_sigmas(sigmas, adapter, model_range)
        if s.numel() > 1 and float(s[-1]) == 0.0:
            s, dtz = s[:-1], True
        s = flow_sigma(flow_shift(cfg, s, mu)) if isinstance(adapter, FlowModel) else s
        if not default:
            solver, afs, opts = cfg.solver or "dpmpp", bool(cfg.afs), dict(cfg.solver_options or {})
            return s, solver, afs, dtz, opts, f"{_label(solver, opts, afs)} on the given sigmas"
        c, k = choice_for_sigmas(s.numel(), w)
        return s, c.solver, c.afs, dtz, dict(c.options), (
            f"fewstep's measured default for NFE {k}{guided} on the given {s.numel()} sigmas: "
            f"{_label(c.solver, c.options, c.afs)}{', then the jump to zero' if dtz else ''}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"num_inference_steps must be a positive int (the number of model calls), got {nfe!r}")
    check_steps(nfe)
    if nfe > MAX_NFE:
        raise ValueError(f"num_inference_steps must be at most {MAX_NFE} model calls, got {nfe}")
    if default:
        if nfe - int(dtz) < 1:
            raise ValueError(f"num_inference_steps={nfe} leaves no model call for the solver besides the jump to zero "
                             "(denoise_to_zero=True); use at least 2")
        c = default_choice(nfe - int(dtz), w)
        solver, afs, opts, kind, rho = c.solver, c.afs, dict(c.options), c.schedule, c.rho
    else:
        solver, afs, opts = cfg.solver or "dpmpp", bool(cfg.afs), dict(cfg.solver_options or {})
        kind = cfg.schedule or "diffusers"
        kind = "polynomial" if kind == "diffusers" and cfg.use_karras_sigmas else kind
        rho = 7.0 if cfg.rho is None else cfg.rho
    try:
        n = steps_for_nfe(solver, nfe - int(dtz), afs, **opts)
    except ValueError:
        ok = [k for k in range(max(1, nfe - 8), nfe + 8) if nfe_possible(k, solver, afs, dtz, opts)]
        raise ValueError(f"solver {solver!r} (afs={afs}, denoise_to_zero={dtz}) cannot make exactly "
                         f"num_inference_steps={nfe} model calls; possible: {ok}") from None
    if kind == "diffusers" and (cfg.sigma_min is not None or cfg.sigma_max is not None):
        raise ValueError("sigma_min / sigma_max set the ends of the polynomial, logsnr, time_uniform and discrete "
                         "schedules; schedule='diffusers' (the pipeline's own spacing) has the model's ends: pass "
                         "schedule=... or leave them out")
    if kind == "diffusers":
        if dtz:
            sig = spaced_sigmas(cfg, adapter, n, mu)
        else:
            sig = torch.cat([spaced_sigmas(cfg, adapter, n - 1, mu),
                             torch.tensor([model_range[0]], dtype=torch.float64)])
        where = f"the pipeline's {'flow times' if isinstance(adapter, FlowModel) else cfg.timestep_spacing} spacing"
    else:
        lo = model_range[0] if cfg.sigma_min is None else float(cfg.sigma_min)
        hi = model_range[1] if cfg.sigma_max is None else float(cfg.sigma_max)
        for key, v in (("sigma_min", cfg.sigma_min), ("sigma_max", cfg.sigma_max)):
            if v is not None and not isinstance(adapter, FlowModel):
                _in_range(key, float(v), model_range)
        # alphas_cumprod = 1 / (1 + sigma^2) of the training grid
        extra = {"alphas_cumprod": (2 * adapter.log_sigmas).exp().add(1).reciprocal()} \
            if kind == "discrete" else {}
        sig = get_schedule(kind, n, lo, hi, rho, **extra)
        ends = "the model's own range" if (cfg.sigma_min, cfg.sigma_max) == (None, None) else "sigma_min/sigma_max"
        where = f"{kind}{f' rho={rho:g}' if kind != 'logsnr' else ''} on sigma {hi:.4g} .. {lo:.4g} ({ends})"
    jump = ", then the jump to zero" if dtz else f", ending at sigma {float(sig[-1]):.4g}"
    head = f"fewstep's measured default for NFE {nfe - int(dtz)}{guided}: " if default else ""
    return sig, solver, afs, dtz, opts, f"{head}{_label(solver, opts, afs)}, {where}{jump}"


def _in_range(what: str, v: float, model_range: tuple[float, float]) -> None:
    """Refuse an EDM sigma outside a VP model's training range: its timestep would be clamped to the range's end,
    so the model would see another noise level than the solver assumes."""
    lo, hi = model_range
    if not lo * (1 - RANGE_SLACK) <= v <= hi * (1 + RANGE_SLACK):
        raise ValueError(f"{what} {v:g} is outside the model's own noise range, sigma {lo:.6g} .. {hi:.6g} (its "
                         "training timesteps); the model cannot be called there. Give values inside it (a final 0 in "
                         "sigmas means the jump to zero)")


def _custom_sigmas(sigmas: Any, adapter: VPModel | FlowModel, model_range: tuple[float, float]) -> torch.Tensor:
    """set_timesteps' ``sigmas`` as a float64 tensor: a flat list of numbers, at most MAX_INFERENCE_STEPS + 1, inside
    the model's range (EDM sigmas of a VP model; flow times in (0, 1]), optionally ending with 0."""
    try:
        arr = np.asarray(sigmas, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("sigmas must be a flat list of numbers (EDM sigmas; flow times for flow models)") from None
    if arr.ndim != 1:
        raise ValueError(f"sigmas must be a flat list of numbers, got shape {arr.shape}")
    if arr.size > MAX_INFERENCE_STEPS + 1:
        raise ValueError(f"sigmas: at most {MAX_INFERENCE_STEPS + 1} entries, got {arr.size}")
    s = torch.from_numpy(arr.copy())
    body = s[:-1] if s.numel() > 1 and float(s[-1]) == 0.0 else s
    if not torch.isfinite(body).all():
        return s  # the schedule check names the entry
    if isinstance(adapter, FlowModel):
        if body.numel() and not bool(((body > 0) & (body <= 1)).all()):
            raise ValueError(f"sigmas of a flow model are flow times in (0, 1] (optionally ending with 0), got "
                             f"{[float(v) for v in body[:8]]}")
        return s
    for v in body.tolist():
        if v > 0:  # non-positive entries: the schedule check says what is wrong
            _in_range("sigmas: entry", v, model_range)
    return s


def _label(solver: str, opts: dict, afs: bool) -> str:
    o = ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return f"{solver}{f' ({o})' if o else ''}{' +AFS' if afs else ''}"


def call_plan(stepper: Stepper) -> list[tuple[float, int, bool]]:
    """For every model call (dry run as :func:`..stepper.evaluation_sigmas`): its sigma, the index of the schedule
    interval it belongs to (the number of intervals for the denoise-to-zero call) and whether it opens the interval
    (made at the interval's start state)."""
    stepper = stepper.timing()
    req = stepper.start(torch.zeros(DRY_RUN_SHAPE, dtype=torch.float64))
    out: list[tuple[float, int, bool]] = []
    while isinstance(req, Request):
        out.append((float(req.sigma), stepper.i, stepper.at_interval_start))
        req = stepper.feed(torch.zeros_like(req.x))
    return out
