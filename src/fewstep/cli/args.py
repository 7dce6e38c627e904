"""Argument types and helpers shared by the ``fewstep`` commands: number / seed / shape parsers, ``--model``
loading and thread choice."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

__all__ = [
    "MAX_SEEDS", "MODELS", "MODEL_HELP", "parse_nfes", "positive_int", "parse_seeds", "parse_shape", "schedule_arg",
    "kind_or_file", "json_object", "add_model_args", "load_model", "sigma_range", "describe_sigma_range",
    "add_solver_args", "solver_options", "schedule_rho", "data_range", "SCHEDULE_KINDS",
    "factory_model_id",
]

MAX_SEEDS = 10**7  # a list of seeds is materialised: refuse ranges that would exhaust memory

MODELS = ("gmm", "unet", "digits")
MODEL_HELP = ("gmm (analytic natural-patch bed) | unet (the shipped U-Net) | digits (the shipped class-conditional "
              "16x16 digits U-Net; unguided it is the unconditional model, see fewstep sample --class/--guidance) | "
              "PATH.safetensors (a SmallUNet file) | "
              "package.module:factory (your code; factory() returns a denoiser D(x, sigma) -> x0, give --shape)")


def parse_nfes(text: str) -> list[int]:
    """'3,5,7' -> [3, 5, 7]: a non-empty comma-separated list of positive integers."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3,5,9' or '0-9,20-29' -> list of seeds (at most MAX_SEEDS, each in 0..2**63-1)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
            elif part:
                lo = hi = int(part)
            else:
                continue
            if lo < 0 or hi >= 2**63:
                raise argparse.ArgumentTypeError(f"seeds must be in 0..2**63-1, got {text!r}")
            if len(out) + hi - lo + 1 > MAX_SEEDS:
                raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds per run, got {text!r}")
            out.extend(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0-99 or 1,5,9, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected a non-empty set of non-negative seeds, got {text!r}")
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32): a sample shape of positive dimensions."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 3,32,32, got {text!r}") from None
    from ..jsonio import check_shape

    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    try:
        return check_shape(shape, "shape")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"got {text!r}: {e}") from None


SCHEDULE_KINDS = ("polynomial", "logsnr", "time_uniform", "discrete")
DEFAULT_RHO = {"polynomial": 7.0, "time_uniform": 1.0, "discrete": 1.0, "logsnr": 1.0}  # without --rho


def schedule_arg(text: str) -> str:
    """A ``--schedule`` value: polynomial, logsnr, time_uniform, discrete or a .json schedule file."""
    if text in SCHEDULE_KINDS or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"expected {', '.join(SCHEDULE_KINDS)} or a .json schedule file, got {text!r}")


def add_solver_args(p: Any) -> None:
    """--solver-options / --max-order / --rho: the solver's options and the schedule's rho."""
    p.add_argument("--solver-options", default=None, metavar="JSON",
                   help='keyword options of --solver, e.g. \'{"max_order": 3, "lower_order_final": false}\'')
    p.add_argument("--max-order", type=positive_int, default=None, help="the solver's order (multistep solvers)")
    p.add_argument("--rho", type=float, default=None,
                   help="the schedule's rho (default: 7 for polynomial, 1 for time_uniform and discrete)")


def solver_options(args: argparse.Namespace) -> dict:
    """--solver-options with --max-order merged in; contradictions are errors."""
    options = json_object(args.solver_options, "--solver-options") if args.solver_options else {}
    if args.max_order is not None:
        if "max_order" in options and options["max_order"] != args.max_order:
            raise ValueError("--max-order contradicts max_order in --solver-options")
        options["max_order"] = args.max_order
    return options


def schedule_rho(args: argparse.Namespace, kind: str) -> float:
    """--rho, else the kind's usual rho; a positive finite number."""
    rho = DEFAULT_RHO.get(kind, 7.0) if args.rho is None else args.rho
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"--rho must be a positive finite number, got {rho}")
    return rho


