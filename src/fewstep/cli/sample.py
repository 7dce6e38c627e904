"""``fewstep sample``: sample seeds with a solver or a learned sampler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import (
    add_model_args,
    add_sigma_args,
    add_solver_args,
    check_class,
    check_negative_prompt,
    class_count,
    data_range,
    describe_sigma_range,
    guidance_scale,
    kind_or_file,
    parse_seeds,
    positive_int,
    schedule_arg,
    schedule_rho,
    set_threads,
    sigma_range,
    solver_options,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``sample`` subcommand."""
    s = sub.add_parser("sample", help="sample seeds with a solver or a learned sampler")
    add_model_args(s)
    s.add_argument("--class", dest="class_label", type=int, default=None, metavar="LABEL",
                   help="class-conditional models (--model digits): sample this class, 0..num_classes-1 "
                        "(default: none, the unconditional model)")
    s.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="with --class: classifier-free guidance scale w, D_w = D(null) + w (D(class) - D(null)); "
                        "1 is the conditional model (default: 1); one NFE is one model call on the doubled batch; Flux "
                        "with --prompt: the transformer's guidance embedding (FLUX.1-dev), one undoubled call")
    s.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text-to-image pipelines (--diffusers DIR of Stable Diffusion, SDXL, SD3 or Flux): the prompt; "
                        "needs --guidance W (1: no guidance); images are decoded with the pipeline's VAE")
    s.add_argument("--model-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="with --prompt: the pipeline's dtype (float16 / bfloat16 on a GPU; default: float32)")
    s.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="with --prompt: the unconditional branch of guidance (default: the pipeline's own)")
    s.add_argument("--predictor", default=None,
                   help="a learned sampler (.safetensors from fewstep train) or a recipe (.json from fewstep tune); its "
                        "schedule, solver and AFS are used (do not combine with --solver, --nfe, --afs, --schedule, "
                        "--sigma-min/--sigma-max)")
    s.add_argument("--solver", default=None,
                   help="a classic solver (euler, heun, dpm2, dpmpp, unipc, ipndm, ipndm_v, deis, ...); default: the "
                        "measured default for the NFE and guidance scale (docs/defaults.md; fewstep tune finds the "
                        "best for your model)")
    add_solver_args(s)
    s.add_argument("--nfe", type=positive_int, default=None,
                   help="model evaluations per sample (default: 5, or what --schedule FILE implies)")
    s.add_argument("--afs", action="store_true", default=None, help="the analytical first step (one evaluation fewer)")
    s.add_argument("--schedule", default=None, type=schedule_arg,
                   help="polynomial | logsnr | time_uniform (uniform VP time) | discrete (a discrete model's own "
                        "timesteps) | FILE.json (fewstep schedule search/learn; fixes the NFE); default: the "
                        "default's, else polynomial")
    add_sigma_args(s)
    s.add_argument("--data-range", type=data_range, default=(-1.0, 1.0), metavar="LO,HI",
                   help="the range of the model's data (default: -1,1): samples are clipped to it and mapped to "
                        "[-1, 1] in the .npz / [0, 255] in PNGs")
    s.add_argument("--allow-other-model", action="store_true",
                   help="sample with a --predictor trained or tuned for another model id (refused otherwise)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out FILE.npz")
    s.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-63"), help="e.g. 0-99 (default: 0-63)")
    s.add_argument("--batch", type=positive_int, default=64,
                   help="seeds per model call (default: %(default)s); outputs are bitwise reproducible for a fixed "
                        "--batch whatever the number of processes")
    s.add_argument("--denoise-to-zero", action="store_true")
    s.add_argument("--init-images", default=None, metavar="DIR_OR_NPZ",
                   help="image-to-image: start from these images (a folder of PNGs or an .npz, read with "
                        "fewstep.metrics.load_images and mapped to [-1, 1]) noised to the sigma where --strength "
                        "starts; image j goes with the j-th seed of --seeds (repeated cyclically if fewer)")
    s.add_argument("--strength", type=float, default=None,
                   help="with --init-images, in (0, 1]: run the last int(strength * steps) steps of the schedule "
                        "(diffusers' convention: --nfe is that of the whole schedule); 1 is plain sampling")
    s.add_argument("--out", required=True,
                   help="FILE.npz (images in [-1, 1], seeds) or a folder: one file per seed, OUT/000000/000123.png, "
                        "1000 per sub-folder; rerun the same command to resume")
    s.add_argument("--format", default="png", choices=("png", "npy"),
                   help="per-seed files in a folder: png (uint8 RGB/grey) or npy (float32 in [-1, 1]) "
                        "(default: %(default)s)")
    s.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda:LOCAL_RANK if available)")
    s.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: 1 for the bed and small networks, else the idle cores shared among "
                        "torchrun's local processes)")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Sample seeds: one .npz (``--out FILE.npz``) or one file per seed under a folder, resumable; under
    ``torchrun`` the seeds are sharded over the processes (fewstep.distributed)."""
    import torch

    from .. import distributed, learned
    from ..io import tensor_digest
    from ..sampling import count_nfe, seeded_noise, solve, steps_for_nfe
    from ..solvers import get_solver

    out = Path(args.out)
    single_file = out.suffix.lower() == ".npz"
    fmt = "npz" if single_file else args.format
    if single_file and args.format != "png":
        raise ValueError("--format applies to an output folder; --out FILE.npz already writes one .npz")
    if out.is_dir() if single_file else (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out} exists and is not {'a file' if single_file else 'a directory'}")
    if single_file and out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it (a folder --out resumes instead)")
    # Everything that can fail on bad input is checked before the process group starts and before any output.
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape, args)
    denoiser, guidance_settings = _guide(args, denoiser)
    if not single_file:
        distributed.check_image_shape(getattr(denoiser, "image_shape", shape), fmt)
    init = _init_images(args, shape, dtype)
    explicit = [f"--{k.replace('_', '-')}" for k in ("solver", "solver_options", "max_order", "rho", "nfe", "afs",
                                                     "schedule", "sigma_min", "sigma_max") if getattr(args, k) is not None]
    if args.predictor:
        if explicit:
            raise ValueError(f"{', '.join(explicit)} cannot be combined with --predictor: the predictor fixes its "
                             "solver, schedule and AFS")
        pred = learned.load(args.predictor, model_id=None if args.allow_other_model else model_id)
        if args.allow_other_model:
            denoiser = _OtherModel(denoiser)
        kwargs: dict = {"predictor": pred}
        run_settings = _predictor_settings(pred, denoiser, shape)
        used = f"{args.predictor}: {pred.describe()}"
    elif not set(explicit) & {"--solver", "--solver-options", "--max-order", "--rho", "--afs", "--schedule",
                              "--sigma-min", "--sigma-max"} and (shipped := _shipped(args, model_id)) is not None:
        pred = learned.load(shipped, model_id=model_id)
        kwargs = {"predictor": pred}
        run_settings = _predictor_settings(pred, denoiser, shape)
        used = (f"the learned sampler shipped for this model at NFE {pred.nfe()}: {pred.describe()}, fewstep/assets/"
                f"{shipped.name} (README \"Shipped samplers\"; --solver S for a classic solver)")
    elif not set(explicit) & {"--solver", "--solver-options", "--max-order", "--rho", "--afs", "--schedule"}:
        from ..defaults import default_recipe

        sigma_range(args, denoiser)  # --sigma-min / --sigma-max checked against the model's range, by their names
        rec = default_recipe(denoiser, args.nfe or 5, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                             model_id=model_id)
        kwargs = {"predictor": rec}
        run_settings = {"solver": rec.solver, "options": rec.options, "sigmas": list(rec.sigmas), "afs": rec.afs}
        guided = f" at guidance {rec.guidance:g}" if rec.guidance is not None and rec.guidance != 1 else ""
        used = (f"fewstep's measured default for NFE {rec.nfe}{guided}: {rec.label()}, "
                f"{describe_sigma_range(args, denoiser)} (docs/defaults.md; fewstep tune measures the best for this "
                "model)")
    else:
        from ..recipe import make_sigmas

        solver, options = args.solver or "ipndm", solver_options(args)
        afs = bool(args.afs)
        get_solver(solver, **options)  # its own option checks, before any work
        sigmas = kind_or_file(args.schedule or "polynomial")  # a searched / learned schedule fixes the steps
        if isinstance(sigmas, str):
            lo, hi = sigma_range(args, denoiser)
            kind, rho = sigmas, schedule_rho(args, sigmas)
            sigmas = make_sigmas(kind, steps_for_nfe(solver, args.nfe or 5, afs, **options), lo, hi, rho, denoiser)
            if sigmas is None:
                raise ValueError(f"--schedule {kind} needs a discrete model (one with its training timesteps, e.g. "
                                 "VPModel(alphas_cumprod=...)) whose timesteps reach the sigma range, and more "
                                 "timesteps than steps")
            used = (f"{solver}{f' {options}' if options else ''}{' +AFS' if afs else ''}, {kind} schedule"
                    f"{f' (rho {rho:g})' if kind != 'logsnr' else ''}, {describe_sigma_range(args, denoiser)}")
        else:
            used = f"schedule file {args.schedule}"
            if args.sigma_min is not None or args.sigma_max is not None:
                raise ValueError("--sigma-min/--sigma-max do not apply to a --schedule FILE (its sigmas are given)")
            if args.rho is not None:
                raise ValueError("--rho does not apply to a --schedule FILE (its sigmas are given)")
            cost = count_nfe(get_solver(solver, **options), len(sigmas), afs)
            if args.nfe is not None and args.nfe != cost:
                raise ValueError(f"--schedule {args.schedule} has {len(sigmas)} sigmas: {cost} model evaluations "
                                 f"with {solver} (afs={afs}), not --nfe {args.nfe}")
        kwargs = {"sigmas": sigmas, "solver": solver, "afs": afs, **options}
        run_settings = {"solver": solver, "options": options, "sigmas": sigmas.tolist(), "afs": afs}
    run_settings.update(guidance_settings)
    if args.data_range != (-1.0, 1.0):
        run_settings["data_range"] = list(args.data_range)
    sig_used = [float(v) for v in run_settings["sigmas"]]
    print(f"sigmas: {len(sig_used)} from {sig_used[0]:.6g} to {sig_used[-1]:.6g} ({used})", file=sys.stderr, flush=True)
    if init is not None:
        if args.predictor:
            raise ValueError("--init-images cannot be used with --predictor: a predictor is trained from pure noise on "
                             "its one schedule; use --solver, or train a predictor for the partial schedule "
                             "(fewstep train --sigma-max <start sigma>) and sample it from noise")
        from ..sampling import img2img_sigmas

        run_sigmas = img2img_sigmas(kwargs["sigmas"], args.strength)  # checks --strength against the schedule now
        run_settings.update({"init_images": tensor_digest({"images": init}), "strength": args.strength})
        print(f"image-to-image: strength {args.strength} runs {run_sigmas.numel() - 1} of "
              f"{kwargs['sigmas'].numel() - 1} steps, from sigma {float(run_sigmas[0]):.4g}")
    info = distributed.init_distributed(args.device)
    if info.device.type == "cpu" or args.threads:
        set_threads(args, denoiser)
    if info.device.type != "cpu":
        for m in (denoiser, kwargs.get("predictor")):
            if m is not None and callable(getattr(m, "to", None)):
                m.to(info.device)
    nfe = [0]

    position = {s: j for j, s in enumerate(args.seeds)}

    def sample_batch(seeds: list[int]) -> torch.Tensor:
        extra = {}
        if init is not None:  # image j with the j-th seed of --seeds, whatever the batch or process
            idx = torch.tensor([position[s] % init.shape[0] for s in seeds])
            extra = {"x_init": init[idx].to(info.device), "strength": args.strength}
        res = solve(denoiser, seeded_noise(denoiser, seeds, shape, dtype=dtype, device=info.device),
                    denoise_to_zero=args.denoise_to_zero, **kwargs, **extra)
        nfe[0] = res.nfe
        lo, hi = args.data_range
        if callable(getattr(denoiser, "decode", None)):  # latents -> images in [-1, 1] (a text-to-image pipeline)
            return denoiser.decode(res.x)
        return res.x if (lo, hi) == (-1.0, 1.0) else (res.x.clamp(lo, hi) - lo) * (2 / (hi - lo)) - 1

    ok = False
    try:
        if single_file:
            seeds, images = distributed.sample_seeds(sample_batch, args.seeds, batch=args.batch, info=info,
                                                     progress=True)
            if info.is_main:
                distributed.save_samples_npz(out, seeds, images)
                print(f"Wrote {len(seeds)} samples ({nfe[0]} NFE each{_rounds(kwargs.get('predictor'))}) to {out}")
        else:
            # --batch is part of it: batched float kernels are not bitwise batch-invariant (README "Many GPUs").
            settings = {"model": model_id, "device": info.device.type, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                        "denoise_to_zero": args.denoise_to_zero, "format": fmt, "batch": args.batch,
                        **run_settings}
            counts = distributed.sample_seeds_to_dir(sample_batch, args.seeds, out, batch=args.batch, fmt=fmt,
                                                     settings=settings, info=info, progress=True)
            if info.is_main:
                used = f"{nfe[0]} NFE each{_rounds(kwargs.get('predictor'))}" if nfe[0] else "nothing sampled"
                print(f"Wrote {counts['written']} of {counts['seeds']} seeds to {out} ({counts['skipped']} were "
                      f"already there; {info.world_size} process{'es' if info.world_size > 1 else ''}; {used})")
        ok = True
    finally:
        distributed.finish(info, barrier=ok)
    return 0


class _OtherModel:
    """The denoiser with no model id (--allow-other-model: the predictor's model id is not checked)."""

    model_id = None

    def __init__(self, denoiser) -> None:  # noqa: ANN001
        self.denoiser = denoiser

    def __call__(self, x, sigma):  # noqa: ANN001, ANN204
        return self.denoiser(x, sigma)

    def __getattr__(self, name: str):  # noqa: ANN204
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)


