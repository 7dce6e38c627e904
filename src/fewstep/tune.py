"""Measured choices on the user's model: the classic solver, its options and the schedule that come closest to an
accurate teacher at a given NFE, measured on held-out seeds of that model (``fewstep tune``).

:func:`tune` compares, in three stages, every solver configuration of :data:`SOLVER_GRID` with and without AFS on a
few schedules (polynomial rho 7, uniform log-SNR, uniform VP time and, for a discrete model, its own timesteps);
then the best few over a sweep of each schedule's rho; then the best three on a schedule searched for them (GITS,
:func:`fewstep.schedule_search.search_schedule`). The winner is a :class:`Recipe` (solver, options, AFS, sigmas,
model id, NFE), saved as a schedule file that ``fewstep sample --schedule``, ``fewstep train --tuned``, the
diffusers scheduler and :mod:`fewstep.k` read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .denoisers import sigma_range
from .recipe import Recipe, make_sigmas, model_timesteps, option_label
from .sampling import seeded_noise, solve, steps_for_nfe
from .schedules import get_schedule
from .seeds import report_seeds, tune_seeds
from .io import tensor_digest
from .teacher import REFERENCE_SOLVER, TeacherCache, model_key, provenance, run_teacher

__all__ = ["TuneResult", "tune", "report", "training_start", "SOLVER_GRID",
           "teacher_solution", "rmse_to", "TeacherErrors"]

# Classic solver configurations compared by tune (names and options as in fewstep.SOLVERS).
SOLVER_GRID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("euler", {}),
    ("heun", {}),
    ("dpm2", {}),
    ("dpmpp", {"max_order": 2}),
    ("dpmpp", {"max_order": 3}),
    ("dpmpp", {"max_order": 2, "lower_order_final": False}),
    ("dpmpp", {"max_order": 3, "lower_order_final": False}),
    ("unipc", {"max_order": 2}),
    ("unipc", {"max_order": 3}),
    ("unipc", {"max_order": 2, "variant": "bh1"}),
    ("unipc", {"max_order": 3, "variant": "bh1"}),
    ("unipc", {"max_order": 3, "lower_order_final": False}),
    ("ipndm", {"max_order": 2}),
    ("ipndm", {"max_order": 3}),
    ("ipndm", {"max_order": 4}),
    ("ipndm_v", {"max_order": 2}),
    ("ipndm_v", {"max_order": 3}),
    ("ipndm_v", {"max_order": 4}),
    ("deis", {"max_order": 3, "deis_mode": "tab"}),
    ("deis", {"max_order": 2, "deis_mode": "logrho"}),
    ("deis", {"max_order": 3, "deis_mode": "logrho"}),
)
FIRST_SCHEDULES = (("polynomial", 7.0), ("logsnr", 1.0), ("time_uniform", 1.0), ("discrete", 1.0))
RHO_SWEEP = {"polynomial": (1.0, 1.5, 2.0, 3.0, 5.0, 10.0), "discrete": (1.5, 2.0, 3.0), "time_uniform": (1.5, 2.0)}
GITS_GRID = 61  # points of the fine grid the searched schedule is picked from
KEEP_AFTER_FIRST = 6  # (solver, AFS) pairs carried to the rho sweep
KEEP_FOR_SEARCH = 3  # (solver, AFS) pairs given a searched (GITS) schedule
CONFIRM_TOP = 4  # the best configurations measured again on fresh seeds before one is chosen


def teacher_solution(denoiser: Callable, noise: torch.Tensor, lo: float, hi: float, steps: int = 256,
                     progress: bool = False, cache: TeacherCache | None = None) -> torch.Tensor:
    """The reference x at ``lo`` from x_T = noise * ``hi``: DEIS-logrho order 4 (:data:`fewstep.teacher.
    REFERENCE_SOLVER`) on ``steps`` polynomial (rho 7) sigmas; kept in ``cache`` (keyed by the model, the noise's
    digest and the sigmas) when the denoiser has a model id."""
    sig = get_schedule("polynomial", steps, lo, hi, 7.0)

    def compute() -> torch.Tensor:
        return solve(denoiser, noise, sig, REFERENCE_SOLVER[0], progress=progress, **REFERENCE_SOLVER[1]).x

    model = model_key(denoiser) if cache is not None else None
    if model is None:
        return compute()
    fields = {**provenance(), "kind": "reference", "model": model, "noise": tensor_digest({"noise": noise}),
              "shape": list(noise.shape), "dtype": str(noise.dtype), "sigmas": [float(v).hex() for v in sig.tolist()],
              "teacher": REFERENCE_SOLVER[0], "teacher_options": REFERENCE_SOLVER[1]}
    return cache.tensor(fields, compute)


def rmse_to(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root-mean-square difference per element (the unit of every table of fewstep)."""
    return float((x.double() - ref.double()).square().mean().sqrt())


