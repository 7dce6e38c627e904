"""``fewstep analyze pca | predictor | error | align | span``: the paper's figures, and how far coefficient learning
can go on a model, as a .png plot and a .csv table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import save_figure, write_text_atomic
from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import add_model_args, parse_seeds, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``analyze`` subcommand."""
    a = sub.add_parser("analyze", help="trajectory PCA (paper Fig. 4), grid-searched intermediate steps (Fig. 5), "
                                       "a predictor's learned r, c (Fig. 7), per-step error to a teacher, the span "
                                       "bound of coefficient learning")
    a.add_argument("what", choices=("pca", "predictor", "error", "align", "span"),
                   help="span: at one solver's evaluation points (--solver, --nfe, --afs, --schedule; default the "
                        "measured default at --nfe, or --predictor RECIPE.json from fewstep tune), the RMSE to the "
                        "teacher of the solver, of the best per-sample combination of x_T and its denoiser outputs "
                        "(what learned coefficients can reach at best) and of the default solver at about twice the "
                        "NFE")
    add_model_args(a)
    a.add_argument("--predictor", default=None, help="AMED checkpoint (for 'predictor'; for 'error' an extra row)")
    a.add_argument("--solver", default=None,
                   help="pca: trajectory solver (default heun); error: comma-separated solvers (default ipndm); "
                        "align: comma-separated forms, amed (AMED-Solver / DPM-Solver-2) or a plugin base solver "
                        "(default amed,ipndm,dpmpp)")
    a.add_argument("--nfe", type=positive_int, default=5, help="error / align: NFE (default: %(default)s)")
    a.add_argument("--afs", action="store_true",
                   help="error, align --protocol paper: use AFS (align --protocol ours always does)")
    a.add_argument("--schedule", default="polynomial", choices=("polynomial", "logsnr", "time_uniform"),
                   help="error / align: time schedule (default: %(default)s)")
    a.add_argument("--teacher-steps", type=positive_int, default=None,
                   help="error / align: teacher steps inserted per interval (default: 16 / 8)")
    a.add_argument("--grid", type=positive_int, default=49, help="align: grid points for r in (0, 1) (plus r = 0.5)")
    a.add_argument("--protocol", choices=("ours", "paper"), default="ours",
                   help="align: ours (per step, r_opt vs r = 0.5 from the same state, DEIS-4 teacher, AFS, at --nfe) "
                        "or paper (the paper's Fig. 5: relative alignment ||x_B - x_G|| - ||x_S - x_G|| of the "
                        "baseline r = 0.5 and the greedily searched trajectories on --points times, ground truth "
                        "Heun with --gt-nfe evaluations, no AFS unless --afs; default forms amed,dpm2,ipndm,dpmpp,"
                        "unipc)")
    a.add_argument("--points", type=positive_int, default=6,
                   help="align --protocol paper: schedule points N (default: %(default)s, as the paper)")
    a.add_argument("--gt-nfe", type=positive_int, default=80,
                   help="align --protocol paper: Heun evaluations of the ground truth (default: %(default)s)")
    a.add_argument("--steps", type=positive_int, default=32, help="trajectory steps (default: %(default)s)")
    a.add_argument("--seeds", type=parse_seeds, default=parse_seeds("800000000-800000063"),
                   help="noise seeds, e.g. 0-63 (default: the 64 first held-out seeds 800000000-800000063; 'error' "
                        "refuses seeds its --predictor was trained on)")
    a.add_argument("--max-k", type=positive_int, default=5)
    a.add_argument("--out", required=True, help="output path stem; writes .png and .csv")
    a.add_argument("--overwrite", action="store_true", help="replace existing output (--out .png / .csv)")
    a.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: 1, measured fastest for the bed and small models on a busy 2-core machine; raise it for large networks)")
    a.set_defaults(func=run)
    return a


