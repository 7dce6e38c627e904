"""AMED on the analytic natural-patch bed: RMSE to the exact ODE solution on 1000 held-out seeds.

    .venv/bin/python benchmarks/amed_bed.py [--quick] [--out docs/amed_bed.md]

Trains AMED-Solver (predictor-free table and feature-based predictor) at NFE 3/5/7/9 and AMED-Plugin on iPNDM at
NFE 5/7, all with AFS, polynomial schedule rho=7, and compares them with DPM-Solver-2 and iPNDM at the same NFE.
Evaluation seeds (10^8 ...) are disjoint from the training seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

import fewstep
from fewstep import learned
from fewstep.experiments.bed import Bed

EVAL_SEED0 = 10**8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for the test that keeps this script alive")
    p.add_argument("--out", default="docs/amed_bed.md")
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    nfes = (5,) if quick else (3, 5, 7, 9)
    n_seeds = 16 if quick else args.seeds
    budget, teacher = ((learned.Budget(batch=32, total_samples=64), learned.Teacher(M=2)) if quick
                       else (learned.Budget(), learned.Teacher()))
    bed = Bed.gmm(seeds=range(EVAL_SEED0, EVAL_SEED0 + n_seeds), ref_steps=64 if quick else 256,
                  count=2000 if quick else 20000)
    gmm, noise, ref_err = bed.denoiser, bed.noise, bed.ref_error

    def plain(solver: str, nfe: int) -> float:
        n = fewstep.steps_for_nfe(solver, nfe, True)
        return bed.rmse(fewstep.sample(gmm, noise, fewstep.get_schedule("polynomial", n), solver, afs=True))

    def trained(student: str, nfe: int, features: str) -> tuple[float, float, learned.AMEDSampler]:
        """AMED-Solver (``student="amed"``) or AMED-Plugin on ``student``, trained for ``nfe`` with AFS."""
        method, base = ("amed", None) if student == "amed" else ("plugin", student)
        pred = learned.train(method, gmm, shape=(3, 8, 8), nfe=nfe, base=base, options={"features": features},
                             teacher=teacher, budget=budget, progress=not quick)
        res = fewstep.solve(gmm, noise, predictor=pred)
        assert res.nfe == nfe
        return bed.rmse(res.x), pred.log.seconds, pred

    rows, times, tables = [], {}, {}
    for nfe in nfes:
        row = {"nfe": nfe, "dpm2": plain("dpm2", nfe), "ipndm": plain("ipndm", nfe)}
        for student, feats, key in (("amed", "none", "amed_table"), ("amed", "adapter", "amed_feat"),
                                    ("ipndm", "none", "plugin_table"), ("ipndm", "adapter", "plugin_feat")):
            if student == "ipndm" and nfe not in (5, 7):
                continue
            err, secs, pred = trained(student, nfe, feats)
            row[key] = err
            times[f"{key}@{nfe}"] = secs
            if feats == "none":
                tables[f"{key}@{nfe}"] = pred.table_values()
        rows.append(row)
        print(json.dumps(row), flush=True)

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    lines = [
        "# AMED on the natural-patch Gaussian-mixture bed",
        "",
        f"Command: `.venv/bin/python benchmarks/amed_bed.py{' --quick' if quick else ''}`  ",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{args.threads} threads  ",
        f"RMSE to the exact ODE solution at sigma_min = 0.002 on {n_seeds} held-out seeds; all with AFS; polynomial "
        f"schedule rho = 7; reference error {ref_err:.1e}. Training: `fewstep.learned.train` defaults (methods amed, "
        "plugin).",
        "",
        "| NFE | DPM-Solver-2 | iPNDM | AMED-Solver (table) | AMED-Solver (features) | AMED-Plugin iPNDM (table) "
        "| AMED-Plugin iPNDM (features) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['nfe']} | {f(r['dpm2'])} | {f(r['ipndm'])} | {f(r.get('amed_table'))} | "
                     f"{f(r.get('amed_feat'))} | {f(r.get('plugin_table'))} | {f(r.get('plugin_feat'))} |")
    lines += ["", "Ratios:", ""]
    for r in rows:
        best_amed = min(r["amed_table"], r["amed_feat"])
        lines.append(f"- NFE {r['nfe']}: DPM-Solver-2 / best AMED-Solver = {r['dpm2'] / best_amed:.2f}x"
                     + (f"; best AMED-Plugin / iPNDM = {min(r['plugin_table'], r['plugin_feat']) / r['ipndm']:.2f}"
                        if "plugin_table" in r else ""))
    lines += ["", "Training time (s, 2-core CPU): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), "",
              "Learned predictor-free tables (r, c, a per step, largest sigma first):", ""]
    for key, rows_ in tables.items():
        lines.append(f"- {key}: " + ", ".join(f"({v['r']:.3f}, {v['c']:.4f}, {v['a']:.3f})" for v in rows_))
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
