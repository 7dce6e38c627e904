"""Solver comparison on a model with a known (or high-accuracy) ODE solution: RMSE tables at fixed NFE."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .sampling import solve, steps_for_nfe
from .schedules import get_schedule
from .teacher import REFERENCE_SOLVER, run_teacher, teacher_options

__all__ = ["SolverSpec", "BASELINES", "REFERENCE_SOLVER", "teacher_options", "reference_solution", "rmse", "solver_table", "format_table", "trajectory_error"]


@dataclass(frozen=True)
class SolverSpec:
    """A row of a comparison table: display label, solver name, options, AFS."""

    label: str
    solver: str
    options: dict[str, Any] = field(default_factory=dict)
    afs: bool = False


BASELINES: tuple[SolverSpec, ...] = (
    SolverSpec("Euler (DDIM)", "euler"),
    SolverSpec("Heun", "heun", afs=True),
    SolverSpec("DPM-Solver-2", "dpm2", afs=True),
    SolverSpec("DPM-Solver++(2M)", "dpmpp", {"max_order": 2}),
    SolverSpec("DPM-Solver++(3M)", "dpmpp", {"max_order": 3}),
    SolverSpec("DPM-Solver++(3M) taylor", "dpmpp", {"max_order": 3, "solver_type": "taylor"}),
    SolverSpec("UniPC(2M) bh2", "unipc", {"max_order": 2}),
    SolverSpec("UniPC(3M) bh2", "unipc", {"max_order": 3}),
    SolverSpec("iPNDM", "ipndm", {"max_order": 4}),
    SolverSpec("iPNDM", "ipndm", {"max_order": 4}, afs=True),
    SolverSpec("iPNDM-v", "ipndm_v", {"max_order": 4}, afs=True),
    SolverSpec("DEIS tAB2", "deis", {"max_order": 3}),  # DEIS tABk extrapolates with k + 1 points
)


def reference_solution(
    denoiser: Callable, noise: torch.Tensor, sigma_max: float = 80.0, sigma_min: float = 0.002, steps: int = 1000,
    check: bool = True, progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """High-accuracy ODE solution at sigma_min (DEIS-logrho order 4, ``steps`` polynomial steps) and its
    estimated relative error (difference to a run with half the steps, if ``check``)."""
    def run(n: int) -> torch.Tensor:
        sig = get_schedule("polynomial", n, sigma_min, sigma_max)
        return solve(denoiser, noise, sig, REFERENCE_SOLVER[0], progress=progress, **REFERENCE_SOLVER[1]).x

    ref = run(steps + 1)
    err = float((run(steps // 2 + 1) - ref).norm() / ref.norm()) if check else math.nan
    return ref, err


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root-mean-square error over all elements."""
    return float(((x.double() - ref.double()) ** 2).mean().sqrt())


def solver_table(
    denoiser: Callable,
    noise: torch.Tensor,
    ref: torch.Tensor,
    nfes: Sequence[int] = (3, 5, 7, 9),
    specs: Sequence[SolverSpec] = BASELINES,
    schedule: str = "polynomial",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    progress: bool = False,
    on_sample: Callable[[dict[str, Any], int, torch.Tensor], None] | None = None,
    rho: float = 7.0,
) -> list[dict[str, Any]]:
    """RMSE to ``ref`` for every spec at every NFE (None where the NFE is not reachable) on the ``schedule``
    (with ``rho`` for polynomial / time_uniform).
    ``on_sample(row, nfe, x)`` sees every sample set (e.g. to add metrics to the row or save images)."""
    rows = []
    for spec in tqdm(specs, desc="solvers", disable=not progress, leave=False):
        row: dict[str, Any] = {"label": spec.label + (" +AFS" if spec.afs else ""), "solver": spec.solver,
                               "options": dict(spec.options), "afs": spec.afs}
        for nfe in nfes:
            try:
                n = steps_for_nfe(spec.solver, nfe, spec.afs, **spec.options)
            except ValueError:
                row[nfe] = None
                continue
            sig = get_schedule(schedule, n, sigma_min, sigma_max, rho)
            res = solve(denoiser, noise, sig, spec.solver, afs=spec.afs, **spec.options)
            assert res.nfe == nfe
            row[nfe] = rmse(res.x, ref)
            if on_sample is not None:
                on_sample(row, nfe, res.x)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], nfes: Sequence[int] = (3, 5, 7, 9)) -> str:
    """Markdown table of :func:`solver_table` rows; the best entry per NFE in bold."""
    best = {n: min((r[n] for r in rows if r.get(n) is not None), default=None) for n in nfes}
    lines = ["| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]
    for r in rows:
        cells = []
        for n in nfes:
            v = r.get(n)
            cells.append("—" if v is None else (f"**{v:.4f}**" if v == best[n] else f"{v:.4f}"))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trajectory_error(
    denoiser: Callable,
    noise: torch.Tensor,
    sigmas: torch.Tensor | None,
    solver: str = "euler",
    *,
    afs: bool = False,
    teacher_steps: int = 16,
    predictor: Any = None,
    **options: Any,
) -> dict[str, list[float]]:
    """Per-step error of a solver against a teacher on the same sigmas: RMSE and mean per-sample L2 at every
    sigma of the schedule. The teacher is DEIS-logrho order 4 with ``teacher_steps`` log-uniform steps inserted
    per interval (its own accuracy is reported as ``teacher_change``: the difference to half as many steps).
    With a learned sampler as ``predictor``, its own schedule, solver and AFS are used (give ``sigmas=None``)."""
    if predictor is not None:
        res = solve(denoiser, noise, sigmas, predictor=predictor, trajectory=True)
    else:
        res = solve(denoiser, noise, sigmas, solver, afs=afs, trajectory=True, **options)

    def teacher(m: int) -> torch.Tensor:
        return run_teacher(denoiser, noise, res.sigmas, m, *REFERENCE_SOLVER, trajectory=True).trajectory

    ref, coarse = teacher(teacher_steps), teacher(teacher_steps // 2)
    out: dict[str, list[float]] = {"sigma": [float(s) for s in res.sigmas], "rmse": [], "l2": [], "teacher_change": []}
    for x, y, z in zip(res.trajectory, ref, coarse):
        out["rmse"].append(rmse(x, y))
        out["l2"].append(float((x - y).flatten(1).norm(dim=1).mean()))
        out["teacher_change"].append(rmse(z, y))
    out["nfe"] = [res.nfe]
    return out
