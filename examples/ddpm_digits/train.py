"""Train the DDPM of model.py on the 16x16 digits with DDPM's noise-prediction loss (Ho et al., 2020).

Loss: || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2 with t uniform in 0..999. Data: the 1797
scikit-learn digits at 16x16 in [-1, 1] (``fewstep.data.load_digits16``), shifted at random by up to one pixel
(border filled with the background, -1). Adam with a linear warm-up and a cosine decay, gradient clipping, and an
exponential moving average of the weights, which is what gets saved (safetensors, with the recipe, steps, seconds
and final loss in its metadata). Seeded: the same arguments give the same weights on the same machine and torch.
From the repository root (about 10 CPU minutes on one thread; more wall time on a busy machine)::

    PYTHONPATH=src:. python examples/ddpm_digits/train.py
    PYTHONPATH=src:. python examples/ddpm_digits/train.py --grid-only ddpm_grid.png   # 64 DDPM samples
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import ALPHAS_CUMPROD, NUM_TIMESTEPS, WEIGHTS, EpsUNet, ddpm_sample, load_net  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3500, help="optimiser steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay to 0")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay, warmed up as min(ema, (1 + k) / (10 + k))")
    p.add_argument("--shift", type=int, default=1, help="random shift augmentation in pixels (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-cpu-minutes", type=float, default=15.0,
                   help="stop early after this much CPU time of this process (0: no limit)")
    p.add_argument("--out", default=str(WEIGHTS), help="weights file (default: %(default)s)")
    p.add_argument("--grid", default=None, metavar="PNG", help="after training, write 64 DDPM samples as a grid")
    p.add_argument("--grid-only", default=None, metavar="PNG", help="write the grid of --out's weights, no training")
    return p.parse_args(argv)


def load_data() -> torch.Tensor:
    from fewstep.data import load_digits16  # (N, 1, 16, 16) in [-1, 1]

    return load_digits16()[0]


def random_shift(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by (dy, dx) in -k..k, filling with the background value -1."""
    if k == 0:
        return x
    pad = F.pad(x, (k, k, k, k), value=-1.0)
    d = torch.randint(0, 2 * k + 1, (x.shape[0], 2), generator=g)
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(d.tolist())])


def save_grid(images: torch.Tensor, path: str, ncol: int = 8, scale: int = 4) -> None:
    """Images in [-1, 1], (N, 1, H, W), as one PNG grid (1-pixel gaps), each pixel ``scale`` x ``scale``."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / ncol)
    grid = torch.ones(rows * (h + 1) + 1, ncol * (w + 1) + 1)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = (im[0] + 1) / 2
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(arr, mode="L").resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST).save(path)


def train(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    data = load_data()
    net = EpsUNet()
    ema = copy.deepcopy(net).requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    print(f"EpsUNet: {params} parameters; {len(data)} images; {args.steps} steps of batch {args.batch}", flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    abar = ALPHAS_CUMPROD.float()
    start, cpu0, losses, step = time.time(), time.process_time(), [], 0
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x0 = random_shift(data[torch.randint(0, len(data), (args.batch,), generator=g)], args.shift, g)
        t = torch.randint(0, NUM_TIMESTEPS, (args.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        cpu = time.process_time() - cpu0
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}  lr {lr:.2e}  "
                  f"{cpu / 60:.1f} CPU min  {(time.time() - start) / 60:.1f} min", flush=True)
        if args.max_cpu_minutes and cpu > 60 * args.max_cpu_minutes:
            print(f"CPU time limit: stopped after {step} steps", flush=True)
            break
    final = sum(losses[-200:]) / len(losses[-200:])
    recipe = {k: v for k, v in vars(args).items() if k not in ("out", "grid", "grid_only")}
    cpu = time.process_time() - cpu0
    meta = {"recipe": json.dumps(recipe), "steps_done": str(step), "cpu_seconds": f"{cpu:.0f}",
            "wall_seconds": f"{time.time() - start:.0f}",
            "final_loss_last200": f"{final:.5f}", "parameters": str(params),
            "note": "eps-prediction DDPM, 1000 linear betas 1e-4..0.02, integer timesteps 0..999, data in [-1, 1]"}
    state = {k: v.detach().contiguous() for k, v in ema.state_dict().items()}
    save_file(state, args.out, metadata=meta)
    print(f"wrote {args.out}: {step} steps in {cpu:.0f} CPU s ({time.time() - start:.0f} s wall), final loss (mean of "
          f"the last 200 steps) {final:.4f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.grid_only is None:
        train(args)
    grid = args.grid_only or args.grid
    if grid:
        x = ddpm_sample(load_net(args.out), 64, torch.Generator().manual_seed(args.seed))
        save_grid(x, grid)
        print(f"wrote {grid}")


if __name__ == "__main__":
    main()
