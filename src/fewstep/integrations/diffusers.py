"""diffusers integration: a scheduler that runs any fewstep solver or learned sampler (AMED, DyWeight, EPD, PAS,
GS) inside a diffusers pipeline, and a wrapper that turns a diffusers UNet into a fewstep denoiser (with mid-block
features for AMED training).
Needs the optional ``diffusers`` package (``pip install 'fewstep[diffusers]'``).

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="ipndm")
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, predictor="p.safetensors")  # any learned

How it maps onto diffusers' scheduler API (diffusers calls ``step`` once per model call):
  * ``num_inference_steps`` is the number of model calls (NFE); the fewstep schedule gets as many sigmas as
    that NFE allows for the solver (``fewstep.steps_for_nfe``), or a ValueError names the NFEs it can do.
  * ``timesteps`` lists every model call in advance: the solver is dry-run once (:mod:`.stepper`), so
    Heun/DPM-2/AMED intermediate points and AMED-Plugin insertions are ordinary entries. Their sigmas map to
    the model's time by interpolation in log sigma of the discrete training sigmas (fractional timesteps,
    ``timestep_type="interp"``, exact for schedule points on the training grid) or to the nearest training
    timestep (``"nearest"``, what diffusers' schedulers pass; the model then sees a slightly different noise
    level than the solver assumes).
  * The step index is a counter, never looked up from the timestep value, so duplicate timesteps (e.g.
    Karras sigmas rounded to integers, huggingface/diffusers#5687, #12771) cannot shift the schedule.
  * The final jump to sigma = 0 (``denoise_to_zero``, diffusers' ``final_sigmas_type="zero"``) returns the
    last x0 prediction, which removes the residual noise that ending at sigma_min leaves (diffusers#5689);
    default on without a predictor. As in diffusers, this jump counts as the last (first-order) step for
    ``lower_order_final``, so DPM-Solver++ and UniPC reproduce DPMSolverMultistep / UniPCMultistep (below 15
    steps, where diffusers stops lowering the order; order 2 matches at every step count). A predictor (a
    learned sampler of :mod:`fewstep.learned` or :mod:`fewstep.amed`, or the path of its checkpoint, read by
    :func:`fewstep.learned.load`) brings its own schedule, solver and AFS, keeps the steps it was trained with
    and ends at its last sigma unless ``denoise_to_zero=True``.
  * Learned samplers whose model calls differ from their solver's sigmas are scheduled by their calls: with time
    shifts xi the model is called at sigma * exp(xi_n) (DyWeight and EPD also scale their model-input times), and
    ``timesteps`` / ``sigmas`` hold those shifted sigmas, while the solver steps with its own. EPD's K parallel
    evaluations per step are K separate entries here (a pipeline makes them one after another), so
    ``num_inference_steps`` is the sampler's NFE (``p.nfe()``), not its sequential rounds (``p.rounds()``).
  * ``sample`` lives in the pipeline's space: VP (x_vp = x_edm / sqrt(1 + sigma^2), ``init_noise_sigma = 1``,
    as DPMSolverMultistep) or rectified flow (x_t = x_edm / (1 + sigma), configs of FlowMatch* schedulers,
    ``prediction_type="flow_prediction"``). The solver runs in fewstep's EDM space in float64 (float32 on MPS).
    Conversions of eps / v / x0 / velocity outputs are those of :mod:`fewstep.denoisers.adapters`.
  * At the first model call of every interval the solver takes the pipeline's ``sample`` as its state, so
    pipelines that edit latents between steps keep working as with diffusers' own schedulers.
  * A feature-based AMED predictor picks evaluation times per sample during sampling and cannot be scheduled in
    advance (the tables of every other learned sampler can): use a predictor-free table (``features="none"``)
    with the scheduler, or :func:`fewstep.sample` with :class:`DiffusersDenoiser` for feature predictors.
  * Image-to-image (``StableDiffusionImg2ImgPipeline`` and the like): ``add_noise(x0, noise, t)`` noises in the
    pipeline's space at the timestep's sigma (VP: alpha x0 + sigma_vp noise; flow: (1 - t) x0 + t noise), and
    ``set_begin_index(b)`` (what the pipeline calls with ``t_start``) starts the solver at model call ``b``, so the
    pipeline makes exactly ``len(timesteps[b:])`` calls. The solver then runs on the tail of the schedule from
    that call's sigma, without AFS (it assumes pure noise). A start inside a two-evaluation step (Heun / DPM-2 /
    AMED) begins with an Euler step from that sigma to the next schedule point (for Heun's corrector call the
    sigma already is that point, so the step has zero length), which keeps the call count. A predictor was
    trained from pure noise on its one schedule and refuses a begin index above 0.

What a pipeline must call so that it makes exactly ``len(scheduler.timesteps)`` model calls (= the NFE, = the
trained NFE of a predictor, AFS included)::

    scheduler.set_timesteps(nfe)
    sample = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:                              # one model call per entry, no more
        model_input = scheduler.scale_model_input(sample, t)   # may differ from sample (AFS, time shift)
        out = model(model_input, t)                            # the only model call of the iteration
        sample = scheduler.step(out, t, sample).prev_sample    # the sample the pipeline keeps is `sample`

AFS (analytical first step, ``afs=True`` or a predictor trained with it) replaces the first model call by the
closed-form denoiser, so it saves one call: ``timesteps`` holds NFE entries and none of them is spent on the
analytical step. The scheduler makes that step itself inside ``scale_model_input`` at the first entry (from
the initial ``sample``), and the first model call is made at the point after it. Likewise, when a learned
sampler's first model call is at another sigma than the schedule's first (time shift xi_0, DyWeight's time scale),
``scale_model_input`` rescales the initial ``sample`` to that sigma's input. Stable Diffusion-style pipelines
follow this loop. ``DDPMPipeline`` (and loops like it) never calls ``scale_model_input``, so it feeds the initial
noise to the model at the first entry: without AFS or such a shift that is right; otherwise ``step`` raises a
RuntimeError rather than return a wrong sample. Run such models with :func:`run_pipeline_loop` (the loop above,
with classifier-free guidance for conditional UNets), which makes exactly ``len(scheduler.timesteps)`` calls.

Loading your own model (:func:`load_denoiser`) makes no silent assumption about how it was trained: the
prediction type and the noise schedule come from the folder's scheduler config, else from keyword arguments,
else a ValueError names what is missing; ``den.noise_config`` records which (``den.describe()`` in one line),
``den.model_id`` is a digest of the UNet's weights and ``den.sigma_min`` / ``den.sigma_max`` its training range.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

INSTALL_HINT = "the diffusers integration needs the 'diffusers' package: pip install 'fewstep[diffusers]'"


class DiffusersNotInstalledError(ModuleNotFoundError, ValueError):
    """``diffusers`` is not installed (or fails to import). A ModuleNotFoundError, so ``except ImportError`` works;
    also a ValueError, the class fewstep's CLI reports as a one-line error. (It cannot also be an OSError:
    Python refuses a class deriving from both ImportError and OSError.)"""


try:
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as _e:
    if _e.name == "diffusers":  # not installed (or blocked with sys.modules["diffusers"] = None)
        raise DiffusersNotInstalledError(INSTALL_HINT, name="diffusers") from None
    raise DiffusersNotInstalledError(
        f"the diffusers integration could not import the installed 'diffusers' package ({_e}); reinstall it: "
        "pip install --upgrade 'fewstep[diffusers]'", name="diffusers") from _e

from ..denoisers.adapters import FlowModel, VPModel
from ..io import tensor_digest
from ..sampling import steps_for_nfe
from ..schedules import get_schedule
from .stepper import DRY_RUN_SHAPE, Request, Stepper, evaluation_sigmas

__all__ = ["FewstepScheduler", "FewstepSchedulerOutput", "DiffusersDenoiser", "load_denoiser", "alphas_cumprod",
           "PREDICTION_TYPES", "FLOW_T_MAX", "resolve_noise_config", "model_sigma_range", "unet_model_id",
           "run_pipeline_loop", "DiffusersNotInstalledError", "INSTALL_HINT"]

# diffusers prediction_type -> fewstep adapter prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}
SCHEDULES = ("diffusers", "polynomial", "logsnr", "discrete")
SPACINGS = ("linspace", "leading", "trailing")
# Flow time t = 1 is sigma = inf in EDM terms; the solver starts at this t instead (model time 1000 -> 999.999).
FLOW_T_MAX = 1.0 - 1e-6


def alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                   beta_schedule: str = "linear", trained_betas: Any = None) -> torch.Tensor:
    """alphas_cumprod of a diffusers VP beta schedule, computed in float32 as diffusers does, returned as float64."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

        betas = betas_for_alpha_bar(num_train_timesteps).to(torch.float32)
    else:
        raise ValueError(f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', got {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float64)


def _adapter(prediction_type: str, config: Any, timestep_type: str) -> VPModel | FlowModel:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    if prediction_type == "flow_prediction":
        return FlowModel(None, "velocity", time_scale=float(config["num_train_timesteps"]))
    ac = alphas_cumprod(config["num_train_timesteps"], config.get("beta_start", 1e-4), config.get("beta_end", 0.02),
                        config.get("beta_schedule", "linear"), config.get("trained_betas"))
    return VPModel(None, PREDICTION_TYPES[prediction_type], alphas_cumprod=ac, timestep=timestep_type)


def _to_edm(adapter: VPModel | FlowModel, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM state from a pipeline sample at ``sigma`` (inverse of the adapter's ``model_input``)."""
    s = sigma.to(sample)
    return sample * (1 + s) if isinstance(adapter, FlowModel) else sample * (1 + s**2).sqrt()


def _method_name(predictor: Any) -> str:
    """How messages name a predictor: its learned method (``dyweight``, ``epd``, ...) or AMED."""
    method = getattr(predictor, "config", {}).get("method")
    return str(method) if method else "AMED"


def _is_flow_config(cfg: dict) -> bool:
    """A FlowMatch* scheduler config: named so (saved configs), or flow keys without a VP beta schedule."""
    if str(cfg.get("_class_name", "")).startswith("FlowMatch"):
        return True
    return "prediction_type" not in cfg and "beta_schedule" not in cfg and ("shift" in cfg or "use_dynamic_shifting" in cfg)


def _flow_sigma(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(max=FLOW_T_MAX)
    return t / (1 - t)


def model_sigma_range(adapter: VPModel | FlowModel, num_train_timesteps: int) -> tuple[float, float]:
    """(sigma_min, sigma_max) in EDM sigma that a model was trained on: for a VP model the sigmas of its first
    and last training timestep (from alphas_cumprod); for a flow model those of t = 1/T and t = 1 (clamped to
    ``FLOW_T_MAX``). Used by :class:`FewstepScheduler` and :class:`DiffusersDenoiser` alike."""
    if isinstance(adapter, FlowModel):
        T = num_train_timesteps
        return float(_flow_sigma(torch.tensor(1.0 / T, dtype=torch.float64))), float(_flow_sigma(torch.tensor(1.0)))
    ls = adapter.log_sigmas
    return float(ls[0].exp()), float(ls[-1].exp())


# ---------------------------------------------------------------------------------------------------------------
# The model's noise settings: from its scheduler config, or from arguments, never assumed
# ---------------------------------------------------------------------------------------------------------------

# Keys of a diffusers scheduler config that define how a UNet was trained (what its output and time mean).
NOISE_KEYS = ("prediction_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas")
# The range of a beta schedule given by name, when not given: diffusers' DDPMScheduler defaults (recorded in
# noise_config["defaults"] and shown by describe()). prediction_type and the schedule itself are never defaulted.
_RANGE_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02}


def _class_defaults(cfg: dict) -> tuple[str | None, dict]:
    """Defaults of the scheduler class a config names (``_class_name``), as diffusers applies them on loading."""
    name = cfg.get("_class_name")
    cls = FewstepScheduler if name == "FewstepScheduler" else getattr(diffusers, str(name), None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        return None, {}
    params = inspect.signature(cls.__init__).parameters
    empty = inspect.Parameter.empty
    return name, {k: p.default for k, p in params.items() if k in NOISE_KEYS and p.default is not empty}


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
    flow = given.get("prediction_type", "flow_prediction" if _is_flow_config(cfg) else cfg.get(
        "prediction_type", cls_defaults.get("prediction_type"))) == "flow_prediction"
    merged = {**{k: v for k, v in cls_defaults.items() if v is not None}, **cfg, **given}
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
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {T!r}")
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


def _describe_noise(nc: dict, sigma_min: float, sigma_max: float) -> str:
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


@dataclass
class FewstepSchedulerOutput(BaseOutput):
    """``prev_sample``: the sample for the next model call (or the result); ``pred_original_sample``: x0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a fewstep solver (any name in ``fewstep.SOLVERS``) or a learned sampler.

    Config (besides the model's own ``num_train_timesteps``, ``beta_*``, ``trained_betas``, ``prediction_type``,
    ``shift``/``use_dynamic_shifting`` for flow models, all read from ``pipe.scheduler.config``):
      * ``solver``, ``solver_options`` (dict, keyword options of the solver), ``afs``;
      * ``schedule``: "diffusers" (the pipeline's own timestep spacing, ``timestep_spacing``; uniform flow time
        with shift for flow models), "polynomial" (EDM/Karras, ``rho``), "logsnr" or "discrete" (VP training
        timesteps), between ``sigma_min`` and ``sigma_max`` (EDM sigmas, default: the model's range);
        ``use_karras_sigmas`` in a source config selects "polynomial";
      * ``denoise_to_zero``: end with x0 of the last evaluation (None: yes unless a predictor is given);
      * ``timestep_type``: "interp" (fractional timesteps) or "nearest".
    ``predictor``: a learned sampler (:mod:`fewstep.learned`: DyWeight, EPD, PAS, GS; :mod:`fewstep.amed`: an AMED
    table) or the path of its checkpoint (:func:`fewstep.learned.load`, any format); it replaces ``solver``,
    ``afs`` and the schedule, and is not part of the saved config.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    ignore_for_config = ["predictor"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        solver: str = "dpmpp",
        solver_options: dict | None = None,
        afs: bool = False,
        schedule: str = "diffusers",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        denoise_to_zero: bool | None = None,
        timestep_type: str = "interp",
        use_karras_sigmas: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        predictor: Any = None,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(SPACINGS)}, got {timestep_spacing!r}")
        if timestep_type not in ("interp", "nearest"):
            raise ValueError(f"timestep_type must be 'interp' or 'nearest', got {timestep_type!r}")
        if solver_options is not None and not isinstance(solver_options, dict):
            raise TypeError(f"solver_options must be a dict of solver keyword options, got {type(solver_options).__name__}")
        self.adapter = _adapter(prediction_type, self.config, timestep_type)
        self.is_flow = isinstance(self.adapter, FlowModel)
        if self.is_flow and schedule == "discrete":
            raise ValueError("schedule='discrete' needs a VP model with alphas_cumprod, not a flow model")
        self.predictor = None
        self._set_predictor(predictor)
        Stepper(solver, get_schedule("logsnr", 3), **(solver_options or {}))  # validate solver and options now
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._stepper: Stepper | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._run: Any = None
        self._plan_info: list[tuple[float, int, bool]] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As :meth:`ConfigMixin.from_config`, plus ``predictor=`` and flow detection (FlowMatch* configs
        get ``prediction_type="flow_prediction"``)."""
        predictor = kwargs.pop("predictor", None)
        cfg = dict(config) if isinstance(config, dict) else {}
        if _is_flow_config(cfg):
            kwargs.setdefault("prediction_type", "flow_prediction")
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        sched = out[0] if return_unused_kwargs else out
        if predictor is not None:
            sched._set_predictor(predictor)
        return out

    def _set_predictor(self, predictor: Any) -> None:
        """Take a learned sampler, or load one from a checkpoint path (every format :func:`fewstep.learned.load`
        reads); refuse what a scheduler cannot run."""
        if predictor is None:
            self.predictor = None
            return
        if isinstance(predictor, (str, os.PathLike)):
            from ..learned import load

            predictor = load(predictor)
        if not (callable(getattr(predictor, "sampling_setup", None)) and hasattr(predictor, "config")):
            raise TypeError("predictor must be a learned sampler (fewstep.learned.train / load, fewstep.amed.train / "
                            f"load) or the path of its checkpoint, got {type(predictor).__name__}")
        if getattr(predictor, "uses_features", False):
            raise ValueError(
                f"predictor: a feature-based {_method_name(predictor)} predictor picks each sample's evaluation times "
                "from the network's features during sampling, so a scheduler cannot list its timesteps in advance; "
                "train a predictor-free table (fewstep.amed.train(..., features='none')) for pipelines, or use "
                "fewstep.sample with DiffusersDenoiser for this one")
        _, sig, solver, afs = predictor.sampling_setup(lambda x, s: x)
        Stepper(solver, sig, afs=afs)  # validates the schedule and solver
        self.predictor = predictor

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in ``timesteps`` (a counter, never looked up by timestep value)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index in ``timesteps`` of the first model call (image-to-image); None: not set (the start)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at model call ``begin_index`` (diffusers' img2img pipelines call this after ``set_timesteps``
        with ``t_start * order``): the pipeline then makes exactly ``len(timesteps[begin_index:])`` calls, from
        latents noised with :meth:`add_noise` at ``timesteps[begin_index]``. AFS is off for a start above 0."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index must be a non-negative int, got {begin_index!r}")
        begin_index = int(begin_index)
        if begin_index > 0 and self.predictor is not None:
            raise ValueError(
                f"begin_index={begin_index}: the {_method_name(self.predictor)} predictor cannot start mid-schedule "
                "(image-to-image / strength < 1); it was trained from pure noise on its one schedule. Use a plain "
                "solver (FewstepScheduler(solver=...)), or train a predictor for the partial schedule "
                "(fewstep.learned.train(..., sigma_max=<the start sigma>)) and sample it from noise")
        if self.num_inference_steps is not None and begin_index >= self.num_inference_steps:
            raise ValueError(f"begin_index={begin_index} leaves no model call of the {self.num_inference_steps} "
                             "planned; it must be below len(timesteps)")
        if self._step_index is not None:
            raise RuntimeError("set_begin_index must be called before the first step (after set_timesteps)")
        self._begin_index = begin_index

    def _sigma_of(self, timestep: Any) -> torch.Tensor:
        """EDM sigma (float64) of each entry of ``timestep`` (diffusers' rule: the step index or begin index when
        set, else the first equal entry of ``timesteps``, else the model's time-to-sigma conversion)."""
        t = torch.as_tensor(timestep).reshape(-1).to(torch.float64).cpu()
        n = t.numel()
        if self._stepper is not None and self._begin_index is not None:
            k = self._step_index if self._step_index is not None else self._begin_index
            k = min(k, len(self._plan_info) - 1)
            return torch.full((n,), self._plan_info[k][0], dtype=torch.float64)
        out = torch.empty(n, dtype=torch.float64)
        ts = self.timesteps.to(torch.float64).cpu() if self.timesteps is not None else None
        T = self.config.num_train_timesteps
        for j, v in enumerate(t.tolist()):
            hit = (ts == v).nonzero() if ts is not None else torch.empty(0)
            if hit.numel():
                out[j] = self._plan_info[int(hit[0])][0]
            elif self.is_flow:
                out[j] = _flow_sigma(torch.tensor(v / T, dtype=torch.float64))
            else:
                ls = self.adapter.log_sigmas.cpu()
                x = min(max(v, 0.0), float(ls.numel() - 1))
                lo = min(math.floor(x), ls.numel() - 2)
                w = x - lo
                out[j] = ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()
        return out

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """``original_samples`` (x0, pipeline space) noised to the sigma of ``timesteps``, in the pipeline's
        space: VP alpha x0 + sigma_vp noise (alpha = 1 / sqrt(1 + s^2), sigma_vp = s alpha), flow
        (1 - t) x0 + t noise (t = s / (1 + s)). With a begin index set (img2img), the sigma of the current call."""
        s = self._sigma_of(timesteps)
        if s.numel() == 1 and original_samples.ndim > 0:
            s = s.expand(original_samples.shape[0])
        if self.is_flow:
            a, b = 1 / (1 + s), s / (1 + s)
        else:
            a = (1 + s**2).rsqrt()
            b = s * a
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        a = a.to(original_samples.device, original_samples.dtype).reshape(shape)
        b = b.to(original_samples.device, original_samples.dtype).reshape(shape)
        return a * original_samples + b * noise.to(original_samples)

    # ------------------------------------------------------------------ schedule
    def _model_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) in EDM sigma that the model was trained on."""
        return model_sigma_range(self.adapter, self.config.num_train_timesteps)

    def _spaced(self, n: int, mu: float | None) -> torch.Tensor:
        """``n`` descending EDM sigmas of the pipeline's own spacing (diffusers' set_timesteps formulas)."""
        cfg = self.config
        T = cfg.num_train_timesteps
        if self.is_flow:
            t_min = 1.0 / T if cfg.use_dynamic_shifting else self._shift(1.0 / T, None)
            t = torch.linspace(1.0, t_min, n, dtype=torch.float64)
            return _flow_sigma(self._shift(t, mu))
        if cfg.timestep_spacing == "linspace":
            steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        elif cfg.timestep_spacing == "leading":
            steps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + cfg.steps_offset
        else:
            steps = np.arange(T, 0, -T / n).round() - 1
        idx = torch.from_numpy(steps.astype(np.int64).copy())
        return self.adapter.log_sigmas[idx].exp()

    def _shift(self, t: Any, mu: float | None) -> Any:
        """Flow time shift: static ``shift`` (SD3) or resolution-dependent ``mu`` (exponential, Flux)."""
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting=True needs mu= in set_timesteps (as the pipeline passes it)")
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        s = self.config.shift
        return s * t / (1 + (s - 1) * t)

    def _plan(self, nfe: int | None, sigmas: Any, mu: float | None) -> tuple[torch.Tensor, Any, bool, bool, dict]:
        """(schedule, solver, afs, denoise_to_zero, options) for ``nfe`` model calls or custom ``sigmas``."""
        cfg = self.config
        if self.predictor is not None:
            if sigmas is not None:
                raise ValueError(f"sigmas: the {_method_name(self.predictor)} predictor brings its own schedule; "
                                 "do not pass sigmas")
            _, sig, solver, afs = self.predictor.sampling_setup(lambda x, s: x)
            dtz = bool(cfg.denoise_to_zero)
            return sig, solver, afs, dtz, {}
        solver, afs, opts = cfg.solver, bool(cfg.afs), dict(cfg.solver_options or {})
        dtz = True if cfg.denoise_to_zero is None else bool(cfg.denoise_to_zero)
        if sigmas is not None:  # custom grid in the pipeline's convention (flow t, shifted as diffusers does; or sigma)
            s = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
            if s.numel() > 1 and float(s[-1]) == 0.0:
                s, dtz = s[:-1], True
            return (_flow_sigma(self._shift(s, mu)) if self.is_flow else s), solver, afs, dtz, opts
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"num_inference_steps must be a positive int (the number of model calls), got {nfe!r}")
        try:
            n = steps_for_nfe(solver, nfe - int(dtz), afs, **opts)
        except ValueError:
            ok = [k for k in range(1, nfe + 8) if self._possible(k, solver, afs, dtz, opts)]
            raise ValueError(f"solver {solver!r} (afs={afs}, denoise_to_zero={dtz}) cannot make exactly "
                             f"num_inference_steps={nfe} model calls; possible: {ok[:8]}") from None
        kind = "polynomial" if cfg.schedule == "diffusers" and cfg.use_karras_sigmas else cfg.schedule
        if kind == "diffusers":
            if dtz:
                sig = self._spaced(n, mu)
            else:
                sig = torch.cat([self._spaced(n - 1, mu), torch.tensor([self._model_range()[0]], dtype=torch.float64)])
        else:
            lo, hi = self._model_range()
            lo, hi = cfg.sigma_min or lo, cfg.sigma_max or hi
            # alphas_cumprod = 1 / (1 + sigma^2) of the training grid
            extra = {"alphas_cumprod": (2 * self.adapter.log_sigmas).exp().add(1).reciprocal()} \
                if kind == "discrete" else {}
            sig = get_schedule(kind, n, lo, hi, cfg.rho, **extra)
        return sig, solver, afs, dtz, opts

    @staticmethod
    def _possible(k: int, solver: str, afs: bool, dtz: bool, opts: dict) -> bool:
        try:
            steps_for_nfe(solver, k - int(dtz), afs, **opts)
            return k - int(dtz) >= 1
        except ValueError:
            return False

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Any = None, timesteps: Any = None, mu: float | None = None, **kwargs: Any) -> None:
        """Plan the solver's model calls: ``num_inference_steps`` = NFE (or custom ``sigmas``: flow times for flow
        models, EDM sigmas otherwise; a trailing 0 means denoise to zero). Custom ``timesteps`` are refused."""
        if timesteps is not None:
            raise ValueError("FewstepScheduler does not take custom timesteps; pass num_inference_steps or sigmas")
        sig, solver, afs, dtz, opts = self._plan(num_inference_steps, sigmas, mu)
        if self.predictor is not None and num_inference_steps is not None:
            need = len(evaluation_sigmas(Stepper(solver, sig, afs=afs, denoise_to_zero=dtz)))
            if num_inference_steps != need:
                rounds = getattr(solver, "rounds", None)
                par = (f"; its parallel evaluations are separate calls here ({rounds(sig.numel())} sequential "
                       "rounds in fewstep.sample)") if callable(rounds) and rounds(sig.numel()) != solver.nfe(
                    sig.numel()) else ""
                raise ValueError(f"num_inference_steps: the {_method_name(self.predictor)} predictor makes {need} "
                                 f"model calls (afs={afs}, denoise_to_zero={dtz}{par}); call the pipeline with "
                                 f"num_inference_steps={need}, got {num_inference_steps}")
        # Without a predictor the jump to zero counts in lower_order_final, as in diffusers' multistep schedulers;
        # a predictor keeps the steps it was trained with.
        self._stepper = Stepper(solver, sig, afs=afs, denoise_to_zero=dtz, final_jump_is_step=self.predictor is None,
                                **opts)
        evals = torch.tensor(evaluation_sigmas(self._stepper), dtype=torch.float64)
        t = self.adapter.sigma_to_t(evals) if not self.is_flow else \
            evals / (1 + evals) * self.config.num_train_timesteps
        integral = not self.is_flow and bool(((t - t.round()).abs() < 1e-6).all())  # on the training grid
        self.timesteps = (t.round().long() if integral else t.float()).to(device)
        last = 0.0 if dtz else float(sig[-1])
        native = torch.cat([evals, torch.tensor([last], dtype=torch.float64)])
        self.sigmas = (native / (1 + native) if self.is_flow else native).float()  # flow: t; VP: EDM sigma
        self.num_inference_steps = len(evals)
        self._step_index = None
        self._begin_index = None
        self._run = None
        self._plan_info = _call_plan(Stepper(solver, sig, afs=afs, denoise_to_zero=dtz,
                                             final_jump_is_step=self.predictor is None, **opts))
        self._request: Request | None = None
        # The first model call needs another input than the initial sample: after AFS, or at a sigma other than
        # the schedule's first (a learned sampler's time shift / time scale); scale_model_input makes it.
        self._first_input_moves = afs or self._plan_info[0][0] != float(sig[0])
        self._first_input_made = False

    # ------------------------------------------------------------------ the diffusers loop
    def _dtype(self, sample: torch.Tensor) -> torch.dtype:
        return torch.float32 if sample.device.type == "mps" else torch.float64

    def _check_ready(self) -> Stepper:
        if self._stepper is None:
            raise RuntimeError("call set_timesteps() before scale_model_input()/step()")
        return self._stepper

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The network input for the next call: ``sample`` itself, except for a first call that is not made at
        the initial latents as they are: with AFS the point after the analytical first step, and for a learned
        sampler whose first call is at a shifted sigma the latents rescaled to that sigma (both computed from the
        pipeline's initial latents)."""
        st = self._check_ready()
        if not (self._first_input_moves and not self._step_index and not self._begin_index):
            return sample
        dt = self._dtype(sample)
        first = Stepper(st.solver, st.sigmas, afs=st.afs, denoise_to_zero=st.denoise_to_zero,
                        final_jump_is_step=st.final_jump_is_step)
        req = first.start(_to_edm(self.adapter, sample.to(dt), st.sigmas[0]))
        self._first_input_made = True
        return self.adapter.model_input(req.x, req.sigma)[0].to(sample.dtype)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, return_dict: bool = True,
             **kwargs: Any) -> FewstepSchedulerOutput | tuple[torch.Tensor]:
        """Take the model output for the current call; return the sample for the next call (or the result)."""
        full = self._check_ready()
        first = self._step_index is None
        k = (self._begin_index or 0) if first else self._step_index
        if k >= self.num_inference_steps:
            raise RuntimeError(f"all {self.num_inference_steps} model calls were made; call set_timesteps() again")
        dt = self._dtype(sample)
        x_in = sample.to(dt)
        if first and k > 0:  # image-to-image: start at call k, from the pipeline's noised latents
            self._run = self._mid_start(k)
            self._request = self._run.start(_to_edm(self.adapter, x_in, torch.tensor(self._plan_info[k][0])))
        elif first:
            self._run = None
        st = self._run if self._run is not None else full
        if first and k == 0:
            self._request = st.start(_to_edm(self.adapter, x_in, st.sigmas[0]))
            if self._first_input_moves and not self._first_input_made:
                why = ("afs=True: the first model call must be made after the analytical first step" if st.afs else
                       f"the {_method_name(self.predictor)} predictor makes its first model call at sigma "
                       f"{self._plan_info[0][0]:.6g}, not at the schedule's first sigma {float(st.sigmas[0]):.6g} "
                       "(its learned time shift or scale), so the model's input must be rescaled to it")
                raise RuntimeError(
                    f"{why}, but this pipeline did not call scheduler.scale_model_input (e.g. DDPMPipeline); run the "
                    "loop with fewstep.integrations.diffusers.run_pipeline_loop(unet, scheduler, noise, nfe), use a "
                    "pipeline that calls scale_model_input, or use afs=False / a predictor trained without AFS")
        req = self._request
        x = req.x
        if not first and st.at_interval_start:
            x = _to_edm(self.adapter, x_in, req.sigma)  # the pipeline's latents, which the model saw
            st.replace_start(x)
        denoised = self.adapter.denoised(x, req.sigma.to(dt), model_output.to(dt))
        nxt = st.feed(denoised)
        if isinstance(nxt, Request):
            prev = self.adapter.model_input(nxt.x, nxt.sigma)[0]
            self._request = nxt
        elif st.denoise_to_zero:
            prev = nxt  # x0: the same in every space
        else:
            prev = self.adapter.model_input(nxt, full.sigmas[-1])[0]
        self._step_index = k + 1
        prev, x0 = prev.to(sample.dtype), denoised.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return FewstepSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _mid_start(self, k: int) -> Any:
        """The runner for a start at model call ``k`` > 0 (AFS off): the solver on the schedule's tail from the
        interval that call opens, or, inside a two-evaluation step, an Euler step from the call's sigma to the
        next schedule point first; either way it makes ``num_inference_steps - k`` calls."""
        full = self._stepper
        sigma, i, opens = self._plan_info[k]
        sig = full.sigmas
        dtz = full.denoise_to_zero

        def make(tail: torch.Tensor) -> Stepper:
            return Stepper(full.solver, tail, afs=False, denoise_to_zero=dtz,
                           final_jump_is_step=full.final_jump_is_step)

        if opens:
            return _Tail(None, sig[i:], make, dtz)
        return _Tail(torch.tensor(sigma, dtype=torch.float64), sig[i + 1:], make, dtz)