def run(args: argparse.Namespace) -> int:
    """Paper figures: PCA of sampling trajectories (Fig. 4) and the learned r_n, c_n of a predictor (Fig. 7)."""
    import torch

    from ..io import pyplot

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    if args.solver is not None and not args.solver.strip():
        raise ValueError("--solver must not be empty")
    paper_protocol = args.what == "align" and getattr(args, "protocol", "ours") == "paper"
    args.solver = args.solver or ("amed,dpm2,ipndm,dpmpp,unipc" if paper_protocol else
                                  {"pca": "heun", "error": "ipndm", "align": "amed,ipndm,dpmpp",
                                   "span": "default"}.get(args.what))
    if args.what in ("error", "align"):
        _solvers(args.solver)  # checked before the model is loaded or any output is made
    elif args.what == "pca" and "," in args.solver:
        raise ValueError(f"analyze pca takes one --solver, got {args.solver!r}")
    if args.what == "align":
        fig, (ax, ax2) = pyplot().subplots(1, 2, figsize=(11, 4))
    else:
        fig, ax = pyplot().subplots(figsize=(6, 4))
    if args.what == "pca":
        rows = _pca(args, ax)
    elif args.what == "span":
        rows = _span(args, ax)
    elif args.what in ("error", "align"):
        rows = _error(args, ax) if args.what == "error" else (
            _align_paper(args, ax, ax2) if paper_protocol else _align(args, ax, ax2))
    else:
        rows = _predictor(args, ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out.with_suffix(".png"))
    write_text_atomic(out.with_suffix(".csv"), "\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"Wrote {out.with_suffix('.png')} and {out.with_suffix('.csv')}")
    return 0


def _span(args: argparse.Namespace, ax) -> list[str]:  # noqa: ANN001
    """The span bound of coefficient learning at one configuration's points (:func:`experiments.analysis.span_bound`)."""
    from ..defaults import default_recipe
    from ..denoisers import sigma_range
    from ..experiments.analysis import span_bound
    from ..recipe import Recipe, make_sigmas
    from ..sampling import seeded_noise, steps_for_nfe

    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape, args)
    if args.predictor:
        recipe = Recipe.load(args.predictor, model_id=model_id)
    elif args.solver == "default":
        recipe = default_recipe(denoiser, args.nfe)
    else:
        (name,) = _solvers(args.solver)
        lo, hi, _ = sigma_range(denoiser)
        n = steps_for_nfe(name, args.nfe, args.afs)
        sig = make_sigmas(args.schedule, n, lo, hi, 7.0 if args.schedule == "polynomial" else 1.0, denoiser)
        recipe = Recipe(name, {}, args.afs, tuple(sig.tolist()), args.schedule, args.nfe, model_id=model_id)
    noise = seeded_noise(denoiser, args.seeds, shape, dtype=dtype)
    r = span_bound(denoiser, noise, recipe, teacher_steps=args.teacher_steps or 128)
    labels = [f"{recipe.label()} (NFE {recipe.nfe})", f"best in span of its {r['outputs']} outputs + x_T",
              f"{r['higher_label']} (NFE {r['higher_nfe']})"]
    values = [r["solver"], r["span"], r["higher"]]
    ax.bar(range(3), values, color=["C0", "C1", "C2"])
    ax.set_xticks(range(3), ["solver", "span bound", f"NFE {r['higher_nfe']}"])
    ax.set_ylabel("RMSE to the teacher")
    ax.set_title(f"{model_id}: {len(args.seeds)} seeds; learned coefficients stay at or above the span bound",
                 fontsize=8)
    ax.plot([], [], " ", label=labels[0][:60])
    return ["row,rmse"] + [f"\"{lab}\",{v:.6g}" for lab, v in zip(labels, values)]


def _solvers(text: str) -> list[str]:
    """The names of a comma-separated --solver list; ValueError for an empty list or an empty or repeated entry."""
    names = [v.strip() for v in text.split(",")]
    if not any(names):
        raise ValueError(f"--solver must name at least one solver (comma-separated), got {text!r}")
    if not all(names):
        raise ValueError(f"--solver has an empty entry in {text!r}; give comma-separated names such as ipndm,dpmpp")
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise ValueError(f"--solver names {', '.join(dup)} more than once")
    return names


