"""``fewstep bench paper-table2 | paper-table4 | paper-table5``: the AMED paper's tables regenerated."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..io import read_json_file, regular_file, write_text_atomic
from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import add_model_args, parse_nfes, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``bench`` subcommand."""
    b = sub.add_parser("bench", help="the AMED paper's Tables 2, 4, 5 regenerated on the analytic bed (or a model)")
    b.add_argument("which", choices=("paper-table2", "paper-table4", "paper-table5"),
                   help="table2: solvers x NFE; table4: teacher solvers; table5: time schedules +- AMED-Plugin")
    add_model_args(b)
    b.add_argument("--seeds", type=positive_int, default=None,
                   help="held-out seeds (default: 1000 gmm, 200 otherwise)")
    b.add_argument("--ref-steps", type=positive_int, default=None,
                   help="reference steps (default: 256 gmm, 64 otherwise)")
    b.add_argument("--nfe", type=parse_nfes, default=[3, 5, 7, 9], help="comma-separated NFEs (default: 3,5,7,9)")
    b.add_argument("--train-samples", type=positive_int, default=4096, help="AMED training samples per predictor")
    b.add_argument("--M", type=positive_int, default=8, help="teacher steps inserted per interval (default: 8)")
    b.add_argument("--plugin-base", default="auto,dpm2",
                   help="table2: comma-separated base solvers of AMED-Plugin (auto: the best multistep one, as the "
                        "paper's 2(a-c); dpm2: DPM-Solver-2, as its 2(d); default auto,dpm2)")
    b.add_argument("--rows", default=None,
                   help="table2: comma-separated rows to keep (dpmpp, unipc, ipndm, euler, heun, dpm2, amed = "
                        "AMED-Solver, plugin = the AMED-Plugins); default all. E.g. --rows dpm2,plugin "
                        "--plugin-base dpm2 for DPM-Solver-2 and its plugin alone")
    b.add_argument("--batch", type=positive_int, default=64, help="AMED training batch (default: %(default)s)")
    b.add_argument("--no-afs", action="store_true",
                   help="table2: no AFS anywhere (the paper's Appendix C.4: even NFE 4,6,8,10; pass --nfe 4,6,8,10)")
    b.add_argument("--schedules", choices=("polynomial", "paper"), default="polynomial",
                   help="table2: polynomial rho=7 for every row (default), or paper: the paper's Sec. 4.1 per-row "
                        "schedules (logSNR for DPM-Solver++ / UniPC, time-uniform for AMED-Solver, polynomial else)")
    b.add_argument("--teachers", choices=("default", "paper"), default="default",
                   help="table4: default (six teachers at --M plus the paper's Heun M=1 / iPNDM M=2 settings) or "
                        "paper (the paper's four teachers DPM-Solver++(3M), iPNDM, DPM-Solver-2, EDM, all at --M)")
    b.add_argument("--method", default="amed",
                   help="table4: comma-separated learned methods: amed (AMED-Solver) and/or plugin (AMED-Plugin on "
                        "each --base); default amed")
    b.add_argument("--base", default="ipndm",
                   help="table4 with --method plugin: comma-separated base solvers of the AMED-Plugin (ipndm, dpm2, "
                        "dpmpp; default ipndm)")
    b.add_argument("--render-only", action="store_true",
                   help="compute nothing: re-render the .md from the .json saved beside --out (with the paper's "
                        "numbers and the pattern verdicts)")
    b.add_argument("--fd-count", type=positive_int, default=10000,
                   help="reference patches for the FD of image models")
    b.add_argument("--out", default=None, help="output .md (and .json beside it); default fewstep-out/paper/")
    b.add_argument("--overwrite", action="store_true", help="replace existing output (--out .md (and .json))")
    b.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    b.set_defaults(func=run)
    return b


def _students(methods: str, bases: str) -> list[str]:
    """Table 4's students (keys of fewstep.experiments.paper.STUDENTS) from --method and --base: "amed" for the
    AMED-Solver, each base for --method plugin; an unknown method stays, so the caller's check names it."""
    out: list[str] = []
    for m in (s.strip() for s in methods.split(",") if s.strip()):
        out += [b.strip() for b in bases.split(",") if b.strip()] if m == "plugin" else [m if m == "amed" else f"?{m}"]
    return out