def _call_plan(stepper: Stepper) -> list[tuple[float, int, bool]]:
    """For every model call (dry run as :func:`.stepper.evaluation_sigmas`): its sigma, the index of the schedule
    interval it belongs to (the number of steps for the denoise-to-zero call) and whether it opens the interval
    (made at the interval's start state)."""
    req = stepper.start(torch.zeros(DRY_RUN_SHAPE, dtype=torch.float64))
    out: list[tuple[float, int, bool]] = []
    while isinstance(req, Request):
        out.append((float(req.sigma), stepper.i, stepper.at_interval_start))
        req = stepper.feed(torch.zeros_like(req.x))
    return out


class _Tail:
    """A :class:`Stepper`-like runner for an image-to-image start: an optional Euler step from ``sigma_from`` to
    ``tail[0]`` (one model call at ``sigma_from``), then the solver on ``tail`` (a schedule tail; with one sigma
    only the denoise-to-zero call, if any). Same ``start`` / ``feed`` / ``at_interval_start`` / ``replace_start``."""

    afs = False

    def __init__(self, sigma_from: torch.Tensor | None, tail: torch.Tensor, make: Any, denoise_to_zero: bool) -> None:
        self.sigma_from, self.tail, self.denoise_to_zero = sigma_from, tail, denoise_to_zero
        self.sigmas = tail
        self.rest = make(tail) if tail.numel() > 1 else None
        self.phase, self.x = "", None

    def start(self, x: torch.Tensor) -> Request | torch.Tensor:
        self.x = x
        if self.sigma_from is not None:
            self.phase = "euler"
            return Request(x, self.sigma_from)
        return self._after(x)

    def _after(self, x: torch.Tensor) -> Request | torch.Tensor:
        if self.rest is not None:
            self.phase = "rest"
            return self.rest.start(x)
        self.x = x
        if self.denoise_to_zero:
            self.phase = "zero"
            return Request(x, self.tail[-1])
        self.phase = "done"
        return x

    @property
    def at_interval_start(self) -> bool:
        return self.rest.at_interval_start if self.phase == "rest" else self.phase in ("euler", "zero")

    def replace_start(self, x: torch.Tensor) -> None:
        if self.phase == "rest":
            self.rest.replace_start(x)
        else:
            self.x = x

    def feed(self, denoised: torch.Tensor) -> Request | torch.Tensor:
        if self.phase == "euler":
            s0 = self.sigma_from.to(self.x)
            x_next = self.x + (self.tail[0].to(self.x) - s0) * (self.x - denoised) / s0
            return self._after(x_next)
        if self.phase == "rest":
            return self.rest.feed(denoised)
        if self.phase == "zero":
            self.phase = "done"
            return denoised
        raise RuntimeError("sampling has finished; call start() again")