@dataclass
class TuneResult:
    """What :func:`tune` measured: every configuration's row (label, solver, options, afs, schedule, rmse), the
    best :class:`Recipe`, the teacher's own error estimate and the seeds used."""

    best: Recipe
    rows: list[dict[str, Any]]
    teacher_error: float
    seeds: list[int]
    sigma_range: tuple[float, float]
    model_evaluations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self, top: int = 12) -> str:
        """The best ``top`` rows and the reference rows (Euler; iPNDM +AFS on polynomial rho 7) as text."""
        rows = sorted((r for r in self.rows if r["rmse"] is not None), key=lambda r: r["rmse"])
        show = rows[:top]
        for ref in rows[top:]:
            if ref["reference"]:
                show.append(ref)
        best = rows[0]["rmse"] if rows else float("nan")
        confirmed = any("rmse_pooled" in r for r in show)
        lines = [f"{'configuration':<58} {'RMSE':>9} {'/ best':>7}" + (f" {'all seeds':>10}" if confirmed else "")]
        for r in show:
            pooled = f" {r['rmse_pooled']:>10.4g}" if "rmse_pooled" in r else (" " * 11 if confirmed else "")
            win = "  <- chosen" if r["sigmas"] == list(self.best.sigmas) and r["solver"] == self.best.solver and \
                r["options"] == self.best.options and r["afs"] == self.best.afs else ""
            lines.append(f"{r['label'][:58]:<58} {r['rmse']:>9.4g} {r['rmse'] / best:>7.2f}{pooled}{win}")
        if confirmed:
            lines.append(f"(RMSE on the {len(self.seeds)} tuning seeds; the best {CONFIRM_TOP} measured again on "
                         f"{len(self.extra['confirm_seeds'])} more, 'all seeds' pooling both; the best there is chosen)")
        return "\n".join(lines)


def _schedule_label(kind: str, rho: float) -> str:
    return "logsnr" if kind == "logsnr" else f"{kind} rho={rho:g}"