def _predictor_settings(pred, denoiser, shape: tuple[int, ...]) -> dict:  # noqa: ANN001
    """The run settings of a learned sampler or recipe file (its weights' digest and config), after its check of the
    shape, guidance and classes it was trained for (before any output)."""
    from ..io import tensor_digest

    if callable(getattr(pred, "check_trained_for", None)):
        pred.check_trained_for(denoiser, shape)
    weights = tensor_digest(pred.state_dict()) if hasattr(pred, "state_dict") else None
    return {"predictor": weights, "predictor_config": pred.config, "sigmas": pred.config["sigmas"],
            "afs": pred.config["afs"]}


def _shipped(args: argparse.Namespace, model_id: str | None):  # noqa: ANN202 (a Path or None)
    """The shipped learned sampler matching the model, --nfe (default 5) and --guidance, if any (fewstep.shipped)."""
    from ..shipped import shipped_sampler

    if args.init_images is not None:
        return None  # image-to-image runs part of a schedule: a classic solver
    guidance = None if args.class_label is None else (1.0 if args.guidance is None else float(args.guidance))
    return shipped_sampler(model_id, args.nfe or 5, guidance)


def _guide(args: argparse.Namespace, denoiser):
    """(denoiser, settings): ``denoiser`` wrapped in :class:`fewstep.denoisers.Guided` for --class/--guidance."""
    from ..denoisers import Guided

    if getattr(denoiser, "prompt_conditioned", False):
        from ..integrations.diffusers.text import PromptGuided

        if args.class_label is not None:
            raise ValueError("--class applies to class-conditional models; a text-to-image pipeline takes --prompt")
        if args.init_images is not None:
            raise ValueError("--init-images with a text-to-image pipeline: run image-to-image in the pipeline itself "
                             "(e.g. StableDiffusionImg2ImgPipeline with FewstepScheduler; README \"diffusers\")")
        if args.guidance is None:
            raise ValueError("--prompt needs --guidance W (the classifier-free guidance scale, e.g. 7.5; 1 samples "
                             "the conditional model without guidance)")
        w = guidance_scale(args.guidance)
        check_negative_prompt(args.negative_prompt, w)
        return PromptGuided(denoiser, w), {"prompt": args.prompt, "negative_prompt": args.negative_prompt,
                                           "guidance": w}
    if args.class_label is None:
        if args.guidance is not None:
            raise ValueError("--guidance needs --class (the class to guide towards)")
        return denoiser, {}
    check_class(args.class_label, class_count(denoiser, args.model, "--class needs"), args.model)
    scale = 1.0 if args.guidance is None else guidance_scale(args.guidance)
    return Guided(denoiser, args.class_label, scale), {"class": args.class_label, "guidance": scale}


def _rounds(pred) -> str:
    """', in R sequential rounds' for a sampler whose evaluations run partly in parallel (EPD), else ''."""
    rounds, nfe = getattr(pred, "rounds", None), getattr(pred, "nfe", None)
    if callable(rounds) and callable(nfe) and rounds() != nfe():
        return f", in {rounds()} sequential rounds"
    return ""


def _init_images(args: argparse.Namespace, shape: tuple[int, ...], dtype):
    """--init-images as a (N, *shape) tensor in [-1, 1] of the model's dtype, or None; checks --strength."""
    import torch

    from ..metrics import load_images

    if args.init_images is None:
        if args.strength is not None:
            raise ValueError("--strength needs --init-images (the images to start from)")
        return None
    if args.strength is None:
        raise ValueError("--init-images needs --strength in (0, 1] (e.g. 0.5; 1 ignores the images)")
    if not 0 < args.strength <= 1:
        raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
    images = torch.from_numpy(load_images(args.init_images))
    if tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"--init-images {args.init_images} holds images of shape {tuple(images.shape[1:])}; the "
                         f"model makes samples of shape {tuple(shape)}")
    return images.to(dtype)
