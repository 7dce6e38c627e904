"""``fewstep eval``: Fréchet distance (and KID, precision / recall) of generated images to a reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io import write_text_atomic
from .args import positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``eval`` subcommand."""
    e = sub.add_parser("eval", help="Fréchet distance (and KID) of generated images to reference statistics")
    e.add_argument("images", help="generated images: .npz (images in [-1, 1] or uint8) or a folder of PNGs")
    e.add_argument("--ref", required=True,
                   help="reference: statistics .npz (mu, sigma; EDM layout), images (.npz / folder), or patches:SIZE")
    e.add_argument("--ref-count", type=positive_int, default=10000, help="patches for --ref patches:SIZE")
    e.add_argument("--features", default="random", choices=("random", "pixels", "inception"))
    e.add_argument("--inception", default=None, help="TorchScript Inception-v3 file for --features inception")
    e.add_argument("--save-ref-stats", default=None, help="cache the reference statistics to this .npz")
    e.add_argument("--kid", action="store_true", help="also compute KID (needs reference images)")
    e.add_argument("--pr", action="store_true",
                   help="also compute improved precision/recall (Kynkäänniemi et al., 2019; needs reference images)")
    e.add_argument("--pr-k", type=positive_int, default=3, help="k of the k-NN balls for --pr (default: 3)")
    e.add_argument("--batch", type=positive_int, default=256)
    e.add_argument("--out", default=None, help="write the result as JSON here")
    e.add_argument("--overwrite", action="store_true", help="replace existing output (--out / --save-ref-stats files)")
    e.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: 1, measured fastest for the bed and small models on a busy 2-core machine; raise it for large networks)")
    e.set_defaults(func=run)
    return e


def _patches_size(ref: str) -> int:
    text = ref.split(":", 1)[1]
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"--ref patches:SIZE needs a positive integer SIZE, got {text!r}")
    return size


def run(args: argparse.Namespace) -> int:
    """Compare the images' feature statistics with the reference's; print (and write) the result as JSON."""
    import sys
    import warnings

    import numpy as np
    import torch

    from .. import data, metrics

    torch.set_num_threads(max(1, args.threads))
    if args.ref.startswith("patches:"):
        from .._extras import check

        check("skimage", "sklearn", extra="eval", purpose="fewstep eval --ref patches:SIZE (photo patches)")
    if args.save_ref_stats and not args.save_ref_stats.endswith(".npz"):
        raise ValueError(f"--save-ref-stats must name an .npz file, got {args.save_ref_stats!r}")
    ref = args.ref
    size = _patches_size(ref) if ref.startswith("patches:") else None
    images = metrics.load_images(args.images)
    ext = metrics.FeatureExtractor(args.features, int(np.prod(images.shape[1:])), args.inception)
    ref_feats = None
    stats = None if size is not None else metrics.load_stats(ref, ext, images.shape[1:])
    if stats is None and args.save_ref_stats and Path(args.save_ref_stats).resolve() == Path(ref).resolve():
        raise ValueError(f"--save-ref-stats {args.save_ref_stats} would overwrite the reference images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", metrics.FewSamplesWarning)
        mu, sigma, feats = metrics.feature_stats(images, ext, args.batch, progress=True)
        if size is not None:
            ref_images = data.image_patches(size=size, count=args.ref_count, seed=12345).numpy()
        elif stats is not None:
            (mu_r, sigma_r), ref_images = stats, None
        else:
            ref_images = metrics.load_images(ref)
        if ref_images is not None:
            if ref_images.shape[1:] != images.shape[1:]:
                raise ValueError(f"reference images have shape {ref_images.shape[1:]}, samples {images.shape[1:]}")
            mu_r, sigma_r, ref_feats = metrics.feature_stats(ref_images, ext, args.batch, progress=True)
            if args.save_ref_stats:
                metrics.save_stats(args.save_ref_stats, mu_r, sigma_r, ext, ref_images.shape[1:], len(ref_images))
    for w in caught:
        if issubclass(w.category, metrics.FewSamplesWarning):
            print(f"fewstep eval: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if mu_r.shape != mu.shape:
        raise ValueError(f"reference statistics have {mu_r.shape[0]} features, the extractor gives {mu.shape[0]}")
    result = {"images": len(images), "features": args.features, "fd": metrics.frechet_distance(mu, sigma, mu_r, sigma_r)}
    if args.kid:
        if ref_feats is None:
            raise ValueError("--kid needs reference images, not only statistics")
        result["kid"] = metrics.kid(feats, ref_feats)
    if args.pr:
        if ref_feats is None:
            raise ValueError("--pr needs reference images, not only statistics")
        if min(len(feats), len(ref_feats)) <= args.pr_k:
            raise ValueError(f"--pr-k {args.pr_k} needs more than {args.pr_k} images in each set "
                             f"(got {len(feats)} and {len(ref_feats)})")
        result["precision"], result["recall"] = metrics.precision_recall(ref_feats, feats, k=args.pr_k)
    print(json.dumps(result))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0
