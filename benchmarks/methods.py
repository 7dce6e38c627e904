"""Which learned method to train by default: every method trained through the CLI with its own defaults, from the
tuned classic configuration at its NFE (``fewstep tune``, then ``fewstep train --tuned``), on the shipped U-Net and
on the example DDPM (examples/ddpm_digits, a model in another parameterisation), measured on held-out report seeds
(:func:`fewstep.seeds.report_seeds`) against the DEIS-4 teacher (128 steps) together with the tuned classic
configurations at the same NFE and at NFE 9.

    .venv/bin/python -m benchmarks.methods [--models unet,ddpm] [--methods residual,dyweight,...] [--nfes 4,5]
        [--work DIR] [--out docs/methods.md] [--json docs/methods.json] [--quick]

Runs are cached in ``--work`` (tune files, trained samplers, logs): a second call only evaluates and renders.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

MODELS = {"unet": ("unet", None), "ddpm": ("examples.ddpm_digits.model:factory", "1,16,16")}
METHODS = ("residual", "dyweight", "gs", "plugin", "pas", "amed")


def _cli(argv: list[str], log: Path) -> tuple[int, float, float, str]:
    """Run ``fewstep ARGV`` in this process: (exit status, wall s, CPU s, stdout + stderr), the text kept in ``log``."""
    from fewstep.cli import main

    buf = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(argv)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    text = buf.getvalue()
    log.write_text(" ".join(argv) + "\n" + text)
    return rc, wall, cpu, text


def _model_args(model: str) -> list[str]:
    name, shape = MODELS[model]
    return ["--model", name] + (["--shape", shape] if shape else [])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fewstep import learned, noise_for_seeds
    from fewstep.cli.args import load_model, parse_shape
    from fewstep.recipe import Recipe
    from fewstep.seeds import report_seeds
    from fewstep.tune import TeacherErrors

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    quick = ["--seeds", "900000000-900000001", "--no-search"] if args.quick else []
    size = ["--total-samples", "16", "--batch", "8", "--M", "2", "--report-seeds", "2"] if args.quick else []
    nfes = sorted({*args.nfes, 9})
    out: dict[str, Any] = {"load_before": os.getloadavg(), "results": []}
    for model in args.models:
        recipes: dict[int, Path] = {}
        for nfe in nfes:
            path = work / f"{model}_tuned_nfe{nfe}.json"
            if not path.exists():
                rc, *_ = _cli(["tune", *_model_args(model), "--nfe", str(nfe), "--threads", "1", "--out", str(path),
                               *quick], work / f"{model}_tune_nfe{nfe}.log")
                if rc:
                    raise RuntimeError(f"tune failed: see {work}/{model}_tune_nfe{nfe}.log")
            recipes[nfe] = path
        trained: list[dict[str, Any]] = []
        for nfe in args.nfes:
            for method in args.methods:
                path = work / f"{model}_{method}_nfe{nfe}.safetensors"
                meta = path.with_suffix(".run.json")
                if not meta.exists():
                    rc, wall, cpu, text = _cli(
                        ["train", *_model_args(model), "--nfe", str(nfe), "--method", method, "--tuned",
                         str(recipes[nfe]), "--threads", "1", "--overwrite", "--out", str(path), *size],
                        work / f"{model}_{method}_nfe{nfe}.log")
                    m = re.search(r"in ([0-9.]+) s \(([0-9.]+) CPU s\)", text)
                    meta.write_text(json.dumps({"rc": rc, "wall": wall, "cpu": cpu,
                                                "train_wall": float(m.group(1)) if m else None,
                                                "train_cpu": float(m.group(2)) if m else None}))
                run_meta = json.loads(meta.read_text())
                trained.append({"method": method, "nfe": nfe, "path": path, **run_meta})
        name, shape = MODELS[model]
        den, shp, _, dtype = load_model(name, parse_shape(shape) if shape else None)
        seeds = report_seeds(2 if args.quick else args.seeds)
        err = TeacherErrors(den, noise_for_seeds(seeds, tuple(shp), dtype=dtype), 16 if args.quick else 128)

        rows = []
        for nfe, path in recipes.items():
            rec = Recipe.load(path)
            rows.append({"kind": "classic", "label": rec.label(), "nfe": nfe, "rmse": err(rec)})
        for t in trained:
            row = {"kind": "learned", "label": t["method"], "nfe": t["nfe"], "rmse": None,
                   **{k: t[k] for k in ("rc", "wall", "cpu", "train_wall", "train_cpu")}}
            if t["rc"] == 0:
                s = learned.load(t["path"])
                row.update(rmse=err(s), describe=s.describe(),
                           parameters=sum(p.numel() for p in s.parameters()))
            rows.append(row)
        out["results"].append({"model": model, "seeds": [seeds[0], seeds[-1], len(seeds)], "rows": rows})
    out["load_after"] = os.getloadavg()
    return out


def render(res: dict[str, Any]) -> str:
    lines = ["# Learned methods from the tuned start: which one `fewstep train` trains by default", "",
             "Generated by `python -m benchmarks.methods` (the command in its docstring). Each method trained through "
             "`fewstep train --method M --nfe N --tuned T` with its own defaults (budget, M, learning rate), where T is "
             "`fewstep tune`'s winner at that NFE; RMSE to the DEIS-4 teacher (128 steps) on held-out report seeds "
             f"(from 800000000). Machine: {platform.processor() or platform.machine()}, 2 cores shared with other "
             f"jobs, load average {res['load_before'][0]:.1f} at the start, {res['load_after'][0]:.1f} at the end; "
             "one torch thread.", ""]
    for r in res["results"]:
        rows = r["rows"]
        c9 = next((x["rmse"] for x in rows if x["kind"] == "classic" and x["nfe"] == 9), None)
        lines += [f"## {r['model']} ({r['seeds'][2]} seeds)", "",
                  "| sampler | NFE | RMSE | / best classic, same NFE | / best classic, NFE 9 | train wall s | train CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for x in sorted(rows, key=lambda x: (x["nfe"], x["kind"] != "classic", x["rmse"] or 1e9)):
            same = next((y["rmse"] for y in rows if y["kind"] == "classic" and y["nfe"] == x["nfe"]), None)
            label = f"tuned classic: {x['label']}" if x["kind"] == "classic" else x.get("describe", x["label"])
            if x["rmse"] is None:
                lines.append(f"| {label} | {x['nfe']} | failed (exit {x['rc']}) | | | | |")
                continue
            ratio = f"{x['rmse'] / same:.2f}" if same else ""
            r9 = f"{x['rmse'] / c9:.2f}" if c9 else ""
            tw = f"{x['train_wall']:.0f}" if x.get("train_wall") else ""
            tc = f"{x['train_cpu']:.0f}" if x.get("train_cpu") else ""
            lines.append(f"| {label} | {x['nfe']} | {x['rmse']:.4f} | {ratio} | {r9} | {tw} | {tc} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="unet,ddpm")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--nfes", default="4,5")
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--work", default="fewstep-out/methods")
    p.add_argument("--out", default="docs/methods.md")
    p.add_argument("--json", default="docs/methods.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the test that keeps this script alive")
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.methods = args.methods.split(",")
    args.nfes = [int(v) for v in args.nfes.split(",")]
    res = run(args)
    for r in res["results"]:
        for x in r["rows"]:
            x.pop("path", None)
    Path(args.out).write_text(render(res))
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
