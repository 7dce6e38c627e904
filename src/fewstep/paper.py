"""The AMED paper's tables and Fig. 5 regenerated on our beds (Zhou et al., "Fast ODE-based Sampling for Diffusion
Models in Around 5 Steps", CVPR 2024): Table 2 (solvers x NFE), Table 4 (teacher solver), Table 5 (time schedule
with and without AMED-Plugin), and the grid-searched intermediate times of Fig. 5.

Every table is RMSE to a high-accuracy ODE solution on held-out seeds (seeds 0..S-1; AMED trains on seeds from
10^9 + 1 on), optionally with a Fréchet distance in a fixed random feature space (``fd``). AMED predictors are
predictor-free tables (``features="none"``, final-point loss) trained per NFE with a small budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from . import amed
from .experiments.bed import Bed
from .evaluation import SolverSpec, rmse, solver_table
from .sampling import ModelCall, sample
from .teacher import REFERENCE_SOLVER, run_teacher
from .schedules import get_schedule, refine_schedule
from .solvers import AMEDPlugin, AMEDSolver, get_solver

__all__ = [
    "Bed", "make_bed", "amed_row", "table2", "table4", "table5", "alignment", "relative_alignment", "paper_schedule",
    "PAPER_FIG5_FORMS", "TABLE2_ROWS", "PAPER_TABLE2_CIFAR10",
    "PAPER_TABLE2", "PAPER_TABLE3_SD", "PAPER_TABLE4", "PAPER_TABLE5", "PAPER_TEACHERS", "STUDENTS",
    "TABLE2_BASELINES", "TEACHERS", "SCHEDULES", "format_rows", "report", "render", "compare", "run_table",
    "json_safe",
]

NFES = (3, 5, 7, 9)

# ------------------------------------------------------------------------------------------ the paper's numbers
# Read from the paper's text (../shared/papers/amed-cvpr2024.txt, CVPR 2024 version; its tables are extracted with a
# mangled layout: where a cell stacks several rows, its numbers run down the rows of one NFE column). FID (lower
# is better), 50k samples; NFE 3/5/7/9 with AFS for the AMED methods, DPM-Solver-2 and EDM. Each row is
# (paper's name, key of our matching row, FIDs); keys: a solver name (``"dpmpp"`` ...), ``"amed"`` (AMED-Solver)
# or ``"amed_plugin:<base>"``. The paper's Appendix C.4 (even NFE 4/6/8/10 without AFS) is not in that text.

PaperRow = tuple[str, str, tuple[float, ...]]

# Table 2. Sub-table letters follow the captions; the extracted captions sit after the wrong blocks, and the
# blocks were assigned by the text's own check "AMED-Plugin on iPNDM improves the FID by 6.98, 4.68 and 5.16 on
# CIFAR10, ImageNet 64 and FFHQ 64 in 5 NFE" (13.59-6.61, 17.17-12.49, 18.99-13.83) and by 2(d) being the only one
# whose AMED-Plugin is on DPM-Solver-2. 2(b) and 2(d) have no EDM row. All 2(a) plugin cells and 2(b)'s NFE-9 cell
# carry the paper's dagger: time scaling factors a_n trained as well.
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "cifar10": {"title": "2(a) CIFAR-10 32x32, unconditional (EDM model); AMED-Plugin on iPNDM", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (110.0, 24.97, 6.74, 3.42)),
        ("UniPC", "unipc", (109.6, 23.98, 5.83, 3.21)),
        ("iPNDM", "ipndm", (47.98, 13.59, 5.08, 3.17)),
        ("DDIM", "euler", (93.36, 49.66, 27.93, 18.43)),
        ("EDM (Heun)", "heun", (306.2, 97.67, 37.28, 15.76)),
        ("DPM-Solver-2", "dpm2", (155.7, 57.30, 10.20, 4.98)),
        ("AMED-Solver", "amed", (18.49, 7.59, 4.36, 3.67)),
        ("AMED-Plugin on iPNDM", "amed_plugin:ipndm", (10.81, 6.61, 3.65, 2.63)),
    )},
    "imagenet64": {"title": "2(b) ImageNet 64x64, conditional; AMED-Plugin on iPNDM", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (86.45, 22.51, 8.44, 4.77)),
        ("UniPC", "unipc", (86.43, 21.40, 7.44, 4.47)),
        ("iPNDM", "ipndm", (45.98, 17.17, 7.79, 4.58)),
        ("DDIM", "euler", (78.21, 43.93, 28.86, 21.01)),
        ("DPM-Solver-2", "dpm2", (266.0, 87.10, 22.59, 9.26)),
        ("AMED-Solver", "amed", (47.31, 14.80, 8.82, 6.31)),
        ("AMED-Plugin on iPNDM", "amed_plugin:ipndm", (26.87, 12.49, 6.64, 4.24)),
    )},
    "ffhq64": {"title": "2(c) FFHQ 64x64, unconditional; AMED-Plugin on iPNDM", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (91.52, 25.49, 10.14, 6.48)),
        ("UniPC", "unipc", (91.38, 24.36, 9.57, 6.34)),
        ("iPNDM", "ipndm", (58.53, 18.99, 9.17, 5.91)),
        ("DDIM", "euler", (82.96, 43.81, 27.46, 19.27)),
        ("EDM (Heun)", "heun", (249.4, 89.63, 37.65, 16.76)),
        ("DPM-Solver-2", "dpm2", (140.2, 42.41, 12.03, 6.64)),
        ("AMED-Solver", "amed", (38.10, 10.74, 6.66, 5.44)),
        ("AMED-Plugin on iPNDM", "amed_plugin:ipndm", (28.06, 13.83, 7.81, 5.60)),
    )},
    "lsun_bedroom": {"title": "2(d) LSUN Bedroom 256x256, unconditional; AMED-Plugin on DPM-Solver-2", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (111.9, 23.15, 8.87, 6.45)),
        ("UniPC", "unipc", (112.3, 23.34, 8.73, 6.61)),
        ("iPNDM", "ipndm", (80.99, 26.65, 13.80, 8.38)),
        ("DDIM", "euler", (86.13, 34.34, 19.50, 13.26)),
        ("DPM-Solver-2", "dpm2", (210.6, 80.60, 23.25, 9.61)),
        ("AMED-Solver", "amed", (58.21, 13.20, 7.10, 5.65)),
        ("AMED-Plugin on DPM-Solver-2", "amed_plugin:dpm2", (101.5, 25.68, 8.63, 7.82)),
    )},
}

# The paper's Table 2(a) as {name: FIDs} (kept for existing callers).
PAPER_TABLE2_CIFAR10: dict[str, tuple[float | None, ...]] = {
    ("AMED-Plugin (iPNDM)" if k == "amed_plugin:ipndm" else n): v for n, k, v in PAPER_TABLE2["cifar10"]["rows"]
}

# Table 3: Stable Diffusion v1.4, guidance 7.5, FID on 30k MS-COCO prompts; NFE 8/12/16/20 (2 NFE per step).
# Not regenerated here: it needs classifier-free guidance on a text-to-image model (see the guidance issue).
PAPER_TABLE3_SD: dict[str, Any] = {"nfes": (8, 12, 16, 20), "rows": (
    ("DPM-Solver++(2M)", "dpmpp", (21.33, 15.99, 14.84, 14.58)),
    ("AMED-Plugin on DPM-Solver++(2M)", "amed_plugin:dpmpp", (18.92, 14.84, 13.96, 13.24)),
)}

# Table 4: teacher solvers on CIFAR-10 (keys: our teacher solver names), for AMED-Solver and AMED-Plugin on iPNDM.
# The text gives M = 1 (teacher with doubled NFE) for AMED-Solver's DPM-Solver-2 / EDM teachers and, for the plugin,
# M = 1 for DPM-Solver-2 and M = 2 else; Table 2(a)'s AMED-Solver row takes DPM-Solver-2's teacher at NFE 3 and
# EDM's at NFE 5-9.
PAPER_TABLE4: dict[str, tuple[PaperRow, ...]] = {
    "amed": (
        ("DPM-Solver++(3M)", "dpmpp", (35.68, 12.34, 11.28, 9.65)),
        ("iPNDM", "ipndm", (32.38, 12.42, 10.09, 8.54)),
        ("DPM-Solver-2", "dpm2", (18.49, 11.60, 11.64, 9.23)),
        ("EDM (Heun)", "heun", (28.99, 7.59, 4.36, 3.67)),
    ),
    "ipndm": (
        ("DPM-Solver++(3M)", "dpmpp", (16.00, 7.57, 4.28, 2.85)),
        ("iPNDM", "ipndm", (10.81, 6.61, 3.65, 2.63)),
        ("DPM-Solver-2", "dpm2", (12.07, 8.19, 4.52, 2.66)),
        ("EDM (Heun)", "heun", (29.62, 10.58, 9.36, 4.44)),
    ),
}

# Table 5: DPM-Solver++(3M) on CIFAR-10 with three time schedules, without and with AMED-Plugin (keys: our
# schedule kinds; the paper's "uniform" is uniform in VP time, our time_uniform with rho = 1).
PAPER_TABLE5: dict[str, tuple[PaperRow, ...]] = {
    "dpmpp": (
        ("Uniform", "time_uniform", (76.80, 26.90, 16.80, 13.44)),
        ("Polynomial", "polynomial", (70.04, 31.66, 11.30, 6.45)),
        ("logSNR", "logsnr", (110.0, 24.97, 6.74, 3.42)),
    ),
    "amed_plugin:dpmpp": (
        ("Uniform", "time_uniform", (33.61, 13.24, 8.89, 8.24)),
        ("Polynomial", "polynomial", (32.47, 19.59, 9.60, 4.39)),
        ("logSNR", "logsnr", (25.95, 7.68, 4.51, 3.03)),
    ),
}

# Table 2's rows. Single-step second-order solvers use AFS (as the paper's odd NFEs need); multistep without.
TABLE2_BASELINES: tuple[SolverSpec, ...] = (
    SolverSpec("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}),
    SolverSpec("UniPC(3M) bh2", "unipc", {"max_order": 3}),
    SolverSpec("iPNDM", "ipndm", {"max_order": 4}),
    SolverSpec("DDIM (Euler)", "euler"),
    SolverSpec("EDM (Heun)", "heun", afs=True),
    SolverSpec("DPM-Solver-2", "dpm2", afs=True),
)

# Table 4's teachers: (label, solver, options, M) with M None = the table's ``M`` steps per interval. The last two
# rows are the paper's own settings (README of the reference code): Heun with M=1 for AMED-Solver, iPNDM with M=2.
TEACHERS: tuple[tuple[str, str, dict[str, Any], int | None], ...] = (
    ("Heun (EDM)", "heun", {}, None),
    ("DPM-Solver-2", "dpm2", {}, None),
    ("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}, None),
    ("UniPC(3M)", "unipc", {"max_order": 3}, None),
    ("iPNDM (order 4)", "ipndm", {"max_order": 4}, None),
    ("DEIS-4 logrho (fewstep default)", "deis", {"max_order": 4, "deis_mode": "logrho"}, None),
    ("Heun, M=1 (the paper's AMED-Solver setting)", "heun", {}, 1),
    ("iPNDM, M=2 (the paper's AMED-Plugin setting)", "ipndm", {"max_order": 4}, 2),
)

# The paper's own Table 4 teachers, in its order (each with the table's M).
PAPER_TEACHERS: tuple[tuple[str, str, dict[str, Any], int | None], ...] = (
    ("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}, None),
    ("iPNDM", "ipndm", {"max_order": 4}, None),
    ("DPM-Solver-2", "dpm2", {}, None),
    ("EDM (Heun)", "heun", {}, None),
)

# Table 4's students: name -> (label, options); "amed" = AMED-Solver, else AMED-Plugin on that base.
STUDENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "amed": ("AMED-Solver", {}),
    "ipndm": ("AMED-Plugin on iPNDM", {"max_order": 4}),
    "dpm2": ("AMED-Plugin on DPM-Solver-2", {}),
    "dpmpp": ("AMED-Plugin on DPM-Solver++(3M)", {"max_order": 3}),
}

# Table 5's time schedules: (label, kind, rho).
SCHEDULES: tuple[tuple[str, str, float], ...] = (
    ("polynomial (rho=7)", "polynomial", 7.0),
    ("logSNR", "logsnr", 7.0),
    ("time-uniform (rho=1)", "time_uniform", 1.0),
)


def make_bed(denoiser: Callable, shape: Sequence[int], *, seeds: int = 1000, ref_steps: int = 256,
             model_id: str | None = None, dtype: torch.dtype = torch.float64, description: str = "",
             fd_reference: torch.Tensor | None = None) -> Bed:
    """:meth:`fewstep.experiments.bed.Bed.build` (kept for existing callers)."""
    return Bed.build(denoiser, shape, seeds=seeds, ref_steps=ref_steps, model_id=model_id, dtype=dtype,
                     description=description, fd_reference=fd_reference)


def amed_row(
    bed: Bed, label: str, student: str = "amed", *, student_options: dict[str, Any] | None = None,
    nfes: Sequence[int] = NFES, afs: bool = True, schedule: str = "polynomial", rho: float = 7.0,
    teacher: str = "deis", teacher_options: dict[str, Any] | None = None, M: int = 8, total_samples: int = 4096,
    seed: int = 0, progress: bool = False, batch: int = 64,
) -> dict[str, Any]:
    """A table row for AMED trained per NFE (AMED-Solver for ``student="amed"``, else AMED-Plugin on that base):
    ``row[nfe]`` = RMSE to ``bed.ref`` (None where the NFE is unreachable), ``row["train_s"][nfe]`` = seconds,
    ``row["tables"][nfe]`` = the learned (r, c, a) per step."""
    opts = dict(student_options or {})
    row: dict[str, Any] = {"label": label, "solver": "amed" if student == "amed" else f"amed_plugin:{student}",
                           "options": opts, "afs": afs, "train_s": {}, "tables": {}}
    for nfe in nfes:
        try:
            n = amed.student_steps_for_nfe(student, nfe, afs, **opts)
        except ValueError:
            row[nfe] = None
            continue
        log: list = []
        pred = amed.train(
            bed.denoiser, shape=bed.shape, student=student, student_options=opts, teacher=teacher,
            teacher_options=teacher_options, num_steps=n, M=M, schedule=schedule, rho=rho, afs=afs,
            features="none", total_samples=total_samples, batch=batch, seed=seed, model_id=bed.model_id,
            dtype=bed.dtype, progress=progress, log=log,
        )
        res = sample(bed.denoiser, bed.noise, predictor=pred, return_result=True)
        assert res.nfe == nfe, (res.nfe, nfe)
        row[nfe] = rmse(res.x, bed.ref)
        row["train_s"][nfe] = round(log[0].seconds, 1)
        row["tables"][nfe] = [[round(v[k], 4) for k in ("r", "c", "a")] for v in pred.table_values()]
        bed.on_sample(row, nfe, res.x)
    return row


def _baselines(bed: Bed, specs: Sequence[SolverSpec], nfes: Sequence[int], schedule: str = "polynomial",
               rho: float = 7.0, progress: bool = False) -> list[dict[str, Any]]:
    return solver_table(bed.denoiser, bed.noise, bed.ref, nfes=nfes, specs=specs, schedule=schedule, rho=rho,
                        progress=progress, on_sample=bed.on_sample if bed.fd is not None else None)


def _score(row: dict[str, Any], nfes: Sequence[int]) -> float:
    """Mean log RMSE over the reachable NFEs (for picking the best base solver)."""
    vals = [math.log(row[n]) for n in nfes if row.get(n)]
    return sum(vals) / len(vals) if vals else math.inf


TABLE2_ROWS = ("dpmpp", "unipc", "ipndm", "euler", "heun", "dpm2", "amed", "plugin")


def table2(bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, plugin_base: str = "auto,dpm2",
           M: int = 8, progress: bool = False, rows_only: Sequence[str] | None = None, batch: int = 64,
           afs: bool = True, schedules: str = "polynomial") -> dict[str, Any]:
    """Table 2: baselines x NFE, AMED-Solver and AMED-Plugin on each base of the comma-separated ``plugin_base``
    (``auto`` = the best multistep base, as the paper's 2(a-c); ``dpm2`` = DPM-Solver-2, as its 2(d)), each AMED
    trained per NFE (teacher DEIS-4, ``M`` steps per interval, ``batch`` samples per iteration).

    ``rows_only``: keep only these rows (keys of :data:`TABLE2_ROWS`: the baseline solver names, ``amed`` =
    AMED-Solver, ``plugin`` = the AMED-Plugins; ``auto`` needs the multistep rows), for a cheap partial table.
    ``afs=False``: the paper's Appendix C.4 setting, even NFE without AFS for every row (single-step rows and AMED
    reach only even NFE then). ``schedules``: ``"polynomial"`` (rho = 7 for every row) or ``"paper"`` (Sec. 4.1:
    logSNR for DPM-Solver++ and UniPC and their plugins, time-uniform for AMED-Solver, polynomial rho = 7
    otherwise)."""
    keep = list(rows_only) if rows_only else list(TABLE2_ROWS)
    bad = [k for k in keep if k not in TABLE2_ROWS]
    if bad:
        raise ValueError(f"rows must be some of {', '.join(TABLE2_ROWS)}, got {', '.join(bad)}")
    if schedules not in ("polynomial", "paper"):
        raise ValueError(f"schedules must be polynomial or paper, got {schedules!r}")
    bases = [b.strip() for b in str(plugin_base).split(",") if b.strip()] if "plugin" in keep else []
    specs = [s if afs or not s.afs else replace(s, afs=False) for s in TABLE2_BASELINES
             if s.solver in keep]
    rows = []
    for spec in specs:
        kind, rho = paper_schedule(spec.solver) if schedules == "paper" else ("polynomial", 7.0)
        rows += [r | {"schedule": kind} for r in _baselines(bed, [spec], nfes, kind, rho, progress=progress)]
    chosen = []
    for base in bases or ["auto"]:
        if base == "auto":
            multistep = [r for r in rows if r["solver"] in ("dpmpp", "unipc", "ipndm")]
            best = min(multistep, key=lambda r: _score(r, nfes))
        else:
            best = next((r for r in rows if r["solver"] == base), None)
            if best is None:
                raise ValueError(f"plugin_base must be auto or one of {', '.join(r['solver'] for r in rows)} "
                                 f"(comma-separated), got {base!r}")
        if best not in chosen:
            chosen.append(best)
    if "amed" in keep:
        kind, rho = paper_schedule("amed") if schedules == "paper" else ("polynomial", 7.0)
        rows.append(amed_row(bed, "AMED-Solver", "amed", nfes=nfes, total_samples=total_samples, M=M, afs=afs,
                             schedule=kind, rho=rho, progress=progress, batch=batch) | {"schedule": kind})
    for best in chosen:
        kind, rho = paper_schedule(best["solver"]) if schedules == "paper" else ("polynomial", 7.0)
        label = best["label"].replace(" +AFS", "") if not afs else best["label"]
        rows.append(amed_row(bed, f"AMED-Plugin on {label}", best["solver"], student_options=best["options"],
                             afs=afs, nfes=nfes, total_samples=total_samples, M=M, schedule=kind, rho=rho,
                             progress=progress, batch=batch) | {"schedule": kind})
    labels = [r["label"] for r in chosen]
    return {"rows": rows, "plugin_base": labels[0] if labels else None, "plugin_bases": labels, "afs": afs,
            "schedules": schedules}


def paper_schedule(solver: str) -> tuple[str, float]:
    """(schedule kind, rho) the paper uses for a Table 2 row (Sec. 4.1): logSNR for DPM-Solver++ and UniPC (and
    AMED-Plugin on them), time-uniform for AMED-Solver (its CIFAR-10 / FFHQ / ImageNet setting), polynomial rho = 7
    for every other row."""
    if solver in ("dpmpp", "unipc"):
        return "logsnr", 7.0
    if solver == "amed":
        return "time_uniform", 1.0
    return "polynomial", 7.0


def table4(bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, M: int = 8,
           teachers: Sequence[tuple[str, str, dict[str, Any], int | None]] = TEACHERS,
           progress: bool = False, students: Sequence[str] = ("amed",)) -> dict[str, Any]:
    """Table 4: for each of ``students`` (keys of :data:`STUDENTS`: ``"amed"`` = AMED-Solver, ``"ipndm"`` =
    AMED-Plugin on iPNDM, ...), AMED trained per NFE from each teacher solver (``M`` steps per interval unless the
    teacher names its own). ``teacher_rows`` give each teacher's own RMSE to the reference on the refined schedule
    it provides targets on. With more than one student, labels start with the student's."""
    rows, teacher_rows = [], []
    for student in students:
        if student not in STUDENTS:
            raise ValueError(f"student must be one of {', '.join(STUDENTS)}, got {student!r}")
        s_label, opts_s = STUDENTS[student]
        for label, name, opts, m in teachers:
            m = M if m is None else m
            label = label if "M=" in label else f"{label}, M={m}"
            if len(students) > 1 or student != "amed":
                label = f"{s_label} / {label}"
            row = amed_row(bed, label, student, student_options=opts_s, nfes=nfes, teacher=name,
                           teacher_options=opts, M=m, total_samples=total_samples, progress=progress)
            row.update(student=student, teacher=name, M=m)
            rows.append(row)
            trow: dict[str, Any] = {"label": label, "student": student, "teacher": name, "M": m}
            for nfe in nfes:
                try:
                    n = amed.student_steps_for_nfe(student, nfe, True, **opts_s)
                except ValueError:
                    trow[nfe] = None
                    continue
                fine = refine_schedule(get_schedule("polynomial", n), m)
                res = sample(bed.denoiser, bed.noise, fine, name, return_result=True, **opts)
                trow[nfe] = rmse(res.x, bed.ref)
                trow.setdefault("teacher_nfe", {})[nfe] = res.nfe
            teacher_rows.append(trow)
    return {"rows": rows, "teacher_rows": teacher_rows, "students": list(students)}


