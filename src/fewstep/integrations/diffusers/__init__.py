"""diffusers integration: a scheduler that runs any fewstep solver or learned sampler (AMED, DyWeight, EPD, PAS,
GS) inside a diffusers pipeline, and a wrapper that turns a diffusers UNet into a fewstep denoiser (with mid-block
features for AMED training).
Needs the optional ``diffusers`` package (``pip install 'fewstep[diffusers]'``).

    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, guidance_scale=7.5)  # measured default
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="ipndm")
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, predictor="p.safetensors")  # any learned

Without a solver a VP model gets fewstep's measured default for the NFE and the config's ``guidance_scale``
(:mod:`fewstep.defaults`; a pipeline does not tell its scheduler the scale it uses, so pass it, else the default
assumes an unguided model); ``scheduler.chosen`` says what runs after ``set_timesteps``.

How it maps onto diffusers' scheduler API (diffusers calls ``step`` once per model call):
  * ``num_inference_steps`` is the number of model calls (NFE); the fewstep schedule gets as many sigmas as
    that NFE allows for the solver (``fewstep.steps_for_nfe``), or a ValueError names the NFEs it can do.
  * ``timesteps`` lists every model call in advance: the solver is dry-run once (:mod:`..stepper`), so
    Heun/DPM-2/AMED intermediate points and AMED-Plugin insertions are ordinary entries. Their sigmas map to
    the model's time by interpolation in log sigma of the discrete training sigmas (fractional timesteps,
    ``timestep_type="interp"``, exact for schedule points on the training grid) or to the nearest training
    timestep (``"nearest"``, what diffusers' schedulers pass; the model then sees a slightly different noise
    level than the solver assumes).
  * The step index is a counter, never looked up from the timestep value, so duplicate timesteps (e.g.
    Karras sigmas rounded to integers, huggingface/diffusers#5687, #12771) cannot shift the schedule.
  * The final jump to sigma = 0 (``denoise_to_zero``, diffusers' ``final_sigmas_type="zero"``) returns the
    last x0 prediction, which removes the residual noise that ending at sigma_min leaves (diffusers#5689);
    default on with a given solver. As in diffusers, this jump counts as the last (first-order) step for
    ``lower_order_final``, so DPM-Solver++ and UniPC reproduce DPMSolverMultistep / UniPCMultistep (below 15
    steps, where diffusers stops lowering the order; order 2 matches at every step count). A predictor (a
    learned sampler of :mod:`fewstep.learned`, or the path of its checkpoint, read by
    :func:`fewstep.learned.load`) brings its own schedule, solver and AFS, keeps the steps it was trained with
    and ends at its last sigma unless ``denoise_to_zero=True``; so does the measured default (as it was measured).
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
    pipeline's space at the timestep's sigma (VP: alpha x0 + sigma_vp noise; flow: (1 - t) x0 + t noise; at the
    first entry the schedule's first sigma, the initial state, also with AFS or a time shift), and
    ``set_begin_index(b)`` (what the pipeline calls with ``t_start``) starts the solver at model call ``b``, so the
    pipeline makes exactly ``len(timesteps[b:])`` calls. The solver then runs on the tail of the schedule from
    that call's sigma, without AFS (it assumes pure noise). A start inside a two-evaluation step (Heun / DPM-2 /
    AMED) begins with an Euler step from that sigma to the next schedule point (for Heun's corrector call the
    sigma already is that point, so the step has zero length), which keeps the call count. A predictor was
    trained from pure noise on its one schedule and refuses a begin index above 0.
  * ``FluxPipeline`` never passes ``num_inference_steps``: it passes its own flow times
    ``np.linspace(1, 1/n, n)`` as ``sigmas`` with ``mu`` (its resolution shift, from the config's ``base_shift``,
    ``max_shift``, ``base_image_seq_len``, ``max_image_seq_len``, which FewstepScheduler keeps in its config). That
    exact list reads as n model calls (NFE = n, as everywhere); with the default schedule ("diffusers") the solver's
    points follow the same rule, linspace(1, 1/k, k) for its k points, shifted by ``mu``, then the jump to zero
    (so ``solver="euler"`` is the pipeline's own FlowMatch Euler); any other list is a custom grid. Its latents are
    packed (B, h w / 4, 4 C): the scheduler's arithmetic is elementwise, but a ``residual`` predictor's convolution
    needs (C, H, W) images (``set_sampler`` refuses it for a FluxPipeline, and ``step`` refuses latents of another
    rank than the predictor's training samples).

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
``scale_model_input`` rescales the initial ``sample`` to that sigma's input. diffusers' (0.42) Stable Diffusion and
SDXL pipelines (text-to-image and img2img) follow this loop; ``StableDiffusion3Pipeline``, ``FluxPipeline`` and
``DDPMPipeline`` (and loops like theirs) never call ``scale_model_input``, so they feed the initial noise to the model at the first entry:
without AFS or such a shift that is right; otherwise ``step`` raises a RuntimeError rather than return a wrong
sample. Run such models with :func:`run_pipeline_loop` (the loop above,
with classifier-free guidance for conditional UNets), which makes exactly ``len(scheduler.timesteps)`` calls.

Loading your own model (:func:`load_denoiser`) makes no silent assumption about how it was trained: the
prediction type and the noise schedule come from the folder's scheduler config, else from keyword arguments,
else a ValueError names what is missing; ``den.noise_config`` records which (``den.describe()`` in one line),
``den.model_id`` is a digest of the UNet's weights and ``den.sigma_min`` / ``den.sigma_max`` its training range.

Modules, each importing only those above it: ``backend`` (the import of diffusers, the install hint), ``spaces``
(VP / flow conversions to EDM), ``planning`` (the schedule and model calls of ``set_timesteps``), ``tail``
(image-to-image starts), ``scheduler`` (:class:`FewstepScheduler`), ``noise`` (:func:`resolve_noise_config`),
``model`` (:class:`DiffusersDenoiser`, :func:`load_denoiser`), ``pipeline`` (:func:`run_pipeline_loop`) and ``text``
(text-to-image pipelines: :class:`PromptModel` over a prompt list, :class:`PromptGuided` drawing a prompt per seed,
:func:`load_pipeline`, :func:`read_prompts`, :func:`set_sampler`; README "Integrations", docs/text_to_image.md).
"""

from __future__ import annotations

from .backend import INSTALL_HINT, DiffusersNotInstalledError
from .model import DiffusersDenoiser, load_denoiser, unet_model_id
from .noise import resolve_noise_config
from .pipeline import run_pipeline_loop
from .scheduler import FewstepScheduler, FewstepSchedulerOutput
from .text import PromptGuided, PromptModel, load_pipeline, read_prompts, set_sampler
from .spaces import FLOW_T_MAX, PREDICTION_TYPES, alphas_cumprod, model_sigma_range

__all__ = ["FewstepScheduler", "FewstepSchedulerOutput", "DiffusersDenoiser", "load_denoiser", "alphas_cumprod",
           "PREDICTION_TYPES", "FLOW_T_MAX", "resolve_noise_config", "model_sigma_range", "unet_model_id",
           "run_pipeline_loop", "DiffusersNotInstalledError", "INSTALL_HINT", "PromptModel", "PromptGuided",
           "load_pipeline", "read_prompts", "set_sampler"]