def _pca(args: argparse.Namespace, ax) -> list[str]:  # noqa: ANN001
    """Relative projection error and explained variance of trajectories against the number of components."""
    from ..experiments.analysis import trajectory_pca
    from ..sampling import seeded_noise

    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    noise = seeded_noise(denoiser, args.seeds, shape, dtype=dtype)
    table = trajectory_pca(denoiser, noise, args.solver, args.steps, args.max_k, progress=True)
    rows = ["k,mean_rel_error,max_rel_error,explained_variance"]
    for r in table:
        rows.append(f"{r['k']},{r['mean_rel_error']:.6g},{r['max_rel_error']:.6g},{r['explained_variance']:.6g}")
    ks = [r["k"] for r in table]
    ax.plot(ks, [r["mean_rel_error"] for r in table], "o-", label="relative projection error (mean)")
    ax.plot(ks, [r["explained_variance"] for r in table], "s--", label="cumulative explained variance")
    ax.set_xlabel("principal components k")
    ax.set_title(f"{model_id}: {args.solver}, {args.steps} steps, {len(args.seeds)} trajectories", fontsize=8)
    return rows


def _predictor(args: argparse.Namespace, ax) -> list[str]:  # noqa: ANN001
    """The learned r_n, c_n (and a_n) of a predictor-free AMED table (Fig. 7)."""
    from .. import learned

    if not args.predictor:
        raise ValueError("analyze predictor needs --predictor PATH")
    pred = learned.load(args.predictor)
    if not isinstance(pred, learned.AMEDSampler):
        raise ValueError(f"analyze predictor plots AMED's r, c, a tables; {args.predictor} is a "
                         f"{pred.config['method']} sampler")
    if pred.uses_features:
        raise ValueError("analyze predictor plots predictor-free tables; this predictor reads features")
    table = pred.table_values()
    rows = ["step,sigma_cur,sigma_next,r,c,a"]
    sig = pred.config["sigmas"]
    for i, v in enumerate(table):
        rows.append(f"{i},{sig[i]:.6g},{sig[i + 1]:.6g},{v['r']:.6g},{v['c']:.6g},{v['a']:.6g}")
    steps = list(range(len(table)))
    ax.plot(steps, [v["r"] for v in table], "o-", label="r_n")
    ax.plot(steps, [v["c"] for v in table], "s-", label="c_n")
    ax.set_xlabel("step n (largest sigma first)")
    return rows