def table5(bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, M: int = 8,
           schedules: Sequence[tuple[str, str, float]] = SCHEDULES, progress: bool = False) -> dict[str, Any]:
    """Table 5: DPM-Solver++(3M) on each time schedule, without and with AMED-Plugin (trained per NFE on it)."""
    base = SolverSpec("DPM-Solver++(3M)", "dpmpp", {"max_order": 3})
    rows = []
    for label, kind, rho in schedules:
        (r,) = _baselines(bed, [replace(base, label=f"DPM-Solver++(3M), {label}")], nfes, kind, rho, progress)
        rows.append(r | {"schedule": kind})
        rows.append(amed_row(bed, f"+ AMED-Plugin, {label}", "dpmpp", student_options={"max_order": 3}, nfes=nfes,
                             schedule=kind, rho=rho, M=M, total_samples=total_samples, progress=progress)
                    | {"schedule": kind})
    return {"rows": rows}


def format_rows(rows: list[dict[str, Any]], nfes: Sequence[int] = NFES, key: str | None = None) -> str:
    """Markdown table of RMSE rows (or of ``row[key][nfe]``, e.g. ``key="fd"``); best per NFE in bold."""
    from .evaluation import format_table

    if key is not None:
        rows = [{"label": r["label"], **{n: r.get(key, {}).get(n) for n in nfes}} for r in rows]
    return format_table(rows, nfes)