def data_range(text: str) -> tuple[float, float]:
    """--data-range LO,HI: the range of the model's data (finite, LO < HI)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI like -1,1 or -0.5,0.5, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"expected finite LO < HI, got {text!r}")
    return lo, hi


def kind_or_file(text: str):  # noqa: ANN201 (str or a float64 tensor)
    """A ``--schedule`` / ``--init`` value: a schedule kind as is, or the sigmas of a .json schedule file."""
    from ..schedules import load_schedule

    return load_schedule(text) if text.endswith(".json") else text


def json_object(text: str, name: str) -> dict:
    """The JSON object given to option ``name``; anything else is a ValueError naming the option."""
    from ..jsonio import JSONInputError, load_json

    try:
        return load_json(text, what=name, max_depth=8, max_bytes=2**16, expect=dict)
    except JSONInputError as e:
        raise ValueError(f"{name} must be a JSON object like '{{\"max_order\": 3}}', got {text[:80]!r}: "
                         f"{e.detail}") from None


def add_model_args(p: Any) -> None:
    """Add --model, --shape, --diffusers (with the noise settings of a diffusers model) to a parser or group."""
    p.add_argument("--model", default="gmm", help=MODEL_HELP + " (default: %(default)s)")
    p.add_argument("--shape", type=parse_shape, default=None, help="sample shape C,H,W for a model factory")
    p.add_argument("--diffusers", dest="model", type=lambda path: "diffusers:" + path, metavar="PATH_OR_DIR",
                   help="instead of --model: a diffusers UNet2DModel pipeline or UNet folder saved with save_pretrained")
    p.add_argument("--prediction-type", default=None, choices=("epsilon", "v_prediction", "sample", "flow_prediction"),
                   help="--diffusers: the model's prediction type, when the folder has no scheduler config")
    p.add_argument("--beta-schedule", default=None, choices=("linear", "scaled_linear", "squaredcos_cap_v2"),
                   help="--diffusers: the training beta schedule, when the folder has no scheduler config")
    p.add_argument("--beta-start", type=float, default=None, help="--diffusers: training beta_start")
    p.add_argument("--beta-end", type=float, default=None, help="--diffusers: training beta_end")
    p.add_argument("--num-train-timesteps", type=positive_int, default=None, help="--diffusers: training timesteps")


def add_sigma_args(p: Any) -> None:
    """Add --sigma-min / --sigma-max (default: the model's own noise range)."""
    p.add_argument("--sigma-min", type=float, default=None,
                   help="end of the schedule (default: the model's own smallest sigma, else 0.002; a value below the "
                        "model's own is refused)")
    p.add_argument("--sigma-max", type=float, default=None,
                   help="start of the schedule (default: the model's own largest sigma, else 80; a value above the "
                        "model's own is refused)")


def _range(args: argparse.Namespace, denoiser: object) -> tuple[float, float, str]:
    from ..denoisers import sigma_range as model_range

    return model_range(denoiser, getattr(args, "sigma_min", None), getattr(args, "sigma_max", None),
                       names=("--sigma-min", "--sigma-max"))


def sigma_range(args: argparse.Namespace, denoiser: object) -> tuple[float, float]:
    """(sigma_min, sigma_max) from --sigma-min / --sigma-max, else the model's own range
    (:func:`fewstep.denoisers.sigma_range`, which refuses options outside the model's range)."""
    return _range(args, denoiser)[:2]


def describe_sigma_range(args: argparse.Namespace, denoiser: object) -> str:
    """Where :func:`sigma_range`'s values come from, in words ('the model's own range', ...)."""
    return _range(args, denoiser)[2]


SMALL_MODEL = 20_000_000  # parameters; below this one thread is fastest on CPU (see README "Speed")


def idle_threads() -> int:
    """The cores not already busy (cores minus the 1-minute load average, rounded; at least 1, at most the cores),
    shared among torchrun's local processes."""
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(1, min(cores, int(idle + 0.5)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_threads(denoiser: object) -> int:
    """Torch threads on CPU when --threads is not given: 1 for the analytic bed and small networks (their per-call
    work is too small to pay for thread synchronisation, which on a busy 2-core machine made 2 threads 4-10x slower
    than 1), else the idle cores (:func:`idle_threads`)."""
    import torch

    params = sum(p.numel() for p in denoiser.parameters()) if isinstance(denoiser, torch.nn.Module) else 0
    return 1 if params < SMALL_MODEL else idle_threads()


def set_threads(args: argparse.Namespace, denoiser: object) -> int:
    """Apply --threads (or :func:`default_threads`) and return the count."""
    import torch

    n = args.threads if getattr(args, "threads", None) else default_threads(denoiser)
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def load_model(name: str, shape: tuple[int, ...] | None = None, args: argparse.Namespace | None = None):
    """(denoiser, sample shape, model id, dtype) for ``--model``: see MODEL_HELP. ``args`` gives the diffusers
    noise settings (--prediction-type, ...)."""
    import importlib

    import torch

    from .. import denoisers

    noise = ("prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
    given = [k for k in noise if args is not None and getattr(args, k, None) is not None]
    if given and not name.startswith("diffusers:"):  # a built-in model or factory has its own noise settings
        raise ValueError(f"--{given[0].replace('_', '-')} applies to --diffusers models only; model {name} has its own "
                         "noise settings")
    if name in MODELS or name.endswith(".safetensors") or name.startswith("diffusers:"):
        if name == "gmm":
            from .._extras import check

            check("sklearn", "skimage", extra="demo",
                  purpose="--model gmm (the analytic bed fitted to the photos; --model unet needs no extra)")
            den, shp, dtype = denoisers.gmm_denoiser(), (3, 8, 8), torch.float64
        elif name.startswith("diffusers:") and (text := text_pipeline(name.split(":", 1)[1], args)) is not None:
            # A flow model starts at sigma 1e6: its EDM state needs float64 (in float32 the first step is ~1 % off).
            flow = text.noise_config["prediction_type"] == "flow_prediction"
            den, shp, dtype = text, text.sample_shape, torch.float64 if flow else torch.float32
            print(f"model: {den.describe()}", file=sys.stderr, flush=True)
        elif name.startswith("diffusers:"):  # a local save_pretrained folder (offline, safetensors)
            from ..integrations.diffusers import load_denoiser

            keys = ("prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
            opts = {k: getattr(args, k) for k in keys if args is not None and getattr(args, k, None) is not None}
            den = load_denoiser(name.split(":", 1)[1], **opts)
            print(f"model: {den.describe()}", file=sys.stderr, flush=True)
            shp, dtype = den.sample_shape, torch.float32
        else:
            den = {"unet": denoisers.default_unet, "digits": denoisers.digits_unet}.get(
                name, lambda: denoisers.load_unet(name))()
            res = den.config.img_resolution
            shp, dtype = (den.config.channels, res, res), torch.float32
        if shape is not None and tuple(shape) != tuple(shp):
            raise ValueError(f"--shape {','.join(map(str, shape))} does not apply: model {name} makes samples of "
                             f"shape {','.join(map(str, shp))} (--shape is for model factories)")
        return den, tuple(shp), den.model_id, dtype
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            hint = " (is its folder on PYTHONPATH? e.g. PYTHONPATH=. fewstep ...)" if isinstance(e, ImportError) else ""
            raise ValueError(f"cannot load model factory {name!r}: {e}{hint}") from None
        den = factory()
        if not callable(den):
            raise ValueError(f"{name} returned {type(den).__name__}, not a denoiser")
        if shape is None:
            raise ValueError("--shape is required with a model factory (e.g. --shape 3,32,32)")
        _probe(den, name, tuple(shape))
        return den, tuple(shape), factory_model_id(name, den), torch.float32
    raise ValueError(f"unknown model {name!r}; use {MODEL_HELP}")


def text_pipeline(path: str, args: argparse.Namespace | None):  # noqa: ANN201 (a PromptModel or None)
    """For a text-to-image pipeline folder, its :class:`PromptModel` over --prompts (+ --eval-prompts) or --prompt,
    with ``prompt_split`` (training, held-out indices); None for any other model. Prompts for another model, or a
    text pipeline without prompts, are refused."""
    from ..integrations.diffusers.text import PromptModel, load_pipeline, pipeline_kind, read_prompts, split_prompts

    prompts_file, one = getattr(args, "prompts", None), getattr(args, "prompt", None)
    eval_file = getattr(args, "eval_prompts", None)
    kind = pipeline_kind(path) if os.path.isdir(path) else None
    if kind is None:
        if prompts_file is not None or one is not None:
            raise ValueError(f"--{'prompts' if prompts_file is not None else 'prompt'} applies to text-to-image "
                             f"pipelines (Stable Diffusion, SDXL, SD3, Flux); {path} is an unconditional model")
        return None
    if prompts_file is None and one is None:
        raise ValueError(f"{path} is a text-to-image pipeline: give its prompts (fewstep train --prompts FILE, "
                         "fewstep sample --prompt TEXT; other commands do not take text-to-image pipelines)")
    if one is not None:
        prompts, split = [one], ([0], [])
    else:
        prompts = read_prompts(prompts_file, "--prompts file")
        if eval_file is not None:
            held = read_prompts(eval_file, "--eval-prompts file")
            both = set(prompts) & set(held)
            if both:
                raise ValueError(f"--eval-prompts {eval_file} repeats {len(both)} training prompt(s) of --prompts, e.g. "
                                 f"{sorted(both)[0][:60]!r}; held-out prompts must differ from the training ones")
            split = (list(range(len(prompts))), list(range(len(prompts), len(prompts) + len(held))))
            prompts = prompts + held
        else:
            split = split_prompts(prompts)
    import torch

    pipe = load_pipeline(path)
    dtype = getattr(args, "model_dtype", None)
    device = getattr(args, "device", None) if hasattr(args, "prompts") else None  # train; sample moves it itself
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per local process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if dtype is not None or device is not None:
        try:
            pipe.to(device=device, dtype=getattr(torch, dtype) if dtype else None)
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:
            raise ValueError(f"cannot move the pipeline to --device {device} / --model-dtype {dtype}: "
                             f"{str(e).splitlines()[0][:200]}") from None
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    model = PromptModel(pipe, prompts, getattr(args, "negative_prompt", None),
                        scheduler_config_file=sched if os.path.isfile(sched) else None)
    model.prompt_split = split
    return model


def factory_model_id(name: str, den: object) -> str:
    """The id of the model a factory ``name`` returned: its own non-empty ``model_id`` if it sets one, else
    ``name@digest`` with :func:`fewstep.denoisers.model_digest` of its weights (so retrained weights behind the same
    factory are another model), else ``name`` (no network to digest, e.g. an analytic model)."""
    from ..denoisers import model_digest

    own = getattr(den, "model_id", None)
    if isinstance(own, str) and own:
        return own
    digest = model_digest(den)
    return name if digest is None else f"{name}@{digest}"


def _probe(den: Any, name: str, shape: tuple[int, ...]) -> None:
    """One evaluation on a zero sample of ``shape``, so a wrong --shape is a clear error, not a torch traceback."""
    import torch

    from ..sampling import ModelCall

    try:
        with torch.inference_mode():
            ModelCall(den, check_finite=False)(torch.zeros((1, *shape)), torch.tensor(1.0, dtype=torch.float64))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"model {name} fails on a sample of --shape {','.join(map(str, shape))}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


def class_count(denoiser: object, model: str, needs: str) -> int:
    """The classes 0..n-1 of a class-conditional denoiser (n is its null label); ``needs`` starts the error, e.g.
    "--class needs"."""
    null = getattr(denoiser, "null_label", None)
    if not isinstance(null, int) or isinstance(null, bool):
        raise ValueError(f"{needs} a class-conditional model (e.g. --model digits); model {model} has none")
    return null


def check_class(label: int, classes: int, model: str) -> int:
    """--class LABEL, in 0..classes-1."""
    if not 0 <= label < classes:
        raise ValueError(f"--class must be in 0..{classes - 1} for model {model}, got {label}")
    return label


def check_negative_prompt(negative: str | None, w: float) -> None:
    """--negative-prompt at guidance 1 is refused: only the conditional branch is evaluated, so it would change
    nothing."""
    if negative is not None and w == 1:
        raise ValueError("--negative-prompt has no effect at --guidance 1 (the conditional model alone is sampled); "
                         "give a scale above 1, or leave it out")


def guidance_scale(w: float) -> float:
    """--guidance W: a finite number."""
    if not math.isfinite(w):
        raise ValueError(f"--guidance must be a finite number, got {w}")
    return w
