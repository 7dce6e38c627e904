"""Checks of a :class:`FewstepScheduler` config (and of ``set_timesteps``' arguments) before anything is allocated:
every key's type and range, with a ValueError / TypeError that names the key and what is allowed. A config usually
comes from someone else's ``scheduler_config.json``, so nothing in it is trusted."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = ["MAX_TRAIN_TIMESTEPS", "MAX_INFERENCE_STEPS", "MAX_ABS_MU", "check_config", "check_mu", "check_steps",
           "check_choice", "check_guidance"]

MAX_TRAIN_TIMESTEPS = 100_000  # diffusers' models use 1000; the bound keeps a hostile config from allocating
MAX_INFERENCE_STEPS = 100_000
MAX_ABS_MU = 10.0  # Flux passes mu of about 0.5 .. 1.2; exp(mu) is the time shift factor
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _int(key: str, v: Any, lo: int, hi: int, what: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{key} must be an int{what}, got {type(v).__name__} {v!r}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{key} must be an int in {lo} .. {hi}{what}, got {v!r}")
    return int(v)


def _real(key: str, v: Any, allowed: str, lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = True,
          hi_open: bool = False) -> float:
    """A finite real number in (lo, hi] (or the bounds ``lo_open`` / ``hi_open`` say); ``allowed`` says so in words."""
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"{key} must be {allowed}, got {type(v).__name__} {v!r}")
    f = float(v)
    ok = math.isfinite(f) and (lo < f if lo_open else lo <= f) and (f < hi if hi_open else f <= hi)
    if not ok:
        raise ValueError(f"{key} must be {allowed}, got {v!r}")
    return f


def _flag(key: str, v: Any, optional: bool = False) -> None:
    if not (isinstance(v, (bool, np.bool_)) or (optional and v is None)):
        raise TypeError(f"{key} must be true or false{' (or None)' if optional else ''}, got {type(v).__name__} {v!r}")


def check_choice(key: str, v: Any, choices: tuple[str, ...], optional: bool = False) -> None:
    if (optional and v is None) or (isinstance(v, str) and v in choices):
        return
    if not isinstance(v, str) and not (optional and v is None):
        raise TypeError(f"{key} must be one of {', '.join(choices)}{' or None' if optional else ''}, got "
                        f"{type(v).__name__} {v!r}")
    raise ValueError(f"{key} must be one of {', '.join(choices)}{' or None' if optional else ''}, got {v!r}")


def _betas(v: Any, T: int) -> None:
    """trained_betas: T finite numbers in (0, 1), one per training timestep."""
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__"):
        raise TypeError(f"trained_betas must be a list of {T} numbers in (0, 1) (one per training timestep, "
                        f"num_train_timesteps={T}) or None, got {type(v).__name__}")
    if len(v) != T:
        raise ValueError(f"trained_betas has {len(v)} entries but num_train_timesteps is {T}; give one beta per "
                         "training timestep")
    try:
        b = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("trained_betas must be a flat list of numbers in (0, 1)") from None
    if b.ndim != 1 or b.dtype == object:
        raise ValueError(f"trained_betas must be a flat list of numbers, got shape {b.shape}")
    if not (np.isfinite(b).all() and (b > 0).all() and (b < 1).all()):
        bad = b[~(np.isfinite(b) & (b > 0) & (b < 1))]
        raise ValueError(f"trained_betas must be finite numbers in (0, 1) (0 or 1 make sigma 0 or infinite); "
                         f"{bad.size} are not, e.g. {bad[0]!r}")


def check_config(cfg: Any) -> None:
    """Refuse a scheduler config whose keys have the wrong type or lie outside what fewstep can run."""
    T = _int("num_train_timesteps", cfg["num_train_timesteps"], 2, MAX_TRAIN_TIMESTEPS,
             " (the model's number of training timesteps)")
    for key in ("beta_start", "beta_end"):
        _real(key, cfg[key], "a number in (0, 1)", 0.0, 1.0, hi_open=True)
    check_choice("beta_schedule", cfg["beta_schedule"], BETA_SCHEDULES)
    if cfg["trained_betas"] is not None:
        _betas(cfg["trained_betas"], T)
    if not (cfg["solver"] is None or isinstance(cfg["solver"], str)):
        raise TypeError(f"solver must be a solver name (fewstep.SOLVERS) or None (the measured default), got "
                        f"{type(cfg['solver']).__name__}")
    _flag("afs", cfg["afs"], optional=True)
    _flag("denoise_to_zero", cfg["denoise_to_zero"], optional=True)
    _flag("use_karras_sigmas", cfg["use_karras_sigmas"])
    _flag("use_dynamic_shifting", cfg["use_dynamic_shifting"])
    _int("steps_offset", cfg["steps_offset"], 0, T - 1, f" (below num_train_timesteps={T})")
    if cfg["rho"] is not None:
        _real("rho", cfg["rho"], "a positive finite number (or None)")
    for key in ("sigma_min", "sigma_max"):
        if cfg[key] is not None:  # 0 is refused, never read as "not given"
            _real(key, cfg[key], "a positive finite EDM sigma (or None: the model's own)")
    if cfg["sigma_min"] is not None and cfg["sigma_max"] is not None and not cfg["sigma_min"] < cfg["sigma_max"]:
        raise ValueError(f"sigma_min ({cfg['sigma_min']!r}) must be below sigma_max ({cfg['sigma_max']!r})")
    _real("shift", cfg["shift"], "a positive finite number (flow time shift; 1 = none)", 0.0, 1e4)
    check_guidance(cfg["guidance_scale"])
    for key in ("base_shift", "max_shift"):
        _real(key, cfg[key], f"a finite number in [-{MAX_ABS_MU:g}, {MAX_ABS_MU:g}] (FlowMatch's mu at the base / "
              "largest image sequence length)", -MAX_ABS_MU, MAX_ABS_MU, lo_open=False)
    _int("base_image_seq_len", cfg["base_image_seq_len"], 1, 2**24, " (FlowMatch's resolution-dependent shift)")
    _int("max_image_seq_len", cfg["max_image_seq_len"], cfg["base_image_seq_len"] + 1, 2**24,
         " (above base_image_seq_len)")


def check_guidance(w: Any) -> float | None:
    """guidance_scale: None (unguided) or a finite number >= 0."""
    if w is None:
        return None
    return _real("guidance_scale", w, "a finite number >= 0 (the classifier-free guidance scale; None or 1: "
                 "unguided)", 0.0, 1e4, lo_open=False)


def check_mu(mu: Any) -> float | None:
    """set_timesteps' ``mu`` (resolution-dependent flow shift): None or a finite number of modest size."""
    if mu is None:
        return None
    return _real("mu", mu, f"a finite number in [-{MAX_ABS_MU:g}, {MAX_ABS_MU:g}] (the flow time shift is exp(mu))",
                 -MAX_ABS_MU, MAX_ABS_MU, lo_open=False)


def check_steps(n: Any) -> int:
    """num_inference_steps: the number of model calls."""
    return _int("num_inference_steps", n, 1, MAX_INFERENCE_STEPS, " (the number of model calls)")
