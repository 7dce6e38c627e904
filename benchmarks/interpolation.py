"""The penalty of carrying a schedule to another step count (issue "Ecosystem", item 3): a GITS schedule searched
for iPNDM+AFS at NFE 5, interpolated log-linearly (`fewstep.schedules.interpolate_schedule`, as AYS does) to NFE 7
and 9, against schedules searched directly at 7 and 9 and the polynomial (rho 7) schedule; exact RMSE on the
analytic bed, or RMSE to a teacher on the shipped U-Net (``--model unet``).

    python -m benchmarks.interpolation --out docs/schedule_interpolation.md [--model unet] [--seeds N] [--warmup N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import fewstep
from fewstep.experiments.bed import Bed
from fewstep.io import write_text_atomic
from fewstep.schedule_search import search_schedule
from fewstep.schedules import interpolate_schedule

SOLVER, AFS, OPTS = "ipndm", True, {"max_order": 4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gmm", choices=("gmm", "unet"))
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=128, help="GITS teacher trajectories")
    p.add_argument("--nfe", default="5,7,9")
    p.add_argument("--out", default="docs/schedule_interpolation.md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    nfes = [int(v) for v in a.nfe.split(",")]
    seeds = range(10**8, 10**8 + a.seeds)  # held out from GITS' warm-up seeds
    bed = Bed.gmm(seeds=seeds, ref_steps=64, count=2000) if a.model == "gmm" else Bed.unet(seeds=seeds, ref_steps=64)
    den, shape = bed.denoiser, bed.shape

    def err(sig: torch.Tensor) -> float:
        return bed.rmse(fewstep.sample(den, bed.noise, sig, SOLVER, afs=AFS, **OPTS))

    searched = {n: search_schedule(den, shape, nfe=n, solver=SOLVER, solver_options=OPTS, afs=AFS,
                                   warmup=a.warmup, dtype=bed.dtype) for n in nfes}
    rows = []
    for n in nfes:
        k = fewstep.steps_for_nfe(SOLVER, n, AFS, **OPTS)
        poly = fewstep.get_schedule("polynomial", k, float(searched[n][-1]), float(searched[n][0]))
        row = {"nfe": n, "polynomial": err(poly), "searched": err(searched[n])}
        row["interpolated"] = {m: err(interpolate_schedule(searched[m], k)) for m in nfes if m != n}
        rows.append(row)
    load = os.getloadavg()
    lines = [
        "# Schedules that travel: the interpolation penalty",
        "",
        f"`python -m benchmarks.interpolation --model {a.model} --seeds {a.seeds} --warmup {a.warmup} --out {a.out}` "
        f"({time.perf_counter() - t0:.0f} s, 1 thread, load average {load[0]:.1f} at the end).",
        "",
        f"{bed.description}; {a.seeds} held-out seeds; solver iPNDM (order 4) with AFS; GITS schedules searched at "
        f"each NFE ({a.warmup} teacher trajectories, 61-point grid); 'from NFE m' = the NFE-m schedule interpolated "
        "log-linearly in sigma over the normalised index (`fewstep.schedules.interpolate_schedule`, as AYS). RMSE "
        + ("to the exact ODE solution." if a.model == "gmm" else "to a DEIS-4 teacher with 64 steps."),
        "",
        "| NFE | polynomial | searched here | " + " | ".join(f"from NFE {m}" for m in nfes) + " | penalty |",
        "|---:|---:|---:|" + "---:|" * len(nfes) + "---|",
    ]
    for r in rows:
        cells = [f"{r['interpolated'][m]:.4f}" if m in r["interpolated"] else "—" for m in nfes]
        pen = ", ".join(f"from {m}: {r['interpolated'][m] / r['searched']:.2f}x" for m in r["interpolated"])
        lines.append(f"| {r['nfe']} | {r['polynomial']:.4f} | {r['searched']:.4f} | " + " | ".join(cells)
                     + f" | {pen} |")
    write_text_atomic(a.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
