"""``fewstep compare A.npz B.npz``: how far two sample files of ``fewstep sample`` are apart, seed by seed (RMSE,
PSNR), and as distributions (Fréchet distance on random features) where there are enough samples."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..io import write_text_atomic
from .args import positive_int

MIN_FD_SAMPLES = 64  # below this a Fréchet distance is mostly noise: not reported


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``compare`` subcommand."""
    c = sub.add_parser("compare", help="RMSE / PSNR of two sample files seed by seed (and FD with enough samples)")
    c.add_argument("a", help="samples .npz from fewstep sample (e.g. the teacher's: --solver deis --nfe 128)")
    c.add_argument("b", help="samples .npz to compare with it (the same seeds, in any order)")
    c.add_argument("--fd-features", type=positive_int, default=256,
                   help="random features for the Fréchet distance (default: %(default)s)")
    c.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    c.add_argument("--overwrite", action="store_true", help="replace existing output (--json FILE)")
    c.set_defaults(func=run)
    return c


def _read(path: str) -> tuple[list[int], object]:
    from ..metrics import load_images, read_npz

    z = read_npz(Path(path), "sample file")  # a regular file, no pickles
    if "images" not in z or "seeds" not in z:
        raise ValueError(f"{path} is not a sample file of fewstep sample (it needs 'images' and 'seeds')")
    seeds = z["seeds"]
    if seeds.ndim != 1 or seeds.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'seeds' must be a 1-D integer array")
    images = load_images(path)  # checked: finite, float in [-1, 1] or uint8 mapped to it
    if len(images) != len(seeds):
        raise ValueError(f"{path} holds {len(images)} images but {len(seeds)} seeds")
    return [int(s) for s in seeds], images


def run(args: argparse.Namespace) -> int:
    """Match the two files' samples by seed and report."""
    import numpy as np

    from ..metrics import RandomFeatures, frechet_distance, gaussian_stats

    seeds_a, a = _read(args.a)
    seeds_b, b = _read(args.b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{args.a} holds samples of shape {a.shape[1:]}, {args.b} of shape {b.shape[1:]}")
    where_b = {s: i for i, s in enumerate(seeds_b)}
    common = [s for s in seeds_a if s in where_b]
    if not common:
        raise ValueError(f"{args.a} and {args.b} share no seed: compare samples of the same seeds")
    ia = [seeds_a.index(s) for s in common]
    ib = [where_b[s] for s in common]
    diff = a[ia].astype(np.float64) - b[ib].astype(np.float64)
    rmse = float(np.sqrt(np.mean(diff**2)))
    per_seed = np.sqrt(np.mean(diff.reshape(len(common), -1) ** 2, axis=1))
    psnr = 20 * math.log10(2.0 / rmse) if rmse > 0 else math.inf  # data range [-1, 1]: peak-to-peak 2
    out = {"a": args.a, "b": args.b, "seeds": len(common), "rmse": rmse, "psnr_db": psnr,
           "rmse_per_seed": {"median": float(np.median(per_seed)), "max": float(per_seed.max())}}
    print(f"{len(common)} common seeds ({len(seeds_a)} in {Path(args.a).name}, {len(seeds_b)} in "
          f"{Path(args.b).name}); values in [-1, 1] (fewstep sample's --data-range mapped to it)")
    print(f"  RMSE {rmse:.5g} (per seed: median {out['rmse_per_seed']['median']:.4g}, max "
          f"{out['rmse_per_seed']['max']:.4g}); PSNR {psnr:.2f} dB")
    if min(len(a), len(b)) >= MIN_FD_SAMPLES:
        import torch

        feats = RandomFeatures(int(np.prod(a.shape[1:])), args.fd_features)
        fd = frechet_distance(*gaussian_stats(feats(torch.from_numpy(a))), *gaussian_stats(feats(torch.from_numpy(b))))
        out["fd_random_features"] = fd
        print(f"  Fréchet distance on {args.fd_features} random features of all {len(a)} / {len(b)} samples: {fd:.5g}")
    else:
        print(f"  (no Fréchet distance: it needs at least {MIN_FD_SAMPLES} samples per file)")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(out, indent=1) + "\n")
    return 0
