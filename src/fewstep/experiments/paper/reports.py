"""Markdown reports of the paper tables: :func:`report` from a computed result, :func:`render` from its saved
JSON."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..bed import Bed
from .comparison import compare
from .reference import NFES, TITLES, UNITS
from .rows import bed_info, format_rows, int_keys

__all__ = ["machine", "report", "render"]


def machine() -> str:
    """The machine line of a report."""
    import platform

    return f"{platform.machine()}, {platform.system()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def report(which: str, result: dict[str, Any], bed: Bed | dict[str, Any], nfes: Sequence[int], command: str,
           settings: dict[str, Any], seconds: float, machine_line: str | None = None) -> str:
    """Markdown report of a paper table: command, machine, setup, RMSE table (and FD table), the paper's numbers
    beside ours cell by cell with a verdict per pattern (:func:`compare`), learned r/c/a and AMED training times.
    ``bed`` is the :class:`Bed` or its :func:`bed_info`."""
    info = bed_info(bed)
    rows = int_keys(result["rows"])
    nfes = list(nfes)
    if which == "table4":
        teacher_desc = "as in each row with M={M} steps per interval unless the row names another M"
    else:
        teacher_desc = "DEIS-4 logrho with M={M} steps per interval"
    first = info.get("first_seed", 0)  # tables before the held-out fix evaluated seeds 0..S-1
    afs = result.get("afs", True)
    sched = result.get("schedules", "polynomial")
    lines = [
        f"# {TITLES[which]} (AMED paper, Zhou et al., CVPR 2024) on our bed", "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line or machine()}; total {seconds:.0f} s  ",
        f"Bed: {info['description']}; {info['seeds']} held-out seeds ({first}..{first + info['seeds'] - 1}); "
        "reference: "
        f"DEIS-4 logrho with {info['ref_steps']} polynomial steps (relative change vs half the steps "
        f"{info['ref_error']:.1e}).  ",
        "AMED: predictor-free table (features none, r/c/a per step), trained per NFE by `fewstep.learned.train` "
        f"(method amed / plugin) with final-point loss, batch {settings.get('batch', 64)}, "
        f"{settings['total_samples']} training samples, teacher "
        + teacher_desc.format(M=settings["M"]) + (", AFS on" if afs else ", AFS off") + ", scale_dir 0.01.  ",
        "Cells: RMSE to the reference at sigma_min = 0.002 (lower is better; best per NFE in bold; — = NFE not "
        "reachable by the solver).", "",
        format_rows(rows, nfes),
    ]
    if which == "table2":
        bases = result.get("plugin_bases") or [result["plugin_base"]]
        bases = [b for b in bases if b]
        afs_text = ("DPM-Solver-2 and Heun use AFS; the multistep solvers do not (NFE = steps)." if afs else
                    "No AFS anywhere (the paper's Appendix C.4 setting): DPM-Solver-2, Heun, AMED-Solver and the "
                    "AMED-Plugins cost 2 evaluations per step and reach only even NFE; the multistep solvers 1 per "
                    "step.")
        if bases:
            lines += ["", f"AMED-Plugin bases: {', '.join(bases)} (`--plugin-base`: auto = the multistep solver with "
                          "the lowest mean log RMSE over the NFEs above, as the paper's 2(a-c) use their best, iPNDM; "
                          f"dpm2 = DPM-Solver-2{' with AFS' if afs else ''}, the paper's generalised DPM-Solver-2 "
                          f"with learned r, as its 2(d)). {afs_text}"]
        else:
            lines += ["", afs_text]
        if sched == "paper":
            lines += ["", "Time schedules as the paper's Sec. 4.1: logSNR for DPM-Solver++(3M), UniPC and AMED-Plugin "
                          "on them; time-uniform (rho = 1) for AMED-Solver; polynomial rho = 7 for every other row."]
    if which == "table4":
        lines += ["", "Each teacher's own RMSE to the reference on the refined schedule it gives targets on "
                      "(student schedule with M points inserted per interval):", "",
                  format_rows(int_keys(result["teacher_rows"]), nfes)]
    if any("fd" in r for r in rows):
        lines += ["", "Fréchet distance in the fixed 64-D random feature space (fewstep.metrics.RandomFeatures) "
                      "to natural-image patches:", "", format_rows(rows, nfes, key="fd")]
    lines += ["", "## Beside the paper", ""]
    if not any(n in NFES for n in nfes):
        lines += ["The paper's Table 2 reports NFE 3, 5, 7, 9 (with AFS); its results at NFE "
                  f"{', '.join(map(str, nfes))} (Appendix C.4) are not in the paper's text we have "
                  "(`shared/papers/amed-cvpr2024.txt`), so there is nothing to set beside these rows."]
    else:
        lines += [UNITS if "Gaussian mixture" in str(info.get("description", "Gaussian mixture")) else
                  UNITS.replace("RMSE to the exact ODE solution on the Gaussian-mixture bed",
                                f"RMSE to a high-accuracy solution on {info['description'].split(' (')[0]}")]
        for title, side, patterns in compare(which, result, nfes):
            lines += ["", f"### {title}", "", side, "", patterns]
    learned = [r for r in rows if r.get("tables")]
    if learned:
        lines += ["", "## AMED training", "", "Training time (s) and learned (r, c, a) per step (largest sigma first):",
                  ""]
        for r in learned:
            for n, tab in r["tables"].items():
                cells = ", ".join(f"({a:.3f}, {b:.4f}, {c:.2f})" for a, b, c in tab)
                lines.append(f"- {r['label']} @ NFE {n} ({r['train_s'][n]} s): {cells}")
    return "\n".join(lines) + "\n"


def render(which: str, saved: dict[str, Any], machine_line: str | None = None) -> str:
    """:func:`report` from a table's saved JSON (what ``fewstep bench ... --render-only`` prints): nothing is
    computed. Older JSON without ``bed`` / ``nfes`` / ``settings`` gets them from its command line."""
    cmd = saved["command"]

    def opt(name: str, default: str) -> str:
        parts = cmd.split()
        return parts[parts.index(name) + 1] if name in parts else default

    nfes = saved.get("nfes") or [int(n) for n in opt("--nfe", "3,5,7,9").split(",")]
    settings = saved.get("settings") or {"total_samples": int(opt("--train-samples", "4096")), "M": int(opt("--M", "8"))}
    info = saved.get("bed") or {
        "description": "Gaussian mixture fitted to 8x8x3 natural-image patches (10 components; exact denoiser)"
        if opt("--model", "gmm") == "gmm" else f"model {opt('--model', '?')}",
        "seeds": int(opt("--seeds", "1000")), "ref_steps": int(opt("--ref-steps", "256")),
        "ref_error": saved["reference_error"]}
    return report(which, saved, info, nfes, cmd, settings, saved["seconds"],
                  machine_line or saved.get("machine") or "not recorded")
