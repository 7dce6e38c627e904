"""Issue 8: polynomial vs searched (GITS) vs learned schedules, with iPNDM, DPM-Solver++(3M), AMED-Solver and
AMED-Plugin(iPNDM), at NFE 3/5/7, on the analytic natural-patch bed and on the shipped U-Net.

    .venv/bin/python benchmarks/schedules.py [--model gmm|unet] [--quick] [--out docs/schedules_gmm.md]

Every row uses AFS. Columns:
  * polynomial: EDM's rho=7 schedule;
  * searched: the GITS schedule for that solver and NFE (61-point polynomial grid, 256 warm-up trajectories,
    coeff 1.15; ``fewstep.schedule_search``); AMED is then trained on it;
  * learned: the schedule learned by distillation from the polynomial one: alone for the plain solvers
    (``fewstep.learned.learn_schedule``), jointly with the AMED table for AMED
    (``fewstep.learned.train(..., schedule=ScheduleSpec(learn=True))``).
RMSE to the exact ODE solution (bed) or to a DEIS-4 teacher with 128 steps (U-Net) on held-out seeds 10^8...,
disjoint from the training seeds and the search's warm-up seeds. The last column is the best plain baseline at
NFE 9 (polynomial schedule), the issue's goal for NFE 5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fewstep
from fewstep import learned
from fewstep.experiments.bed import Bed
from fewstep.io import write_text_atomic
from fewstep.schedule_search import search_schedule

EVAL_SEED0 = 10**8
ROWS = (  # label, solver for sampling/search, options, AMED student (None: plain solver; "amed": AMED-Solver, else
    # AMED-Plugin on that base)
    ("iPNDM", "ipndm", {}, None),
    ("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}, None),
    ("AMED-Solver", "amed", {}, "amed"),
    ("AMED-Plugin iPNDM", "amed_plugin", {"base": "ipndm"}, "ipndm"),
)
BASELINES_9 = (("iPNDM", "ipndm", {}), ("iPNDM +AFS", "ipndm", {}), ("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}),
               ("UniPC(2M)", "unipc", {"max_order": 2}), ("DEIS tAB2", "deis", {"max_order": 3}))


def load(model: str, quick: bool, n_seeds: int) -> tuple[Bed, str, str]:
    """The evaluation bed (held-out seeds 10^8 ...), the name of its reference and of the model."""
    seeds = range(EVAL_SEED0, EVAL_SEED0 + n_seeds)
    if model == "gmm":
        bed = Bed.gmm(seeds=seeds, ref_steps=16 if quick else 256, count=2000 if quick else 20000)
        return bed, "exact ODE solution", "the analytic natural-patch bed (GMM, 10 components)"
    # Bed.build rather than Bed.unet: the same model, seeds and teacher, without Bed.unet's Fréchet-distance
    # statistics (training patches), which this table does not report.
    net = fewstep.denoisers.default_unet()
    res = net.config.img_resolution
    bed = Bed.build(net, (net.config.channels, res, res), seeds=seeds, ref_steps=16 if quick else 128,
                    model_id=net.model_id, dtype=torch.float32,
                    description=f"model {net.model_id} (RMSE to a high-accuracy teacher solution)")
    return bed, "DEIS-4 teacher (128 steps)", f"the shipped U-Net ({net.model_id})"


def render(results: dict) -> list[str]:
    """Markdown for a results dict (one run, or several merged with --merge)."""
    m = results["meta"]
    nfes, base9 = m["nfes"], results["baselines_nfe9"]
    best9 = min(base9.items(), key=lambda kv: kv[1])
    cols = ("polynomial", "searched", "learned")
    lines = [f"# Schedules on {m['model_name']}", "",
             f"RMSE to the {m['ref_name']} (its relative error vs half the steps: {m['ref_err']:.1e}), {m['seeds']} "
             f"held-out seeds, AFS everywhere. AMED: predictor-free table, scale_dir 0.01, {m['samples']} training "
             f"samples (batch {m['batch']}), teacher DEIS-4 with M=8. Searched = GITS (61-point grid, 256 warm-up "
             "trajectories, coeff 1.15); learned = distilled from the polynomial schedule (jointly with the AMED table "
             "for AMED rows).", "",
             "| solver | " + " | ".join(f"NFE {n} {c}" for n in nfes for c in cols) + " |",
             "|---|" + "---:|" * (len(nfes) * len(cols))]
    for label, by_nfe in results["rows"].items():
        cells = []
        for nfe in nfes:
            by = by_nfe[str(nfe)] if str(nfe) in by_nfe else by_nfe[nfe]
            best = min(by.values())
            cells += [f"**{by[c]:.4f}**" if by[c] == best else f"{by[c]:.4f}" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Plain baselines at NFE 9 (polynomial schedule): "
              + ", ".join(f"{k} {v:.4f}" for k, v in base9.items()) + f"; best: {best9[0]} {best9[1]:.4f}."]
    if 5 in nfes:
        best5 = min(((f"{label} {c}", v) for label, by in results["rows"].items()
                     for c, v in (by["5"] if "5" in by else by[5]).items()), key=lambda kv: kv[1])
        verdict = "reaches" if best5[1] <= best9[1] else "does not reach"
        lines += ["", f"Best at NFE 5: {best5[0]} {best5[1]:.4f}, which {verdict} the best plain baseline at NFE 9 "
                      f"({best9[1]:.4f}; ratio {best5[1] / best9[1]:.2f})."]
    lines += ["", "Schedules used (sigmas):", "", "```"]
    for k, v in results["schedules"].items():
        lines.append(f"{k}: " + "; ".join(f"{c} {s}" for c, s in v.items()))
    cmds = m["command"] if isinstance(m["command"], list) else [m["command"]]
    lines += ["```", "", "Made by " + " and ".join(f"`.venv/bin/python {c}`" for c in cmds)
              + f" in {m['seconds']} s ({m['threads']} thread(s) each, torch {torch.__version__})."]
    return lines


def merge(paths: list[str], out: str) -> int:
    """Combine the JSON of runs over different --rows into one table (rows in the order of ROWS)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = {"rows": {}, "schedules": {}, "seconds": {}, "baselines_nfe9": parts[0]["baselines_nfe9"],
              "meta": dict(parts[0]["meta"])}
    for label, *_ in ROWS:
        for part in parts:
            if label in part["rows"]:
                merged["rows"][label] = part["rows"][label]
    for part in parts:
        merged["schedules"].update(part["schedules"])
        merged["seconds"].update(part["seconds"])
    merged["meta"]["command"] = [p["meta"]["command"] for p in parts]
    merged["meta"]["seconds"] = max(p["meta"]["seconds"] for p in parts)
    lines = render(merged)
    write_text_atomic(Path(out), "\n".join(lines) + "\n")
    write_text_atomic(Path(out).with_suffix(".json"), json.dumps(merged, indent=1) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gmm", choices=("gmm", "unet"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the test that keeps this script alive")
    p.add_argument("--out", default=None, help="default: docs/schedules_<model>.md")
    p.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default: 1000 bed, 256 U-Net)")
    p.add_argument("--nfe", default="3,5,7")
    p.add_argument("--total-samples", type=int, default=None, help="training samples (default 8192 bed, 4096 U-Net)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 64; 32 with --quick)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default=None, help="comma-separated row numbers (0-3) to run (default: all)")
    p.add_argument("--merge", nargs="+", default=None, help="merge the JSON of runs over different --rows into --out")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out or f"docs/schedules_{args.model}.md")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    quick = args.quick
    nfes = [int(v) for v in args.nfe.split(",")]
    n_seeds = 8 if quick else args.seeds or (1000 if args.model == "gmm" else 256)
    bed, ref_name, model_name = load(args.model, quick, n_seeds)
    den, shape, dtype, noise, ref_err = bed.denoiser, bed.shape, bed.dtype, bed.noise, bed.ref_error
    samples = 64 if quick else args.total_samples or (8192 if args.model == "gmm" else 4096)
    batch = 32 if quick else args.batch or 64
    train_kw = {"teacher": learned.Teacher(M=2 if quick else 8), "progress": False, "dtype": dtype}
    search_kw = {"grid": 13 if quick else 61, "warmup": 8 if quick else 256, "coeff": 1.15, "dtype": dtype}
    err = bed.rmse  # RMSE in float64 to the bed's reference solution

    results: dict = {"rows": {}, "schedules": {}, "seconds": {}}
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    for label, solver, opts, student in rows:
        for nfe in nfes:
            n = fewstep.steps_for_nfe(solver, nfe, True, **opts)
            poly = fewstep.get_schedule("polynomial", n)
            t0 = time.perf_counter()
            searched = search_schedule(den, shape, nfe=nfe, solver=solver, solver_options=opts, afs=True, **search_kw)
            cells, scheds = {}, {"polynomial": poly, "searched": searched}
            if student is None:
                cells["polynomial"] = err(fewstep.sample(den, noise, poly, solver, afs=True, **opts))
                cells["searched"] = err(fewstep.sample(den, noise, searched, solver, afs=True, **opts))
                sig = learned.learn_schedule(den, shape=shape, solver=solver, solver_options=opts, num_steps=n,
                                             afs=True, budget=learned.Budget(batch=batch, total_samples=samples,
                                                                             lr=0.05), **train_kw).sigmas
                cells["learned"] = err(fewstep.sample(den, noise, sig, solver, afs=True, **opts))
                scheds["learned"] = sig
            else:
                method, base = ("amed", None) if student == "amed" else ("plugin", student)
                for col, sched in (("polynomial", learned.ScheduleSpec(learn=False)),
                                   ("searched", learned.ScheduleSpec(sigmas=searched, learn=False)),
                                   ("learned", learned.ScheduleSpec(learn=True))):
                    pred = learned.train(method, den, shape=shape, num_steps=n, base=base, schedule=sched, afs=True,
                                         budget=learned.Budget(batch=batch, total_samples=samples), **train_kw)
                    cells[col] = err(fewstep.sample(den, noise, predictor=pred))
                    scheds[col] = torch.tensor(pred.config["sigmas"])
            results["rows"].setdefault(label, {})[nfe] = cells
            results["schedules"][f"{label} NFE {nfe}"] = {k: [round(float(v), 5) for v in s] for k, s in scheds.items()}
            results["seconds"][f"{label} NFE {nfe}"] = round(time.perf_counter() - t0, 1)
            print(f"{label:20s} NFE {nfe}: " + "  ".join(f"{k} {v:.4f}" for k, v in cells.items()), flush=True)
    base9 = {}
    for label, solver, opts in BASELINES_9:
        afs = label.endswith("+AFS")
        n = fewstep.steps_for_nfe(solver, 9, afs, **opts)
        base9[label] = err(fewstep.sample(den, noise, fewstep.get_schedule("polynomial", n), solver, afs=afs, **opts))
    results["baselines_nfe9"] = base9

    results["meta"] = {"model_name": model_name, "ref_name": ref_name, "ref_err": ref_err, "seeds": n_seeds,
                       "samples": samples, "batch": batch, "nfes": nfes, "threads": args.threads,
                       "command": "benchmarks/schedules.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "seconds": round(time.perf_counter() - t_start)}
    out = Path(args.out or f"docs/schedules_{args.model}.md")
    lines = render(results)
    write_text_atomic(out, "\n".join(lines) + "\n")
    write_text_atomic(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
