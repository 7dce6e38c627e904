"""The main job (``fewstep demo`` / ``make demo``): the few-step frontier on the shipped U-Net.

Loads the small EDM U-Net trained on natural-image patches and samples the same held-out seeds with the classic
solvers at NFE 3/5/7/9 (on EDM's polynomial schedule), fewstep's measured default, the best classic configuration
that ``fewstep tune`` found for this model at each NFE (shipped as ``fewstep/assets/tuned_unet_nfe*.json``) and the
learned samplers shipped for it (``fewstep/assets/sampler_unet_nfe*.safetensors``, trained by
``scripts/train_shipped.py``; ``train=True`` trains one at NFE 5 instead), and writes image grids, an error-vs-NFE
plot and a table of RMSE to a high-NFE teacher solution and Fréchet distance to the training patches. Then the
conditional part (:func:`run_digits_demo`): the shipped digits model under classifier-free guidance, teacher
against the best classic solver and a learned sampler at NFE 5, one grid with a row per class, RMSE and class
accuracy.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import evaluation, learned, metrics
from ..data import digit_classifier
from ..io import atomic_path, pyplot, save_figure, write_text_atomic
from ..sampling import noise_for_seeds, sample, solve
from ..seeds import report_seeds
from ..schedules import get_schedule
from .bed import Bed

__all__ = ["DemoConfig", "DigitsDemoConfig", "run_demo", "run_digits_demo", "image_grid", "save_png"]


# On the guided digits model second-order multistep solvers beat the higher orders at NFE 5 (w = 2: iPNDM order 2
# +AFS 0.086 RMSE, order 4 +AFS 0.30), so the classic candidates add them to the baselines.
DIGITS_SPECS: tuple[evaluation.SolverSpec, ...] = evaluation.BASELINES + (
    evaluation.SolverSpec("iPNDM(2)", "ipndm", {"max_order": 2}, afs=True),
    evaluation.SolverSpec("DPM-Solver++(2M)", "dpmpp", {"max_order": 2}, afs=True),
    evaluation.SolverSpec("UniPC(2M) bh2", "unipc", {"max_order": 2}, afs=True),
)


@dataclass
class DigitsDemoConfig:
    """The conditional part: digits model, guidance ``scale``, ``per_class`` seeds per class for the metrics (the first
    ``grid_seeds`` of them in the grid), the best of ``specs`` at ``nfe``, and the learned ``method`` (with
    ``options``) trained on ``train_samples`` in batches of ``train_batch`` (a multiple of 10: every batch holds each
    class equally often). Defaults measured at w = 2, NFE 5 (RMSE to the teacher on these 100 seeds; training CPU
    seconds, 1 thread): DyWeight window 2, 600 samples, M = 2: 0.039 (74 s); the same with 400 samples, M = 4: 0.040
    (67 s); DyWeight window 4 (its default): 0.074 (61 s); PAS: 0.094 (61 s); AMED-Plugin on iPNDM order 2 / 4: 0.077
    / 0.187 (45 s); the best classic solver, iPNDM order 2 +AFS: 0.086."""

    scale: float = 2.0
    nfe: int = 5
    per_class: int = 10
    grid_seeds: int = 4
    ref_steps: int = 64
    train: bool = False  # train the learned sampler even where one is shipped
    specs: Sequence[evaluation.SolverSpec] = DIGITS_SPECS
    method: str = "dyweight"
    options: dict[str, Any] = field(default_factory=lambda: {"window": 2})
    train_samples: int = 600
    train_batch: int = 20
    M: int = 2


# The classic rows of the U-Net table (EDM's polynomial schedule, rho 7): one of each family, at its best order on
# this model (README's full table has every option).
DEMO_SPECS: tuple[evaluation.SolverSpec, ...] = (
    evaluation.SolverSpec("Euler (DDIM)", "euler"),
    evaluation.SolverSpec("DPM-Solver-2", "dpm2", afs=True),
    evaluation.SolverSpec("DPM-Solver++(2M)", "dpmpp", {"max_order": 2}),
    evaluation.SolverSpec("UniPC(2M) bh2", "unipc", {"max_order": 2}),
    evaluation.SolverSpec("DEIS tAB2", "deis", {"max_order": 3}),
    evaluation.SolverSpec("iPNDM", "ipndm", {"max_order": 4}),
    evaluation.SolverSpec("iPNDM", "ipndm", {"max_order": 4}, afs=True),
)


@dataclass
class DemoConfig:
    """``seeds`` held-out evaluation seeds (from :func:`fewstep.seeds.report_seeds`), ``nfes`` of the table,
    ``ref_steps`` of the teacher; ``train``: train a learned sampler at ``train_nfe`` (the default method from the
    tuned start, its own default budget unless ``train_samples``) instead of loading the shipped ones."""

    out: Path = Path("fewstep-out/demo")
    seeds: int = 128
    nfes: Sequence[int] = (3, 5, 7, 9)
    ref_steps: int = 128
    train: bool = False
    train_nfe: int = 5
    train_samples: int | None = None
    fd_patches: int = 5000
    specs: Sequence[evaluation.SolverSpec] = DEMO_SPECS
    progress: bool = True
    digits: DigitsDemoConfig | None = field(default_factory=DigitsDemoConfig)  # None: skip the conditional part


def _slug(label: str) -> str:
    """File-name form of a table label: 'DPM-Solver++(3M) taylor' -> 'dpm-solver-3m-taylor'."""
    return "-".join(re.findall(r"[a-z0-9]+", label.lower()))


def image_grid(x: torch.Tensor, cols: int = 8, rows: int | None = None) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> one uint8 image of the first cols * rows (default cols^2) samples, row by row."""
    x = x[: cols * (cols if rows is None else rows)].float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = (n + cols - 1) // cols
    canvas = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    return canvas.permute(1, 2, 0).numpy()


