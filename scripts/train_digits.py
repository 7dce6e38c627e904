#!/usr/bin/env python
"""Train fewstep's class-conditional digits U-Net (the shipped ``assets/digits16.safetensors``), or measure it.

Data: scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``, 1797 images, 10 classes), values
0..16 mapped to [-1, 1] and bilinearly upsampled to 16x16, one channel; augmented by random shifts of up to
``--shift`` pixels (the border filled with the background, -1). Model: :class:`SmallUNet` with ``num_classes=10``
(a label embedding added to the noise embedding; label 10 is the null class). Training: EDM's loss
(``train_model.edm_loss``: sigma ~ lognormal(-1.2, 1.2), lambda(sigma) weighting), the label replaced by the null
class with probability ``--p-uncond`` (classifier-free guidance, Ho & Salimans 2022), Adam with warm-up, gradient
clipping and an EMA of the weights, which is what gets saved. Example (about 25 minutes on one CPU thread)::

    python scripts/train_digits.py --steps 4000 --out src/fewstep/assets/digits16.safetensors

``--evaluate FILE`` instead trains a small classifier (logistic regression on the 16x16 images, accuracy on a
held-out quarter reported) and classifies ``--per-class`` guided samples of every class at each guidance scale.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_model  # the EDM loss and its constants, shared with the patch model

import fewstep
from fewstep.data import digit_classifier, load_digits16
from fewstep.denoisers import Guided
from fewstep.denoisers.unet import SmallUNet, UNetConfig, load_unet, save_unet

NUM_CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps (at most)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after this much wall time even if --steps are not done (0: no limit); the steps done "
                        "are recorded in the recipe")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (after warm-up)")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    p.add_argument("--ema", type=float, default=0.999,
                   help="EMA decay of the weights, warmed up as min(ema, (1 + step) / (10 + step)) (the EMA model is "
                        "saved)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="probability of replacing a label by the null class")
    p.add_argument("--shift", type=int, default=1, help="random shift augmentation, in pixels at 16x16 (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, labels, noise and augmentation")
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--out", default=None, help="output .safetensors file (training)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--evaluate", default=None, metavar="FILE", help="measure this weights file instead of training")
    p.add_argument("--per-class", type=int, default=100, help="--evaluate: samples per class")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5], help="--evaluate: scales")
    p.add_argument("--solver", default="ipndm", help="--evaluate: solver (default: %(default)s)")
    p.add_argument("--nfe", type=int, default=5, help="--evaluate: model evaluations per sample")
    p.add_argument("--afs", action="store_true", help="--evaluate: analytical first step")
    p.add_argument("--teacher", action="store_true",
                   help="--evaluate: also classify the teacher's samples (DEIS order 4, 32 steps, 31 NFE)")
    p.add_argument("--json", default=None, help="--evaluate: also write the table to this JSON file")
    p.add_argument("--grid", default=None, metavar="DIR",
                   help="--evaluate: write PNG grids (a row per class, 10 seeds) of the solver and the teacher at "
                        "each guidance scale to DIR")
    args = p.parse_args(argv)
    if (args.out is None) == (args.evaluate is None):
        p.error("give exactly one of --out (train) and --evaluate FILE")
    for name in ("steps", "batch", "threads", "per_class", "nfe"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.ema < 1.0 or not 0.0 <= args.p_uncond < 1.0 or args.shift < 0:
        p.error("--ema and --p-uncond must be in [0, 1), --shift >= 0")
    return args


def shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by a random offset in [-pixels, pixels]^2, filling the border with the background (-1)."""
    if pixels == 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4, value=-1.0)
    off = torch.randint(0, 2 * pixels + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(off.tolist())])


