"""The main job (``fewstep demo`` / ``make demo``): AMED against every baseline on the shipped U-Net.

Loads the small EDM U-Net trained on natural-image patches, trains AMED-Solver and AMED-Plugin (iPNDM) for one
NFE, samples the same seeds with every solver at NFE 3/5/7/9, and writes image grids, an error-vs-NFE plot and
a table of RMSE to a high-NFE teacher solution and Fréchet distance to the training patches.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import amed, evaluation, metrics
from .bed import Bed
from .io import atomic_path, pyplot, save_figure, write_text_atomic
from .sampling import sample
from .schedules import get_schedule

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    out: Path = Path("fewstep-out/demo")
    seeds: int = 256
    nfes: Sequence[int] = (3, 5, 7, 9)
    amed_nfe: int = 5
    ref_steps: int = 128
    train_samples: int = 2048
    train_batch: int = 32
    M: int = 4
    fd_patches: int = 5000
    specs: Sequence[evaluation.SolverSpec] = evaluation.BASELINES
    progress: bool = True


def _slug(label: str) -> str:
    """File-name form of a table label: 'DPM-Solver++(3M) taylor' -> 'dpm-solver-3m-taylor'."""
    return "-".join(re.findall(r"[a-z0-9]+", label.lower()))


def _grid(x: torch.Tensor, cols: int = 8) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> one uint8 image of the first cols^2 samples."""
    x = x[: cols * cols].float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = (n + cols - 1) // cols
    canvas = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    return canvas.permute(1, 2, 0).numpy()


def _save_png(path: Path, img: np.ndarray, scale: int = 4) -> None:
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
        style = dict(marker="*", markersize=12, linestyle="none") if r.get("amed") else dict(marker="o")
        ax.plot(*zip(*pts), label=r["label"], **style)
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMSE to teacher")
    ax.set_xticks(list(nfes))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def run_demo(cfg: DemoConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    from .denoisers.unet import default_unet

    t0 = time.perf_counter()
    out = Path(cfg.out)
    model = default_unet() if model is None else model
    model.eval().requires_grad_(False)
    res = model.config.img_resolution
    shape = (3, res, res)
    say = print if cfg.progress else (lambda *a, **k: None)
    say(f"Model: {model.model_id} ({sum(p.numel() for p in model.parameters()):,} parameters)", flush=True)

    say(f"Teacher: DEIS-logrho order 4, {cfg.ref_steps} steps, {cfg.seeds} seeds ...", flush=True)
    bed = Bed.unet(model, seeds=cfg.seeds, ref_steps=cfg.ref_steps, fd_patches=cfg.fd_patches, progress=cfg.progress)
    noise, ref, ref_err, fd = bed.noise, bed.ref, bed.ref_error, bed.fd
    say(f"  teacher relative error vs. half the steps: {ref_err:.1e}", flush=True)

    # Geometry: how close the sampling trajectories stay to a 2-D plane (paper, Fig. 4).
    traj = sample(model, noise[:64], get_schedule("polynomial", 33), "heun", return_trajectory=True).trajectory
    pca_err = metrics.trajectory_pca_error(traj, k=2)

    predictors: dict[str, amed.AMEDPredictor] = {}
    train_secs: dict[str, float] = {}
    for student in ("amed", "ipndm"):
        n = amed.student_steps_for_nfe(student, cfg.amed_nfe)
        say(f"Training AMED {'Solver' if student == 'amed' else 'Plugin on iPNDM'} for NFE {cfg.amed_nfe} ...",
            flush=True)
        log: list = []
        predictors[student] = amed.train(
            model, network=model, shape=shape, student=student, num_steps=n, features="auto", M=cfg.M,
            total_samples=cfg.train_samples, batch=cfg.train_batch, dtype=torch.float32, model_id=model.model_id,
            progress=cfg.progress, log=log,
        )
        train_secs[student] = log[0].seconds
        kind = "amed" if student == "amed" else "amed_plugin"
        predictors[student].save(out / "predictors" / f"{kind}_{student}_nfe{cfg.amed_nfe}.safetensors")

    grids = out / "grids"
    _save_png(grids / "teacher.png", _grid(ref))

    def grid(row: dict[str, Any], nfe: int, x: torch.Tensor) -> None:
        _save_png(grids / f"{_slug(row['label'])}_nfe{nfe}.png", _grid(x))

    rows = bed.solver_table(cfg.nfes, cfg.specs, on_sample=grid, progress=cfg.progress)
    for row in rows:
        row.setdefault("fd", {})
    for student, label in (("amed", "AMED-Solver +AFS"), ("ipndm", "AMED-Plugin iPNDM +AFS")):
        res_ = sample(model, noise, predictor=predictors[student], return_result=True)
        row = {"label": label, "amed": True, "fd": {res_.nfe: fd(res_.x)}, res_.nfe: bed.rmse(res_.x)}
        rows.append(row)
        _save_png(grids / f"{_slug(label)}_nfe{res_.nfe}.png", _grid(res_.x))

    table = evaluation.format_table(rows, cfg.nfes)
    fd_lines = ["| solver | " + " | ".join(f"FD@{n}" for n in cfg.nfes) + " |", "|---|" + "---:|" * len(cfg.nfes)]
    for r in rows:
        fd_lines.append(f"| {r['label']} | " + " | ".join(
            f"{r['fd'][n]:.4f}" if n in r["fd"] else "—" for n in cfg.nfes) + " |")
    teacher_fd = fd(ref)
    summary = {
        "model_id": model.model_id, "seeds": cfg.seeds, "teacher_error": ref_err, "teacher_fd": teacher_fd,
        "pca2_relative_error_mean": float(pca_err.mean()), "pca2_relative_error_max": float(pca_err.max()),
        "train_seconds": train_secs, "rows": [{k if isinstance(k, str) else str(k): v for k, v in r.items()}
                                              for r in rows],
        "tables": {k: (p.table_values() if not p.uses_features else None) for k, p in predictors.items()},
        "seconds": time.perf_counter() - t0,
    }
    _plot(out / "error_vs_nfe.png", rows, cfg.nfes)
    md = (f"RMSE to the teacher solution (DEIS-logrho order 4, {cfg.ref_steps} steps; its own error {ref_err:.1e}) "
          f"at sigma_min = 0.002 on {cfg.seeds} seeds, shipped U-Net {model.model_id}, polynomial schedule rho=7.\n\n"
          + table + "\n\nFréchet distance to training patches in a fixed random feature space (teacher: "
          f"{teacher_fd:.4f}):\n\n" + "\n".join(fd_lines) + "\n\n"
          f"Trajectories (Heun, 32 steps, 64 seeds) lie near a 2-D plane: relative projection error on 2 principal "
          f"components, mean {summary['pca2_relative_error_mean']:.4f}, max {summary['pca2_relative_error_max']:.4f}."
          f"\n\nAMED training time: " + ", ".join(f"{k} {v:.0f} s" for k, v in train_secs.items()) + "\n")
    write_text_atomic(out / "results.md", md)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=1, default=float) + "\n")
    say("\n" + md)
    say(f"Wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'error_vs_nfe.png'}, image grids in {grids} "
        f"and predictors in {out / 'predictors'} ({summary['seconds']:.0f} s).")
    return summary