def save_png(path: Path, img: np.ndarray, scale: int = 4) -> None:
    """Write an (H, W, 3) uint8 image as a PNG, each pixel ``scale`` x ``scale``, atomically."""
    big = np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))
    with atomic_path(path, suffix=".png") as tmp:
        pyplot().imsave(tmp, big, format="png")


def _plot(path: Path, rows: list[dict[str, Any]], nfes: Sequence[int]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for r in rows:
        pts = [(n, r[n]) for n in nfes if r.get(n) is not None]
        if not pts:
            continue
        style = (dict(marker="*", markersize=12, linewidth=2.5) if r.get("learned") else
                 dict(marker="s", linewidth=2.5) if r.get("best") else dict(marker="o", linewidth=1, alpha=0.7))
        ax.plot(*zip(*pts), label=r["label"], **style)
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMSE to teacher")
    ax.set_xticks(list(nfes))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def _train_digits(cfg: DigitsDemoConfig, model: Any, guided: Any, noise: torch.Tensor, out: Path,
                  say: Callable, progress: bool) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """Train ``cfg.method`` on the guided digits model (no shipped sampler, or ``cfg.train``)."""
    from ..denoisers import Guided

    # Training batches repeat the labels 0..9 (the trainer draws exactly train_batch noises per iteration, so one
    # label per sample lines up); the noise differs per batch.
    say(f"Training {cfg.method} on the guided model for NFE {cfg.nfe} ...", flush=True)
    pred = learned.train(cfg.method, Guided(model, torch.arange(cfg.train_batch) % 10, cfg.scale), shape=(1, 16, 16),
                         nfe=cfg.nfe, options=cfg.options, teacher=learned.Teacher(M=cfg.M),
                         budget=learned.Budget(batch=cfg.train_batch, total_samples=cfg.train_samples),
                         progress=progress)
    pred.save(out / "predictors" / f"digits_{cfg.method}_w{cfg.scale:g}_nfe{cfg.nfe}.safetensors")
    train = {"method": cfg.method, "options": dict(cfg.options), "samples": cfg.train_samples,
             "batch": cfg.train_batch, "M": cfg.M, "seconds": pred.log.seconds}
    return pred, sample(guided, noise, predictor=pred), train


def run_digits_demo(cfg: DigitsDemoConfig, out: Path, progress: bool = True) -> tuple[dict[str, Any], str]:
    """The conditional part of the demo: the shipped digits model guided at ``cfg.scale``, ``cfg.per_class`` seeds
    per class; the teacher, the best of ``cfg.specs`` at ``cfg.nfe`` and the learned ``cfg.method`` trained for it.
    Writes ``out/digits_nfe{nfe}.png`` (rows: classes 0-9; column groups: teacher, classic, learned) and the
    predictor; returns (summary, markdown section)."""
    from ..denoisers import Guided, digits_unet

    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    model = digits_unet().eval().requires_grad_(False)
    clf, clf_acc = digit_classifier()
    labels = torch.arange(10).repeat_interleave(cfg.per_class)
    noise = noise_for_seeds(report_seeds(len(labels)), (1, 16, 16), dtype=torch.float64)  # held out from training
    guided = Guided(model, labels, cfg.scale)
    say(f"Digits model {model.model_id}, guidance w = {cfg.scale:g}: teacher (DEIS-logrho order 4, {cfg.ref_steps} "
        f"steps) on {len(labels)} seeds ...", flush=True)
    ref, ref_err = evaluation.reference_solution(guided, noise, steps=cfg.ref_steps)
    samples: dict[str, torch.Tensor] = {}
    classic = evaluation.solver_table(guided, noise, ref, (cfg.nfe,), cfg.specs, progress=progress,
                                      on_sample=lambda row, nfe, x: samples.__setitem__(row["label"], x))
    best = min((r for r in classic if r[cfg.nfe] is not None), key=lambda r: r[cfg.nfe])

    # Training batches repeat the labels 0..9 (the trainer draws exactly train_batch noises per iteration, so one
    # label per sample lines up); the noise differs per batch.
    from ..shipped import shipped_sampler

    path = None if cfg.train else shipped_sampler(model.model_id, cfg.nfe, cfg.scale)
    if path is not None:
        pred = learned.load(path, model_id=model.model_id)
        say(f"Learned sampler shipped for the guided model at NFE {cfg.nfe}: {pred.describe()} (guidance-aware over "
            f"w in {pred.config['guidance']['scales']}; fewstep/assets/{path.name})", flush=True)
        x_learned = sample(guided, noise, predictor=pred)
        learned_label, train = f"{pred.describe()}, shipped", {"shipped": path.name}
    else:
        pred, x_learned, train = _train_digits(cfg, model, guided, noise, out, say, progress)
        learned_label = f"{cfg.method}" + "".join(f", {k_} {v}" for k_, v in cfg.options.items()) + " +AFS"

    columns = [("teacher", f"DEIS-logrho order 4, {cfg.ref_steps} steps", ref),
               ("classic", best["label"], samples[best["label"]]),
               ("learned", learned_label, x_learned)]
    y = labels.numpy()
    cols: list[dict[str, Any]] = []
    for name, label, x in columns:
        hit = clf.predict(x.float().clamp(-1, 1).flatten(1).numpy()) == y
        cols.append({"column": name, "sampler": label, "nfe": cfg.ref_steps if name == "teacher" else cfg.nfe,
                     "rmse": evaluation.rmse(x, ref), "accuracy": float(hit.mean()),
                     "per_class": [float(hit[y == c].mean()) for c in range(10)]})

    # The grid: one row per class, grid_seeds samples of each column, the groups separated by a white tile.
    k = min(cfg.grid_seeds, cfg.per_class)
    white = torch.ones(10, 1, 1, 16, 16, dtype=ref.dtype)
    groups = [x.reshape(10, cfg.per_class, 1, 16, 16)[:, :k] for _, _, x in columns]
    tiles = torch.cat([groups[0], white, groups[1], white, groups[2]], dim=1)
    png = out / f"digits_nfe{cfg.nfe}.png"
    save_png(png, image_grid(tiles.flatten(0, 1).expand(-1, 3, -1, -1), cols=tiles.shape[1], rows=10))

    summary = {"model_id": model.model_id, "scale": cfg.scale, "nfe": cfg.nfe, "per_class": cfg.per_class,
               "teacher_error": ref_err, "classifier_held_out_accuracy": clf_acc, "columns": cols,
               "classic_rmse": {r["label"]: r[cfg.nfe] for r in classic}, "train": train,
               "seconds": time.perf_counter() - t0}
    md = (f"\n## Conditional model: digits, classifier-free guidance w = {cfg.scale:g}, NFE {cfg.nfe}\n\n"
          f"![digits]({png.name})\n\n`{png.name}`: one row per class 0-9, three groups of {k} columns (the same "
          f"seeds in each group, groups separated by a white column): teacher ({columns[0][1]}) | best classic solver "
          f"at NFE {cfg.nfe} ({columns[1][1]}) | learned sampler at NFE {cfg.nfe} ({columns[2][1]}"
          + (f", trained for {train['seconds']:.0f} s on {cfg.train_samples} samples, batches of {cfg.train_batch} "
             f"with every class, M = {cfg.M}" if "seconds" in train else "")
          + f").\n\nMetrics on {cfg.per_class} seeds per class (teacher's own error vs. half the steps "
          f"{ref_err:.1e}); class accuracy = fraction a logistic regression on the digits (held-out accuracy "
          f"{clf_acc:.3f}) assigns to the class asked for:\n\n"
          "| column | sampler | NFE | RMSE to teacher | class accuracy | " + " | ".join(map(str, range(10))) + " |\n"
          "|---|---|---:|---:|---:|" + "---:|" * 10 + "\n"
          + "".join(f"| {c['column']} | {c['sampler']} | {c['nfe']} | {c['rmse']:.4f} | **{c['accuracy']:.3f}** | "
                    + " | ".join(f"{a:.2f}" for a in c["per_class"]) + " |\n" for c in cols)
          + f"\nEvery classic candidate at NFE {cfg.nfe} on the guided model (RMSE to the teacher):\n\n"
          + evaluation.format_table(classic, (cfg.nfe,)) + "\n")
    return summary, md


def _learned_samplers(model: Any, cfg: DemoConfig, out: Path, say: Callable) -> tuple[dict[int, Any], bool]:
    """(NFE -> learned sampler, trained now?): the shipped ones for this model, or (``cfg.train``, or none shipped at
    ``cfg.train_nfe``) one trained now with the default method from the tuned start."""
    from ..defaults import default_method, default_recipe
    from ..recipe import Recipe
    from ..shipped import shipped_recipe, shipped_sampler
    from ..tune import training_start

    found: dict[int, Any] = {}
    if not cfg.train:
        for n in cfg.nfes:
            path = shipped_sampler(model.model_id, n)
            if path is not None:
                found[n] = learned.load(path, model_id=model.model_id)
                say(f"Learned sampler shipped for NFE {n}: {found[n].describe()} (fewstep/assets/{path.name})")
    if cfg.train_nfe in found:
        return found, False
    res = model.config.img_resolution
    shape = (model.config.channels, res, res)
    path = shipped_recipe(model.model_id, cfg.train_nfe)
    recipe = Recipe.load(path) if path is not None else default_recipe(model, cfg.train_nfe)
    method = learned.method_class(default_method(cfg.train_nfe, guided=False).method)
    options, base, afs, sigmas = training_start(method, recipe)
    say(f"Training {method.method} for NFE {cfg.train_nfe} from {recipe.label()} ...", flush=True)
    budget = learned.Budget() if cfg.train_samples is None else learned.Budget(total_samples=cfg.train_samples)
    pred = learned.train(method.method, model, shape=shape, nfe=cfg.train_nfe, afs=afs, options=options, base=base,
                         schedule=learned.ScheduleSpec(sigmas=sigmas), budget=budget, dtype=torch.float32,
                         model_id=model.model_id, progress=cfg.progress)
    pred.save(out / "predictors" / f"{method.method}_nfe{cfg.train_nfe}.safetensors")
    found[cfg.train_nfe] = pred
    return found, True


def run_demo(cfg: DemoConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    from ..defaults import default_recipe
    from ..denoisers.unet import default_unet
    from ..recipe import Recipe
    from ..seeds import report_seeds
    from ..shipped import shipped_recipe

    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    model = default_unet() if model is None else model
    model.eval().requires_grad_(False)
    say = print if cfg.progress else (lambda *a, **k: None)
    say(f"Model: {model.model_id} ({sum(p.numel() for p in model.parameters()):,} parameters)", flush=True)

    seeds = report_seeds(cfg.seeds)
    say(f"Teacher: DEIS-logrho order 4, {cfg.ref_steps} steps, {cfg.seeds} held-out seeds ...", flush=True)
    bed = Bed.unet(model, seeds=seeds, ref_steps=cfg.ref_steps, fd_patches=cfg.fd_patches, progress=cfg.progress)
    noise, ref, ref_err, fd = bed.noise, bed.ref, bed.ref_error, bed.fd
    say(f"  teacher relative error vs. half the steps: {ref_err:.1e}", flush=True)

    # Geometry: how close the sampling trajectories stay to a 2-D plane (AMED paper, Fig. 4).
    traj = solve(model, noise[:32], get_schedule("polynomial", 33), "heun", trajectory=True).trajectory
    pca_err = metrics.trajectory_pca_error(traj, k=2)

    predictors, trained = _learned_samplers(model, cfg, out, say)
    grids = out / "grids"
    save_png(grids / "teacher.png", image_grid(ref[:64]))

    def grid(row: dict[str, Any], nfe: int, x: torch.Tensor) -> None:
        save_png(grids / f"{_slug(row['label'])}_nfe{nfe}.png", image_grid(x[:64]))

    rows = bed.solver_table(cfg.nfes, cfg.specs, on_sample=grid, progress=cfg.progress)
    for row in rows:
        row.setdefault("fd", {})
    extra = [{"label": "fewstep default (docs/defaults.md)", "fd": {}},
             {"label": "best classic (fewstep tune)", "fd": {}, "best": True},
             {"label": "learned (trained now)" if trained else "learned (shipped)", "fd": {}, "learned": True}]
    for n in cfg.nfes:
        tuned = shipped_recipe(model.model_id, n)
        for row, pred in zip(extra, (default_recipe(model, n), Recipe.load(tuned) if tuned else None,
                                     predictors.get(n))):
            if pred is None:
                continue
            x = solve(model, noise, predictor=pred).x
            row[n], row["fd"][n] = bed.rmse(x), fd(x) if fd else None
            row.setdefault("what", {})[n] = pred.label() if hasattr(pred, "label") else pred.describe()
            grid(row, n, x)
    rows += [r for r in extra if any(n in r for n in cfg.nfes)]
    digits, digits_md = run_digits_demo(cfg.digits, out, cfg.progress) if cfg.digits else (None, "")

    table = evaluation.format_table(rows, cfg.nfes)
    fd_lines = ["| solver | " + " | ".join(f"FD@{n}" for n in cfg.nfes) + " |", "|---|" + "---:|" * len(cfg.nfes)]
    for r in rows:
        fd_lines.append(f"| {r['label']} | " + " | ".join(
            f"{r['fd'][n]:.4f}" if r["fd"].get(n) is not None else "—" for n in cfg.nfes) + " |")
    what = "".join(f"- {r['label']}: " + "; ".join(f"NFE {n}: {w}" for n, w in r["what"].items()) + "\n"
                   for r in rows if "what" in r)
    best = {n: min(r[n] for r in rows if r.get(n) is not None and not r.get("learned")) for n in cfg.nfes}
    lrow = next((r for r in rows if r.get("learned")), {})
    frontier = {n: {"learned": lrow.get(n), "best_classic": best[n],
                    "learned_over_best_classic_at_9": lrow[n] / best[9] if n in lrow and 9 in best else None}
                for n in cfg.nfes}
    teacher_fd = fd(ref)
    summary = {
        "model_id": model.model_id, "seeds": [seeds[0], seeds[-1]], "teacher_error": ref_err,
        "teacher_fd": teacher_fd, "frontier": frontier,
        "pca2_relative_error_mean": float(pca_err.mean()), "pca2_relative_error_max": float(pca_err.max()),
        "rows": [{k if isinstance(k, str) else str(k): v for k, v in r.items()} for r in rows],
        "learned": {n: p.describe() for n, p in predictors.items()},
        "digits": digits, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }
    _plot(out / "error_vs_nfe.png", rows, cfg.nfes)
    lines = [f"- NFE {n}: learned {v['learned']:.4f}, best classic at NFE {n} {v['best_classic']:.4f}, best classic "
             f"at NFE 9 {best[9]:.4f} (learned / that: {v['learned_over_best_classic_at_9']:.2f})"
             for n, v in frontier.items() if v["learned"] is not None and 9 in best]
    md = (f"RMSE to the teacher solution (DEIS-logrho order 4, {cfg.ref_steps} steps; its own error {ref_err:.1e}) "
          f"at sigma_min = 0.002 on {cfg.seeds} held-out seeds ({seeds[0]}-{seeds[-1]}), shipped U-Net "
          f"{model.model_id}. The classic rows run on EDM's polynomial schedule (rho 7); the last rows on their "
          "own:\n\n" + table + "\n\n" + what + "\nThe frontier:\n\n" + "\n".join(lines)
          + "\n\nFréchet distance to training patches in a fixed random feature space (teacher: "
          f"{teacher_fd:.4f}):\n\n" + "\n".join(fd_lines) + "\n\n"
          f"Trajectories (Heun, 32 steps, 32 seeds) lie near a 2-D plane: relative projection error on 2 principal "
          f"components, mean {summary['pca2_relative_error_mean']:.4f}, max {summary['pca2_relative_error_max']:.4f}."
          "\n" + digits_md)
    write_text_atomic(out / "results.md", md)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=1, default=float) + "\n")
    say("\n" + md)
    say(f"Wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'error_vs_nfe.png'} and image grids in {grids} "
        f"({summary['seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU).")
    return summary
