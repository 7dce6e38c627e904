"""Train the learned samplers shipped for the shipped models and write their index (``fewstep/assets/samplers.json``,
read by :mod:`fewstep.shipped`), through the CLI as a user runs it:

    fewstep tune  --model unet --nfe N --out T          (the best classic configuration at NFE N)
    fewstep train --model unet --nfe N --tuned T --method M --out fewstep/assets/sampler_unet_nfeN.safetensors
    fewstep tune  --model digits --guidance 4 --nfe 5 --out T
    fewstep train --model digits --nfe 5 --guidance-scales 1,2,4,8 --tuned T --method M --out ...

Each training ends with the CLI's held-out report (trained vs its base vs the best classic configuration), kept in
the index's ``measured`` field and in ``docs/shipped.md``.

    PYTHONPATH=src python scripts/train_shipped.py [--nfes 3,5,7] [--method residual] [--digits-method residual]
        [--work fewstep-out/shipped] [--only unet|digits]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "fewstep" / "assets"
ROW = re.compile(r"^\s+(trained|untrained|best classic:)(.*?)\s+NFE\s+(\d+)\s+([0-9.eE+-]+)$")


def cli(argv: list[str], log: Path) -> str:
    from fewstep.cli import main

    buf = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(argv)
    text = buf.getvalue() + f"\n[{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU]\n"
    log.write_text(" ".join(argv) + "\n" + text)
    if rc:
        raise SystemExit(f"fewstep {' '.join(argv)} failed ({rc}); see {log}")
    return text


def report(text: str) -> dict:
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            key = {"trained": "trained", "untrained": "base", "best classic:": "best_classic"}[m.group(1)]
            rows.setdefault(key, float(m.group(4)))
    t = re.search(r"in ([0-9.]+) s \(([0-9.]+) CPU s\)", text)
    if t:
        rows["train_seconds"], rows["train_cpu_seconds"] = float(t.group(1)), float(t.group(2))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfes", default="3,5,7")
    p.add_argument("--method", default="residual")
    p.add_argument("--tuned-nfes", default="3,4,5,7,9", help="NFEs whose tuned U-Net configuration is shipped")
    p.add_argument("--digits-method", default="residual")
    p.add_argument("--digits-nfe", type=int, default=5)
    p.add_argument("--digits-scales", default="1,2,4,8")
    p.add_argument("--work", default="fewstep-out/shipped")
    p.add_argument("--only", choices=("unet", "digits"), default=None)
    p.add_argument("--assets", default=str(ASSETS), help="where the samplers and the index go")
    p.add_argument("--extra", default="", help="more train options, e.g. '--total-samples 16' (tests)")
    args = p.parse_args(argv)
    assets = Path(args.assets)
    assets.mkdir(parents=True, exist_ok=True)
    from fewstep import learned
    from fewstep.shipped import INDEX

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index_path = assets / INDEX
    index = json.loads(index_path.read_text())["samplers"] if index_path.exists() else []
    jobs = []
    if args.only in (None, "unet"):
        for n in (int(v) for v in args.nfes.split(",")):
            jobs.append(("unet", n, None, args.method))
    if args.only in (None, "digits"):
        jobs.append(("digits", args.digits_nfe, args.digits_scales, args.digits_method))
    if args.only in (None, "unet"):  # the tuned classic configurations the demo compares with (small JSON files)
        for n in (int(v) for v in args.tuned_nfes.split(",")):
            path = assets / f"tuned_unet_nfe{n}.json"
            if not path.exists():
                cli(["tune", "--model", "unet", "--nfe", str(n), "--threads", "1", "--out", str(path)],
                    work / f"unet_tune_nfe{n}.log")
    for model, nfe, scales, method in jobs:
        name = f"sampler_{model}_nfe{nfe}.safetensors"
        tuned = (assets / f"tuned_unet_nfe{nfe}.json") if model == "unet" else work / f"{model}_tuned_nfe{nfe}.json"
        guided = ["--guidance", "4"] if scales else []
        if not tuned.exists():
            cli(["tune", "--model", model, "--nfe", str(nfe), *guided, "--threads", "1", "--out", str(tuned)],
                work / f"{model}_tune_nfe{nfe}.log")
        text = cli(["train", "--model", model, "--nfe", str(nfe), "--method", method, "--tuned", str(tuned),
                    *(["--guidance-scales", scales] if scales else []), "--threads", "1", "--overwrite",
                    "--out", str(assets / name), *args.extra.split()], work / f"{model}_train_nfe{nfe}.log")
        s = learned.load(assets / name)
        entry = {"file": name, "model_id": s.config["model_id"], "nfe": s.nfe(),
                 "guidance": s.config["guidance"]["scales"] if s.config.get("guidance") else None,
                 "method": s.config["method"], "measured": report(text)}
        index = [e for e in index if e["file"] != name] + [entry]
        print(f"{name}: {entry['measured']}", flush=True)
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"samplers": sorted(index, key=lambda e: e["file"])}, indent=1) + "\n")
    os.replace(tmp, index_path)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
