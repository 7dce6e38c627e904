"""``fewstep tune``: measure the classic solvers, their options and schedules on your model at one NFE, print the
table and write the best configuration (a recipe file that sample, train, the diffusers scheduler and fewstep.k
take)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import add_model_args, add_sigma_args, check_class, class_count, guidance_scale, parse_seeds, positive_int, \
    set_threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``tune`` subcommand."""
    t = sub.add_parser("tune", help="measure classic solvers and schedules on your model at one NFE; write the best")
    add_model_args(t)
    t.add_argument("--nfe", type=positive_int, default=5, help="model evaluations per sample (default: %(default)s)")
    t.add_argument("--class", dest="class_label", type=int, default=None, metavar="LABEL",
                   help="class-conditional models: tune for this class (with --guidance)")
    t.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="class-conditional models: tune under classifier-free guidance at scale W (all classes unless "
                        "--class)")
    t.add_argument("--seeds", type=parse_seeds, default=None,
                   help="held-out seeds to compare on, e.g. 900000000-900000031 (default: 32 tuning seeds from "
                        "900000000, apart from training and evaluation seeds)")
    t.add_argument("--no-search", dest="search", action="store_false",
                   help="skip the searched (GITS) schedules (faster)")
    t.add_argument("--out", default=None, help="recipe file to write (default: tuned_nfeN.json)")
    t.add_argument("--json", default=None, metavar="FILE", help="also write every measured row as JSON")
    t.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_sigma_args(t)
    t.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: 1 for small networks, else the idle cores)")
    t.set_defaults(func=run)
    return t


def guided(args: argparse.Namespace, denoiser):  # noqa: ANN001, ANN201
    """(denoiser, scale): the model under classifier-free guidance for --guidance (every class tiled over the batch,
    or --class), else as it is."""
    import torch

    from ..denoisers import Guided

    if args.guidance is None:
        if args.class_label is not None:
            raise ValueError("--class needs --guidance W (the scale to tune at; 1 is the conditional model)")
        return denoiser, None
    classes = class_count(denoiser, args.model, "--guidance needs")
    w = guidance_scale(args.guidance)
    labels = torch.arange(classes) if args.class_label is None else check_class(args.class_label, classes, args.model)
    return Guided(denoiser, labels, w), w


def run(args: argparse.Namespace) -> int:
    """Tune and report."""
    from ..io import write_text_atomic
    from ..tune import tune

    out = Path(args.out or f"tuned_nfe{args.nfe}.json")
    for path in (out, Path(args.json) if args.json else None):
        if path is not None and path.exists() and not args.overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape, args)
    set_threads(args, denoiser)
    denoiser, w = guided(args, denoiser)
    seeds = args.seeds if args.seeds is not None else 32
    if args.guidance is not None and args.class_label is None and isinstance(seeds, int):
        classes = class_count(denoiser.denoiser, args.model, "--guidance needs")
        seeds = -(-seeds // classes) * classes  # every class equally often
    t0 = time.perf_counter()
    res = tune(denoiser, shape, args.nfe, seeds=seeds, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
               search=args.search, dtype=dtype, model_id=model_id, guidance=w, progress=True)
    lo, hi = res.sigma_range
    print(f"model {model_id}: sigma {hi:.4g} .. {lo:.4g}, NFE {args.nfe}"
          + (f", guidance {w:g}" if w is not None else "") + f", {len(res.seeds)} held-out seeds; teacher DEIS-4 "
          f"(its own error about {res.teacher_error:.2g}); {len(res.rows)} configurations in "
          f"{time.perf_counter() - t0:.0f} s")
    print(res.table())
    res.best.save(out)
    print(f"best: {res.best.label()}: RMSE {res.best.rmse:.4g}; wrote {out}")
    print(f"  use it: fewstep sample --model {args.model} --predictor {out} ... | fewstep train ... --tuned {out}",
          file=sys.stderr)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps({"rows": res.rows, "best": res.best.label(),
                                                       "teacher_error": res.teacher_error, "seeds": res.seeds,
                                                       "sigma_range": [lo, hi]}, indent=1) + "\n")
    return 0
