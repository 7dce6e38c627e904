#!/usr/bin/env python
"""Train fewstep's small EDM U-Net on natural-image patches (the shipped ``assets/unet16.safetensors``).

EDM training (Karras et al., 2022, Sec. 5 and Table 1): sigma ~ lognormal(P_mean=-1.2, P_std=1.2), loss
lambda(sigma) * ||D(y + n, sigma) - y||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2, Adam, and an
exponential moving average of the weights, which is what gets saved. Deterministic for a given seed and
thread count. Example (about 25 minutes on one CPU thread)::

    python scripts/train_model.py --steps 5000 --batch 64 --out src/fewstep/assets/unet16.safetensors
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
from tqdm.auto import tqdm

import fewstep
from fewstep.data import TRAIN_PHOTOS, image_patches
from fewstep.denoisers.unet import SmallUNet, UNetConfig, save_unet

P_MEAN, P_STD = -1.2, 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (after warm-up)")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    p.add_argument("--size", type=int, default=16, help="patch size (model img_resolution)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (the EMA model is saved)")
    p.add_argument("--seed", type=int, default=0, help="seed for patches, initialisation and noise")
    p.add_argument("--patches", type=int, default=60000, help="number of training patches")
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "size", "patches", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if not 0.0 <= args.ema < 1.0:
        p.error("--ema must be in [0, 1)")
    return args


def edm_loss(model: SmallUNet, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """EDM loss: weighted denoising error at sigma ~ lognormal(P_MEAN, P_STD)."""
    sd = model.config.sigma_data
    sigma = (torch.randn(y.shape[0], generator=gen) * P_STD + P_MEAN).exp()
    n = torch.randn(y.shape, generator=gen) * sigma[:, None, None, None]
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    err = (model(y + n, sigma) - y) ** 2
    return (weight[:, None, None, None] * err).mean()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    data = image_patches(size=args.size, count=args.patches, photos=TRAIN_PHOTOS, seed=args.seed)
    config = UNetConfig(img_resolution=args.size, base_channels=args.base_channels,
                        channel_mult=tuple(args.channel_mult), num_res_blocks=args.num_res_blocks)
    model = SmallUNet(config).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    print(f"SmallUNet {config}\n{model.num_parameters():,} parameters; {len(data)} patches "
          f"(mean {data.mean():.4f}, std {data.std():.4f}); torch {torch.__version__}, {args.threads} thread(s)",
          flush=True)

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    running = None
    bar = tqdm(range(args.steps), desc="train", mininterval=5.0, file=sys.stdout)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        idx = torch.randint(len(data), (args.batch,), generator=gen)
        loss = edm_loss(model, data[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - args.ema)
        value = float(loss.detach())
        if not math.isfinite(value):
            print(f"non-finite loss at step {step}; stopping", flush=True)
            return 1
        running = value if running is None else 0.99 * running + 0.01 * value
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    bar.close()
    wall = time.perf_counter() - t0

    recipe = {**vars(args), "channel_mult": list(args.channel_mult), "final_loss": running,
              "wall_time_s": round(wall, 1), "torch": torch.__version__, "data": "fewstep.data.image_patches",
              "photos": list(TRAIN_PHOTOS), "p_mean": P_MEAN, "p_std": P_STD, "optimizer": "Adam"}
    path = save_unet(ema, args.out, recipe)
    print(f"saved EMA weights to {path} ({path.stat().st_size / 1e6:.2f} MB); final loss {running:.4f}, "
          f"{wall / 60:.1f} min", flush=True)

    # Sanity check: 16 samples, Heun on 33 EDM sigmas (64 evaluations), against the training patches' statistics.
    noise = torch.randn(16, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        x = fewstep.sample(ema, noise, fewstep.get_schedule("polynomial", 33), "heun")
    print(f"samples: mean {x.mean():.4f}, std {x.std():.4f}, min {x.min():.3f}, max {x.max():.3f}; "
          f"training patches: mean {data.mean():.4f}, std {data.std():.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