# ---------------------------------------------------------------------------------------------------------------
# diffusers UNets as fewstep denoisers
# ---------------------------------------------------------------------------------------------------------------


def unet_model_id(unet: torch.nn.Module) -> str:
    """``"diffusers:"`` + the first 16 hex digits of the SHA-256 over the UNet's state_dict (names, dtypes, shapes
    and bytes, sorted by name; :func:`fewstep.io.tensor_digest`): the same weights give the same id wherever the
    folder lies, other weights another id (about 0.1 s per 100 MB)."""
    return "diffusers:" + tensor_digest(unet.state_dict())[:16]


def _unet_output(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                 uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """The UNet's raw output (eps / v / x0 / velocity) at network input ``x`` and time ``t`` (0-dim or (B,)), with
    classifier-free guidance out = u + guidance_scale (c - u) when ``uncond`` is given; in ``x``'s dtype."""
    dtype = getattr(unet, "dtype", x.dtype)
    B = x.shape[0]
    xin, tin = x.to(dtype), t.to(device=x.device, dtype=torch.float32).reshape(-1).expand(B)
    if cond is None:
        return unet(xin, tin).sample.to(x.dtype)
    cond = _expand(cond.to(dtype), B)
    if uncond is None or guidance_scale == 1.0:
        return unet(xin, tin, encoder_hidden_states=cond).sample.to(x.dtype)
    both = torch.cat([_expand(uncond.to(dtype), B), cond])
    u, c = unet(torch.cat([xin, xin]), torch.cat([tin, tin]), encoder_hidden_states=both).sample.chunk(2)
    return (u + guidance_scale * (c - u)).to(x.dtype)


def _expand(h: torch.Tensor, batch: int) -> torch.Tensor:
    if h.shape[0] == batch:
        return h
    if h.shape[0] == 1:
        return h.expand(batch, *h.shape[1:])
    raise ValueError(f"encoder_hidden_states has batch {h.shape[0]}; expected 1 or {batch}")


def _check_guidance(encoder_hidden_states: Any, negative_encoder_hidden_states: Any, guidance_scale: Any) -> None:
    if encoder_hidden_states is None and negative_encoder_hidden_states is not None:
        raise ValueError("negative_encoder_hidden_states needs encoder_hidden_states")
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool):
        raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")


