"""samples.png: the same 16 seeds from the DDPM's own ancestral sampler and, through fewstep, from the ODE (a
256-step reference, Euler at NFE 5, iPNDM4 + AFS on EDM's polynomial schedule at NFE 5 (fewstep's default before
the measured defaults: visibly noisy here) and today's measured default at NFE 5) on the model's own sigma range.

    PYTHONPATH=src:. python examples/ddpm_digits/figure.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import fewstep
from fewstep.defaults import default_recipe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from model import ddpm_sample, factory, load_net  # noqa: E402
from train import save_grid  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    den = factory()
    noise = fewstep.noise_for_seeds(range(16), (1, 16, 16))
    lo, hi = den.sigma_min, den.sigma_max
    rows = [("DDPM ancestral, 1000 steps (its own sampler)", ddpm_sample(load_net(), 16, torch.Generator().manual_seed(0)))]
    for label, solver, afs, opts, n in (
            ("ODE, DEIS-logrho4, 256 steps (reference)", "deis", False, {"max_order": 4, "deis_mode": "logrho"}, 257),
            ("Euler (DDIM), NFE 5", "euler", False, {}, fewstep.steps_for_nfe("euler", 5)),
            ("iPNDM4 + AFS, polynomial rho 7, NFE 5 (the old default)", "ipndm", True, {},
             fewstep.steps_for_nfe("ipndm", 5, True))):
        sig = fewstep.get_schedule("polynomial", n, lo, hi)
        rows.append((label, fewstep.sample(den, noise, sig, solver, afs=afs, **opts)))
    rec = default_recipe(den, 5)
    rows.append((f"fewstep's measured default, NFE 5: {rec.label()}", fewstep.sample(den, noise, predictor=rec)))
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, x in rows:
            save_grid(x.clamp(-1, 1), f"{tmp}/row.png", ncol=16, scale=3)
            im = Image.open(f"{tmp}/row.png").convert("L")
            head = Image.new("L", (im.width, 16), 255)
            ImageDraw.Draw(head).text((4, 2), label, fill=0)
            parts += [head, im]
    out = Image.new("L", (max(p.width for p in parts), sum(p.height for p in parts)), 255)
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    out.save(HERE / "samples.png", optimize=True)
    print(f"wrote {HERE / 'samples.png'}")


if __name__ == "__main__":
    main()