class _WithLabels:
    """``model`` with its labels bound, as :func:`train_model.edm_loss` calls it: ``(x, sigma) -> x0``."""

    def __init__(self, model: SmallUNet, labels: torch.Tensor) -> None:
        self.model, self.labels, self.config = model, labels, model.config

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma, self.labels)


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    data, labels = load_digits16()
    config = UNetConfig(img_resolution=16, channels=1, base_channels=args.base_channels,
                        channel_mult=tuple(args.channel_mult), num_res_blocks=args.num_res_blocks,
                        num_classes=NUM_CLASSES)
    model = SmallUNet(config).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    print(f"SmallUNet {config}\n{model.num_parameters():,} parameters; {len(data)} digits "
          f"(mean {data.mean():.4f}, std {data.std():.4f}); {args.steps * args.batch / len(data):.0f} epochs; "
          f"torch {torch.__version__}, {args.threads} thread(s)", flush=True)

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    running, done = None, 0
    bar = tqdm(range(args.steps), desc="train", mininterval=10.0, file=sys.stdout)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        idx = torch.randint(len(data), (args.batch,), generator=gen)
        y = labels[idx].clone()
        y[torch.rand(args.batch, generator=gen) < args.p_uncond] = NUM_CLASSES  # label dropout -> null class
        loss = train_model.edm_loss(_WithLabels(model, y), shift(data[idx], args.shift, gen), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))  # EMA warm-up: short runs do not keep the initialisation
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        value = float(loss.detach())
        if not math.isfinite(value):
            print(f"non-finite loss at step {step}; stopping", flush=True)
            return 1
        running = value if running is None else 0.99 * running + 0.01 * value
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        done = step + 1
        if step % 100 == 99:
            print(f"step {done}: loss {running:.4f}, {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes:
            print(f"time limit of {args.max_minutes:g} min reached after {done} steps", flush=True)
            break
    bar.close()
    wall = time.perf_counter() - t0

    recipe = {**{k: v for k, v in vars(args).items() if k in (
                  "steps", "batch", "lr", "warmup", "clip", "ema", "p_uncond", "shift", "seed", "base_channels",
                  "num_res_blocks", "threads", "max_minutes")},
              "steps_done": done, "ema_warmup": "min(ema, (1 + step) / (10 + step))",
              "channel_mult": list(args.channel_mult), "epochs": round(done * args.batch / len(data), 1),
              "final_loss": running, "wall_time_s": round(wall, 1), "torch": torch.__version__,
              "data": "sklearn.datasets.load_digits, 0..16 -> [-1, 1], bilinear 8x8 -> 16x16",
              "num_classes": NUM_CLASSES, "null_label": NUM_CLASSES, "p_mean": train_model.P_MEAN,
              "p_std": train_model.P_STD, "optimizer": "Adam", "script": "scripts/train_digits.py"}
    path = save_unet(ema, args.out, recipe)
    print(f"saved EMA weights to {path} ({path.stat().st_size / 1e6:.2f} MB); final loss {running:.4f}, "
          f"{wall / 60:.1f} min", flush=True)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    torch.set_num_threads(args.threads)
    clf, held_out = digit_classifier(args.seed)
    print(f"classifier: logistic regression on 16x16 digits, held-out accuracy {held_out:.4f}", flush=True)
    model = load_unet(args.evaluate)
    n = args.per_class
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n)
    noise = fewstep.noise_for_seeds(range(len(labels)), (1, 16, 16))
    steps = fewstep.steps_for_nfe(args.solver, args.nfe, args.afs)
    sig = fewstep.get_schedule("polynomial", steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    table = {"classifier_held_out_accuracy": held_out, "solver": args.solver, "nfe": args.nfe, "afs": args.afs,
             "per_class": n, "model_id": model.model_id, "scales": {}}
    teacher_sig = fewstep.get_schedule("polynomial", 32, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    runs = {"solver": (sig, args.solver, {"afs": args.afs})}
    if args.teacher:
        runs["teacher"] = (teacher_sig, "deis", {"max_order": 4, "deis_mode": "logrho"})
    for w in args.guidance:
        entry = table["scales"][str(w)] = {}
        for name, (sigmas, solver, opts) in runs.items():
            t = time.perf_counter()
            x = fewstep.sample(Guided(model, labels, w), noise, sigmas, solver, **opts)
            pred = clf.predict(x.clamp(-1, 1).reshape(len(x), -1).numpy())
            per = [float(np.mean(pred[labels.numpy() == c] == c)) for c in range(NUM_CLASSES)]
            entry[name] = {"per_class": per, "mean": float(np.mean(per))}
            print(f"guidance {w:g}, {name}: mean {np.mean(per):.3f}; per class " + " ".join(f"{a:.2f}" for a in per)
                  + f" ({time.perf_counter() - t:.0f} s)", flush=True)
    if args.grid:
        from fewstep.experiments.demo import image_grid, save_png

        lab10 = torch.arange(NUM_CLASSES).repeat_interleave(10)
        noise10 = fewstep.noise_for_seeds(range(len(lab10)), (1, 16, 16))
        tag = f"{args.solver}{'-afs' if args.afs else ''}_nfe{args.nfe}"
        for w in args.guidance:
            for name, (sigmas, solver, opts) in {"teacher": runs.get("teacher") or (
                    teacher_sig, "deis", {"max_order": 4, "deis_mode": "logrho"}), tag: runs["solver"]}.items():
                x = fewstep.sample(Guided(model, lab10, w), noise10, sigmas, solver, **opts)
                save_png(Path(args.grid) / f"{name}_w{w:g}.png", image_grid(x.repeat(1, 3, 1, 1), cols=10))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return evaluate(args) if args.evaluate else train(args)


if __name__ == "__main__":
    sys.exit(main())
