"""A broad hand sweep of solver x order x AFS x schedule at NFE 5 and 9: the baseline a tuner must come close to.

    PYTHONPATH=src:. python benchmarks/ddpm_sweep.py [--models ddpm,unet,digits] [--quick]
                                                     [--out docs/ddpm_sweep.md] [--json docs/ddpm_sweep.json]

Models:
  * ``ddpm``: the third-party-style DDPM of ``examples/ddpm_digits`` (eps prediction, 1000 discrete linear betas,
    integer timesteps) wrapped as its ``factory()`` does, ``VPModel(net, prediction="eps", alphas_cumprod=...)``;
    schedules between the model's own sigma_min and sigma_max (0.0100 .. 157.4), 64 held-out seeds 10000-10063;
  * ``unet``: the shipped patch U-Net (3x16x16), EDM's 0.002 .. 80, 32 seeds 10000-10031;
  * ``ddpm_interp`` (not run by default): the same network behind ``VPModel(..., timestep="interp")``, called at
    fractional timesteps interpolated in log sigma instead of the nearest integer one;
  * ``digits``: the shipped digits U-Net, unguided (the null class: the unconditional model), 1x16x16, 0.002 .. 80,
    32 seeds.

Rows: every solver of fewstep with its orders (euler, heun, dpm2, dpmpp 1-3, unipc 1-3, ipndm 1-4, ipndm_v, deis
tAB2 and logrho with 3 points), with and without AFS where the NFE is reachable (``fewstep.steps_for_nfe``), on the schedules
polynomial rho 1, 2, 3, 5, 7, logsnr, time_uniform (rho 1: uniform in the standard VP time, beta 0.1 .. 20) and,
for the DDPM, ``discrete`` rho 1 and 7 (only the model's own timesteps). The measure is the RMSE (all pixels, data
in [-1, 1]) to a reference: DEIS-logrho order 4 on the polynomial rho-7 schedule with 512 steps over the same
range; the reference's own error is estimated by the same teacher with 256 steps (its RMSE to the reference is
reported). The machine's load (``uptime``) is recorded before and after each model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import fewstep
from fewstep.evaluation import REFERENCE_SOLVER, rmse
from fewstep.io import write_text_atomic
from fewstep.sampling import NonFiniteError

SEED0 = 10000
NFES = (5, 9)
SOLVERS: tuple[tuple[str, str, dict[str, Any]], ...] = (  # label, solver, options
    ("Euler", "euler", {}),
    ("Heun", "heun", {}),
    ("DPM-Solver-2", "dpm2", {}),
    *((f"DPM-Solver++({k}M)", "dpmpp", {"max_order": k}) for k in (1, 2, 3)),
    *((f"UniPC({k}M)", "unipc", {"max_order": k}) for k in (1, 2, 3)),
    *((f"iPNDM{k}", "ipndm", {"max_order": k}) for k in (1, 2, 3, 4)),
    ("iPNDM-v4", "ipndm_v", {"max_order": 4}),
    ("DEIS tAB2", "deis", {"max_order": 3}),  # tABk extrapolates through k + 1 points: max_order counts points
    ("DEIS logrho, 3 points", "deis", {"max_order": 3, "deis_mode": "logrho"}),
)
SCHEDULES: tuple[tuple[str, float], ...] = (
    *(("polynomial", r) for r in (1.0, 2.0, 3.0, 5.0, 7.0)), ("logsnr", 7.0), ("time_uniform", 1.0))
DISCRETE: tuple[tuple[str, float], ...] = (("discrete", 1.0), ("discrete", 7.0))
DEFAULT = ("ipndm", {"max_order": 4}, True, "polynomial", 7.0)  # fewstep sample's default: iPNDM + AFS, rho 7
EULER = ("euler", {}, False, "polynomial", 7.0)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def load_model(name: str) -> tuple[Callable, tuple[int, ...], float, float, torch.Tensor | None, str]:
    """(denoiser, sample shape, sigma_min, sigma_max, alphas_cumprod or None, description)."""
    if name in ("ddpm", "ddpm_interp"):
        from examples.ddpm_digits import model as ddpm

        den = ddpm.factory()
        desc = "examples/ddpm_digits: VPModel eps, 1000 linear betas, the nearest integer timestep (its factory)"
        if name == "ddpm_interp":  # the same network, called at the fractional timestep interpolated in log sigma
            den = fewstep.denoisers.VPModel(den.model, prediction="eps", alphas_cumprod=ddpm.ALPHAS_CUMPROD,
                                            timestep="interp")
            desc = "examples/ddpm_digits with timestep=\"interp\" (fractional timesteps, not its factory's)"
        return den, (1, 16, 16), den.sigma_min, den.sigma_max, ddpm.ALPHAS_CUMPROD, desc
    if name == "unet":
        return fewstep.denoisers.default_unet(), (3, 16, 16), 0.002, 80.0, None, "shipped patch U-Net"
    if name == "digits":
        return fewstep.denoisers.digits_unet(), (1, 16, 16), 0.002, 80.0, None, "shipped digits U-Net, unguided"
    raise ValueError(f"unknown model {name!r}")


def reference(den: Callable, noise: torch.Tensor, lo: float, hi: float, steps: int) -> tuple[torch.Tensor, float]:
    """The reference (teacher with ``steps`` steps) and the RMSE of the teacher with half the steps to it."""
    def run(n: int) -> torch.Tensor:
        sig = fewstep.get_schedule("polynomial", n + 1, lo, hi, 7.0)
        return fewstep.sample(den, noise, sig, REFERENCE_SOLVER[0], **REFERENCE_SOLVER[1])

    ref = run(steps)
    return ref, rmse(run(steps // 2), ref)


def sweep_model(name: str, seeds: int, ref_steps: int, nfes: tuple[int, ...], log: Callable[[str], None]) -> dict:
    den, shape, lo, hi, ac, desc = load_model(name)
    load_before, t0 = uptime(), time.time()
    noise = fewstep.noise_for_seeds(range(SEED0, SEED0 + seeds), shape)
    ref, ref_err = reference(den, noise, lo, hi, ref_steps)
    t_ref = time.time() - t0
    log(f"{name}: reference ({ref_steps} steps) in {t_ref:.0f} s; its {ref_steps // 2}-step teacher is off by RMSE "
        f"{ref_err:.2e}")
    schedules = SCHEDULES + (DISCRETE if ac is not None else ())
    rows: list[dict[str, Any]] = []
    for nfe in nfes:
        for label, solver, options in SOLVERS:
            for afs in (False, True):
                try:
                    n = fewstep.steps_for_nfe(solver, nfe, afs, **options)
                except ValueError:
                    continue
                for kind, rho in schedules:
                    try:
                        sig = fewstep.get_schedule(kind, n, lo, hi, rho, alphas_cumprod=ac)
                    except ValueError:
                        continue
                    try:
                        res = fewstep.solve(den, noise, sig, solver, afs=afs, **options)
                        assert res.nfe == nfe, (solver, options, afs, res.nfe, nfe)
                        err = rmse(res.x, ref) if bool(torch.isfinite(res.x).all()) else math.inf
                    except NonFiniteError:
                        err = math.inf
                    rows.append({"nfe": nfe, "label": label, "solver": solver, "options": options, "afs": afs,
                                 "schedule": kind, "rho": rho, "num_sigmas": n, "rmse": err})
        done = [r for r in rows if r["nfe"] == nfe]
        best = min(done, key=lambda r: r["rmse"])
        log(f"{name}: NFE {nfe}: {len(done)} rows, best {row_name(best)} {best['rmse']:.4f} "
            f"({time.time() - t0:.0f} s)")
    return {"model": name, "description": desc, "shape": list(shape), "sigma_min": lo, "sigma_max": hi,
            "seeds": [SEED0, SEED0 + seeds - 1], "reference": {
                "solver": "deis", "options": REFERENCE_SOLVER[1], "schedule": "polynomial", "rho": 7.0,
                "steps": ref_steps, "half_steps_rmse": ref_err, "seconds": t_ref},
            "rows": rows, "seconds": time.time() - t0, "load_before": load_before, "load_after": uptime()}


def row_name(r: dict) -> str:
    return f"{r['label']}{' +AFS' if r['afs'] else ''}, {_sched(r)}"


def _is(r: dict, spec: tuple) -> bool:
    solver, options, afs, kind, rho = spec
    return (r["solver"], r["options"], r["afs"], r["schedule"], r["rho"]) == (solver, options, afs, kind, rho)


def render(results: list[dict], total_s: float, argv: list[str]) -> str:
    runs = list(dict.fromkeys(" ".join(["python benchmarks/ddpm_sweep.py", *r.get("argv", argv)]) for r in results))
    out = ["# Hand sweep of solvers, orders, AFS and schedules (NFE 5 and 9)", "",
           *(f"`{cmd}`" + ("" if i == len(runs) - 1 else "  ") for i, cmd in enumerate(runs)), "",
           "Every plain solver of fewstep at each order, with and without AFS where the NFE is reachable, on every "
           "schedule (polynomial rho 1/2/3/5/7, logsnr, time_uniform rho 1, and for the DDPM `discrete` rho 1/7 on "
           "the model's own timesteps), between the model's own sigma_min and sigma_max. RMSE over all pixels to a "
           "reference (DEIS-logrho order 4, polynomial rho 7, many steps; its own error: the same teacher with half "
           "the steps, measured against it). Lower is better; the top 10 per NFE, then fewstep's default "
           "(iPNDM4 + AFS, polynomial rho 7) and plain Euler (DDIM) on the same schedule with their ranks. "
           f"Run time {total_s / 60:.1f} min in all (the models' times below) on 1 CPU thread (torch {torch.__version__}); the machine is "
           "shared, so the times vary with its load (`uptime` below).", ""]
    out += ["## Summary", "", "| model | NFE | best configuration | RMSE | default (rank) | Euler rho 7 (rank) | "
            "best Euler | reference's error |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for res in results:
        for nfe in sorted({r["nfe"] for r in res["rows"]}):
            rows = sorted((r for r in res["rows"] if r["nfe"] == nfe), key=lambda r: r["rmse"])
            cells = []
            for spec in (DEFAULT, EULER):
                i = next((i for i, r in enumerate(rows) if _is(r, spec)), None)
                cells.append("—" if i is None else f"{rows[i]['rmse']:.4f} ({i + 1})")
            eul = next(r for r in rows if r["solver"] == "euler")
            out.append(f"| {res['model']} | {nfe} | {row_name(rows[0])} | {rows[0]['rmse']:.4f} | {cells[0]} | "
                       f"{cells[1]} | {eul['rmse']:.4f} ({_sched(eul)}{' +AFS' if eul['afs'] else ''}) | "
                       f"{res['reference']['half_steps_rmse']:.1e} |")
    out.append("")
    for res in results:
        ref = res["reference"]
        out += [f"## {res['model']}: {res['description']}", "",
                f"Sample shape {tuple(res['shape'])}, seeds {res['seeds'][0]}-{res['seeds'][1]}, sigma "
                f"{res['sigma_max']:.6g} -> {res['sigma_min']:.6g}. Reference: DEIS-logrho4 with {ref['steps']} "
                f"steps; with {ref['steps'] // 2} steps it is off by RMSE {ref['half_steps_rmse']:.2e} (an upper "
                f"bound on the reference's own error). {len(res['rows'])} rows in {res['seconds'] / 60:.1f} min.",
                f"Load before: `{res['load_before']}`; after: `{res['load_after']}`.", ""]
        for nfe in sorted({r["nfe"] for r in res["rows"]}):
            rows = sorted((r for r in res["rows"] if r["nfe"] == nfe), key=lambda r: r["rmse"])
            out += [f"### NFE {nfe} ({len(rows)} configurations)", "", "| rank | solver | schedule | RMSE |",
                    "|---:|---|---|---:|"]
            notes = {i: f" ({what})" for spec, what in ((DEFAULT, "default"), (EULER, "= DDIM"))
                     for i, r in enumerate(rows) if _is(r, spec)}
            out += [_line(i, rows[i], notes.get(i, "")) for i in sorted(set(range(min(10, len(rows)))) | set(notes))]
            best = rows[0]["rmse"]
            dflt = next((r for r in rows if _is(r, DEFAULT)), None)
            if dflt is not None:
                out += ["", f"Default / best: {dflt['rmse'] / best:.2f}x; a tuner within 1.1x of the best must reach "
                            f"RMSE {1.1 * best:.4f}."]
            out += ["", "By schedule: the best configuration on it, and the default solver and Euler on it.", "",
                    "| schedule | best on it | RMSE | iPNDM4 +AFS | Euler |", "|---|---|---:|---:|---:|"]
            for kind, rho in dict.fromkeys((r["schedule"], r["rho"]) for r in rows):
                on = [r for r in rows if (r["schedule"], r["rho"]) == (kind, rho)]
                cell = {what: next((f"{r['rmse']:.4f}" for r in on if _is(r, spec[:3] + (kind, rho))), "—")
                        for spec, what in ((DEFAULT, "default"), (EULER, "euler"))}
                out.append(f"| {_sched(on[0])} | {on[0]['label']}{' +AFS' if on[0]['afs'] else ''} | "
                           f"{on[0]['rmse']:.4f} | {cell['default']} | {cell['euler']} |")
            out.append("")
    return "\n".join(out) + "\n"


def _sched(r: dict) -> str:
    return r["schedule"] + ("" if r["schedule"] == "logsnr" else f" rho {r['rho']:g}")


def _line(i: int, r: dict, note: str = "") -> str:
    return f"| {i + 1} | {r['label']}{' +AFS' if r['afs'] else ''}{note} | {_sched(r)} | {r['rmse']:.4f} |"


def dump_json(doc: dict) -> str:
    """``doc`` as JSON with one line per sweep row (NaN / inf refused: a diverged run is null)."""
    rows = {}
    for i, res in enumerate(doc["results"]):
        rows[f"@rows{i}@"], res["rows"] = res["rows"], f"@rows{i}@"
    text = json.dumps(doc, indent=1, allow_nan=False)
    for key, value in rows.items():
        text = text.replace(json.dumps(key), "[\n" + ",\n".join(json.dumps(r, allow_nan=False) for r in value) + "\n]")
    for i, res in enumerate(doc["results"]):
        res["rows"] = rows[f"@rows{i}@"]
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ddpm,unet,digits")
    p.add_argument("--seeds", type=int, default=64, help="seeds for the DDPM (default: %(default)s)")
    p.add_argument("--other-seeds", type=int, default=32, help="seeds for unet / digits (default: %(default)s)")
    p.add_argument("--ref-steps", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="4 seeds, a 16-step reference, NFE 5 only (for tests)")
    p.add_argument("--out", default="docs/ddpm_sweep.md")
    p.add_argument("--json", default="docs/ddpm_sweep.json")
    p.add_argument("--keep", action="store_true",
                   help="keep the results of models not in --models from the existing --json (run models apart)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    nfes = (5,) if args.quick else NFES
    t0 = time.time()
    results = []
    for name in [m for m in args.models.split(",") if m]:  # --models "" --keep: only render the JSON again
        seeds = 4 if args.quick else args.seeds if name.startswith("ddpm") else args.other_seeds
        results.append(sweep_model(name, seeds, 16 if args.quick else args.ref_steps, nfes,
                                   lambda s: print(s, file=sys.stderr, flush=True)))
        results[-1]["argv"] = argv
    if args.keep and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())["results"]
        for res in old:
            for r in res["rows"]:
                r["rmse"] = math.inf if r["rmse"] is None else r["rmse"]
        results = [r for r in old if r["model"] not in {x["model"] for x in results}] + results
        order = ["ddpm", "ddpm_interp", "unet", "digits"]
        results.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    total = sum(r["seconds"] for r in results)
    page = render(results, total, argv)
    doc = {"argv": argv, "torch": torch.__version__, "seconds": total, "results": results}
    for res in results:  # a diverged run (inf) is null in the JSON
        for r in res["rows"]:
            r["rmse"] = r["rmse"] if math.isfinite(r["rmse"]) else None
    write_text_atomic(Path(args.json), dump_json(doc))
    write_text_atomic(Path(args.out), page)
    print(f"wrote {args.out} and {args.json} in {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