def run_pipeline_loop(unet: torch.nn.Module, scheduler: Any, latents: torch.Tensor,
                      num_inference_steps: int | None = None, *, encoder_hidden_states: torch.Tensor | None = None,
                      negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float = 1.0,
                      callback: Any = None) -> torch.Tensor:
    """The denoising loop of a Stable Diffusion-style pipeline (see the module docstring), for models whose own
    pipeline does not call ``scale_model_input`` (DDPMPipeline), e.g. to run an AFS-trained AMED table at its
    trained NFE. Makes exactly ``len(scheduler.timesteps)`` UNet calls (CFG: one call on the doubled batch).

    ``latents``: the initial noise, N(0, I) of the pipeline's latent shape (multiplied by
    ``scheduler.init_noise_sigma`` here); ``num_inference_steps``: calls ``set_timesteps`` (None: the scheduler's
    current timesteps); conditioning and guidance as in :class:`DiffusersDenoiser`; ``callback(i, t, latents)``
    after every step. Works with any diffusers scheduler. Returns the final latents (pipeline space, before any
    VAE decoding or the [-1, 1] -> [0, 1] mapping)."""
    _check_guidance(encoder_hidden_states, negative_encoder_hidden_states, guidance_scale)
    pred = getattr(scheduler, "predictor", None)
    want = getattr(pred, "config", {}).get("model_id") if pred is not None else None
    if want is not None and str(want).startswith("diffusers:") and want != unet_model_id(unet):
        raise ValueError(f"the scheduler's predictor was trained for model {want!r}, but this UNet is "
                         f"{unet_model_id(unet)!r} (a digest of its weights)")
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
    elif getattr(scheduler, "timesteps", None) is None:
        raise ValueError("pass num_inference_steps, or call scheduler.set_timesteps first")
    sample = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(sample, t)
            out = _unet_output(unet, model_input, torch.as_tensor(t), encoder_hidden_states,
                               negative_encoder_hidden_states, guidance_scale)
            sample = scheduler.step(out, t, sample, return_dict=False)[0]
            if callback is not None:
                callback(i, t, sample)
    return sample


