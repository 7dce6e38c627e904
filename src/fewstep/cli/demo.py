"""``fewstep demo``: the few-step frontier on the shipped U-Net (classic solvers, the measured default, the tuned best
and the shipped learned samplers at NFE 3/5/7/9) and the guided digits model at NFE 5, or (``--bed``) the solver
table on the analytic natural-patch bed."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..io import write_text_atomic
from .args import parse_nfes, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``demo`` subcommand."""
    d = sub.add_parser("demo", help="the shipped U-Net: classic solvers, the tuned best and the shipped learned "
                                    "samplers at NFE 3/5/7/9; then the guided digits model at NFE 5")
    d.add_argument("--bed", action="store_true", help="instead: solver table on the analytic natural-patch bed")
    d.add_argument("--out", default=None, help="output folder (default: fewstep-out/demo or fewstep-out/bed)")
    d.add_argument("--overwrite", action="store_true", help="replace existing output (its results.md / results.json)")
    d.add_argument("--num-seeds", dest="seeds", type=positive_int, default=None,
                   help="how many held-out evaluation seeds (default: 128; bed 1000)")
    d.add_argument("--train", action="store_true",
                   help="train the learned samplers now (the default method at NFE 5; digits: DyWeight at w = 2) "
                        "instead of using the shipped ones (adds a few CPU minutes)")
    d.add_argument("--train-samples", type=positive_int, default=None,
                   help="with --train: training samples of the U-Net sampler (default: the method's own)")
    d.add_argument("--no-digits", dest="digits", action="store_false",
                   help="skip the conditional part (guided digits model: teacher, best classic, learned at NFE 5)")
    d.add_argument("--nfe", type=parse_nfes, default=[3, 5, 7, 9], help="comma-separated NFEs (default: 3,5,7,9)")
    d.add_argument("--patch", type=positive_int, default=8, help="patch size (default: %(default)s)")
    d.add_argument("--components", type=positive_int, default=10, help="mixture components (default: %(default)s)")
    d.add_argument("--ref-steps", type=positive_int, default=256,
                   help="reference solver steps (default: %(default)s)")
    d.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: 1, the fastest for these small models on a 2-core machine)")
    d.set_defaults(func=run, preflight=preflight)
    return d


def preflight(args: argparse.Namespace) -> None:
    """Before any output is claimed or work done: the U-Net demo plots and judges the digits (matplotlib,
    scikit-learn); its FD reference patches and the bed come from the photos (scikit-image, scikit-learn); the bed's
    table has no plot."""
    from .._extras import check

    check(*(("sklearn", "skimage") if args.bed else ("matplotlib", "sklearn", "skimage")), extra="demo",
          purpose="fewstep demo --bed" if args.bed else "fewstep demo")


def run(args: argparse.Namespace) -> int:
    """Run the U-Net demo, or the bed's solver table with ``--bed``."""
    import torch


    torch.set_num_threads(max(1, args.threads))
    if not args.bed:
        from ..experiments.demo import DemoConfig, DigitsDemoConfig, run_demo

        out = Path(args.out or "fewstep-out/demo")
        if args.train_samples is not None and not args.train:
            raise ValueError("--train-samples applies with --train (the shipped samplers are already trained)")
        run_demo(DemoConfig(out=out, seeds=args.seeds or 128, nfes=args.nfe, train=args.train,
                            train_samples=args.train_samples,
                            digits=DigitsDemoConfig(train=args.train) if args.digits else None))
        return 0
    return _bed_demo(args)


def _bed_demo(args: argparse.Namespace) -> int:
    from .. import evaluation
    from ..experiments.bed import Bed

    out = Path(args.out or "fewstep-out/bed")
    args.seeds = args.seeds or 1000
    t0 = time.perf_counter()
    print(f"Gaussian mixture ({args.components} components) fitted to {args.patch}x{args.patch}x3 natural-image "
          f"patches (scikit-image / scikit-learn photos; cached after the first fit), and reference ODE solutions "
          f"for {args.seeds} seeds (DEIS-logrho order 4, {args.ref_steps} steps) ...", flush=True)
    bed = Bed.gmm(seeds=args.seeds, ref_steps=args.ref_steps, size=args.patch, components=args.components,
                  progress=True)
    print(f"  reference relative error vs. half the steps: {bed.ref_error:.1e}", flush=True)
    rows = bed.solver_table(nfes=args.nfe, progress=True)
    table = evaluation.format_table(rows, args.nfe)
    header = (f"RMSE to the exact ODE solution at sigma_min=0.002, {args.seeds} seeds, Gaussian mixture "
              f"({args.components} components, {args.patch}x{args.patch}x3 patches), polynomial schedule rho=7, "
              f"sigma_max=80.\n\n")
    print("\n" + table)
    write_text_atomic(out / "results.md", header + table + "\n")
    write_text_atomic(out / "results.json", json.dumps({"reference_error": bed.ref_error, "rows": rows}, indent=2)
                      + "\n")
    print(f"\nWrote {out / 'results.md'} and {out / 'results.json'} in {time.perf_counter() - t0:.0f} s.")
    return 0
