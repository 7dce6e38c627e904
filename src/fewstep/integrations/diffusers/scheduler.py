"""The diffusers scheduler :class:`FewstepScheduler`: any fewstep solver or learned sampler behind diffusers'
``set_timesteps`` / ``scale_model_input`` / ``step`` / ``add_noise``, one ``step`` per model call (how it maps
onto diffusers' API: the docstring of :mod:`fewstep.integrations.diffusers`)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...denoisers.adapters import FlowModel
from ...recipe import Recipe
from ...schedules import get_schedule
from ..stepper import Request, Stepper, evaluation_sigmas
from .backend import BaseOutput, ConfigMixin, KarrasDiffusionSchedulers, SchedulerMixin, register_to_config
from .checks import check_choice, check_config, check_mu
from .planning import (SCHEDULES, SPACINGS, call_plan, method_name, pipeline_default_flow_times, pipeline_spacing,
                       plan_schedule, uses_default)
from .spaces import PREDICTION_TYPES, flow_sigma, is_flow_config, make_adapter, model_sigma_range, to_edm
from .tail import tail_runner

__all__ = ["FewstepScheduler", "FewstepSchedulerOutput"]

logger = logging.getLogger(__name__)

# fewstep's own options. diffusers' schedulers use some of these names for settings of their own (Euler's
# timestep_type "discrete" | "continuous", Euler's and UniPC's sigma_min / sigma_max of their Karras spacing, the EDM
# schedulers' rho), so a config saved by another scheduler class never sets them; keyword arguments do.
OWN_OPTIONS = ("solver", "solver_options", "afs", "schedule", "rho", "sigma_min", "sigma_max", "denoise_to_zero",
               "timestep_type", "guidance_scale")
# Values that only diffusers' schedulers use, dropped from any config (an in-memory config has no _class_name).
FOREIGN_VALUES = {"timestep_type": ("discrete", "continuous")}


def own_config(config: dict) -> dict:
    """``config`` without the keys that belong to another scheduler class: fewstep's option names in a config
    whose ``_class_name`` is not FewstepScheduler, and diffusers' own values of a shared name (:data:`OWN_OPTIONS`,
    :data:`FOREIGN_VALUES`). The model's keys (betas, prediction type, spacing, shift) are kept."""
    foreign = config.get("_class_name", "FewstepScheduler") != "FewstepScheduler"
    return {k: v for k, v in config.items()
            if not (foreign and k in OWN_OPTIONS) and v not in FOREIGN_VALUES.get(k, ())}