def _error(args: argparse.Namespace, ax) -> list[str]:  # noqa: ANN001
    """Per-step RMSE / L2 of solvers (and a learned sampler) to a DEIS-4 teacher on the same sigmas."""
    from .. import learned
    from ..experiments.analysis import per_step_error
    from ..seeds import check_sampler_held_out
    from ..sampling import seeded_noise

    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    noise = seeded_noise(denoiser, args.seeds, shape, dtype=dtype)
    m = args.teacher_steps or 16
    pred = learned.load(args.predictor, model_id=model_id) if args.predictor else None
    check_sampler_held_out(args.seeds, pred, what="--seeds", source=args.predictor)
    runs = per_step_error(denoiser, noise, _solvers(args.solver), args.nfe, afs=args.afs, schedule=args.schedule,
                          teacher_steps=m, predictor=pred)
    rows = ["solver,nfe,step,sigma,rmse,l2,teacher_change"]
    for e in runs:
        label = e["label"]
        for i, (sg, r, l2, tc) in enumerate(zip(e["sigma"], e["rmse"], e["l2"], e["teacher_change"])):
            rows.append(f"{label},{e['nfe'][0]},{i},{sg:.6g},{r:.6g},{l2:.6g},{tc:.3g}")
        ax.plot(e["sigma"][1:], e["rmse"][1:], "o-", label=f"{label} (NFE {e['nfe'][0]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("sigma (sampling runs right)")
    ax.set_ylabel("RMSE to the teacher")
    sig = runs[0]["sigma"]
    ax.set_title(f"{model_id}: per-step error, {len(args.seeds)} seeds, {args.schedule} schedule on sigma "
                 f"{sig[0]:.4g} .. {sig[-1]:.4g} (every row);\n"
                 f"teacher DEIS-4 with {m} steps inserted per interval", fontsize=8)
    return rows


def _align(args: argparse.Namespace, ax, ax2) -> list[str]:  # noqa: ANN001
    """Grid-searched intermediate times vs r = 0.5 per step and solver (paper Fig. 5)."""
    from matplotlib.ticker import MaxNLocator

    from ..experiments.analysis import step_alignment
    from ..sampling import seeded_noise

    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    noise = seeded_noise(denoiser, args.seeds, shape, dtype=dtype)
    res = step_alignment(denoiser, noise, _solvers(args.solver), args.nfe, grid=args.grid, schedule=args.schedule,
                         teacher_steps=args.teacher_steps or 8)
    keys = list(res[0])
    rows = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                               for r in res]
    for label in dict.fromkeys(r["solver"] for r in res):
        sel = [r for r in res if r["solver"] == label]
        steps = [r["step"] for r in sel]
        line, = ax.plot(steps, [r["r_opt"] for r in sel], "o-", label=label)
        ax.errorbar(steps, [r["r_sample_mean"] for r in sel], [r["r_sample_std"] for r in sel], fmt="none",
                    ecolor=line.get_color(), alpha=0.5, capsize=3)
        ax2.plot(steps, [r["ratio"] for r in sel], "o-", color=line.get_color(), label=label)
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.5, color="k", ls="--", lw=1, label="r = 0.5 (DPM-Solver-2 / plugin default)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step n (largest sigma first)")
    ax.set_ylabel("grid-searched r_n (bars: per-sample mean ± std)")
    ax.set_title(f"{model_id}: s_n = t_n^r t_(n+1)^(1-r), NFE {args.nfe}, {len(args.seeds)} seeds", fontsize=8)
    ax2.set_yscale("log")
    ax2.axhline(1.0, color="k", lw=1)
    ax2.set_xlabel("step n")
    ax2.set_ylabel("RMSE at r = 0.5 / RMSE at grid-searched r")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return rows


def _align_paper(args: argparse.Namespace, ax, ax2) -> list[str]:  # noqa: ANN001
    """The paper's Fig. 5 protocol: relative alignment of the baseline (r = 0.5) and greedily searched trajectories
    to a Heun ground truth, per step and form."""
    from matplotlib.ticker import MaxNLocator

    from ..experiments.analysis import relative_alignment
    from ..sampling import seeded_noise

    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    noise = seeded_noise(denoiser, args.seeds, shape, dtype=dtype)
    res = relative_alignment(denoiser, noise, _solvers(args.solver), args.points, grid=args.grid,
                             gt_nfe=args.gt_nfe, schedule=args.schedule, afs=args.afs)
    keys = list(res[0])
    rows = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                               for r in res]
    labels = list(dict.fromkeys(r["solver"] for r in res))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        sel = [r for r in res if r["solver"] == label]
        steps = [r["step"] + (j - (len(labels) - 1) / 2) * width for r in sel]
        bars = ax.bar(steps, [r["rel_align"] for r in sel], width, label=label)
        ax2.plot([r["step"] for r in sel], [r["r_opt"] for r in sel], "o-", color=bars.patches[0].get_facecolor(),
                 label=label)
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.0, color="k", lw=1)
    ax.set_xlabel("step n (0: from t = 80)")
    ax.set_ylabel("||x_B - x_G|| - ||x_S - x_G|| (mean L2)")
    ax.set_title(f"{model_id}: relative alignment (paper protocol), N = {args.points} {args.schedule} points,\n"
                 f"ground truth Heun {res[0]['gt_nfe']} NFE, {len(args.seeds)} seeds; > 0: searched r_n closer "
                 "than r = 0.5", fontsize=8)
    ax2.axhline(0.5, color="k", ls="--", lw=1, label="r = 0.5 (baseline)")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step n")
    ax2.set_ylabel("greedy grid-searched r_n")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return rows
