"""``fewstep schedule search | learn | export``: GITS schedule search, schedule learning by distillation, and export
of schedules / AMED tables as plain numbers."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ..io import write_text_atomic
from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import add_model_args, kind_or_file, positive_int

DESCRIPTION = """\
search: GITS (Chen et al., 2024): dynamic programming over a fine grid of sigmas for the schedule of --nfe that
        best follows teacher trajectories with --solver; writes --out FILE.json.
learn:  learn the sigmas of --solver at --nfe by distillation from --init; writes --out FILE.json.
export: print SOURCE (a schedule .json, an AMED checkpoint or a learned sampler .safetensors) as numbers for other tools
        (and write them to --out if given), with its model id, sigma range and NFE; --nfe K interpolates it to
        K; stderr says what a host must do (sampler, AFS, trailing 0) to pay exactly that NFE.

Use the .json of search / learn with --schedule of fewstep sample / train."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``schedule`` subcommand; its options are grouped by the actions they apply to."""
    sc = sub.add_parser("schedule", help="search (GITS), learn or export time schedules", description=DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("action", choices=("search", "learn", "export"))
    sc.add_argument("source", nargs="?", default=None, help="for export: a schedule .json, an AMED checkpoint or a learned sampler (--schedule-only)")
    sc.add_argument("--out", default=None,
                    help="search / learn: output schedule .json (required); export: also write the exported text here")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never SOURCE itself)")
    sc.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: 1, measured fastest for the bed and small models on a busy 2-core machine; raise it for large networks)")
    both = sc.add_argument_group("search and learn")
    add_model_args(both)
    both.add_argument("--solver", default="ipndm", help="solver the schedule is for (default: %(default)s)")
    both.add_argument("--solver-options", default=None, help='JSON, e.g. \'{"max_order": 3}\'')
    both.add_argument("--nfe", type=positive_int, default=None,
                      help="NFE of the schedule (default: 5); export: interpolate SOURCE to this NFE of its solver "
                           "(log-linear in sigma, as Align Your Steps; default: its own)")
    both.add_argument("--afs", action="store_true", help="the solver uses the analytical first step")
    search = sc.add_argument_group("search only")
    search.add_argument("--grid", type=positive_int, default=61, help="fine grid points (default: %(default)s)")
    search.add_argument("--grid-kind", default="polynomial", choices=("polynomial", "logsnr", "time_uniform"),
                        help="schedule kind of the fine grid (default: %(default)s)")
    search.add_argument("--warmup", type=positive_int, default=256, help="teacher trajectories (default: %(default)s)")
    search.add_argument("--coeff", type=float, default=1.15, help="GITS cost-to-go weight (default: %(default)s)")
    search.add_argument("--teacher", default="deis",
                        help="teacher solver (default: %(default)s; learn always distils from deis)")
    learn = sc.add_argument_group("learn only")
    learn.add_argument("--init", default="polynomial",
                       help="initial schedule kind or .json file (default: %(default)s)")
    learn.add_argument("--total-samples", type=positive_int, default=8192,
                       help="training samples (default: %(default)s)")
    learn.add_argument("--batch", type=positive_int, default=64, help="training batch (default: %(default)s)")
    learn.add_argument("--lr", type=float, default=0.05, help="learning rate (default: %(default)s)")
    learn.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    export = sc.add_argument_group("export only")
    export.add_argument("--format", default="json", choices=("json", "list", "k", "diffusers"),
                        help="json (everything: sigmas in every form, model id, sigma range, NFE and how to pay it), "
                             "list (plain sigmas), k (k-diffusion / ComfyUI SIGMAS, ending in 0: one more model call), "
                             "diffusers (sigmas= list without 0: diffusers appends its final sigma itself)")
    export.add_argument("--schedule-only", action="store_true",
                        help="export a checkpoint's sigmas alone (needed for a feature predictor, whose "
                             "per-sample r, c, a cannot be exported, for DyWeight / EPD / PAS / GS samplers, whose "
                             "parameters act inside fewstep's own solvers, or with --nfe other than the trained one)")
    sc.set_defaults(func=run)
    return sc