# ------------------------------------------------------------------------------------------ Fig. 5


class _FixedR:
    """A step predictor with a fixed r (c = a = 1), for grid searches."""

    uses_features = False

    def __init__(self, r: float) -> None:
        self.r = torch.tensor(float(r), dtype=torch.float64)

    def __call__(self, i: int, t_cur: torch.Tensor, t_next: torch.Tensor, features: Any, batch: int):
        one = torch.ones(batch, dtype=torch.float64)
        return self.r * one, one, one


def _form(name: str) -> tuple[str, Callable[[Any], Any]]:
    """(label, predictor -> solver) for ``amed`` (AMED-Solver form: DPM-Solver-2 with r free) or a plugin base."""
    if name == "amed":
        return "AMED-Solver / DPM-Solver-2", lambda p: AMEDSolver(predictor=p)
    orders = {"ipndm": 4, "ipndm_v": 4, "deis": 4, "dpmpp": 3, "unipc": 3}  # iPNDM(4), DPM-Solver++(3M), UniPC(3M)
    base = get_solver(name, **({"max_order": orders[name]} if name in orders else {}))
    return f"AMED-Plugin on {name}", lambda p: AMEDPlugin(base=base, predictor=p)


def alignment(
    denoiser: Callable, noise: torch.Tensor, nfe: int = 5, solvers: Sequence[str] = ("amed", "ipndm", "dpmpp"),
    grid: int = 49, afs: bool = True, schedule: str = "polynomial", M: int = 8,
) -> list[dict[str, Any]]:
    """Grid search of the intermediate time s_n = t_n^r t_{n+1}^(1-r) per step (the paper's Fig. 5): for each
    step of each two-evaluation form (AMED-Solver / DPM-Solver-2, or AMED-Plugin on a base solver), every r on a
    uniform grid in (0, 1) is tried from the same state, the one with the smallest RMSE to the teacher point at
    t_n is kept (greedy: later steps start from it), and compared with r = 0.5.

    Per step: ``r_opt`` (one r for the batch), ``rmse_opt`` / ``rmse_half`` and their ratio, the cosine between
    the step's increment and the teacher's (``cos_opt`` / ``cos_half``: how well the direction aligns), and the
    mean and std of the per-sample optimal r (how much a per-sample predictor could gain). Teacher: DEIS-4
    logrho with ``M`` steps per interval."""
    if not solvers:
        raise ValueError("solvers must name at least one form: 'amed' or a plugin base solver such as 'ipndm'")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    rs = torch.cat([torch.linspace(0, 1, grid + 2, dtype=torch.float64)[1:-1], torch.tensor([0.5], dtype=torch.float64)])
    rs = rs.unique()  # sorted, r = 0.5 exactly once
    h = int((rs == 0.5).nonzero()[0])
    out: list[dict[str, Any]] = []
    for name in solvers:
        label, make = _form(name)
        n = amed.student_steps_for_nfe(name, nfe, afs)
        sig = get_schedule(schedule, n)
        teach = run_teacher(denoiser, noise, sig, M, *REFERENCE_SOLVER, trajectory=True).trajectory
        x = noise * sig[0]
        state = make(_FixedR(0.5)).init(x, sig)
        with torch.inference_mode():
            for i in range(n - 1):
                target = teach[i + 1]
                errs, outs = [], []
                for r in rs:
                    ev = ModelCall(denoiser, afs=afs and i == 0)
                    ev.begin_step(i)
                    x_next, st = make(_FixedR(float(r))).step(ev, x, i, sig, state)
                    errs.append((x_next - target).flatten(1).pow(2).mean(1))  # (B,)
                    outs.append((x_next, st))
                e = torch.stack(errs)  # (G, B)
                k = int(e.mean(1).argmin())
                per_sample = rs[e.argmin(0)]
                inc_t = (target - x).flatten(1)

                def cos(xn: torch.Tensor) -> float:
                    return float(torch.nn.functional.cosine_similarity((xn - x).flatten(1), inc_t, dim=1).mean())

                out.append({
                    "solver": label, "nfe": nfe, "step": i, "sigma_cur": float(sig[i]), "sigma_next": float(sig[i + 1]),
                    "r_opt": float(rs[k]), "rmse_opt": float(e[k].mean().sqrt()), "rmse_half": float(e[h].mean().sqrt()),
                    "ratio": float(e[h].mean().sqrt() / e[k].mean().sqrt()),
                    "cos_opt": cos(outs[k][0]), "cos_half": cos(outs[h][0]),
                    "r_sample_mean": float(per_sample.mean()), "r_sample_std": float(per_sample.std()),
                })
                x, state = outs[k]
    return out


