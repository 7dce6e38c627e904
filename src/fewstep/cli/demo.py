"""``fewstep demo``: AMED on the shipped U-Net against every solver and the guided digits model at NFE 5, or
(``--bed``) the solver table on the analytic natural-patch bed."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..io import write_text_atomic
from .args import parse_nfes, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``demo`` subcommand."""
    d = sub.add_parser("demo", help="train AMED on the shipped U-Net and compare every solver at NFE 3/5/7/9, "
                                           "then the guided digits model at NFE 5")
    d.add_argument("--bed", action="store_true", help="instead: solver table on the analytic natural-patch bed")
    d.add_argument("--out", default=None, help="output folder (default: fewstep-out/demo or fewstep-out/bed)")
    d.add_argument("--overwrite", action="store_true", help="replace existing output (its results.md / results.json)")
    d.add_argument("--num-seeds", dest="seeds", type=positive_int, default=None,
                   help="how many evaluation seeds (default: 256; bed 1000)")
    d.add_argument("--amed-nfe", type=positive_int, default=5, help="NFE the AMED predictors are trained for")
    d.add_argument("--train-samples", type=positive_int, default=2048, help="AMED training samples")
    d.add_argument("--no-digits", dest="digits", action="store_false",
                   help="skip the conditional part (guided digits model: teacher, best classic, learned at NFE 5)")
    d.add_argument("--nfe", type=parse_nfes, default=[3, 5, 7, 9], help="comma-separated NFEs (default: 3,5,7,9)")
    d.add_argument("--patch", type=positive_int, default=8, help="patch size (default: %(default)s)")
    d.add_argument("--components", type=positive_int, default=10, help="mixture components (default: %(default)s)")
    d.add_argument("--ref-steps", type=positive_int, default=256,
                   help="reference solver steps (default: %(default)s)")
    d.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: 1, the fastest for these small models on a 2-core machine)")
    d.set_defaults(func=run)
    return d


def run(args: argparse.Namespace) -> int:
    """Run the U-Net demo, or the bed's solver table with ``--bed``."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    if not args.bed:
        from ..experiments.demo import DemoConfig, DigitsDemoConfig, run_demo

        out = Path(args.out or "fewstep-out/demo")
        seeds = args.seeds or 256
        run_demo(DemoConfig(out=out, seeds=seeds, nfes=args.nfe, amed_nfe=args.amed_nfe,
                            train_samples=args.train_samples, digits=DigitsDemoConfig() if args.digits else None))
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
