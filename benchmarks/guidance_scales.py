"""One learned sampler for every guidance scale: guidance-aware tables (fewstep.learned.guidance) on the digits model.

    .venv/bin/python benchmarks/guidance_scales.py [--quick] [--methods plugin,dyweight] [--out docs/guidance_scales.md]

For each method (AMED-Plugin on iPNDM, a predictor-free table; DyWeight) at NFE 5 with AFS, on the shipped
class-conditional digits model under classifier-free guidance (``Guided(digits_unet(), labels, w)``, mixed labels):

* one guidance-aware sampler trained over ``--train-scales`` (one scale per batch, in turn), its tables a
  degree-2 polynomial in w over [min, max];
* one sampler per evaluation scale, trained at that scale only (the usual practice: retrain per scale);
* the base solver (iPNDM +AFS on the same polynomial schedule).

The evaluation scales (``--eval-scales``) are not among the training scales. Metrics on held-out seeds (10^8 ...;
training seeds 1 ...): RMSE to the guided teacher (DEIS-4, ``--ref-steps`` polynomial steps) and class accuracy of
the classifier of docs/digits.md. The guidance-aware sampler's budget is ``--aware-factor`` times one per-scale
sampler's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fewstep
from fewstep import learned
from fewstep.experiments.bed import Bed
from fewstep.data import digit_classifier
from fewstep.io import write_text_atomic
from fewstep.denoisers import Guided, digits_unet

EVAL_SEED0 = 10**8
LABELS = {"plugin": "AMED-Plugin on iPNDM (table)",
          "dyweight": "DyWeight (window 4, learned schedule, multiplicative calibration)"}
OPTIONS = {"dyweight": {"calibration": 1}}  # measured: the additive calibration trains poorly over scales 1-8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--out", default="docs/guidance_scales.md")
    p.add_argument("--methods", default="plugin,dyweight")
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--train-scales", default="1,2,4,8")
    p.add_argument("--eval-scales", default="1.5,3,6,7.5")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--ref-steps", type=int, default=64)
    p.add_argument("--total-samples", type=int, default=400, help="per per-scale sampler")
    p.add_argument("--aware-factor", type=int, default=2)
    p.add_argument("--batch", type=int, default=20, help="a multiple of 10 (mixed labels)")
    p.add_argument("--M", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.methods, args.eval_scales, args.train_scales, args.per_class = "plugin", "3", "2,4", 1
        args.ref_steps, args.total_samples, args.batch, args.M, args.aware_factor = 8, 20, 10, 1, 1
    if args.batch % 10:
        raise SystemExit("--batch must be a multiple of 10")
    methods = args.methods.split(",")
    for m in methods:
        if m not in LABELS:
            raise SystemExit(f"--methods: each one of {', '.join(LABELS)}, got {m!r}")
    train_scales = [float(v) for v in args.train_scales.split(",")]
    eval_scales = [float(v) for v in args.eval_scales.split(",")]
    if set(train_scales) & set(eval_scales):
        raise SystemExit("--eval-scales must be scales the guidance-aware sampler never trained at")
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    clf, clf_acc = digit_classifier()
    model = digits_unet()
    shape = (1, 16, 16)
    labels = torch.arange(10).repeat(args.per_class)
    seeds = range(EVAL_SEED0, EVAL_SEED0 + len(labels))
    train_den = Guided(model, torch.arange(10).repeat(args.batch // 10), train_scales[0])
    kw = dict(shape=shape, nfe=args.nfe, teacher=learned.Teacher(M=args.M), progress=False, dtype=torch.float32)

    def acc(x: torch.Tensor) -> float:
        pred = clf.predict(x.clamp(-1, 1).reshape(len(x), -1).double().numpy())
        return float(np.mean(pred == labels.numpy()))

    def trained(method: str, total_samples: int, **extra) -> tuple[object, float]:
        t = time.perf_counter()
        smp = learned.train(method, train_den, **kw, **extra, options=OPTIONS.get(method),
                            budget=learned.Budget(batch=args.batch, total_samples=total_samples))
        return smp, time.perf_counter() - t

    aware, aware_secs = {}, {}
    for m in methods:
        aware[m], aware_secs[m] = trained(m, args.total_samples * args.aware_factor,
                                          guidance=learned.GuidanceScales(train_scales))
        print(json.dumps({"aware": m, "seconds": aware_secs[m]}), flush=True)
    rows = []
    for w in eval_scales:
        den = Guided(model, labels, w)
        bed = Bed.build(den, shape, seeds=seeds, ref_steps=args.ref_steps, check=not args.quick,
                        model_id=model.model_id, description=f"guided digits w={w:g}")
        row: dict = {"w": w, "teacher_acc": acc(bed.ref), "ref_error": bed.ref_error}
        n = fewstep.steps_for_nfe("ipndm", args.nfe, True)
        sig = fewstep.get_schedule("polynomial", n, sigma_min=0.002, sigma_max=80.0, rho=7.0)
        base = fewstep.solve(den, bed.noise, sig, "ipndm", afs=True)
        row["base"] = {"rmse": bed.rmse(base.x), "acc": acc(base.x), "nfe": base.nfe}
        for m in methods:
            train_den.scale = w
            single, secs = trained(m, args.total_samples)
            for name, smp in (("aware", aware[m]), ("single", single)):
                res = fewstep.solve(den, bed.noise, predictor=smp)
                assert res.nfe == args.nfe, (res.nfe, args.nfe)
                row[f"{m}_{name}"] = {"rmse": bed.rmse(res.x), "acc": acc(res.x)}
            row[f"{m}_single"]["train_seconds"] = secs
        rows.append(row)
        print(json.dumps(row), flush=True)

    cmd = "python benchmarks/guidance_scales.py" + (" --quick" if args.quick else "")
    if not args.quick and argv is None:
        cmd = "python " + " ".join(sys.argv)
    result = {"command": cmd, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "classifier_held_out_accuracy": clf_acc, "rows": rows, "aware_train_seconds": aware_secs,
              "aware_tables": {m: aware[m].config["guidance"] for m in methods},
              "seconds": time.perf_counter() - t_start, "load": [load0, os.getloadavg()],
              "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"}
    out = Path(args.out)  # atomic: an interrupted run leaves the previous page, never half of one
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1))
    write_text_atomic(out, render(result))
    print(f"wrote {out} and {out.with_suffix('.json')} ({result['seconds']:.0f} s)")
    return 0


def render(r: dict) -> str:
    s = r["settings"]
    methods = s["methods"].split(",")
    (l0, l1) = r["load"]
    lines = ["# One learned sampler for every guidance scale (digits model)", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}; whole run {r['seconds']:.0f} s; load average (1/5/15 min) "
             f"{'/'.join(f'{v:.1f}' for v in l0)} at start, {'/'.join(f'{v:.1f}' for v in l1)} at end (shared "
             "machine: times are upper bounds)  ",
             (f"NFE {s['nfe']} with AFS; {s['per_class']} held-out seeds per class (mixed labels), teacher DEIS-4 with "
              f"{s['ref_steps']} polynomial steps. Guidance-aware samplers: trained over w in {{{s['train_scales']}}} "
              f"(one scale per batch), tables quadratic in w, {s['total_samples'] * s['aware_factor']} training "
              f"samples; per-scale samplers: trained at the evaluation scale only, {s['total_samples']} samples "
              f"each; batch {s['batch']}, M = {s['M']}. The evaluation scales were never trained at by the "
              f"guidance-aware samplers. Classifier held-out accuracy {r['classifier_held_out_accuracy']:.3f}."), "",
             "RMSE to the guided teacher / class accuracy (lower RMSE is better); ratio = guidance-aware RMSE / "
             "per-scale RMSE:", ""]
    head = "| w | iPNDM +AFS (base) |"
    for m in methods:
        head += f" {LABELS[m]}: per-scale | guidance-aware | ratio |"
    lines += [head + " teacher acc |", "|---:|---:|" + "---:|---:|---:|" * len(methods) + "---:|"]
    for row in r["rows"]:
        b = row["base"]
        line = f"| {row['w']:g} | {b['rmse']:.4f} / {b['acc']:.2f} |"
        for m in methods:
            one, aw = row[f"{m}_single"], row[f"{m}_aware"]
            line += f" {one['rmse']:.4f} / {one['acc']:.2f} | {aw['rmse']:.4f} / {aw['acc']:.2f} | " \
                    f"{aw['rmse'] / one['rmse']:.2f} |"
        lines.append(line + f" {row['teacher_acc']:.2f} |")
    lines += ["", "Training wall time (s): " + "; ".join(
        f"{LABELS[m]}: guidance-aware {r['aware_train_seconds'][m]:.0f}, per-scale "
        + ", ".join(f"{row[f'{m}_single']['train_seconds']:.0f}" for row in r["rows"]) for m in methods)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
