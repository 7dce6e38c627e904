"""Command-line interface: ``fewstep demo | ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: no half-written file on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _nfes(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import data, denoisers, evaluation
    from .sampling import noise_for_seeds

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"Fitting a {args.components}-component Gaussian mixture to {args.patch}x{args.patch}x3 natural-image "
          f"patches (scikit-image / scikit-learn photos) ...", flush=True)
    bed = data.gmm_bed(size=args.patch, n_components=args.components)
    gmm = denoisers.GaussianMixture(bed["means"], bed["covariances"], bed["weights"])
    noise = noise_for_seeds(range(args.seeds), (3, args.patch, args.patch), dtype=torch.float64)
    print(f"Reference ODE solutions for {args.seeds} seeds (DEIS-logrho order 4, {args.ref_steps} steps) ...",
          flush=True)
    ref, ref_err = evaluation.reference_solution(gmm, noise, steps=args.ref_steps)
    print(f"  reference relative error vs. half the steps: {ref_err:.1e}", flush=True)
    rows = evaluation.solver_table(gmm, noise, ref, nfes=args.nfe, progress=True)
    table = evaluation.format_table(rows, args.nfe)
    header = (f"RMSE to the exact ODE solution at sigma_min=0.002, {args.seeds} seeds, Gaussian mixture "
              f"({args.components} components, {args.patch}x{args.patch}x3 patches), polynomial schedule rho=7, "
              f"sigma_max=80.\n\n")
    print("\n" + table)
    write_atomic(out / "results.md", header + table + "\n")
    write_atomic(out / "results.json", json.dumps({"reference_error": ref_err, "rows": rows}, indent=2) + "\n")
    print(f"\nWrote {out / 'results.md'} and {out / 'results.json'} in {time.perf_counter() - t0:.0f} s.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewstep", description="Few-step ODE sampling of diffusion models (AMED).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="compare every solver at NFE 3/5/7/9 on the analytic natural-patch bed")
    d.add_argument("--out", default="fewstep-out/demo", help="output folder (default: %(default)s)")
    d.add_argument("--seeds", type=_positive, default=1000, help="number of seeds (default: %(default)s)")
    d.add_argument("--nfe", type=_nfes, default=[3, 5, 7, 9], help="comma-separated NFEs (default: 3,5,7,9)")
    d.add_argument("--patch", type=_positive, default=8, help="patch size (default: %(default)s)")
    d.add_argument("--components", type=_positive, default=10, help="mixture components (default: %(default)s)")
    d.add_argument("--ref-steps", type=_positive, default=256, help="reference solver steps (default: %(default)s)")
    d.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as e:
        print(f"fewstep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fewstep {args.command}: interrupted", file=sys.stderr)
        return 130