class _DropAccelerateNotice(logging.Filter):
    """Drops diffusers' "Cannot initialize model with low cpu memory usage because `accelerate` was not found"
    notice (printed on every load without accelerate); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("accelerate" in msg and "low cpu memory" in msg)


@contextlib.contextmanager
def _no_accelerate_notice(cls: type) -> Iterator[None]:
    """While loading with ``cls.from_pretrained``: a filter on the diffusers logger of the module that defines it
    (diffusers' own ``utils.logging.get_logger``), removed afterwards. Only that notice is dropped, so warnings
    about missing or unexpected weights still show; no global verbosity changes."""
    logger = diffusers.utils.logging.get_logger(getattr(cls.from_pretrained, "__module__", None) or "diffusers")
    f = _DropAccelerateNotice()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


class DiffusersDenoiser(torch.nn.Module):
    """EDM denoiser D(x, sigma) -> x0 from a diffusers UNet (UNet2DModel, or UNet2DConditionModel with
    ``encoder_hidden_states`` and classifier-free guidance: out = u + guidance_scale (c - u) with
    ``negative_encoder_hidden_states`` for u). Conversions are fewstep's VP / flow adapters.
    ``denoise_with_features`` returns the pooled output of the UNet's ``mid_block`` (both CFG halves
    concatenated), so AMED predictors can be trained with ``features="adapter"``.

    How the UNet was trained is never assumed: ``scheduler_config`` (the pipeline's ``scheduler.config``) and/or
    the keywords ``prediction_type``, ``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``,
    ``trained_betas`` (which override it) must give the prediction type and the noise schedule, else a
    ValueError names what is missing (:func:`resolve_noise_config`). ``scheduler_config_file``: the file
    ``scheduler_config`` was read from, recorded as the source.

    Attributes: ``noise_config`` (the settings used and their ``source``, "file" / "argument" /
    "file+argument"; :meth:`describe` in one line), ``sigma_min`` / ``sigma_max`` (EDM sigmas of the model's
    training range, :func:`model_sigma_range`), ``model_id`` (``model_id=`` or, computed on first use, a digest of
    the UNet's weights, :func:`unet_model_id`).
    """

    accepts_any_dtype = True  # casts to the UNet's dtype itself; the VP/flow conversions run in the state's dtype

    def __init__(self, unet: torch.nn.Module, scheduler_config: Any = None, *, prediction_type: str | None = None,
                 beta_schedule: str | None = None, beta_start: float | None = None, beta_end: float | None = None,
                 num_train_timesteps: int | None = None, trained_betas: Any = None,
                 encoder_hidden_states: torch.Tensor | None = None,
                 negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float = 1.0,
                 timestep_type: str = "interp", feature_module: str | None = None, model_id: str | None = None,
                 scheduler_config_file: str | os.PathLike | None = None) -> None:
        super().__init__()
        from ..denoisers.features import HookFeatures

        nc = resolve_noise_config(scheduler_config, file=scheduler_config_file, prediction_type=prediction_type,
                                  beta_schedule=beta_schedule, beta_start=beta_start, beta_end=beta_end,
                                  num_train_timesteps=num_train_timesteps, trained_betas=trained_betas)
        _check_guidance(encoder_hidden_states, negative_encoder_hidden_states, guidance_scale)
        if model_id is not None and not isinstance(model_id, str):
            raise TypeError(f"model_id must be a str, got {type(model_id).__name__}")
        self.unet = unet
        self.noise_config = nc
        self.adapter = _adapter(nc["prediction_type"], nc, timestep_type)
        self.adapter.model = self._network
        self.sigma_min, self.sigma_max = model_sigma_range(self.adapter, nc["num_train_timesteps"])
        self.cond, self.uncond = encoder_hidden_states, negative_encoder_hidden_states
        self.guidance_scale = guidance_scale
        self.model_id = model_id
        self._features = HookFeatures(self.adapter, unet, feature_module)

    @property
    def model_id(self) -> str:
        """``model_id=`` if given, else :func:`unet_model_id` of the UNet (computed once, on first use)."""
        if self._model_id is None:
            self._model_id = unet_model_id(self.unet)
        return self._model_id

    @model_id.setter
    def model_id(self, value: str | None) -> None:
        self._model_id = value

    def describe(self) -> str:
        """One line: model id, prediction type, noise schedule, sigma range and where the settings came from."""
        return f"{self.model_id}: {_describe_noise(self.noise_config, self.sigma_min, self.sigma_max)}"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *size)

    def _network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (eps / v / x0 / velocity) at network input x and time t, with CFG."""
        return _unet_output(self.unet, x, t, self.cond, self.uncond, self.guidance_scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.adapter(x, sigma)

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, f = self._features.denoise_with_features(x, sigma)
        if f.shape[0] == 2 * x.shape[0]:  # CFG: [uncond; cond] rows -> one row per sample
            f = torch.cat(f.chunk(2), dim=1)
        return x0, f.to(x.dtype)


def load_denoiser(path: str | os.PathLike, *, scheduler_config: Any = None, **kwargs: Any) -> DiffusersDenoiser:
    """A :class:`DiffusersDenoiser` from a local directory saved with ``save_pretrained``: a pipeline folder
    (model_index.json, unet/, scheduler/) or a UNet folder (config.json, optional scheduler_config.json).
    Offline and safetensors only (no pickled weights).

    The prediction type and noise schedule come from the folder's scheduler config; without one (a bare UNet
    folder) pass them: ``prediction_type=``, ``beta_schedule=`` (``beta_start=``, ``beta_end=``,
    ``num_train_timesteps=``, ``trained_betas=``) or ``scheduler_config=`` (a dict, used instead of the file);
    keywords override the file. Otherwise a ValueError says what is missing. ``model_id`` defaults to a digest of
    the UNet's weights (a copied folder keeps it, other weights in a same-named folder get another one). Other
    keywords go to :class:`DiffusersDenoiser`. ``den.describe()`` says which settings were used."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no diffusers model folder at {root}")
    if (root / "model_index.json").is_file():
        unet_dir, sched_file = root / "unet", root / "scheduler" / "scheduler_config.json"
    elif (root / "config.json").is_file():
        unet_dir, sched_file = root, root / "scheduler_config.json"
    else:
        raise ValueError(f"{root} has neither model_index.json (a pipeline) nor config.json (a UNet)")
    cls_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    if cls_name not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ValueError(f"{unet_dir} holds a {cls_name}; fewstep loads UNet2DModel and UNet2DConditionModel")
    if cls_name == "UNet2DConditionModel" and "encoder_hidden_states" not in kwargs:
        raise ValueError(f"{unet_dir} is a conditional UNet: pass encoder_hidden_states (prompt embeddings) in "
                         "Python with fewstep.integrations.diffusers.DiffusersDenoiser")
    if scheduler_config is None and sched_file.is_file():
        try:
            scheduler_config = json.loads(sched_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{sched_file} is not valid JSON: {e}") from None
        kwargs["scheduler_config_file"] = sched_file
    # Check the noise settings before the (slower) weight loading, so that a missing one fails at once.
    context = None if scheduler_config is not None else \
        f"{root} has no scheduler config ({sched_file.relative_to(root)}) and none was passed"
    resolve_noise_config(scheduler_config, file=kwargs.get("scheduler_config_file"), context=context,
                         **{k: kwargs[k] for k in NOISE_KEYS if k in kwargs})
    unet_cls = getattr(diffusers, cls_name)
    with _no_accelerate_notice(unet_cls):
        unet = unet_cls.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
    return DiffusersDenoiser(unet.eval(), scheduler_config, **kwargs)