def tune(
    denoiser: Callable,
    shape: Sequence[int],
    nfe: int,
    *,
    seeds: Iterable[int] | int = 32,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    teacher_steps: int = 64,
    search: bool = True,
    solvers: Sequence[tuple[str, dict[str, Any]]] = SOLVER_GRID,
    dtype: torch.dtype = torch.float32,
    model_id: str | None = None,
    guidance: float | None = None,
    progress: bool = True,
    cache: TeacherCache | None = None,
    confirm: int | None = None,
) -> TuneResult:
    """Measure the classic configurations on ``denoiser`` at ``nfe`` model evaluations and return the best.

    ``seeds``: a count of held-out tuning seeds (:func:`fewstep.seeds.tune_seeds`) or the seeds themselves; the
    error of each configuration is the RMSE of its samples at sigma_min to the teacher's (:func:`teacher_solution`,
    ``teacher_steps`` DEIS-4 steps; its own error, against half as many steps, is ``teacher_error``). The range is
    the model's own unless given. ``search``: also search a schedule for the best three (GITS' dynamic programme
    on the Euler cost matrix of the teacher on a fine grid, made once from the tuning seeds). ``guidance``: the
    guidance scale of a :class:`fewstep.denoisers.Guided` denoiser, recorded in the recipe. ``cache``: keep the
    teacher's reference solutions there (:func:`teacher_solution`). ``confirm``: the best :data:`CONFIRM_TOP`
    configurations are measured again on this many further tuning seeds (None: twice as many as ``seeds``; 0: no
    confirmation) and the winner is the best on all seeds together: a few outlier seeds decide a ranking on 32
    seeds (on the example DDPM, the NFE-9 winner on 32 seeds was 1.2x the best of a hand sweep on 64 others)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    seeds = tune_seeds(seeds) if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    lo, hi, _ = sigma_range(denoiser, sigma_min, sigma_max)
    noise = seeded_noise(denoiser, seeds, tuple(shape), dtype=dtype)
    count = {"evals": 0}
    ref = teacher_solution(denoiser, noise, lo, hi, teacher_steps, progress, cache)
    coarse = teacher_solution(denoiser, noise, lo, hi, teacher_steps // 2, cache=cache)
    count["evals"] += teacher_steps + teacher_steps // 2
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, dict[str, Any]] = {}

    def run(solver: str, options: dict[str, Any], afs: bool, kind: str, rho: float,
            sigmas: torch.Tensor | None = None, label: str | None = None) -> dict[str, Any] | None:
        try:
            n = steps_for_nfe(solver, nfe, afs, **options)
        except ValueError:
            return None
        sig = sigmas if sigmas is not None else make_sigmas(kind, n, lo, hi, rho, denoiser)
        if sig is None:
            return None
        sched = label or _schedule_label(kind, rho)
        key = (solver, json.dumps(options, sort_keys=True), afs, sched)
        if key in seen:
            return seen[key]
        try:
            x = solve(denoiser, noise, sig, solver, afs=afs, **options).x
            err = rmse_to(x, ref)
        except ValueError:  # e.g. a NaN from an unstable configuration: it is simply not a candidate
            err = None
        count["evals"] += nfe
        row = {"label": option_label(solver, options, afs, sched), "solver": solver, "options": dict(options), "afs": afs,
               "schedule": sched, "sigmas": [float(v) for v in sig], "rmse": err,
               "reference": (solver == "euler" and not afs and sched == "polynomial rho=7")
               or (solver == "ipndm" and options == {"max_order": 4} and afs and sched == "polynomial rho=7")}
        seen[key] = row
        rows.append(row)
        return row

    pairs = [(s, o, a) for s, o in solvers for a in (False, True)]
    first = [(p, k, r) for p in pairs for k, r in FIRST_SCHEDULES]
    sweep_n = KEEP_AFTER_FIRST * sum(len(v) for v in RHO_SWEEP.values())
    bar = tqdm(total=len(first) + sweep_n + (KEEP_FOR_SEARCH if search else 0), desc=f"tune NFE {nfe}",
               disable=not progress)
    for (s, o, a), k, r in first:
        run(s, o, a, k, r)
        bar.update(1)

    def ranked_pairs() -> list[tuple[str, dict[str, Any], bool]]:
        best: dict[tuple, float] = {}
        for row in rows:
            if row["rmse"] is not None:
                key = (row["solver"], json.dumps(row["options"], sort_keys=True), row["afs"])
                best[key] = min(best.get(key, math.inf), row["rmse"])
        order = sorted(best, key=best.get)
        return [(s, json.loads(o), a) for s, o, a in order]

    for s, o, a in ranked_pairs()[:KEEP_AFTER_FIRST]:
        for kind, rhos in RHO_SWEEP.items():
            for r in rhos:
                run(s, o, a, kind, r)
                bar.update(1)
    if search:  # GITS: one Euler cost matrix on a fine grid (solver-independent), one programme per solver
        from .schedule_search import cost_matrix, dp_schedule

        grid = get_schedule("polynomial", GITS_GRID, lo, hi, 7.0)
        cost = cost_matrix(denoiser, noise, grid)
        count["evals"] += GITS_GRID - 1
        for s, o, a in ranked_pairs()[:KEEP_FOR_SEARCH]:
            n = steps_for_nfe(s, nfe, a, **o)
            run(s, o, a, "gits", 0.0, sigmas=grid[dp_schedule(cost, n - 1)].clone(), label="searched (GITS)")
            bar.update(1)
    bar.close()
    good = [r for r in rows if r["rmse"] is not None]
    if not good:
        raise ValueError(f"no classic configuration could sample this model at NFE {nfe} (every one gave NaN/inf)")
    win = min(good, key=lambda r: r["rmse"])
    confirm = 2 * len(seeds) if confirm is None else confirm
    extra: list[int] = []
    if confirm > 0 and len(good) > 1:
        taken = set(seeds)
        extra = [s for s in tune_seeds(len(seeds) + confirm) if s not in taken][:confirm]
        noise2 = seeded_noise(denoiser, extra, tuple(shape), dtype=dtype)
        ref2 = teacher_solution(denoiser, noise2, lo, hi, teacher_steps, cache=cache)
        count["evals"] += teacher_steps * len(extra) / len(seeds)
        for r in sorted(good, key=lambda r: r["rmse"])[:CONFIRM_TOP]:
            sig = torch.tensor(r["sigmas"], dtype=torch.float64)
            try:
                e2 = rmse_to(solve(denoiser, noise2, sig, r["solver"], afs=r["afs"], **r["options"]).x, ref2)
            except ValueError:
                e2 = math.inf
            count["evals"] += nfe * len(extra) / len(seeds)
            r["rmse_confirm"] = e2
            r["rmse_pooled"] = math.sqrt((len(seeds) * r["rmse"] ** 2 + len(extra) * e2 ** 2) / (len(seeds) + len(extra)))
        win = min((r for r in good if "rmse_pooled" in r), key=lambda r: r["rmse_pooled"])
    best = Recipe(solver=win["solver"], options=win["options"], afs=win["afs"], sigmas=tuple(win["sigmas"]),
                  schedule=win["schedule"], nfe=nfe, model_id=model_id if model_id is not None else
                  getattr(denoiser, "model_id", None), guidance=guidance, rmse=win.get("rmse_pooled", win["rmse"]))
    return TuneResult(best=best, rows=rows, teacher_error=rmse_to(coarse, ref), seeds=seeds, sigma_range=(lo, hi),
                      model_evaluations=round(count["evals"] * len(seeds)), extra={"confirm_seeds": extra})


class TeacherErrors:
    """``err(pred)``: the RMSE of a sampler or recipe ``pred`` from ``noise`` to the teacher (:func:`teacher_solution`,
    ``teacher_steps`` steps) over the sampler's own sigma range, the teacher run once per range."""

    def __init__(self, denoiser: Callable, noise: torch.Tensor, teacher_steps: int = 128,
                 cache: TeacherCache | None = None) -> None:
        self.denoiser, self.noise, self.teacher_steps, self.cache = denoiser, noise, teacher_steps, cache
        self.refs: dict[tuple[float, float], torch.Tensor] = {}

    def __call__(self, pred: Any) -> float:
        sig = pred.config["sigmas"]
        key = (float(sig[-1]), float(sig[0]))
        if key not in self.refs:
            self.refs[key] = teacher_solution(self.denoiser, self.noise, key[0], key[1], self.teacher_steps,
                                              cache=self.cache)
        return rmse_to(solve(self.denoiser, self.noise, predictor=pred).x, self.refs[key])