@dataclass
class FewstepSchedulerOutput(BaseOutput):
    """``prev_sample``: the sample for the next model call (or the result); ``pred_original_sample``: x0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a fewstep solver (any name in ``fewstep.SOLVERS``) or a learned sampler.

    Config (besides the model's own ``num_train_timesteps``, ``beta_*``, ``trained_betas``, ``prediction_type``,
    ``shift``/``use_dynamic_shifting`` for flow models, all read from ``pipe.scheduler.config``; and FlowMatch's
    ``base_shift``, ``max_shift``, ``base_image_seq_len``, ``max_image_seq_len``, only kept for pipelines that read
    them from ``scheduler.config``: FluxPipeline computes the ``mu`` it passes to ``set_timesteps`` from them):
      * ``solver``, ``solver_options`` (dict, keyword options of the solver), ``afs``. Without a solver (None, the
        default) a VP model gets fewstep's measured default for the NFE (``num_inference_steps``) and
        ``guidance_scale`` (:func:`fewstep.defaults.default_choice`, docs/defaults.md: unguided UniPC(2M) +AFS on
        uniform VP time up to NFE 6, log-SNR above; guided DEIS with 3 points on VP time rho 2, AFS from NFE 8) on
        the model's own sigma range, ending at its sigma_min as measured; it fixes the solver, its options, AFS,
        schedule and rho, so giving any of those without a solver is refused. A flow model without a solver runs
        DPM-Solver++ on its own shifted flow times (the defaults were not measured on flow models);
      * ``guidance_scale``: the classifier-free guidance scale the pipeline will use (None or 1: unguided). It only
        picks the measured default: pipelines do not tell the scheduler their scale, so set it here
        (``FewstepScheduler.from_config(cfg, guidance_scale=7.5)``), else the default assumes an unguided model;
      * ``schedule``: "diffusers" (the pipeline's own timestep spacing, ``timestep_spacing`` / ``steps_offset``;
        uniform flow time with shift for flow models; the default with a solver), "polynomial" (EDM/Karras,
        ``rho``, default 7), "logsnr", "time_uniform" (uniform in VP time^(1/rho) as :func:`fewstep.get_schedule`
        makes it: the continuous VP schedule's time as a spacing of the same ``sigma_min`` .. ``sigma_max``) or
        "discrete" (VP training timesteps), between ``sigma_min`` and ``sigma_max`` (EDM sigmas, default: the
        model's range; positive, never 0); ``use_karras_sigmas`` in a source config selects "polynomial" for
        "diffusers";
      * ``denoise_to_zero``: end with x0 of the last evaluation, one of the ``num_inference_steps`` calls (None: yes
        with a given solver, no for the measured default and a predictor);
      * ``timestep_type``: "interp" (fractional timesteps) or "nearest".
    These options are never read from another scheduler class's saved config (some share names with its settings,
    e.g. Euler's ``timestep_type``; :func:`own_config`), only from keywords and FewstepScheduler's own config.
    ``predictor``: a learned sampler (:mod:`fewstep.learned`: an AMED table, DyWeight, EPD, PAS, GS), a tuned
    recipe (:class:`fewstep.recipe.Recipe`, ``fewstep tune``'s file) or the path of either
    (:func:`fewstep.learned.load`); it replaces ``solver``, ``afs`` and the schedule, and is not part of the saved
    config. After ``set_timesteps``, ``chosen`` says in words what runs (also logged at INFO level).
    Every config value is checked (:mod:`.checks`): a wrong type or range is a TypeError / ValueError naming it.
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
        solver: str | None = None,
        solver_options: dict | None = None,
        afs: bool | None = None,
        schedule: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rho: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        denoise_to_zero: bool | None = None,
        timestep_type: str = "interp",
        use_karras_sigmas: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        guidance_scale: float | None = None,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        predictor: Any = None,
    ) -> None:
        # base_shift .. max_image_seq_len: FlowMatch's resolution-dependent shift settings, kept only so that a
        # pipeline reading them from scheduler.config (FluxPipeline computes mu from them) gets the model's own.
        check_config(self.config)
        check_choice("schedule", schedule, SCHEDULES, optional=True)
        check_choice("timestep_spacing", timestep_spacing, SPACINGS)
        check_choice("timestep_type", timestep_type, ("interp", "nearest"))
        check_choice("prediction_type", prediction_type, tuple(PREDICTION_TYPES))
        if solver_options is not None and not isinstance(solver_options, dict):
            raise TypeError(f"solver_options must be a dict of solver keyword options, got {type(solver_options).__name__}")
        self.adapter = make_adapter(prediction_type, self.config, timestep_type)
        self.is_flow = isinstance(self.adapter, FlowModel)
        if self.is_flow and schedule == "discrete":
            raise ValueError("schedule='discrete' needs a VP model with alphas_cumprod, not a flow model")
        if uses_default(self.config, self.adapter):
            given = [k for k, v in (("solver_options", solver_options), ("afs", afs), ("schedule", schedule),
                                    ("rho", rho)) if v is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given without a solver: solver=None runs fewstep's measured default, which "
                    "fixes the solver, its options, AFS, the schedule and rho (a predictor brings its own); pass "
                    "solver=... to choose them, or leave them out")
        elif guidance_scale is not None:
            raise ValueError(
                f"guidance_scale={guidance_scale!r} only picks fewstep's measured default (solver=None, VP models); "
                f"{'a flow model' if self.is_flow else f'solver={solver!r}'} does not use it: leave it out")
        self.predictor = None
        self._set_predictor(predictor)
        if solver is not None:
            Stepper(solver, get_schedule("logsnr", 3), **(solver_options or {}))  # validate solver and options now
        self.init_noise_sigma = 1.0
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self.chosen: str | None = None
        self._stepper: Stepper | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._run: Any = None
        self._plan_info: list[tuple[float, int, bool]] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As :meth:`ConfigMixin.from_config`, plus ``predictor=``, flow detection (FlowMatch* configs
        get ``prediction_type="flow_prediction"``) and another scheduler's settings left out (:func:`own_config`:
        e.g. Euler's ``timestep_type``; keyword arguments are always taken, and checked)."""
        predictor = kwargs.pop("predictor", None)
        cfg = dict(config) if isinstance(config, dict) else {}
        if is_flow_config(cfg):
            kwargs.setdefault("prediction_type", "flow_prediction")
        if isinstance(config, dict):
            config = own_config(config)
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
            from ...learned import load

            predictor = load(predictor)
        if not (callable(getattr(predictor, "sampling_setup", None)) and hasattr(predictor, "config")):
            raise TypeError("predictor must be a learned sampler (fewstep.learned.train / load) or the path of its "
                            f"checkpoint, got {type(predictor).__name__}")
        if getattr(predictor, "uses_features", False):
            raise ValueError(
                f"predictor: a feature-based {method_name(predictor)} predictor picks each sample's evaluation times "
                "from the network's features during sampling, so a scheduler cannot list its timesteps in advance; "
                "train a predictor-free table (fewstep.learned.train('amed', ..., options={'features': 'none'})) "
                "for pipelines, or use fewstep.sample with DiffusersDenoiser for this one")
        fixed = [k for k in ("solver_options", "afs", "schedule", "rho", "sigma_min", "sigma_max")
                 if self.config[k] is not None]
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: the {method_name(predictor)} predictor brings its own solver, "
                             "options, AFS and sigmas; leave them out")
        w = self.config.guidance_scale
        if w is not None and not (isinstance(predictor, Recipe) and predictor.guidance == w):
            aware = " (a guidance-aware sampler takes its scale as predictor.guidance_scale = w)" if getattr(
                predictor, "guidance_aware", False) else ""
            raise ValueError(f"guidance_scale={w!r} only picks fewstep's measured default; the "
                             f"{method_name(predictor)} predictor fixes its configuration{aware}: leave "
                             "guidance_scale out")
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
                f"begin_index={begin_index}: the {method_name(self.predictor)} predictor cannot start mid-schedule "
                "(image-to-image / strength < 1); it was trained from pure noise on its one schedule. Use a plain "
                "solver (FewstepScheduler(solver=...)), or train a predictor for the partial schedule "
                "(fewstep.learned.train(..., sigma_max=<the start sigma>)) and sample it from noise")
        if self.num_inference_steps is not None and begin_index >= self.num_inference_steps:
            raise ValueError(f"begin_index={begin_index} leaves no model call of the {self.num_inference_steps} "
                             "planned; it must be below len(timesteps)")
        if self._step_index is not None:
            raise RuntimeError("set_begin_index must be called before the first step (after set_timesteps)")
        self._begin_index = begin_index

    def _latents_sigma(self, k: int) -> float:
        """EDM sigma of the latents the pipeline holds before model call ``k``: the sigma of that call, except at
        call 0, where the latents are the solver's initial state at the schedule's first sigma (with AFS or a
        learned time shift the first call is made elsewhere, at the input ``scale_model_input`` makes from them)."""
        return float(self._stepper.sigmas[0]) if k == 0 else self._plan_info[k][0]

    def _sigma_of(self, timestep: Any) -> torch.Tensor:
        """EDM sigma (float64) of the latents at each entry of ``timestep`` (:meth:`_latents_sigma`; diffusers'
        rule: the step index or begin index when set, else the first equal entry of ``timesteps``, else the
        model's time-to-sigma conversion)."""
        t = torch.as_tensor(timestep).reshape(-1).to(torch.float64).cpu()
        n = t.numel()
        if self._stepper is not None and self._begin_index is not None:
            k = self._step_index if self._step_index is not None else self._begin_index
            return torch.full((n,), self._latents_sigma(min(k, len(self._plan_info) - 1)), dtype=torch.float64)
        out = torch.empty(n, dtype=torch.float64)
        ts = self.timesteps.to(torch.float64).cpu() if self.timesteps is not None else None
        T = self.config.num_train_timesteps
        for j, v in enumerate(t.tolist()):
            hit = (ts == v).nonzero() if ts is not None else torch.empty(0)
            if hit.numel():
                out[j] = self._latents_sigma(int(hit[0]))
            elif self.is_flow:
                out[j] = flow_sigma(torch.tensor(v / T, dtype=torch.float64))
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
        (1 - t) x0 + t noise (t = s / (1 + s)). With a begin index set (img2img), the sigma of the current call's
        latents (at call 0 the schedule's first sigma, also with AFS or a learned time shift)."""
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

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Any = None, timesteps: Any = None, mu: float | None = None, **kwargs: Any) -> None:
        """Plan the solver's model calls: ``num_inference_steps`` = NFE (or custom ``sigmas``: flow times for flow
        models, EDM sigmas otherwise; a trailing 0 means denoise to zero). Custom ``timesteps`` are refused."""
        if timesteps is not None:
            raise ValueError("FewstepScheduler does not take custom timesteps; pass num_inference_steps or sigmas")
        flux_default = num_inference_steps is None and self.is_flow and pipeline_default_flow_times(sigmas)
        if flux_default:
            # FluxPipeline never passes num_inference_steps: it always passes its own n flow times linspace(1, 1/n,
            # n) (and mu, its resolution shift). That list is its default, not a user's choice, so it reads as n
            # model calls: with schedule "diffusers" (the default) the solver's points follow the same rule
            # (:func:`pipeline_spacing`), otherwise the schedule is planned for the NFE as for any pipeline. Any
            # other list is a custom grid.
            num_inference_steps = len(sigmas)
            sigmas = pipeline_spacing(self.config, self.predictor, num_inference_steps)
        sig, solver, afs, dtz, opts, chosen = plan_schedule(self.config, self.adapter, self.predictor,
                                                            num_inference_steps, sigmas, check_mu(mu))
        if flux_default and sigmas is not None:
            chosen = chosen.replace("on the given sigmas", "FluxPipeline's spacing (flow times linspace(1, 1/n, n) "
                                    "shifted by mu), then the jump to zero")
        if self.predictor is not None and num_inference_steps is not None:
            need = len(evaluation_sigmas(Stepper(solver, sig, afs=afs, denoise_to_zero=dtz)))
            if num_inference_steps != need:
                rounds = getattr(solver, "rounds", None)
                par = (f"; its parallel evaluations are separate calls here ({rounds(sig.numel())} sequential "
                       "rounds in fewstep.sample)") if callable(rounds) and rounds(sig.numel()) != solver.nfe(
                    sig.numel()) else ""
                raise ValueError(f"num_inference_steps: the {method_name(self.predictor)} predictor makes {need} "
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
        self._plan_info = call_plan(Stepper(solver, sig, afs=afs, denoise_to_zero=dtz,
                                             final_jump_is_step=self.predictor is None, **opts))
        self._request: Request | None = None
        # The first model call needs another input than the initial sample: after AFS, or at a sigma other than
        # the schedule's first (a learned sampler's time shift / time scale); scale_model_input makes it.
        self._first_input_moves = afs or self._plan_info[0][0] != float(sig[0])
        self._first_input_made = False
        self.chosen = f"{chosen}; {self.num_inference_steps} model calls"
        logger.info("FewstepScheduler: %s", self.chosen)

    # ------------------------------------------------------------------ the diffusers loop
    def _dtype(self, sample: torch.Tensor) -> torch.dtype:
        return torch.float32 if sample.device.type == "mps" else torch.float64

    def _check_ready(self) -> Stepper:
        if self._stepper is None:
            raise RuntimeError("call set_timesteps() before scale_model_input()/step()")
        return self._stepper

    def _check_operator_input(self, sample: torch.Tensor) -> None:
        """A predictor with a spatial operator (residual) needs samples laid out as it was trained, (C, H, W): refuse
        another layout, e.g. FluxPipeline's packed (h w / 4, 4 C) latents, which it would convolve as nonsense."""
        if not callable(getattr(self.predictor, "residual", None)):
            return
        training = self.predictor.config.get("training")
        shape = training.get("shape") if isinstance(training, dict) else None  # None: untrained or not recorded
        if isinstance(shape, list) and len(shape) != sample.ndim - 1:
            raise ValueError(f"the {method_name(self.predictor)} predictor's operator was trained on samples of shape "
                             f"{tuple(shape)}, but the pipeline's latents are {tuple(sample.shape[1:])} per sample "
                             "(FluxPipeline packs its latents): run it with fewstep sample, or use a table method "
                             "(pas, amed with features none) in this pipeline")

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
        req = first.start(to_edm(self.adapter, sample.to(dt), st.sigmas[0]))
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
        if first:
            self._check_operator_input(sample)
        if first and k > 0:  # image-to-image: start at call k, from the pipeline's noised latents
            self._run = tail_runner(full, self._plan_info[k])
            self._request = self._run.start(to_edm(self.adapter, x_in, torch.tensor(self._plan_info[k][0])))
        elif first:
            self._run = None
        st = self._run if self._run is not None else full
        if first and k == 0:
            self._request = st.start(to_edm(self.adapter, x_in, st.sigmas[0]))
            if self._first_input_moves and not self._first_input_made:
                why = ("afs=True: the first model call must be made after the analytical first step" if st.afs else
                       f"the {method_name(self.predictor)} predictor makes its first model call at sigma "
                       f"{self._plan_info[0][0]:.6g}, not at the schedule's first sigma {float(st.sigmas[0]):.6g} "
                       "(its learned time shift or scale), so the model's input must be rescaled to it")
                raise RuntimeError(
                    f"{why}, but this pipeline did not call scheduler.scale_model_input (e.g. DDPMPipeline); run the "
                    "loop with fewstep.integrations.diffusers.run_pipeline_loop(unet, scheduler, noise, nfe), use a "
                    "pipeline that calls scale_model_input, or use afs=False / a predictor trained without AFS")
        req = self._request
        x = req.x
        if not first and st.at_interval_start:
            x = to_edm(self.adapter, x_in, req.sigma)  # the pipeline's latents, which the model saw
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