def _form_with_dpm2(name: str) -> tuple[str, Callable[[Any], Any]]:
    """:func:`_form` plus ``dpm2``: DPM-Solver-2 in its generalised form with r free (the paper's Tab. 1 row,
    ``AMEDPlugin`` on ``dpm2``), x_n = x + (t_n - t_{n+1}) [(1/2r) d(x_s) + (1 - 1/2r) d(x)]."""
    if name == "dpm2":
        base = get_solver("dpm2")
        return "DPM-Solver-2 generalised (r free)", lambda p: AMEDPlugin(base=base, predictor=p)
    label, make = _form(name)
    return ("AMED-Solver (c = 1)" if name == "amed" else label), make


PAPER_FIG5_FORMS = ("amed", "dpm2", "ipndm", "dpmpp", "unipc")


def relative_alignment(
    denoiser: Callable, noise: torch.Tensor, solvers: Sequence[str] = PAPER_FIG5_FORMS, points: int = 6,
    grid: int = 49, gt_nfe: int = 80, schedule: str = "polynomial", afs: bool = False,
) -> list[dict[str, Any]]:
    """The paper's own Fig. 5 protocol (Sec. 3.3): the time schedule Gamma = {t_1 = 0.002, ..., t_N = 80} with
    N = ``points`` (polynomial rho = 7 by default), c_n = 1, and

    * ground truth x^G_{t_n}: Heun (EDM) with ``gt_nfe`` evaluations (2 per step, on Gamma with points inserted
      log-uniformly per interval), read at Gamma;
    * baseline x^B: the solver's own trajectory with every intermediate time s_n = sqrt(t_n t_{n+1}) (r = 0.5);
    * searched x^S: a greedy grid search on r_n, s_n = t_n^r t_{n+1}^(1-r): per step, from the searched state, the
      r on a uniform grid of ``grid`` values in (0, 1) (plus 0.5) with the smallest mean ||x^S_{t_n} - x^G_{t_n}||_2
      is kept, and the next step starts from it;
    * relative alignment per step: mean over samples of ||x^B_{t_n} - x^G_{t_n}||_2 minus the same for x^S
      (positive: the searched trajectory is closer to the ground truth).

    Forms (``solvers``): ``amed`` = AMED-Solver with c = 1 (one evaluation at s_n, its direction alone),
    ``dpm2`` = DPM-Solver-2 with r free (generalised, Tab. 1), or a multistep base with the AMED-Plugin's
    intermediate point (``ipndm``, ``dpmpp``, ``unipc``, ...). ``amed`` and ``dpm2`` share the baseline (both are
    DPM-Solver-2 at r = 0.5). No AFS unless ``afs``. One dict per step (``step`` 0 = the step from T = 80):
    ``l2_base``, ``l2_searched``, ``rel_align`` (their difference), ``rel_align_frac`` (its fraction of
    ``l2_base``), ``r_opt``, and the RMSE of both (``rmse_base``, ``rmse_searched``: L2 / sqrt(dimension))."""
    if not solvers:
        raise ValueError("solvers must name at least one form: amed, dpm2 or a plugin base solver such as ipndm")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2 (the schedule's N), got {points!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    steps = points - 1
    if isinstance(gt_nfe, bool) or not isinstance(gt_nfe, int) or gt_nfe % (2 * steps) or gt_nfe < 2 * steps:
        raise ValueError(f"gt_nfe must be a positive multiple of 2 * (points - 1) = {2 * steps} (Heun: 2 "
                         f"evaluations per step, the same number of steps per interval), got {gt_nfe!r}")
    forms = [(name, *_form_with_dpm2(name)) for name in solvers]  # unknown names fail before any sampling
    rs = torch.cat([torch.linspace(0, 1, grid + 2, dtype=torch.float64)[1:-1],
                    torch.tensor([0.5], dtype=torch.float64)]).unique()
    sig = get_schedule(schedule, points)
    gt = run_teacher(denoiser, noise, sig, gt_nfe // (2 * steps) - 1, "heun", trajectory=True)
    dim = noise[0].numel()

    def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).flatten(1).norm(dim=1)  # (B,)

    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        for name, label, make in forms:
            def run(r: float, i: int, x: torch.Tensor, st: Any, make=make) -> tuple[torch.Tensor, Any]:
                ev = ModelCall(denoiser, afs=afs and i == 0)
                ev.begin_step(i)
                return make(_FixedR(r)).step(ev, x, i, sig, st)

            xb = xs = noise * sig[0]
            sb = ss = make(_FixedR(0.5)).init(xb, sig)
            for i in range(steps):
                target = gt.trajectory[i + 1]
                xb, sb = run(0.5, i, xb, sb)
                cands = [run(float(r), i, xs, ss) for r in rs]
                errs = torch.stack([l2(c[0], target) for c in cands])  # (G, B)
                k = int(errs.mean(1).argmin())
                xs, ss = cands[k]
                eb, es = float(l2(xb, target).mean()), float(errs[k].mean())
                out.append({
                    "solver": label, "form": name, "points": points, "step": i, "sigma_cur": float(sig[i]),
                    "sigma_next": float(sig[i + 1]), "r_opt": float(rs[k]), "l2_base": eb, "l2_searched": es,
                    "rel_align": eb - es, "rel_align_frac": (eb - es) / eb if eb > 0 else 0.0,
                    "rmse_base": eb / math.sqrt(dim), "rmse_searched": es / math.sqrt(dim), "gt_nfe": gt.nfe,
                })
    return out


# ------------------------------------------------------------------------------------------ reports

TITLES = {
    "table2": "Table 2: solvers x NFE",
    "table4": "Table 4: AMED trained with different teacher solvers",
    "table5": "Table 5: DPM-Solver++(3M) on different time schedules, without and with AMED-Plugin",
}

UNITS = ("Ours: RMSE to the exact ODE solution on the Gaussian-mixture bed (lower is better); paper: FID of 50k "
         "samples of a trained network (lower is better). The values are not comparable, only their patterns: which "
         "method wins, ranking, and ratios between methods at the same NFE.")


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
    rows = _int_keys(result["rows"])
    nfes = list(nfes)
    if which == "table4":
        teacher_desc = "as in each row with M={M} steps per interval unless the row names another M"
    else:
        teacher_desc = "DEIS-4 logrho with M={M} steps per interval"
    afs = result.get("afs", True)
    sched = result.get("schedules", "polynomial")
    lines = [
        f"# {TITLES[which]} (AMED paper, Zhou et al., CVPR 2024) on our bed", "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line or machine()}; total {seconds:.0f} s  ",
        f"Bed: {info['description']}; {info['seeds']} held-out seeds (0..{info['seeds'] - 1}); reference: "
        f"DEIS-4 logrho with {info['ref_steps']} polynomial steps (relative change vs half the steps "
        f"{info['ref_error']:.1e}).  ",
        f"AMED: predictor-free table (features none, r/c/a per step), trained per NFE by `fewstep.amed.train` with "
        f"final-point loss, batch {settings.get('batch', 64)}, {settings['total_samples']} training samples, teacher "
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
                  format_rows(_int_keys(result["teacher_rows"]), nfes)]
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


def _int_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as saved in JSON (NFE keys as strings) -> NFE keys as ints (rows computed here pass unchanged)."""
    out = []
    for r in rows:
        r2 = {(int(k) if isinstance(k, str) and k.isdigit() else k): v for k, v in r.items()}
        for sub in ("tables", "train_s", "fd", "teacher_nfe"):
            if isinstance(r2.get(sub), dict):
                r2[sub] = {(int(k) if isinstance(k, str) and k.isdigit() else k): v for k, v in r2[sub].items()}
        out.append(r2)
    return out


# ------------------------------------------------------------------------------------------ beside the paper


def _key(row: dict[str, Any]) -> str:
    """Our row's key in the paper tables: the solver name, ``amed`` or ``amed_plugin:<base>``."""
    return row["solver"]


def _teacher_of(row: dict[str, Any]) -> tuple[str, str, int]:
    """(student, teacher solver, M) of a Table 4 row (older JSON: from the label)."""
    if "teacher" in row:
        return row.get("student", "amed"), row["teacher"], row["M"]
    label = row["label"]
    for lab, name, _, m in TEACHERS:
        if label.startswith(lab.split(",")[0]):
            mm = m if m is not None else int(label.rsplit("M=", 1)[1].split()[0].rstrip(")"))
            return "amed", name, mm
    raise ValueError(f"unknown Table 4 row {label!r}")


def _schedule_of(row: dict[str, Any]) -> str:
    if "schedule" in row:
        return row["schedule"]
    for lab, kind, _ in SCHEDULES:
        if row["label"].endswith(lab):
            return kind
    raise ValueError(f"unknown Table 5 row {row['label']!r}")


def _cell(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _side_by_side(pairs: list[tuple[str, dict[int, float | None], tuple[float, ...]]], nfes: Sequence[int],
                  paper_nfes: Sequence[int] = NFES) -> str:
    """Rows (name, ours by NFE, paper's values) -> Markdown with "ours / paper" per cell."""
    lines = ["| method | " + " | ".join(f"NFE {n}: ours / paper" for n in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]
    for name, ours, theirs in pairs:
        cells = []
        for n in nfes:
            p = theirs[paper_nfes.index(n)] if n in paper_nfes else None
            cells.append(f"{_cell(ours.get(n))} / {'—' if p is None else f'{p:g}'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kendall(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a of two equally long sequences (ties count as neither concordant nor discordant)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(math.copysign(1, (a[i] - a[j]) * (b[i] - b[j]))) if (a[i] - a[j]) * (b[i] - b[j]) else 0
    return 2 * s / (n * (n - 1)) if n > 1 else math.nan


def _verdict(oks: list[bool | None], nfes: Sequence[int]) -> str:
    got = [(n, ok) for n, ok in zip(nfes, oks) if ok is not None]
    if not got:
        return "—"
    bad = [str(n) for n, ok in got if not ok]
    if not bad:
        return f"**agree** ({len(got)}/{len(got)})"
    if len(bad) == len(got):
        return f"**disagree** (0/{len(got)})"
    return f"**partly**: disagrees at NFE {', '.join(bad)} ({len(got) - len(bad)}/{len(got)})"


def _patterns(ours: dict[str, dict[int, float | None]], paper: dict[str, tuple[float, ...]], names: dict[str, str],
              nfes: Sequence[int], pairs: Sequence[tuple[str, str]], best_among: Sequence[str] | None = None,
              claims: Sequence[tuple[str, Callable[[dict[str, float], int], bool | None], str]] = ()) -> str:
    """The pattern table: best method, ranking (Kendall tau) and ratios A/B per NFE, ours vs the paper's, with a
    verdict. ``ours`` / ``paper``: key -> values by NFE; ``claims``: (text, test(values by key, nfe) -> holds?,
    paper's value text) checked on ours only."""
    keys = [k for k in (best_among or list(paper)) if k in ours and k in paper]

    def at(src: dict, k: str, n: int) -> float | None:
        v = src[k]
        return v.get(n) if isinstance(v, dict) else (v[NFES.index(n)] if n in NFES else None)

    head = ["| pattern | " + " | ".join(f"NFE {n}" for n in nfes) + " | verdict |",
            "|---|" + "---|" * len(nfes) + "---|"]
    out = []
    if len(keys) >= 2:
        cells, oks = [], []
        for n in nfes:
            o = {k: at(ours, k, n) for k in keys if at(ours, k, n) is not None}
            p = {k: at(paper, k, n) for k in keys if at(paper, k, n) is not None}
            if not o or not p:
                cells.append("—"), oks.append(None)
                continue
            bo, bp = min(o, key=o.get), min(p, key=p.get)
            oks.append(bo == bp)
            cells.append(f"ours {names[bo]} · paper {names[bp]}")
        out.append(f"| best of {len(keys)} | " + " | ".join(cells) + f" | {_verdict(oks, nfes)} |")
    if len(keys) >= 3:
        cells, oks = [], []
        for n in nfes:
            common = [k for k in keys if at(ours, k, n) is not None and at(paper, k, n) is not None]
            if len(common) < 3:
                cells.append("—"), oks.append(None)
                continue
            tau = _kendall([at(ours, k, n) for k in common], [at(paper, k, n) for k in common])
            oks.append(tau >= 0.5)
            cells.append(f"tau {tau:+.2f}")
        out.append("| ranking: Kendall tau ours vs paper (agree: tau >= 0.5) | " + " | ".join(cells)
                   + f" | {_verdict(oks, nfes)} |")
    for a, b in pairs:
        if not all(k in ours and k in paper for k in (a, b)):
            continue
        cells, oks = [], []
        for n in nfes:
            oa, ob, pa, pb = at(ours, a, n), at(ours, b, n), at(paper, a, n), at(paper, b, n)
            if None in (oa, ob, pa, pb):
                cells.append("—"), oks.append(None)
                continue
            ro, rp = oa / ob, pa / pb
            oks.append((ro < 1) == (rp < 1))
            cells.append(f"ours {ro:.2f} · paper {rp:.2f}")
        out.append(f"| {names[a]} / {names[b]} (< 1: {names[a]} better) | " + " | ".join(cells)
                   + f" | {_verdict(oks, nfes)} |")
    for text, test, paper_text in claims:
        cells, oks = [], []
        for n in nfes:
            vals = {k: at(ours, k, n) for k in ours}
            ok = test(vals, n)
            oks.append(ok)
            cells.append("—" if ok is None else ("holds" if ok else "fails"))
        out.append(f"| {text} (paper: {paper_text}) | " + " | ".join(cells) + f" | {_verdict(oks, nfes)} |")
    return "\n".join(head + out)


TABLE2_PAIRS = (("amed", "dpm2"), ("amed_plugin:ipndm", "ipndm"), ("amed_plugin:dpm2", "dpm2"), ("amed", "ipndm"),
                ("amed", "euler"), ("dpm2", "euler"), ("heun", "euler"), ("ipndm", "dpmpp"), ("unipc", "dpmpp"))


def compare(which: str, result: dict[str, Any], nfes: Sequence[int] = NFES) -> list[tuple[str, str, str]]:
    """Our table beside the paper's: [(title, side-by-side Markdown "ours / paper" per cell, pattern Markdown with
    a verdict per pattern)] for each of the paper's (sub-)tables that our result has rows for."""
    rows = _int_keys(result["rows"])
    nfes = [n for n in nfes if n in NFES] or list(NFES)
    out = []
    if which == "table2":
        ours = {_key(r): r for r in rows}
        for sub in PAPER_TABLE2.values():
            prow = [(n, k, v) for n, k, v in sub["rows"] if k in ours]
            if len(prow) < 2:
                continue
            names = {k: n for n, k, _ in sub["rows"]}
            side = _side_by_side([(f"{n} (ours: {ours[k]['label']})" if ours[k]["label"] != n else n,
                                   ours[k], v) for n, k, v in prow], nfes)
            pat = _patterns({k: ours[k] for _, k, _ in prow}, {k: v for _, k, v in prow}, names, nfes,
                            TABLE2_PAIRS)
            out.append((f"Paper Table {sub['title']}", side, pat))
    elif which == "table4":
        by: dict[tuple[str, int], dict[str, dict]] = {}
        trows = {r["label"]: r for r in _int_keys(result.get("teacher_rows", []))}
        for r in rows:
            student, teacher, m = _teacher_of(r)
            by.setdefault((student, m), {})[teacher] = r
        for (student, m), teach in by.items():
            if student not in PAPER_TABLE4:
                continue
            prow = [(n, k, v) for n, k, v in PAPER_TABLE4[student] if k in teach]
            if len(prow) < 2:
                continue
            names = {k: n for n, k, _ in PAPER_TABLE4[student]}
            resemble = {"amed": ("dpm2", "heun"), "ipndm": ("ipndm",)}[student]
            acc = {k: trows.get(teach[k]["label"], {}) for _, k, _ in prow}

            def resembles(vals: dict[str, float], n: int, resemble=resemble, keys=tuple(k for _, k, _ in prow)) -> bool | None:
                v = {k: vals[k] for k in keys if vals.get(k) is not None}
                return min(v, key=v.get) in resemble if v else None

            def accurate(vals: dict[str, float], n: int, acc=acc, keys=tuple(k for _, k, _ in prow)) -> bool | None:
                v = {k: vals[k] for k in keys if vals.get(k) is not None and acc[k].get(n) is not None}
                if len(v) < 2:
                    return None
                return min(v, key=v.get) == min(v, key=lambda k: acc[k][n])

            def spread(vals: dict[str, float], n: int, keys=tuple(k for _, k, _ in prow)) -> float | None:
                v = [vals[k] for k in keys if vals.get(k) is not None]
                return max(v) / min(v) if len(v) >= 2 else None

            paper_spread = [max(v[i] for _, _, v in prow) / min(v[i] for _, _, v in prow) for i in range(len(NFES))]
            claims = [("teacher matters: worst / best student > 1.10 (ours " + ", ".join(
                          "—" if spread({k: teach[k].get(n) for k in teach}, n) is None
                          else f"{spread({k: teach[k].get(n) for k in teach}, n):.3f}" for n in nfes) + ")",
                       lambda vals, n, spread=spread: None if spread(vals, n) is None else spread(vals, n) > 1.10,
                       "worst / best " + ", ".join(f"{x:.2f}" for x in paper_spread)),
                      (f"best teacher resembles the student ({' or '.join(names[k] for k in resemble)})", resembles,
                       "holds at every NFE"),
                      ("best student comes from the most accurate teacher (own RMSE, table above)", accurate,
                       "not measured")]
            side = _side_by_side([(f"{n}, M={m}", teach[k], v) for n, k, v in prow], nfes)
            pat = _patterns({k: teach[k] for _, k, _ in prow}, {k: v for _, k, v in prow}, names, nfes, (),
                            claims=claims)
            title = "AMED-Solver" if student == "amed" else STUDENTS[student][0]
            out.append((f"Paper Table 4, {title} (CIFAR-10; ours with every teacher at M={m})", side, pat))
    elif which == "table5":
        for solver, prows in PAPER_TABLE5.items():
            ours = {_schedule_of(r): r for r in rows if r["solver"] == solver}
            prow = [(n, k, v) for n, k, v in prows if k in ours]
            if len(prow) < 2:
                continue
            names = {k: n for n, k, _ in prows}
            title = "DPM-Solver++(3M)" if solver == "dpmpp" else "AMED-Plugin on DPM-Solver++(3M)"
            side = _side_by_side([(f"{title}, {n}", ours[k], v) for n, k, v in prow], nfes)
            pat = _patterns({k: ours[k] for _, k, _ in prow}, {k: v for _, k, v in prow}, names, nfes,
                            (("logsnr", "polynomial"), ("time_uniform", "polynomial"), ("logsnr", "time_uniform")))
            out.append((f"Paper Table 5, {title}: best schedule (CIFAR-10)", side, pat))
        base = {_schedule_of(r): r for r in rows if r["solver"] == "dpmpp"}
        plug = {_schedule_of(r): r for r in rows if r["solver"] == "amed_plugin:dpmpp"}
        pb, pp = {k: v for _, k, v in PAPER_TABLE5["dpmpp"]}, {k: v for _, k, v in PAPER_TABLE5["amed_plugin:dpmpp"]}
        kinds = [k for k in ("time_uniform", "polynomial", "logsnr") if k in base and k in plug]
        if kinds:
            ours2 = {f"p:{k}": plug[k] for k in kinds} | {f"b:{k}": base[k] for k in kinds}
            paper2 = {f"p:{k}": pp[k] for k in kinds} | {f"b:{k}": pb[k] for k in kinds}
            sn = {k: n for n, k, _ in PAPER_TABLE5["dpmpp"]}
            names = {f"p:{k}": f"plugin {sn[k]}" for k in kinds} | {f"b:{k}": f"DPM-Solver++(3M) {sn[k]}" for k in kinds}
            side = "(values as in the two tables above)"
            pat = _patterns(ours2, paper2, names, nfes, [(f"p:{k}", f"b:{k}") for k in kinds],
                            best_among=list(ours2))
            out.append(("Paper Table 5: AMED-Plugin vs its base on each schedule", side, pat))
    return out


def bed_info(bed: Bed | dict[str, Any]) -> dict[str, Any]:
    """What a report says about the bed (description, seeds, reference steps and error), JSON-ready."""
    if isinstance(bed, dict):
        return bed
    return {"description": bed.description, "seeds": bed.info["seeds"], "ref_steps": bed.info["ref_steps"],
            "ref_error": bed.ref_error}


def json_safe(obj: Any) -> Any:
    """Rows with int keys -> JSON-serialisable (keys as strings)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def run_table(which: str, bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, M: int = 8,
              plugin_base: str = "auto,dpm2", progress: bool = False, teachers: str = "default",
              students: Sequence[str] = ("amed",), **table2_options: Any) -> tuple[dict[str, Any], float]:
    """(result, seconds) of ``table2`` / ``table4`` / ``table5``; for table4 ``teachers`` is ``"default"``
    (:data:`TEACHERS`) or ``"paper"`` (:data:`PAPER_TEACHERS`, all at ``M``). ``table2_options``: :func:`table2`'s
    ``rows_only``, ``batch``, ``afs``, ``schedules``."""
    t0 = time.perf_counter()
    if which != "table2" and any(v not in (None, 64, True, "polynomial") for v in table2_options.values()):
        raise ValueError(f"{', '.join(table2_options)} apply to table2 only")
    if which == "table2":
        res = table2(bed, nfes, total_samples, plugin_base, M, progress, **table2_options)
    elif which == "table4":
        if teachers not in ("default", "paper"):
            raise ValueError(f"teachers must be default or paper, got {teachers!r}")
        res = table4(bed, nfes, total_samples, M, TEACHERS if teachers == "default" else PAPER_TEACHERS,
                     progress=progress, students=students)
        res["teacher_set"] = teachers
    elif which == "table5":
        res = table5(bed, nfes, total_samples, M, progress=progress)
    else:
        raise ValueError(f"which must be one of {', '.join(TITLES)}, got {which!r}")
    return res, time.perf_counter() - t0
