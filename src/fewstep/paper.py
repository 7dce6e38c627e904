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
from .bed import Bed
from .evaluation import SolverSpec, rmse, solver_table
from .sampling import ModelCall, sample, steps_for_nfe
from .teacher import REFERENCE_SOLVER, run_teacher
from .schedules import get_schedule, refine_schedule
from .solvers import AMEDPlugin, AMEDSolver, get_solver

__all__ = [
    "Bed", "make_bed", "amed_row", "table2", "table4", "table5", "alignment", "PAPER_TABLE2_CIFAR10",
    "TABLE2_BASELINES", "TEACHERS", "SCHEDULES", "format_rows", "report", "run_table", "json_safe",
]

NFES = (3, 5, 7, 9)

# The paper's Table 2(a): FID on CIFAR-10 32x32 (EDM model), NFE 3/5/7/9; AMED-Plugin applied on iPNDM.
PAPER_TABLE2_CIFAR10: dict[str, tuple[float | None, ...]] = {
    "DPM-Solver++(3M)": (110.0, 24.97, 6.74, 3.42),
    "UniPC": (109.6, 23.98, 5.83, 3.21),
    "iPNDM": (47.98, 13.59, 5.08, 3.17),
    "DDIM": (93.36, 49.66, 27.93, 18.43),
    "EDM (Heun)": (306.2, 97.67, 37.28, 15.76),
    "DPM-Solver-2": (155.7, 57.30, 10.20, 4.98),
    "AMED-Solver": (18.49, 7.59, 4.36, 3.67),
    "AMED-Plugin (iPNDM)": (10.81, 6.61, 3.65, 2.63),
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

# Table 5's time schedules: (label, kind, rho).
SCHEDULES: tuple[tuple[str, str, float], ...] = (
    ("polynomial (rho=7)", "polynomial", 7.0),
    ("logSNR", "logsnr", 7.0),
    ("time-uniform (rho=1)", "time_uniform", 1.0),
)


def make_bed(denoiser: Callable, shape: Sequence[int], *, seeds: int = 1000, ref_steps: int = 256,
             model_id: str | None = None, dtype: torch.dtype = torch.float64, description: str = "",
             fd_reference: torch.Tensor | None = None) -> Bed:
    """:meth:`fewstep.bed.Bed.build` (kept for existing callers)."""
    return Bed.build(denoiser, shape, seeds=seeds, ref_steps=ref_steps, model_id=model_id, dtype=dtype,
                     description=description, fd_reference=fd_reference)


def amed_row(
    bed: Bed, label: str, student: str = "amed", *, student_options: dict[str, Any] | None = None,
    nfes: Sequence[int] = NFES, afs: bool = True, schedule: str = "polynomial", rho: float = 7.0,
    teacher: str = "deis", teacher_options: dict[str, Any] | None = None, M: int = 8, total_samples: int = 4096,
    seed: int = 0, progress: bool = False,
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
            features="none", total_samples=total_samples, seed=seed, model_id=bed.model_id, dtype=bed.dtype,
            progress=progress, log=log,
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


def table2(bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, plugin_base: str = "auto",
           M: int = 8, progress: bool = False) -> dict[str, Any]:
    """Table 2: baselines x NFE, AMED-Solver and AMED-Plugin (on the best multistep base, or ``plugin_base``),
    each AMED trained per NFE (teacher DEIS-4, ``M`` steps per interval)."""
    rows = _baselines(bed, TABLE2_BASELINES, nfes, progress=progress)
    multistep = [r for r in rows if r["solver"] in ("dpmpp", "unipc", "ipndm")]
    if plugin_base == "auto":
        best = min(multistep, key=lambda r: _score(r, nfes))
    else:
        best = next((r for r in rows if r["solver"] == plugin_base), None)
        if best is None:
            raise ValueError(f"plugin_base must be auto or one of {', '.join(r['solver'] for r in rows)}")
    rows.append(amed_row(bed, "AMED-Solver", "amed", nfes=nfes, total_samples=total_samples, M=M, progress=progress))
    rows.append(amed_row(bed, f"AMED-Plugin on {best['label']}", best["solver"], student_options=best["options"],
                         nfes=nfes, total_samples=total_samples, M=M, progress=progress))
    return {"rows": rows, "plugin_base": best["label"]}


def table4(bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, M: int = 8,
           teachers: Sequence[tuple[str, str, dict[str, Any], int | None]] = TEACHERS,
           progress: bool = False) -> dict[str, Any]:
    """Table 4: AMED-Solver trained per NFE with different teacher solvers (``M`` steps per interval unless the
    teacher names its own); ``teacher_rows`` give each teacher's own RMSE to the reference on the refined
    schedule it provides targets on."""
    rows, teacher_rows = [], []
    for label, name, opts, m in teachers:
        m = M if m is None else m
        label = label if "M=" in label else f"{label}, M={m}"
        rows.append(amed_row(bed, label, "amed", nfes=nfes, teacher=name, teacher_options=opts, M=m,
                             total_samples=total_samples, progress=progress))
        trow: dict[str, Any] = {"label": label}
        for nfe in nfes:
            n = steps_for_nfe("amed", nfe, True)
            fine = refine_schedule(get_schedule("polynomial", n), m)
            res = sample(bed.denoiser, bed.noise, fine, name, return_result=True, **opts)
            trow[nfe] = rmse(res.x, bed.ref)
            trow.setdefault("teacher_nfe", {})[nfe] = res.nfe
        teacher_rows.append(trow)
    return {"rows": rows, "teacher_rows": teacher_rows}


def table5(bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, M: int = 8,
           schedules: Sequence[tuple[str, str, float]] = SCHEDULES, progress: bool = False) -> dict[str, Any]:
    """Table 5: DPM-Solver++(3M) on each time schedule, without and with AMED-Plugin (trained per NFE on it)."""
    base = SolverSpec("DPM-Solver++(3M)", "dpmpp", {"max_order": 3})
    rows = []
    for label, kind, rho in schedules:
        (r,) = _baselines(bed, [replace(base, label=f"DPM-Solver++(3M), {label}")], nfes, kind, rho, progress)
        rows.append(r)
        rows.append(amed_row(bed, f"+ AMED-Plugin, {label}", "dpmpp", student_options={"max_order": 3}, nfes=nfes,
                             schedule=kind, rho=rho, M=M, total_samples=total_samples, progress=progress))
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


# ------------------------------------------------------------------------------------------ reports

TITLES = {
    "table2": "Table 2: solvers x NFE",
    "table4": "Table 4: AMED-Solver trained with different teacher solvers",
    "table5": "Table 5: DPM-Solver++(3M) on different time schedules, without and with AMED-Plugin",
}


def report(which: str, result: dict[str, Any], bed: Bed, nfes: Sequence[int], command: str,
           settings: dict[str, Any], seconds: float) -> str:
    """Markdown report of a paper table: command, machine, setup, RMSE table (and FD table), learned r/c/a,
    AMED training times, and (Table 2) the paper's CIFAR-10 FIDs for comparison."""
    import platform

    rows = result["rows"]
    lines = [
        f"# {TITLES[which]} (AMED paper, Zhou et al., CVPR 2024) on our bed", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); total {seconds:.0f} s  ",
        f"Bed: {bed.description}; {bed.info['seeds']} held-out seeds (0..{bed.info['seeds'] - 1}); reference: "
        f"DEIS-4 logrho with {bed.info['ref_steps']} polynomial steps (relative change vs half the steps "
        f"{bed.ref_error:.1e}).  ",
        f"AMED: predictor-free table (features none, r/c/a per step), trained per NFE by `fewstep.amed.train` with "
        f"final-point loss, batch 64, {settings['total_samples']} training samples, teacher "
        + ("as in each row with M={M} steps per interval unless the row names another M" if which == "table4" else
           "DEIS-4 logrho with M={M} steps per interval").format(M=settings["M"]) + ", AFS on, "
        "scale_dir 0.01.  ",
        "Cells: RMSE to the reference at sigma_min = 0.002 (lower is better; best per NFE in bold; — = NFE not "
        "reachable by the solver).", "",
        format_rows(rows, nfes),
    ]
    if which == "table2":
        lines += ["", f"AMED-Plugin base: {result['plugin_base']} (the multistep solver with the lowest mean log "
                      "RMSE over the NFEs above, unless `--plugin-base` is given). DPM-Solver-2 and Heun use AFS; "
                      "the multistep solvers do not (NFE = steps)."]
    if which == "table4":
        lines += ["", "Each teacher's own RMSE to the reference on the refined schedule it gives targets on "
                      "(student schedule with M points inserted per interval):", "",
                  format_rows(result["teacher_rows"], nfes)]
    if any("fd" in r for r in rows):
        lines += ["", "Fréchet distance in the fixed 64-D random feature space (fewstep.metrics.RandomFeatures) "
                      "to natural-image patches:", "", format_rows(rows, nfes, key="fd")]
    learned = [r for r in rows if r.get("tables")]
    if learned:
        lines += ["", "AMED training time (s) and learned (r, c, a) per step (largest sigma first):", ""]
        for r in learned:
            for n, tab in r["tables"].items():
                cells = ", ".join(f"({a:.3f}, {b:.4f}, {c:.2f})" for a, b, c in tab)
                lines.append(f"- {r['label']} @ NFE {n} ({r['train_s'][n]} s): {cells}")
    if which == "table2":
        lines += ["", "The paper's Table 2(a) for comparison (FID on CIFAR-10 32x32, EDM model; AMED-Plugin on "
                      "iPNDM):", "", "| method | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                  "|---|" + "---:|" * len(NFES)]
        for name, vals in PAPER_TABLE2_CIFAR10.items():
            lines.append(f"| {name} | " + " | ".join("—" if v is None else f"{v:g}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def json_safe(obj: Any) -> Any:
    """Rows with int keys -> JSON-serialisable (keys as strings)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def run_table(which: str, bed: Bed, nfes: Sequence[int] = NFES, total_samples: int = 4096, M: int = 8,
              plugin_base: str = "auto", progress: bool = False) -> tuple[dict[str, Any], float]:
    """(result, seconds) of ``table2`` / ``table4`` / ``table5``."""
    t0 = time.perf_counter()
    if which == "table2":
        res = table2(bed, nfes, total_samples, plugin_base, M, progress)
    elif which == "table4":
        res = table4(bed, nfes, total_samples, M, progress=progress)
    elif which == "table5":
        res = table5(bed, nfes, total_samples, M, progress=progress)
    else:
        raise ValueError(f"which must be one of {', '.join(TITLES)}, got {which!r}")
    return res, time.perf_counter() - t0
