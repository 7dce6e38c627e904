"""The table runners: Table 2 (solvers x NFE), Table 4 (teacher solvers) and Table 5 (time schedules with and
without AMED-Plugin) on a :class:`~fewstep.experiments.bed.Bed`, their rows and settings, and AMED trained per NFE
(:func:`amed_row`)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Sequence

from ... import learned
from ...evaluation import SolverSpec, rmse, solver_table
from ...sampling import solve, steps_for_nfe
from ...seeds import check_held_out
from ...schedules import get_schedule, refine_schedule
from ..bed import Bed
from .reference import NFES, TITLES

__all__ = ["TABLE2_BASELINES", "TEACHERS", "PAPER_TEACHERS", "STUDENTS", "SCHEDULES", "TABLE2_ROWS", "amed_row",
           "student_method", "student_steps", "table2", "paper_schedule", "table4", "table5", "run_table"]

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


def student_method(student: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any] | None]:
    """(learned method, base) of a table's AMED student: ``"amed"`` is the AMED-Solver (method ``amed``), any other
    name the AMED-Plugin (method ``plugin``) on that base solver with ``options``."""
    if student == "amed":
        return "amed", None
    return "plugin", {"solver": student, "options": dict(options or {})}


def student_steps(student: str, nfe: int, afs: bool = True, options: dict[str, Any] | None = None) -> int:
    """Sigmas at which ``student`` (see :func:`student_method`) makes exactly ``nfe`` model evaluations, or a
    ValueError (an unreachable NFE, or a base the plugin does not take)."""
    method, base = student_method(student, options)
    return steps_for_nfe(learned.METHODS[method].probe_solver(None, base, afs), nfe, afs)


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
    method, base = student_method(student, opts)
    if bed.seeds:  # evaluation seeds must be held out from every training sample
        check_held_out(bed.seeds, seed, total_samples, what="the bed's seeds", source=label)
    for nfe in nfes:
        try:
            n = student_steps(student, nfe, afs, opts)
        except ValueError:
            row[nfe] = None
            continue
        # The bed's reference and baselines run from 80 to 0.002 whatever range the model states: so does AMED.
        pred = learned.train(
            method, bed.denoiser, shape=bed.shape, num_steps=n, afs=afs, base=base, options={"features": "none"},
            schedule=learned.ScheduleSpec(kind=schedule, sigma_min=0.002, sigma_max=80.0, rho=rho),
            teacher=learned.Teacher(teacher, teacher_options, M=M),
            budget=learned.Budget(batch=batch, total_samples=total_samples, seed=seed),
            model_id=bed.model_id, dtype=bed.dtype, progress=progress,
        )
        res = solve(bed.denoiser, bed.noise, predictor=pred)
        assert res.nfe == nfe, (res.nfe, nfe)
        row[nfe] = rmse(res.x, bed.ref)
        row["train_s"][nfe] = round(pred.log.seconds, 1)
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
    bases = ([b.strip() for b in str(plugin_base).split(",") if b.strip()] or ["auto"]) if "plugin" in keep else []
    specs = [s if afs or not s.afs else replace(s, afs=False) for s in TABLE2_BASELINES
             if s.solver in keep]
    rows = []
    for spec in specs:
        kind, rho = paper_schedule(spec.solver) if schedules == "paper" else ("polynomial", 7.0)
        rows += [r | {"schedule": kind} for r in _baselines(bed, [spec], nfes, kind, rho, progress=progress)]
    chosen = []
    for base in bases:
        if base == "auto":
            multistep = [r for r in rows if r["solver"] in ("dpmpp", "unipc", "ipndm")]
            if not multistep:
                raise ValueError("plugin_base auto picks the best of the dpmpp / unipc / ipndm rows: keep one of them "
                                 "in rows, or name the base")
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
                    n = student_steps(student, nfe, True, opts_s)
                except ValueError:
                    trow[nfe] = None
                    continue
                fine = refine_schedule(get_schedule("polynomial", n), m)
                res = solve(bed.denoiser, bed.noise, fine, name, **opts)
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
