"""Argument types and helpers shared by the ``fewstep`` commands: number / seed / shape parsers, ``--model``
loading and the ``--features auto`` choice."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = [
    "MAX_SEEDS", "MODELS", "MODEL_HELP", "parse_nfes", "positive_int", "parse_seeds", "parse_shape", "schedule_arg",
    "kind_or_file", "json_object", "add_model_args", "load_model", "resolve_features",
]

MAX_SEEDS = 10**7  # a list of seeds is materialised: refuse ranges that would exhaust memory

MODELS = ("gmm", "unet")
MODEL_HELP = ("gmm (analytic natural-patch bed) | unet (the shipped U-Net) | PATH.safetensors (a SmallUNet file) | "
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
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return shape


def schedule_arg(text: str) -> str:
    """A ``--schedule`` value: polynomial, logsnr, time_uniform or a .json schedule file."""
    if text in ("polynomial", "logsnr", "time_uniform") or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"expected polynomial, logsnr, time_uniform or a .json schedule file, got {text!r}")


def kind_or_file(text: str):  # noqa: ANN201 (str or a float64 tensor)
    """A ``--schedule`` / ``--init`` value: a schedule kind as is, or the sigmas of a .json schedule file."""
    from ..schedules import load_schedule

    return load_schedule(text) if text.endswith(".json") else text


def json_object(text: str, name: str) -> dict:
    """The JSON object given to option ``name``; anything else is a ValueError naming the option."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON object like '{{\"max_order\": 3}}', got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object like '{{\"max_order\": 3}}', got {text!r}")
    return value


def add_model_args(p: Any) -> None:
    """Add --model, --shape and --diffusers to a parser or argument group."""
    p.add_argument("--model", default="gmm", help=MODEL_HELP + " (default: %(default)s)")
    p.add_argument("--shape", type=parse_shape, default=None, help="sample shape C,H,W for a model factory")
    p.add_argument("--diffusers", dest="model", type=lambda path: "diffusers:" + path, metavar="PATH_OR_DIR",
                   help="instead of --model: a diffusers UNet2DModel pipeline or UNet folder saved with save_pretrained")


def load_model(name: str, shape: tuple[int, ...] | None = None):
    """(denoiser, sample shape, model id, dtype) for ``--model``: see MODEL_HELP."""
    import importlib

    import torch

    from .. import data, denoisers

    if name == "gmm":
        bed = data.gmm_bed()
        gmm = denoisers.GaussianMixture(bed["means"], bed["covariances"], bed["weights"])
        gmm.model_id = "gmm-bed:8x8x3:k10:seed0"
        return gmm, (3, 8, 8), gmm.model_id, torch.float64
    if name == "unet" or name.endswith(".safetensors"):
        net = denoisers.default_unet() if name == "unet" else denoisers.load_unet(name)
        res = net.config.img_resolution
        return net, (net.config.channels, res, res), net.model_id, torch.float32
    if name.startswith("diffusers:"):  # --diffusers PATH_OR_DIR: a local save_pretrained folder (offline, safetensors)
        from ..integrations.diffusers import load_denoiser

        den = load_denoiser(name.split(":", 1)[1])
        return den, den.sample_shape, den.model_id, torch.float32
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load model factory {name!r}: {e}") from None
        den = factory()
        if not callable(den):
            raise ValueError(f"{name} returned {type(den).__name__}, not a denoiser")
        if shape is None:
            raise ValueError("--shape is required with a model factory (e.g. --shape 3,32,32)")
        return den, shape, getattr(den, "model_id", name), torch.float32
    raise ValueError(f"unknown model {name!r}; use {MODEL_HELP}")


def resolve_features(denoiser: object, choice: str) -> tuple[str, object]:
    """--features auto: the denoiser's own features, else the middle block of a U-Net, else none."""
    import torch

    from ..denoisers import provides_features

    if choice != "auto":
        return choice, denoiser if isinstance(denoiser, torch.nn.Module) else None
    if provides_features(denoiser):
        return "adapter", None
    if isinstance(denoiser, torch.nn.Module):
        return "auto", denoiser
    return "none", None