def run(args: argparse.Namespace) -> int:
    """The AMED paper's Tables 2, 4, 5 regenerated on the analytic bed (or a model): Markdown + JSON."""
    import torch

    from .. import data
    from ..experiments import paper
    from ..experiments.bed import Bed

    torch.set_num_threads(max(1, args.threads))
    which = args.which.replace("paper-", "")
    students = _students(args.method, args.base)
    rows_only = [s.strip() for s in args.rows.split(",") if s.strip()] if args.rows else None
    if rows_only is not None and which != "table2":
        raise ValueError("--rows applies to paper-table2 only")
    if rows_only is not None and not rows_only:
        raise ValueError("--rows must name at least one row")
    if rows_only is not None and any(r not in paper.TABLE2_ROWS for r in rows_only):
        raise ValueError(f"--rows must name some of {', '.join(paper.TABLE2_ROWS)}, got {args.rows!r}")
    if (args.no_afs or args.schedules != "polynomial") and which != "table2":
        raise ValueError("--no-afs and --schedules apply to paper-table2 only")
    if which == "table4" and not all(s in paper.STUDENTS for s in students):
        bases = [s for s in paper.STUDENTS if s != "amed"]
        raise ValueError(f"--method must name amed and/or plugin, and --base some of {', '.join(bases)}; got --method "
                         f"{args.method!r} --base {args.base!r}")
    if args.render_only:
        if not args.out:
            raise ValueError("--render-only needs --out (the .md whose .json beside it is re-rendered)")
        out = Path(args.out)
        from ..jsonio import load_json

        saved = load_json(out.with_suffix(".json"), what="saved report", expect=dict)
        machine = None  # JSON written before it recorded the machine: keep the line of the report beside it
        if "machine" not in saved and os.path.lexists(out):
            regular_file(out, "paper table report")
            line = next((x for x in out.read_text().splitlines() if x.startswith("Machine: ")), "")
            machine = line[len("Machine: "):].split("; total")[0] or None
        text = paper.render(which, saved, machine)
        write_text_atomic(out, text)
        print(text)
        print(f"Re-rendered {out} from {out.with_suffix('.json')}")
        return 0
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    seeds = args.seeds or (1000 if args.model == "gmm" else 200)
    ref_steps = args.ref_steps or (256 if args.model == "gmm" else 64)
    if args.model == "gmm":
        desc, fd_ref = "Gaussian mixture fitted to 8x8x3 natural-image patches (10 components; exact denoiser)", None
    else:
        desc = f"model {model_id} (RMSE to a high-accuracy teacher solution, not to an exact one)"
        fd_ref = data.image_patches(size=shape[-1], count=args.fd_count, seed=12345).to(dtype) \
            if len(shape) == 3 and shape[0] == 3 else None
    out = Path(args.out or f"fewstep-out/paper/{which}.md")
    command = (f"fewstep bench {args.which} --model {args.model} --seeds {seeds} --ref-steps {ref_steps} "
               f"--nfe {','.join(map(str, args.nfe))} --train-samples {args.train_samples} --M {args.M}"
               + (f" --plugin-base {args.plugin_base}" if which == "table2" else "")
               + (f" --rows {','.join(rows_only)}" if rows_only else "")
               + (f" --batch {args.batch}" if args.batch != 64 else "")
               + (" --no-afs" if args.no_afs else "")
               + (f" --schedules {args.schedules}" if args.schedules != "polynomial" else "")
               + (f" --teachers {args.teachers} --method {args.method}" if which == "table4" else "")
               + (f" --base {args.base}" if which == "table4" and "plugin" in args.method.split(",") else "")
               + (f" --shape {','.join(map(str, args.shape))}" if args.shape else "")
               + (f" --fd-count {args.fd_count}" if fd_ref is not None else "") + f" --out {out}")
    print(f"{command}\nReference solution for {seeds} seeds ...", flush=True)
    bed = Bed.build(denoiser, shape, seeds=seeds, ref_steps=ref_steps, model_id=model_id, dtype=dtype,
                    description=desc, fd_reference=fd_ref)
    result, seconds = paper.run_table(which, bed, args.nfe, args.train_samples, args.M, args.plugin_base,
                                      progress=True, teachers=args.teachers, students=students,
                                      **({"rows_only": rows_only, "batch": args.batch, "afs": not args.no_afs,
                                          "schedules": args.schedules} if which == "table2" else {}))
    settings = {"total_samples": args.train_samples, "M": args.M} | ({"batch": args.batch} if args.batch != 64 else {})
    text = paper.report(which, result, bed, args.nfe, command, settings, seconds)
    saved = {"command": command, "seconds": seconds, "machine": paper.machine(), "reference_error": bed.ref_error,
             "bed": paper.bed_info(bed), "nfes": list(args.nfe),
             "settings": settings, **result}
    write_text_atomic(out.with_suffix(".json"), json.dumps(paper.json_safe(saved), indent=1) + "\n")
    write_text_atomic(out, text)
    print(text)
    print(f"Wrote {out} and {out.with_suffix('.json')} in {seconds:.0f} s")
    return 0