def report(sampler: Any, denoiser: Callable, shape: Sequence[int], *, recipe: Recipe | None = None,
           seeds: Iterable[int] | int = 64, teacher_steps: int = 128, dtype: torch.dtype = torch.float32,
           cache: TeacherCache | None = None) -> dict[str, Any]:
    """The training report: on held-out seeds (:func:`fewstep.seeds.report_seeds`), the RMSE to the teacher of the
    trained ``sampler``, of its base (the same method untrained on its initial schedule: its neutral
    initialisation) and of the best classic configuration at its NFE (``recipe``, e.g. from :func:`tune`).
    Returns {"rows": [{"label", "rmse", "nfe"}], "seeds", "ratio" (trained / best classic), "gain"}. ``cache``: keep
    the teacher's reference solutions there."""
    from .learned.registry import method_class
    from .learned.sampler import LearnedSampler

    seeds = report_seeds(seeds) if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    err = TeacherErrors(denoiser, seeded_noise(denoiser, seeds, tuple(shape), dtype=dtype), teacher_steps, cache)

    rows = [{"label": f"trained {sampler.describe()}", "rmse": err(sampler), "nfe": sampler.nfe()}]
    if isinstance(sampler, LearnedSampler):
        cfg = dict(sampler.config)
        init = (cfg.get("schedule") or {}).get("init_sigmas") or cfg["sigmas"]
        cls = method_class(cfg["method"])  # type(sampler) is a parametrized subclass for guidance-aware samplers
        neutral = cls(cls.make_config(
            init, afs=cfg["afs"], options=cfg["options"], base=cfg["base"] if sampler.takes_base else None,
            time_shift=cfg["time_shift"], guidance=cfg.get("guidance"))).to(next(sampler.parameters()).dtype)
        if sampler.guidance_aware:
            neutral.guidance_scale = sampler.guidance_scale
        rows.append({"label": f"untrained {neutral.describe()} (its neutral start, = its base solver)",
                     "rmse": err(neutral), "nfe": neutral.nfe()})
        teacher = _teacher_row(sampler, err, init)
        if teacher is not None:
            rows.append(teacher)
    if recipe is not None:
        rows.append({"label": f"best classic: {recipe.label()}", "rmse": err(recipe), "nfe": recipe.nfe})
    best_classic = rows[-1]["rmse"] if recipe is not None else None
    ratio = rows[0]["rmse"] / best_classic if best_classic else None
    return {"rows": rows, "seeds": seeds, "ratio": ratio, "teacher_steps": teacher_steps}


