"""The paper's Fig. 5: grid-searched intermediate times of the two-evaluation forms (AMED-Solver, AMED-Plugin on a
base), as we measure them (:func:`alignment`) and with the paper's own protocol (:func:`relative_alignment`)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ...sampling import ModelCall
from ...schedules import get_schedule
from ...solvers import AMEDPlugin, AMEDSolver, get_solver
from ...teacher import REFERENCE_SOLVER, run_teacher
from .tables import student_steps

__all__ = ["alignment", "relative_alignment", "PAPER_FIG5_FORMS"]


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
        n = student_steps(name, nfe, afs)
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
