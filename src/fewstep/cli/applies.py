"""Which options act in which mode, in one table: an option given where it has no effect is refused before any
work ("--rho does not apply here: ..."), never silently ignored. ``fewstep.cli.main`` calls :func:`check` with the
options the user actually typed (:func:`given`), so an option left at its default is never blamed."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

__all__ = ["RULES", "given", "check"]

NOISE = ("prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
RHO_KINDS = ("polynomial", "time_uniform", "discrete")  # schedule kinds with a rho (logsnr has none)


def _diffusers(a: argparse.Namespace) -> bool:
    return str(getattr(a, "model", "")).startswith("diffusers:")


def _what(*whats: str) -> Callable[[argparse.Namespace], bool]:
    return lambda a: a.what in whats


def _action(*actions: str) -> Callable[[argparse.Namespace], bool]:
    return lambda a: a.action in actions


def _which(*tables: str) -> Callable[[argparse.Namespace], bool]:
    return lambda a: not a.render_only and a.which in tables


def _rho_kind(a: argparse.Namespace) -> bool:
    return (getattr(a, "schedule", None) or "polynomial") in RHO_KINDS


def _analyze_afs(a: argparse.Namespace) -> bool:
    return a.what in ("error", "span") or (a.what == "align" and a.protocol == "paper")


# (command or None for every command, options, when they act, why not otherwise: completes "--opt ...").
RULES: list[tuple[str | None, Sequence[str], Callable[[argparse.Namespace], bool], str]] = [
    (None, NOISE, _diffusers, "applies to --diffusers models only (a built-in model or a factory has its own noise "
                              "settings; nothing would change)"),
    ("sample", ("rho",), _rho_kind, "applies to the polynomial, time_uniform and discrete schedules only (logsnr "
                                    "and a schedule file have no rho)"),
    ("sample", ("allow_other_model",), lambda a: a.predictor is not None, "applies to --predictor only"),
    ("sample", ("strength",), lambda a: a.init_images is not None, "applies to --init-images only"),
    ("train", ("eval_prompts", "negative_prompt", "device", "model_dtype"), lambda a: a.prompts is not None,
     "applies with --prompts only (a text-to-image pipeline)"),
    ("sample", ("negative_prompt", "model_dtype"), lambda a: a.prompt is not None,
     "applies with --prompt only (a text-to-image pipeline)"),
    ("train", ("rho",), _rho_kind, "applies to the polynomial, time_uniform and discrete schedules only"),
    ("train", ("schedule_lr",), lambda a: a.learn_schedule, "applies with --learn-schedule only"),
    ("train", ("soft_start_steps",), lambda a: a.soft_start > 0, "applies with --soft-start R > 0 only"),
    ("train", ("guidance_degree",), lambda a: a.guidance_scales is not None, "applies with --guidance-scales only"),
    ("train", ("tune_seeds",), lambda a: a.tune and a.tuned is None,
     "applies when train tunes first (not with --no-tune or --tuned)"),
    ("analyze", ("predictor",), _what("predictor", "error", "span"), "applies to analyze predictor / error / span"),
    ("analyze", ("solver",), _what("pca", "error", "align", "span"), "applies to analyze pca / error / align / span"),
    ("analyze", ("nfe", "schedule"), _what("error", "align", "span"), "applies to analyze error / align / span"),
    ("analyze", ("teacher_steps",), lambda a: a.what in ("error", "span") or (a.what == "align" and
                                                                              a.protocol == "ours"),
     "applies to analyze error / span / align (our protocol)"),
    ("analyze", ("afs",), _analyze_afs, "applies to analyze error / span / align --protocol paper"),
    ("analyze", ("grid", "protocol"), _what("align"), "applies to analyze align only"),
    ("analyze", ("points", "gt_nfe"), lambda a: a.what == "align" and a.protocol == "paper",
     "applies to analyze align --protocol paper only"),
    ("analyze", ("steps", "max_k"), _what("pca"), "applies to analyze pca only"),
    ("analyze", ("seeds", "model", "shape"), lambda a: a.what != "predictor",
     "does not apply to analyze predictor (it plots the file's own tables)"),
    ("eval", ("inception",), lambda a: a.features == "inception", "applies with --features inception only"),
    ("eval", ("pr_k",), lambda a: a.pr, "applies with --pr only"),
    ("eval", ("ref_count",), lambda a: str(a.ref).startswith("patches:"), "applies to --ref patches:SIZE only"),
    ("demo", ("patch", "components", "ref_steps"), lambda a: a.bed, "applies to demo --bed only"),
    ("demo", ("train", "train_samples", "digits"), lambda a: not a.bed, "does not apply to demo --bed"),
    ("bench", ("seeds", "ref_steps", "nfe", "train_samples", "M", "batch", "fd_count", "model", "shape", "threads",
               *NOISE), lambda a: not a.render_only, "does not apply with --render-only (it computes nothing)"),
    ("bench", ("plugin_base",), _which("paper-table2"), "applies to paper-table2 only"),
    ("bench", ("teachers", "student"), _which("paper-table4"), "applies to paper-table4 only"),
    ("schedule", ("grid", "grid_kind", "warmup", "coeff", "teacher"), _action("search"),
     "applies to schedule search only"),
    ("schedule", ("init", "total_samples", "batch", "lr", "seed"), _action("learn"), "applies to schedule learn only"),
    ("schedule", ("format", "schedule_only"), _action("export"), "applies to schedule export only"),
    ("schedule", ("model", "shape", "solver", "solver_options", "afs", "sigma_min", "sigma_max", *NOISE),
     _action("search", "learn"), "applies to schedule search / learn only (export reads everything from SOURCE)"),
]


def given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options typed in ``argv`` (after the command name; abbreviations resolved as
    argparse resolves them)."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    argv = list(argv)
    if sub is None or not argv or argv[0] not in sub.choices:
        return set()
    table = sub.choices[argv[0]]._option_string_actions
    out = set()
    for token in argv[1:]:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        action = table.get(name)
        if action is None:
            hits = {table[o] for o in table if o.startswith(name)}
            action = hits.pop() if len(hits) == 1 else None
        if action is not None:
            out.add(action.dest)
    return out


def _flag(dest: str, parser_options: dict[str, str]) -> str:
    return parser_options.get(dest, "--" + dest.replace("_", "-"))


def check(args: argparse.Namespace, typed: set[str], parser: argparse.ArgumentParser | None = None) -> None:
    """ValueError for the first typed option that does not act in this command's mode."""
    names: dict[str, str] = {}
    if parser is not None:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and args.command in sub.choices:
            for opt, act in sub.choices[args.command]._option_string_actions.items():
                names.setdefault(act.dest, opt)
    for command, options, applies, why in RULES:
        if command not in (None, args.command):
            continue
        for dest in options:
            if dest in typed and not applies(args):
                raise ValueError(f"{_flag(dest, names)} {why}")
