"""A diffusers model's noise settings (what its output means and its training noise schedule), resolved from its
scheduler config and/or keyword arguments and never assumed: :func:`resolve_noise_config`, and
:func:`describe_noise` for one line about them. A config saved by :class:`FewstepScheduler` (``_class_name``) gets
that class's defaults, as diffusers loads it, so this module comes after the scheduler."""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from ...jsonio import MAX_TRAIN_TIMESTEPS
from .backend import SchedulerMixin, diffusers
from .scheduler import FewstepScheduler
from .spaces import PREDICTION_TYPES, alphas_cumprod, is_flow_config

__all__ = ["NOISE_KEYS", "resolve_noise_config", "describe_noise"]

# Keys of a diffusers scheduler config that define how a UNet was trained (what its output and time mean).
NOISE_KEYS = ("prediction_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas")
# The range of a beta schedule given by name, when not given: diffusers' DDPMScheduler defaults (recorded in
# noise_config["defaults"] and shown by describe()). prediction_type and the schedule itself are never defaulted.
_RANGE_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02}


def _class_defaults(cfg: dict) -> tuple[str | None, dict]:
    """Defaults of the scheduler class a config names (``_class_name``), as diffusers applies them on loading."""
    name = cfg.get("_class_name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"_class_name must be a string, got {str(name)[:60]!r}")
    cls = FewstepScheduler if name == "FewstepScheduler" else getattr(diffusers, str(name), None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        return None, {}
    params = inspect.signature(cls.__init__).parameters
    empty = inspect.Parameter.empty
    return name, {k: p.default for k, p in params.items() if k in NOISE_KEYS and p.default is not empty}


def _check_types(merged: dict[str, Any], where: str) -> None:
    """Strict JSON types of the noise settings (a config file may say ``"beta_start": "0.1"`` or ``true``)."""
    import math

    for k in ("prediction_type", "beta_schedule"):
        if k in merged and not isinstance(merged[k], str):
            raise ValueError(f"{k}{where} must be a string, got {str(merged[k])[:60]!r}")
    for k in ("beta_start", "beta_end"):
        v = merged.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{k}{where} must be a finite number, got {str(v)[:60]!r}")
    tb = merged.get("trained_betas")
    if tb is not None:
        if isinstance(tb, torch.Tensor) or type(tb).__module__ == "numpy":
            tb = list(tb.tolist()) if hasattr(tb, "tolist") else tb
        if not isinstance(tb, (list, tuple)) or len(tb) > MAX_TRAIN_TIMESTEPS or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in tb):
            raise ValueError(f"trained_betas{where} must be a list of at most {MAX_TRAIN_TIMESTEPS} finite numbers")
        merged["trained_betas"] = list(tb)


def resolve_noise_config(scheduler_config: Any = None, *, file: str | os.PathLike | None = None,
                         context: str | None = None, **items: Any) -> dict[str, Any]:
    """The noise settings of a diffusers model: what its output means and its training noise schedule.

    ``scheduler_config``: a scheduler config (dict, ``scheduler.config``), read from ``file`` if given (then its
    entries count as "file", else as "argument"). A config that names its scheduler class (``_class_name``, as
    saved configs do) gets the class's defaults for keys it lacks, as diffusers loads it. ``items``: keyword
    settings (``prediction_type``, ``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``,
    ``trained_betas``; None = not given), which override the config. A FlowMatch* config or
    ``prediction_type="flow_prediction"`` is a rectified-flow model. A VP model needs ``prediction_type`` and
    ``beta_schedule`` (or ``trained_betas``); if either is missing a ValueError names it and how to pass it
    (``context``: where the settings were looked for, for that message).

    Returns a dict: ``prediction_type``, ``num_train_timesteps``, the beta keys (VP), ``source`` ("file",
    "argument" or "file+argument"), ``file`` (path or None), ``class_defaults`` / ``defaults`` (keys taken from
    the named scheduler class / from diffusers' DDPMScheduler range defaults)."""
    unknown = set(items) - set(NOISE_KEYS)
    if unknown:
        raise TypeError(f"unknown noise setting(s) {', '.join(sorted(unknown))}; known: {', '.join(NOISE_KEYS)}")
    if scheduler_config is not None and not hasattr(scheduler_config, "items"):
        raise TypeError(f"scheduler_config must be a dict (e.g. scheduler.config), got "
                        f"{type(scheduler_config).__name__}")
    cfg = {k: v for k, v in dict(scheduler_config or {}).items() if v is not None}
    given = {k: v for k, v in items.items() if v is not None}
    cfg_origin = "file" if file is not None else "argument"
    origin = {k: cfg_origin for k in NOISE_KEYS if k in cfg}
    origin.update({k: "argument" for k in given})
    cls_name, cls_defaults = _class_defaults(cfg)
    flow = given.get("prediction_type", "flow_prediction" if is_flow_config(cfg) else cfg.get(
        "prediction_type", cls_defaults.get("prediction_type"))) == "flow_prediction"
    merged = {**{k: v for k, v in cls_defaults.items() if v is not None}, **cfg, **given}
    _check_types(merged, f" ({file})" if file is not None else "")
    from_class = sorted(k for k in cls_defaults if k not in origin and cls_defaults[k] is not None
                        and (not flow or k in ("prediction_type", "num_train_timesteps")))
    if flow:
        if "prediction_type" not in merged or merged["prediction_type"] != "flow_prediction":
            merged["prediction_type"] = "flow_prediction"
            origin.setdefault("prediction_type", cfg_origin)  # a FlowMatch config: its class says flow
        keys = ("prediction_type", "num_train_timesteps")
        missing = []
    else:
        keys = NOISE_KEYS
        missing = [k for k in ("prediction_type",) if k not in merged]
        if "beta_schedule" not in merged and "trained_betas" not in merged:
            missing.append("beta_schedule (or trained_betas)")
    if missing:
        it = "it" if len(missing) == 1 else "them"
        if context is None:
            context = f"{file} does not give {it}" if file is not None else "no scheduler config was given"
        raise ValueError(
            f"the model's {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} unknown ({context}), and "
            f"fewstep does not guess {it}. Pass keywords, e.g. "
            "prediction_type='epsilon', beta_schedule='linear' (plus beta_start=, beta_end=, num_train_timesteps= "
            "unless 0.0001, 0.02, 1000), or scheduler_config= the training scheduler's config (e.g. "
            "DDPMScheduler(...).config; FlowMatchEulerDiscreteScheduler().config for a flow model), or save that "
            "scheduler into the model folder (scheduler.save_pretrained(folder))")
    defaults = []
    if not flow and merged.get("trained_betas") is not None:
        merged.setdefault("num_train_timesteps", len(merged["trained_betas"]))
        origin.setdefault("num_train_timesteps", origin["trained_betas"])
    # beta_start / beta_end mean nothing for trained betas or the cosine schedule: filled, but not reported
    named_range = merged.get("trained_betas") is None and merged.get("beta_schedule") != "squaredcos_cap_v2"
    unused = () if flow or named_range else ("beta_start", "beta_end")
    for k, v in _RANGE_DEFAULTS.items():
        if k in keys and k not in merged:
            merged[k] = v
            if k not in unused:
                defaults.append(k)
    out: dict[str, Any] = {k: merged.get(k) for k in keys}
    if not flow:
        out["trained_betas"] = list(map(float, out["trained_betas"])) if out["trained_betas"] is not None else None
    T = out["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or not 2 <= T <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"num_train_timesteps must be an int in [2, {MAX_TRAIN_TIMESTEPS}], got {T!r}"
                         + (f" ({file})" if file is not None else ""))
    if not flow and out["trained_betas"] is not None and len(out["trained_betas"]) != T:
        raise ValueError(f"trained_betas has {len(out['trained_betas'])} entries but num_train_timesteps is {T}")
    if out["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                         f"got {out['prediction_type']!r}")
    if not flow:
        ac = alphas_cumprod(T, out["beta_start"], out["beta_end"], out["beta_schedule"], out["trained_betas"])
        if not (bool(torch.isfinite(ac).all()) and 0 < float(ac.min()) and float(ac.max()) < 1):
            raise ValueError(f"the beta settings {({k: out[k] for k in NOISE_KEYS[2:5]})} give alphas_cumprod "
                             "outside (0, 1); check beta_start / beta_end")
    used = {origin.get(k) for k in keys} - {None}
    out["source"] = "+".join(s for s in ("file", "argument") if s in used) or cfg_origin
    out["file"] = str(file) if file is not None and "file" in used else None
    out["scheduler_class"] = cls_name
    out["class_defaults"] = [k for k in from_class if k in keys]
    out["defaults"] = defaults
    return out


def describe_noise(nc: dict, sigma_min: float, sigma_max: float) -> str:
    """A :func:`resolve_noise_config` result and the model's sigma range in words, for ``describe()``."""
    T = nc["num_train_timesteps"]
    if nc["prediction_type"] == "flow_prediction":
        kind = f"rectified flow, velocity prediction, {T} training steps"
    else:
        if nc.get("trained_betas") is not None:
            betas = "trained betas"
        elif nc["beta_schedule"] == "squaredcos_cap_v2":
            betas = "squaredcos_cap_v2 betas"
        else:
            betas = f"{nc['beta_schedule']} betas {nc['beta_start']:g}..{nc['beta_end']:g}"
        kind = f"{PREDICTION_TYPES[nc['prediction_type']]} prediction, VP {betas}, {T} training steps"
    src = {"file": f"from {nc['file']}", "argument": "from arguments",
           "file+argument": f"from {nc['file']} and arguments"}[nc["source"]]
    notes = []
    if nc.get("class_defaults"):
        notes.append(f"{nc['scheduler_class']} defaults for {', '.join(nc['class_defaults'])}")
    if nc.get("defaults"):
        notes.append(f"diffusers defaults for {', '.join(nc['defaults'])}")
    extra = f"; {'; '.join(notes)}" if notes else ""
    return f"{kind}, sigma {sigma_min:.4g}..{sigma_max:.4g} (noise settings {src}{extra})"
