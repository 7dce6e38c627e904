"""The few-step frontier: every learned sampler of fewstep and the classic solvers on one bed, RMSE to the bed's
reference solution on held-out seeds (and FD where the bed has one), with training cost.

    .venv/bin/python benchmarks/frontier.py [--bed gmm|unet|flow] [--budget shared|default] [--quick]
        [--nfes 3,5,7,9] [--out docs/frontier.md] [--json FILE]
    .venv/bin/python benchmarks/frontier.py --from-json a.json b.json --out docs/frontier.md   # merge split runs

Beds (chosen once, at the top of :func:`run`): ``gmm`` (:meth:`fewstep.experiments.bed.Bed.gmm`, exact reference),
``unet`` (the shipped U-Net, :meth:`fewstep.experiments.bed.Bed.unet`: RMSE to its high-NFE teacher, and FD) and
``flow`` (the same mixture as a rectified-flow velocity model, ``FlowModel(FlowVelocity(gmm))``, sampled on the
schedule a flow user takes: uniform flow time t = sigma / (1 + sigma) after SD3's shift, the same endpoints, so the
reference is as exact as on gmm).

Learned samplers (all with AFS, the bed's schedule as initial schedule, final-point L2 loss, DEIS teacher with M
inserted steps; ``--budget shared``: one budget for all, ``--batch`` x ``--total-samples``; ``--budget default``:
each method's own default, ``fewstep.learned.METHODS[method].DEFAULTS``): AMED-Solver and AMED-Plugin
on iPNDM (tables, no network features), DyWeight (window 4, learned schedule), EPD (K = 2 where the NFE allows, else
K = 1), PAS (iPNDM-4, 2 coordinates) and GS (DPM-Solver++(3M) corrections, time shifts, learned schedule). Evaluation
seeds (10^8 ...) are disjoint from the training seeds (1 ...). Columns: RMSE (and FD), trainable parameters, training
wall time and CPU time (the loop, one process, one thread) and teacher model evaluations (per training sample x
samples); the JSON also keeps the final training loss and the held-out mean L2 error (an overfitting check).
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
from fewstep.denoisers import FlowModel, FlowVelocity, gmm_denoiser
from fewstep.experiments.bed import Bed

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

# method -> (label, extra train() keywords; "learn_schedule" goes into the ScheduleSpec)
LEARNED: dict[str, tuple[str, dict[str, Any]]] = {
    "amed": ("AMED-Solver (table)", {}),
    "plugin": ("AMED-Plugin on iPNDM (table)", {"base": "ipndm"}),
    "dyweight": ("DyWeight (window 4, learned schedule)", {"learn_schedule": True}),
    "epd": ("EPD (K=2 where reachable, else K=1)", {}),
    "pas": ("PAS on iPNDM (2 coords)", {}),
    "gs": ("GS on DPM-Solver++(3M) (+xi, learned schedule)", {}),
    "residual": ("Residual operator on iPNDM (out of span, learned schedule)",
                 {"base": {"solver": "ipndm", "options": {"max_order": 4}}, "learn_schedule": True}),
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
    "residual": ("SpanLift (out-of-span residual): CIFAR-10 FID 8.16 -> 5.69 @3, ImageNet 17.37 -> 11.83", "iPNDM +AFS"),
}


def _params(p: Any) -> int:
    n = sum(int(v.numel()) for v in p.parameters())
    sched = (p.config.get("schedule") or {}) if hasattr(p, "config") else {}
    if sched.get("kind") == "learned":
        n += int(sched["num_steps"]) - 2  # the interior sigmas
    return n


FLOW_SHIFT = 3.0  # SD3's FlowMatchEulerDiscreteScheduler shift


def flow_schedule(n: int, shift: float = FLOW_SHIFT, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """``n`` EDM sigmas uniform in flow time u = s / (1 + s) of s = sigma / shift (SD3's shifted uniform timesteps:
    t = shift u / (1 + (shift - 1) u), i.e. sigma = shift s), from sigma_max to sigma_min exactly."""
    u = torch.linspace(sigma_max / (shift + sigma_max), sigma_min / (shift + sigma_min), n, dtype=torch.float64)
    return fewstep.get_schedule(shift * u / (1 - u), n)


def make_bed(name: str, seeds: range, ref_steps: int, quick: bool, flow_shift: float) -> tuple[Bed, Any]:
    """(bed, schedule(n) -> sigmas) for ``--bed``; every bed is a :class:`fewstep.experiments.bed.Bed`."""
    if name == "unet":
        return (Bed.unet(seeds=seeds, ref_steps=ref_steps, fd_patches=500 if quick else 10000),
                lambda n: fewstep.get_schedule("polynomial", n))
    gmm = gmm_denoiser(count=2000 if quick else 20000)
    if name == "flow":
        den = FlowModel(FlowVelocity(gmm))
        den.model_id = f"flow:{gmm.model_id}"
        bed = Bed.build(den, (3, 8, 8), seeds=seeds, ref_steps=ref_steps, model_id=den.model_id,
                        description="the natural-patch mixture as a rectified-flow velocity model (FlowModel adapter)")
        return bed, lambda n: flow_schedule(n, flow_shift)
    return (Bed.gmm(seeds=seeds, ref_steps=ref_steps, count=2000 if quick else 20000),
            lambda n: fewstep.get_schedule("polynomial", n))


def _num_steps(method: str, nfe: int, options: dict | None, base: str | None = None) -> int:
    """Sigmas of ``method``'s schedule at ``nfe`` (AFS), for the bed's initial schedule."""
    return fewstep.steps_for_nfe(learned.METHODS[method].probe_solver(options, base, True), nfe, True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    nfes = tuple(int(v) for v in args.nfes.split(",")) if args.nfes else ((5,) if quick else (3, 5, 7, 9))
    n_seeds = min(16, args.seeds) if quick else args.seeds
    learned_nfes = tuple(int(v) for v in args.learned_nfes.split(",")) if args.learned_nfes else nfes
    shared = dict(total_samples=32, batch=16, M=2) if quick else dict(total_samples=args.total_samples,
                                                                        batch=args.batch, M=args.M)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    ref_steps = args.ref_steps or (16 if quick else 128 if args.bed == "unet" else 256)
    bed, schedule = make_bed(args.bed, range(EVAL_SEED0, EVAL_SEED0 + n_seeds), ref_steps, quick, args.flow_shift)
    bed_seconds = time.perf_counter() - t0
    fd = bed.fd  # None except on the U-Net bed
    rows: list[dict[str, Any]] = []
    for nfe in nfes:
        for label, solver, opts, afs in CLASSIC:
            try:
                n = fewstep.steps_for_nfe(solver, nfe, afs, **opts)
            except ValueError:
                continue
            x = fewstep.sample(bed.denoiser, bed.noise, schedule(n), solver, afs=afs, **opts)
            rows.append({"kind": "classic", "label": label, "nfe": nfe, "rmse": bed.rmse(x)}
                        | ({"fd": fd(x)} if fd else {}))
        for method, (label, kw) in LEARNED.items():
            if (args.methods and method not in args.methods.split(",")) or nfe not in learned_nfes:
                continue
            kw = dict(kw)
            if method == "epd":
                try:
                    _num_steps("epd", nfe, {"K": 2})
                    kw["options"] = {"K": 2}
                except ValueError:
                    kw["options"] = {"K": 1}
            if args.soft_start and method not in ("amed", "plugin"):
                kw["soft_start"] = args.soft_start
            budget = ({} if args.budget == "default" else shared) | ({"lr": args.lr} if args.lr else {})
            sched = schedule(_num_steps(method, nfe, kw.get("options"), kw.get("base")))
            cpu0 = time.process_time()
            p = learned.train(
                method, bed.denoiser, shape=bed.shape, nfe=nfe, progress=False, dtype=bed.dtype,
                options=kw.get("options"), base=kw.get("base"),
                schedule=learned.ScheduleSpec(sigmas=sched, learn=kw.get("learn_schedule")),
                teacher=learned.Teacher(M=budget.get("M")),
                budget=learned.Budget(batch=budget.get("batch"), total_samples=budget.get("total_samples"),
                                      lr=budget.get("lr")),
                objective=learned.Objective(soft_start=kw.get("soft_start", 0.0)))
            cpu = time.process_time() - cpu0
            res = fewstep.solve(bed.denoiser, bed.noise, predictor=p)
            assert res.nfe == nfe, (method, res.nfe, nfe)
            tr = p.config["training"]
            losses = p.log.losses
            rows.append({"kind": "learned", "method": method, "label": label, "nfe": nfe, "rmse": bed.rmse(res.x),
                         "params": _params(p), "seconds": p.log.seconds, "cpu_seconds": cpu,
                         "teacher_evals": p.log.teacher_nfe_per_sample * tr["total_samples"],
                         "budget": {k: tr[k] for k in ("batch", "total_samples", "M", "lr")},
                         "train_loss": sum(losses[-max(1, len(losses) // 10):]) / max(1, len(losses) // 10),
                         "heldout_l2": float((res.x - bed.ref).flatten(1).norm(dim=1).mean()),
                         "options": kw.get("options"), "soft_start": kw.get("soft_start", 0.0),
                         "load": os.getloadavg()[0]} | ({"fd": fd(res.x)} if fd else {}))
            print(json.dumps(rows[-1]), flush=True)
    cmd = " ".join(["benchmarks/frontier.py", *_cmd_args(args)])
    meta = {"command": cmd, "bed": args.bed, "budget": args.budget, "description": bed.description,
            "model_id": bed.model_id, "seeds": n_seeds, "ref_error": bed.ref_error, "ref_steps": ref_steps,
            "ref_fd": fd(bed.ref) if fd else None, "bed_seconds": bed_seconds,
            "flow_shift": args.flow_shift if args.bed == "flow" else None,
            "train": shared if args.budget == "shared" else "default", "threads": torch.get_num_threads(),
            "load_start": load0, "load_end": os.getloadavg(),
            "cpus": os.cpu_count(), "machine": f"{platform.machine()} {platform.processor() or 'cpu'}",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return {"meta": [meta], "rows": rows}


def _cmd_args(args: argparse.Namespace) -> list[str]:
    """The options that change the result, as typed (``--out``/``--json`` left out)."""
    out = ["--quick"] if args.quick else []
    for name, default in (("bed", "gmm"), ("budget", "shared"), ("nfes", None), ("learned_nfes", None),
                          ("methods", None), ("seeds", 1000), ("batch", 32), ("total_samples", 2048), ("M", 4),
                          ("lr", None), ("soft_start", 0.0), ("ref_steps", None), ("flow_shift", FLOW_SHIFT)):
        v = getattr(args, name)
        if v != default and not (args.budget == "default" and name in ("batch", "total_samples", "M")):
            out.append(f"--{name.replace('_', '-')} {v}")
    return out


BED_TITLES = {"gmm": "the analytic bed", "unet": "the shipped U-Net", "flow": "the flow-matching bed"}


def goal_ratio(rows: list[dict[str, Any]], learned_nfe: int = 5, classic_nfe: int = 9) -> tuple | None:
    """(best learned row at ``learned_nfe``, best classic row at ``classic_nfe``, RMSE ratio learned / classic)."""
    le = [r for r in rows if r["kind"] == "learned" and r["nfe"] == learned_nfe]
    cl = [r for r in rows if r["kind"] == "classic" and r["nfe"] == classic_nfe]
    if not (le and cl):
        return None
    bl, bc = min(le, key=lambda r: r["rmse"]), min(cl, key=lambda r: r["rmse"])
    return bl, bc, bl["rmse"] / bc["rmse"]


def render(res: dict[str, Any], level: int = 1) -> str:
    """The markdown page of one (merged) result; ``level`` 2 demotes every heading (a section of another page)."""
    rows, metas = res["rows"], res["meta"]
    nfes = sorted({r["nfe"] for r in rows})
    m0 = metas[0]
    bed = m0.get("bed", "gmm")
    h = "#" * level
    has_fd = any("fd" in r for r in rows)

    def get(kind: str, key: str, nfe: int) -> dict | None:
        for r in rows:
            if r["kind"] == kind and r["nfe"] == nfe and (r.get("method") if kind == "learned" else r["label"]) == key:
                return r
        return None

    def f(v: float | None, fmt: str = ".4f") -> str:
        return "—" if v is None else format(v, fmt)

    if bed == "unet":
        ref = (f"RMSE to the model's own high-accuracy ODE solution (DEIS-4 teacher, {m0['ref_steps']} polynomial "
               f"steps; relative change against half the steps {m0['ref_error']:.1e}) and FD (Fréchet distance in a "
               f"fixed 64-D random feature space to 10,000 training-photo patches; the teacher itself scores "
               f"{m0['ref_fd']:.4f})")
    else:
        ref = (f"RMSE to the exact ODE solution at sigma_min = 0.002 (DEIS-4, {m0.get('ref_steps', 256)} steps; "
               f"reference error {m0['ref_error']:.1e})")
    sched = (f"flow schedule: uniform flow time after SD3's shift {m0['flow_shift']:g} (`flow_schedule`), from "
             "sigma 80 to 0.002" if bed == "flow" else "polynomial schedule rho = 7, sigma 80 to 0.002")
    budgets = {m.get("budget", "shared") for m in metas}
    if budgets == {"shared"}:
        tr = m0["train"]
        train = (f"Training (every learned method, same budget): DEIS teacher with M = {tr['M']}, batch {tr['batch']}, "
                 f"{tr['total_samples']} samples, final-point L2 loss, Adam with cosine decay, the method's default "
                 "learning rate (`fewstep.learned.METHODS[method].default_lr(options)`).")
    else:
        train = ("Training: each method with its own default budget and learning rate "
                 "(`fewstep.learned.METHODS[method].DEFAULTS`; AMED 0.1), DEIS teacher, final-point L2 loss, "
                 "Adam with cosine decay; the budgets are in the training-cost table.")
    lines = [
        f"{h} The few-step frontier on {BED_TITLES[bed]}",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/frontier.py --bed {bed}` (this page was made by "
        + " and ".join((f"run {i + 1} " if len(metas) > 1 else "") + f"`.venv/bin/python {m['command']}`"
                       for i, m in enumerate(metas))
        + (", merged with `--from-json`" if len(metas) > 1 else "") + ").  ",
        f"Machine: {m0['machine']}, {m0['cpus']} CPUs, torch {m0['torch']}, {m0['threads']} thread(s); "
        + "Load average (1/5/15 min) " + "; ".join((f"run {i + 1} " if len(metas) > 1 else "")
                                                   + f"at start {'/'.join(f'{v:.1f}' for v in m['load_start'])}, at "
                                                   f"end {'/'.join(f'{v:.1f}' for v in m['load_end'])} ({m['date']})"
                                                   for i, m in enumerate(metas))
        + ". The machine was shared: wall times are upper bounds.  ",
        f"Bed: {m0.get('description') or 'Bed.gmm'} (`{m0.get('model_id')}`); {ref}, on {m0['seeds']} held-out seeds "
        f"(10^8 ...); {sched} (the learned schedules start from it).  ",
        train,
        "",
        f"{h}# RMSE by NFE (lower is better)",
        "",
        "| Sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|" + "---:|" * len(nfes),
    ]

    def table(key: str) -> None:
        for label, *_ in CLASSIC:
            vals = [get("classic", label, n) for n in nfes]
            if any(vals):
                lines.append(f"| {label} | " + " | ".join(f(v and v.get(key)) for v in vals) + " |")
        for method, (label, _) in LEARNED.items():
            vals = [get("learned", method, n) for n in nfes]
            if any(vals):
                lines.append(f"| **{label}** | " + " | ".join(f(v and v.get(key)) for v in vals) + " |")

    table("rmse")
    if has_fd:
        lines += ["", f"{h}# FD by NFE (lower is better; teacher {m0['ref_fd']:.4f})", "",
                  "| Sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
        table("fd")
    lines += ["", f"{h}# Best learned vs best classic", ""]
    for ln in (5, 4):
        g = goal_ratio(rows, learned_nfe=ln)
        if g:
            bl, bc, ratio = g
            lines.append(f"- **Goal check: best learned at NFE {ln} / best classic at NFE 9 = {ratio:.2f}x** "
                         f"({bl['label']} {bl['rmse']:.4f} vs {bc['label']} {bc['rmse']:.4f}; <= 1.0x meets the goal)")
    for n in nfes:
        cl = [r for r in rows if r["kind"] == "classic" and r["nfe"] == n]
        le = [r for r in rows if r["kind"] == "learned" and r["nfe"] == n]
        if cl and le:
            bc, bl = min(cl, key=lambda r: r["rmse"]), min(le, key=lambda r: r["rmse"])
            lines.append(f"- NFE {n}: best classic {bc['label']} {bc['rmse']:.4f}; best learned {bl['label']} "
                         f"{bl['rmse']:.4f}; classic / learned {bc['rmse'] / bl['rmse']:.2f}x")
    lines += ["", f"{h}# Training cost", "",
              "Params: trainable numbers (a learned schedule counts its interior sigmas). s: training loop wall "
              "time, and in brackets the process CPU time of the training (one thread: what it takes on an idle "
              "core; the machine was shared, so the wall time is an upper bound). Teacher evals: teacher model "
              "evaluations over the whole training run. Budget: batch x samples, M, learning rate.", "",
              "| Method | " + " | ".join(f"NFE {n}: params / s (CPU s) / teacher evals / budget" for n in nfes) + " |",
              "|---|" + "---:|" * len(nfes)]
    for method, (label, _) in LEARNED.items():
        vals = [get("learned", method, n) for n in nfes]
        if any(vals):
            lines.append(f"| {label} | " + " | ".join(
                "—" if v is None else f"{v['params']} / {v['seconds']:.0f}" + (
                    f" ({v['cpu_seconds']:.0f})" if v.get("cpu_seconds") else "") + f" / {v['teacher_evals']:,}" + (
                    " / {batch} x {total_samples}, M {M}, lr {lr:g}".format(**v["budget"]) if "budget" in v else "")
                for v in vals) + " |")
    lines += ["", f"{h}# Pattern here vs the paper's claim", "",
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
    lines += ["", f"{h}# Notes", "",
              "- NFE counts model evaluations (parallel ones included), AFS deducted; EPD's K = 2 parallel "
              "evaluations count 2 (K = 2 reaches NFE 5 and 8 only, so NFE 3/7/9 use K = 1).",
              "- Other beds: `--bed gmm` ([frontier.md](frontier.md)), `--bed unet` "
              "([frontier_unet.md](frontier_unet.md)), `--bed flow` ([frontier_flow.md](frontier_flow.md)).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the test that keeps this script alive")
    p.add_argument("--nfes", default=None, help="comma-separated NFEs (default 3,5,7,9; quick: 5)")
    p.add_argument("--out", default="docs/frontier.md")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--from-json", nargs="+", default=None, help="render (merged) JSON results; no training")
    p.add_argument("--learned-nfes", default=None, help="NFEs at which to train (default: all of --nfes)")
    p.add_argument("--methods", default=None, help="comma-separated learned methods to train (default: all)")
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--total-samples", type=int, default=2048)
    p.add_argument("--M", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bed", choices=("gmm", "unet", "flow"), default="gmm")
    p.add_argument("--budget", choices=("shared", "default"), default="shared",
                   help="shared: --batch/--total-samples/--M for every method; default: each method's own budget")
    p.add_argument("--lr", type=float, default=None, help="learning rate for every method (default: the method's)")
    p.add_argument("--soft-start", type=float, default=0.0, help="LD3's soft start radius (not amed/plugin)")
    p.add_argument("--ref-steps", type=int, default=None, help="reference steps (default 256; U-Net 128)")
    p.add_argument("--flow-shift", type=float, default=FLOW_SHIFT, help="flow bed: SD3-style time shift")
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