def run(args: argparse.Namespace) -> int:
    """GITS schedule search, schedule learning by distillation, and export of schedules / AMED tables."""
    import torch

    from .. import learned
    from ..schedules import save_schedule

    torch.set_num_threads(max(1, args.threads))
    if args.action == "export":
        if args.source is None:
            raise ValueError("schedule export needs SOURCE: a schedule .json or a checkpoint .safetensors")
        return _export(Path(args.source), args.format, args.out, args.nfe, args.schedule_only)
    if args.nfe is None:
        args.nfe = 5
    if args.source is not None:
        raise ValueError(f"schedule {args.action} takes no SOURCE argument (got {args.source!r})")
    if not args.out:
        raise ValueError(f"schedule {args.action} needs --out FILE.json")
    options = parse_solver_options(args.solver_options)
    for name in ("coeff", "lr"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name} must be a positive finite number, got {v!r}")
    if not args.solver.strip():
        raise ValueError("--solver must not be empty")
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    info = {"method": args.action, "model_id": model_id, "solver": args.solver, "solver_options": options,
            "nfe": args.nfe, "afs": args.afs}
    if args.action == "search":
        from ..schedule_search import search_schedule

        sig = search_schedule(denoiser, shape, nfe=args.nfe, solver=args.solver, solver_options=options, afs=args.afs,
                              grid=args.grid, grid_kind=args.grid_kind, warmup=args.warmup, coeff=args.coeff,
                              teacher=args.teacher, dtype=dtype, progress=True)
        info.update(grid=args.grid, grid_kind=args.grid_kind, warmup=args.warmup, coeff=args.coeff, teacher=args.teacher)
    else:
        init = kind_or_file(args.init)
        sig = learned.learn_schedule(
            denoiser, shape=shape, solver=args.solver, solver_options=options, nfe=args.nfe, afs=args.afs,
            schedule=init, budget=learned.Budget(total_samples=args.total_samples, batch=args.batch, lr=args.lr,
                                                 seed=args.seed), dtype=dtype, progress=True).sigmas
        info.update(init=args.init, total_samples=args.total_samples, batch=args.batch, lr=args.lr, seed=args.seed)
    save_schedule(out, sig, **info)
    print(f"{args.action}: {', '.join(f'{v:.4g}' for v in sig.tolist())} ({time.perf_counter() - t0:.1f} s); wrote {out}")
    return 0


def parse_solver_options(text: str | None) -> dict:
    """--solver-options: a JSON object of keyword arguments for the solver (None or empty: none)."""
    if text is None or not text.strip():
        return {}
    hint = '--solver-options must be a JSON object of solver keyword arguments, e.g. \'{"max_order": 3}\''
    from ..jsonio import load_json

    try:
        return load_json(text, what="--solver-options", max_depth=8, max_bytes=2**16, expect=dict)
    except ValueError as e:
        raise ValueError(f"{hint}; {e}") from None


def _export(source: Path, fmt: str, out: str | None, nfe: int | None = None, schedule_only: bool = False) -> int:
    """Print (and with ``out`` write) :func:`fewstep.learned.export.export_schedule` as JSON or a plain list; the
    cost statement (:func:`fewstep.learned.export.cost_line`: the NFE and how a host pays exactly it) goes to
    stderr, so stdout stays machine-readable."""
    import sys

    from ..learned import load
    from ..learned.export import cost_line, export_document

    sampler = load(source) if source.suffix == ".safetensors" else None  # any learned sampler
    doc = export_document(source, nfe, schedule_only=schedule_only, sampler=sampler)
    value = {"list": doc["sigmas"], "k": doc["k_diffusion_sigmas"], "diffusers": doc["diffusers_sigmas"]}.get(fmt, doc)
    if fmt == "list":
        text = ", ".join(repr(v) for v in value)
    elif fmt in ("k", "diffusers"):
        text = json.dumps(value)
    else:
        text = json.dumps(value, indent=1)
    if out:
        write_text_atomic(Path(out), text + "\n")
    print(text)
    print(f"schedule export: {cost_line(doc)}", file=sys.stderr)
    return 0