def _teacher_row(sampler: Any, err: TeacherErrors, init: Sequence[float]) -> dict[str, Any] | None:
    """The report row of the teacher the sampler was distilled from (its solver with M steps inserted per interval
    of the initial schedule), measured like the others: a student gets no closer to the reference than its teacher,
    so a trained error near this row says the teacher is the limit (raise M). None where the checkpoint does not
    record its teacher."""
    tr = sampler.config.get("training") or {}
    name, M = tr.get("teacher"), tr.get("M")
    if not isinstance(name, str) or isinstance(M, bool) or not isinstance(M, int):
        return None
    sig = torch.tensor([float(v) for v in init], dtype=torch.float64)
    key = (float(sig[-1]), float(sig[0]))
    if key not in err.refs:
        return None  # the sampler's own range was measured first; a teacher on another range is not comparable
    with torch.no_grad():
        sol = run_teacher(err.denoiser, err.noise, sig, M, name, tr.get("teacher_options"))
    return {"label": f"its teacher: {name} with M = {M} on its initial schedule", "rmse": rmse_to(sol.x, err.refs[key]),
            "nfe": sol.nfe, "teacher": True}


def training_start(method: type, recipe: Recipe, options: dict[str, Any] | None = None, base: Any = None,
                   afs: bool | None = None) -> tuple[dict[str, Any] | None, Any, bool, torch.Tensor]:
    """How learned ``method`` (a class of :data:`fewstep.learned.METHODS`) starts from a tuned classic configuration:
    (options, base, afs, initial sigmas). A method built on a solver the user picks takes the recipe's solver as its
    base; a method built on a fixed one takes the recipe's options where it can (:meth:`options_for_base`, e.g.
    DyWeight's window = iPNDM's order); every method starts from the recipe's AFS (unless the method cannot make the
    recipe's NFE with it) and its sigmas, resampled to the method's number of steps at the recipe's NFE
    (:func:`fewstep.schedules.interpolate_schedule`). Options, a base or ``afs`` given explicitly win."""
    from .schedules import interpolate_schedule

    explicit_afs = afs is not None
    afs = recipe.afs if afs is None else afs
    if method.takes_base:
        if base is None and recipe.solver in method.BASES:
            base = {"solver": recipe.solver, "options": dict(recipe.options)}
    else:
        mapped = method.options_for_base(recipe.solver, recipe.options)
        if mapped is not None:
            options = {**mapped, **(options or {})}
    probe_options = {k: v for k, v in (options or {}).items() if k != "features"}  # resolved at training time
    solver = method.probe_solver(probe_options, base, afs)
    try:
        n = steps_for_nfe(solver, recipe.nfe, afs)
    except ValueError:
        if explicit_afs:
            raise
        afs = not afs  # e.g. a two-evaluation method at an odd NFE needs AFS whatever the recipe did
        n = steps_for_nfe(method.probe_solver(probe_options, base, afs), recipe.nfe, afs)
    return options, base, afs, interpolate_schedule(list(recipe.sigmas), n)
