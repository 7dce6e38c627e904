"""The few-step frontier on the analytic natural-patch bed: every learned sampler of fewstep and the classic solvers,
RMSE to the exact ODE solution on held-out seeds, with training cost.

    .venv/bin/python benchmarks/frontier.py [--quick] [--nfes 3,5,7,9] [--out docs/frontier.md] [--json FILE]
    .venv/bin/python benchmarks/frontier.py --from-json a.json b.json --out docs/frontier.md   # merge split runs

Learned samplers (all with AFS, polynomial rho = 7 initial schedule, one training budget for all: DEIS teacher with
M inserted steps, ``--batch`` x ``--total-samples``, final-point L2 loss): AMED-Solver and AMED-Plugin on iPNDM
(tables, no network features), DyWeight (window 4, learned schedule), EPD (K = 2 where the NFE allows, else K = 1),
PAS (iPNDM-4, 2 coordinates) and GS (DPM-Solver++(3M) corrections, time shifts, learned schedule). Evaluation seeds
(10^8 ...) are disjoint from the training seeds (1 ...). Columns: RMSE, trainable parameters, training wall time
(the loop, one process) and teacher model evaluations (per training sample x samples).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fewstep
from fewstep import learned
from fewstep.bed import Bed

EVAL_SEED0 = 10**8

# (label, solver, options, afs)
CLASSIC: tuple[tuple[str, str, dict, bool], ...] = (
    ("Euler (DDIM)", "euler", {}, False),
    ("DPM-Solver-2 +AFS", "dpm2", {}, True),
    ("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}, False),
    ("DPM-Solver++(3M) +AFS", "dpmpp", {"max_order": 3}, True),
    ("UniPC(3M)", "unipc", {"max_order": 3}, False),
    ("UniPC(3M) +AFS", "unipc", {"max_order": 3}, True),
    ("DEIS tAB2", "deis", {"max_order": 3}, False),
    ("iPNDM", "ipndm", {"max_order": 4}, False),
    ("iPNDM +AFS", "ipndm", {"max_order": 4}, True),
    ("iPNDM-v +AFS", "ipndm_v", {"max_order": 4}, True),
)

# method -> (label, extra train() keywords)
LEARNED: dict[str, tuple[str, dict[str, Any]]] = {
    "amed": ("AMED-Solver (table)", {}),
    "plugin": ("AMED-Plugin on iPNDM (table)", {"base": "ipndm"}),
    "dyweight": ("DyWeight (window 4, learned schedule)", {"learn_schedule": True}),
    "epd": ("EPD (K=2 where reachable, else K=1)", {}),
    "pas": ("PAS on iPNDM (2 coords)", {}),
    "gs": ("GS on DPM-Solver++(3M) (+xi, learned schedule)", {}),
}

# One line per method: the paper's claim (landscape.md) and the base solver it improves on here.
CLAIMS: dict[str, tuple[str, str]] = {
    "amed": ("AMED-Solver: CIFAR-10 FID 7.59 @5 vs DPM-Solver-2 (not run at odd NFE) / iPNDM 13.59 (landscape 1a)",
             "DPM-Solver-2 +AFS"),
    "plugin": ("AMED-Plugin on iPNDM: 6.61 @5 vs iPNDM 13.59 (2.1x better FID), 2.63 vs 3.17 @9", "iPNDM +AFS"),
    "dyweight": ("DyWeight: 3.02 @5 (secondary) vs iPNDM 7.77 in the same note: the best NFE-5 number claimed",
                 "iPNDM +AFS"),
    "epd": ("EPD: 4.33 @ para-NFE 5 (8 real NFE) vs DPM-Solver-2 / iPNDM; the gain needs K=2 parallel evaluations",
            "DPM-Solver-2 +AFS"),
    "pas": ("PAS: ~10 parameters, DDIM 4.37 @10 (vs DDIM 15.69); under 1 min of search on an A100", "iPNDM +AFS"),
    "gs": ("GS: 4.41 @4, 2.55 @6 vs DPM++(3M) 46.59 / 12.16 under protocol B (10x / 5x better FID)",
           "DPM-Solver++(3M) +AFS"),
}


def _params(p: Any) -> int:
    n = sum(int(v.numel()) for v in p.parameters())
    sched = (p.config.get("schedule") or {}) if hasattr(p, "config") else {}
    if sched.get("kind") == "learned":
        n += int(sched["num_steps"]) - 2  # the interior sigmas
    return n


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    nfes = tuple(int(v) for v in args.nfes.split(",")) if args.nfes else ((5,) if quick else (3, 5, 7, 9))
    n_seeds = 16 if quick else args.seeds
    tr = dict(total_samples=32, batch=16, M=2) if quick else dict(total_samples=args.total_samples,
                                                                    batch=args.batch, M=args.M)
    load0 = os.getloadavg()
    bed = Bed.gmm(seeds=range(EVAL_SEED0, EVAL_SEED0 + n_seeds), ref_steps=64 if quick else 256,
                  count=2000 if quick else 20000)
    rows: list[dict[str, Any]] = []
    for nfe in nfes:
        for label, solver, opts, afs in CLASSIC:
            try:
                n = fewstep.steps_for_nfe(solver, nfe, afs, **opts)
            except ValueError:
                continue
            x = fewstep.sample(bed.denoiser, bed.noise, fewstep.get_schedule("polynomial", n), solver, afs=afs,
                               **opts)
            rows.append({"kind": "classic", "label": label, "nfe": nfe, "rmse": bed.rmse(x)})
        for method, (label, kw) in LEARNED.items():
            if args.methods and method not in args.methods.split(","):
                continue
            kw = dict(kw)
            if method == "epd":
                try:
                    learned.steps_for_nfe("epd", nfe, True, {"K": 2})
                    kw["options"] = {"K": 2}
                except ValueError:
                    kw["options"] = {"K": 1}
            log: list = []
            p = learned.train(method, bed.denoiser, shape=bed.shape, nfe=nfe, progress=False, log=log, **tr, **kw)
            res = fewstep.sample(bed.denoiser, bed.noise, predictor=p, return_result=True)
            assert res.nfe == nfe, (method, res.nfe, nfe)
            rows.append({"kind": "learned", "method": method, "label": label, "nfe": nfe, "rmse": bed.rmse(res.x),
                         "params": _params(p), "seconds": log[0].seconds,
                         "teacher_evals": log[0].teacher_nfe_per_sample * tr["total_samples"],
                         "options": kw.get("options"), "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"command": "benchmarks/frontier.py" + (" --quick" if quick else "") + (
        f" --nfes {args.nfes}" if args.nfes else "") + (f" --methods {args.methods}" if args.methods else ""),
            "seeds": n_seeds, "ref_error": bed.ref_error,
            "train": tr, "threads": torch.get_num_threads(), "load_start": load0, "load_end": os.getloadavg(),
            "cpus": os.cpu_count(), "machine": f"{platform.machine()} {platform.processor() or 'cpu'}",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return {"meta": [meta], "rows": rows}


def render(res: dict[str, Any]) -> str:
    rows, metas = res["rows"], res["meta"]
    nfes = sorted({r["nfe"] for r in rows})
    m0 = metas[0]

    def get(kind: str, key: str, nfe: int) -> dict | None:
        for r in rows:
            if r["kind"] == kind and r["nfe"] == nfe and (r.get("method") if kind == "learned" else r["label"]) == key:
                return r
        return None

    def f(v: float | None, fmt: str = ".4f") -> str:
        return "—" if v is None else format(v, fmt)

    lines = [
        "# The few-step frontier on the analytic bed",
        "",
        "Reproduce: `.venv/bin/python benchmarks/frontier.py` (all NFEs in one run; this page was made by "
        + " and ".join(f"`.venv/bin/python {m['command']}`" for m in metas)
        + (", merged with `--from-json`" if len(metas) > 1 else "") + ").  ",
        f"Machine: {m0['machine']}, {m0['cpus']} CPUs, torch {m0['torch']}, {m0['threads']} thread(s); "
        + "; ".join(f"Load average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in m['load_start'])}, at end "
                    f"{'/'.join(f'{v:.1f}' for v in m['load_end'])} ({m['date']})" for m in metas)
        + ". The machine was shared: wall times are upper bounds.  ",
        f"Bed: `Bed.gmm` (Gaussian mixture fitted to 8x8x3 natural-image patches, exact denoiser); RMSE to the exact "
        f"ODE solution at sigma_min = 0.002 on {m0['seeds']} held-out seeds (reference error {m0['ref_error']:.1e}); "
        "polynomial schedule rho = 7 (the learned schedules start from it).  ",
        f"Training (every learned method, same budget): DEIS teacher with M = {m0['train']['M']}, batch "
        f"{m0['train']['batch']}, {m0['train']['total_samples']} samples, final-point L2 loss, Adam with cosine "
        "decay, the method's default learning rate (`fewstep.learned.DEFAULT_LR`).",
        "",
        "## RMSE by NFE (lower is better)",
        "",
        "| Sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]
    for label, *_ in CLASSIC:
        vals = [get("classic", label, n) for n in nfes]
        if any(vals):
            lines.append(f"| {label} | " + " | ".join(f(v and v["rmse"]) for v in vals) + " |")
    for method, (label, _) in LEARNED.items():
        vals = [get("learned", method, n) for n in nfes]
        if any(vals):
            lines.append(f"| **{label}** | " + " | ".join(f(v and v["rmse"]) for v in vals) + " |")
    lines += ["", "## Best learned vs best classic", ""]
    for n in nfes:
        cl = [r for r in rows if r["kind"] == "classic" and r["nfe"] == n]
        le = [r for r in rows if r["kind"] == "learned" and r["nfe"] == n]
        if cl and le:
            bc, bl = min(cl, key=lambda r: r["rmse"]), min(le, key=lambda r: r["rmse"])
            lines.append(f"- NFE {n}: best classic {bc['label']} {bc['rmse']:.4f}; best learned {bl['label']} "
                         f"{bl['rmse']:.4f}; ratio {bc['rmse'] / bl['rmse']:.2f}x")
    lines += ["", "## Training cost", "",
              "Params: trainable numbers (a learned schedule counts its interior sigmas). Seconds: training loop "
              "wall time. Teacher evals: teacher model evaluations over the whole training run.", "",
              "| Method | " + " | ".join(f"NFE {n}: params / s / teacher evals" for n in nfes) + " |",
              "|---|" + "---:|" * len(nfes)]
    for method, (label, _) in LEARNED.items():
        vals = [get("learned", method, n) for n in nfes]
        if any(vals):
            lines.append(f"| {label} | " + " | ".join(
                "—" if v is None else f"{v['params']} / {v['seconds']:.0f} / {v['teacher_evals']:,}" for v in vals)
                + " |")
    lines += ["", "## Pattern here vs the paper's claim", "",
              "Ratios are base-solver RMSE / method RMSE on this bed (same NFE, same AFS); the papers' numbers are "
              "CIFAR-10 FID and not comparable in size, only in direction.", ""]
    for method, (claim, base) in CLAIMS.items():
        parts = []
        for n in nfes:
            a, b = get("learned", method, n), get("classic", base, n)
            if a and b:
                parts.append(f"@{n} {b['rmse'] / a['rmse']:.2f}x")
        if parts:
            lines.append(f"- **{LEARNED[method][0]}** vs {base}: {', '.join(parts)}. Paper: {claim}.")
    lines += ["", "## Notes", "",
              "- NFE counts model evaluations (parallel ones included), AFS deducted; EPD's K = 2 parallel "
              "evaluations count 2 (K = 2 reaches NFE 5 and 8 only, so NFE 3/7/9 use K = 1).",
              "- The training budget is the same small one for every method (the frontier, not each method's "
              "default); `fewstep.learned.train` defaults differ per method (`DEFAULT_BUDGET`).",
              "- Not run here: the shipped U-Net bed (`Bed.unet`) and a flow-matching bed; RMSE only (no FD on this "
              "bed).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the test that keeps this script alive")
    p.add_argument("--nfes", default=None, help="comma-separated NFEs (default 3,5,7,9; quick: 5)")
    p.add_argument("--out", default="docs/frontier.md")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--from-json", nargs="+", default=None, help="render (merged) JSON results; no training")
    p.add_argument("--methods", default=None, help="comma-separated learned methods to train (default: all)")
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--total-samples", type=int, default=2048)
    p.add_argument("--M", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        res: dict[str, Any] = {"meta": [], "rows": []}
        for path in args.from_json:
            part = json.loads(Path(path).read_text())
            res["meta"] += part["meta"]
            res["rows"] += part["rows"]
        # A later file's row replaces an earlier one for the same sampler and NFE (a method rerun).
        keyed = {(r["kind"], r.get("method") or r["label"], r["nfe"]): r for r in res["rows"]}
        res["rows"] = list(keyed.values())
    else:
        res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    text = render(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
