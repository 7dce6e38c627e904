"""Analyses behind ``fewstep analyze``: PCA of sampling trajectories (Zhou et al., 2024, Fig. 4), the per-step
error of solvers (and of a learned sampler) to a teacher, and grid-searched intermediate times (Fig. 5), both as
we measure them (:func:`step_alignment`) and with the paper's own protocol (:func:`relative_alignment`).

Each takes a denoiser and a batch of noise (e.g. ``fewstep.noise_for_seeds(seeds, shape)``) and returns plain rows;
plotting and writing them is left to the caller."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["trajectory_pca", "per_step_error", "predictor_label", "step_alignment", "relative_alignment", "span_bound"]


def trajectory_pca(
    denoiser: Callable, noise: torch.Tensor, solver: str = "heun", steps: int = 32, max_k: int = 5, *,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Sample one trajectory per noise with ``solver`` on the polynomial schedule of ``steps`` steps and return
    :func:`fewstep.metrics.trajectory_pca_table` of them: per k = 1 .. ``max_k`` the relative projection error
    onto the top-k principal components and their explained variance. ``max_k`` is checked before sampling."""
    from ..metrics import trajectory_pca_table
    from ..sampling import solve
    from ..schedules import get_schedule

    if isinstance(noise, torch.Tensor) and noise.ndim >= 1 and isinstance(steps, int):
        T, D = steps + 1, noise[0].numel()  # the trajectory holds x at every sigma
        n = min(T, D)
        if isinstance(max_k, bool) or not isinstance(max_k, int) or not 1 <= max_k <= n:
            raise ValueError(f"max_k must be an int in 1..{n} (trajectories of {T} points in {D} dimensions "
                             f"have {n} principal components), got {max_k!r}")
    sig = get_schedule("polynomial", steps + 1)
    traj = solve(denoiser, noise, sig, solver, trajectory=True, progress=progress).trajectory
    return trajectory_pca_table(traj, max_k)


def predictor_label(predictor: Any) -> str:
    """'AMED-Solver' or 'AMED-Plugin on BASE' for an AMED sampler, else the sampler's ``describe()`` (e.g.
    'dyweight (window=3)'), from its config."""
    cfg = predictor.config
    if cfg["method"] == "amed":
        return "AMED-Solver"
    if cfg["method"] == "plugin":
        return f"AMED-Plugin on {cfg['base']['solver']}"
    return predictor.describe()


def per_step_error(
    denoiser: Callable, noise: torch.Tensor, solvers: Sequence[str] = ("ipndm",), nfe: int = 5, *,
    afs: bool = False, schedule: str = "polynomial", teacher_steps: int = 16, predictor: Any = None,
    sigma_min: float | None = None, sigma_max: float | None = None,
) -> list[dict[str, Any]]:
    """Per-step RMSE / L2 to a DEIS-4 teacher (:func:`fewstep.evaluation.trajectory_error`) of each solver at
    ``nfe`` on the ``schedule`` of the matching number of steps, then, with a learned sampler ``predictor``, of
    the sampler on its own schedule. Every row runs over one sigma range: the predictor's if given, else
    ``sigma_min`` / ``sigma_max``, else the model's own (:func:`fewstep.denoisers.sigma_range`). One dict per run: ``label`` (``"ipndm"``, ``"ipndm +AFS"``, or the sampler's
    :func:`predictor_label`: ``"AMED-Solver"``, ``"AMED-Plugin on BASE"``, ...) and trajectory_error's per-sigma lists
    ``sigma``, ``rmse``, ``l2``, ``teacher_change`` and ``nfe``."""
    from ..denoisers import sigma_range
    from ..evaluation import trajectory_error
    from ..sampling import steps_for_nfe
    from ..schedules import get_schedule

    if isinstance(solvers, str):
        solvers = [solvers]
    if predictor is not None:
        own = predictor.config["sigmas"]
        lo, hi = float(own[-1]), float(own[0])
    else:
        lo, hi, _ = sigma_range(denoiser, sigma_min, sigma_max)
    runs: list[dict[str, Any]] = []
    for name in solvers:
        sig = get_schedule(schedule, steps_for_nfe(name, nfe, afs), lo, hi)
        label = name + (" +AFS" if afs else "")
        runs.append({"label": label, **trajectory_error(denoiser, noise, sig, name, afs=afs,
                                                        teacher_steps=teacher_steps)})
    if predictor is not None:
        label = predictor_label(predictor)
        runs.append({"label": label, **trajectory_error(denoiser, noise, None, predictor=predictor,
                                                        teacher_steps=teacher_steps)})
    return runs


def step_alignment(
    denoiser: Callable, noise: torch.Tensor, solvers: Sequence[str] = ("amed", "ipndm", "dpmpp"), nfe: int = 5, *,
    grid: int = 49, schedule: str = "polynomial", teacher_steps: int = 8,
) -> list[dict[str, Any]]:
    """Grid-searched intermediate time r_n against r = 0.5 per step of each two-evaluation form, with the analytical
    first step (the paper's Fig. 5): :func:`fewstep.experiments.paper.alignment` with ``M=teacher_steps``. One dict
    per step."""
    from .paper.fig5 import alignment

    if isinstance(solvers, str):
        solvers = [solvers]
    return alignment(denoiser, noise, nfe=nfe, solvers=list(solvers), grid=grid, afs=True, schedule=schedule,
                     M=teacher_steps)


def relative_alignment(
    denoiser: Callable, noise: torch.Tensor, solvers: Sequence[str] = ("amed", "dpm2", "ipndm", "dpmpp", "unipc"),
    points: int = 6, *, grid: int = 49, gt_nfe: int = 80, schedule: str = "polynomial", afs: bool = False,
) -> list[dict[str, Any]]:
    """The paper's Fig. 5 protocol: relative alignment ||x^B - x^G|| - ||x^S - x^G|| per step on a schedule of
    ``points`` times (N = 6 in the paper), ground truth Heun with ``gt_nfe`` = 80 evaluations, baseline r = 0.5,
    searched r by a greedy grid search: :func:`fewstep.experiments.paper.relative_alignment`. One dict per
    step."""
    from .paper.fig5 import relative_alignment as _rel

    if isinstance(solvers, str):
        solvers = [solvers]
    return _rel(denoiser, noise, list(solvers), points, grid=grid, gt_nfe=gt_nfe, schedule=schedule, afs=afs)


def span_bound(denoiser: Callable, noise: torch.Tensor, recipe: Any, *, teacher_steps: int = 128,
               higher_nfe: int | None = None) -> dict[str, Any]:
    """How far learning coefficients can go at ``recipe``'s evaluation points (a :class:`fewstep.recipe.Recipe`:
    solver, options, AFS, sigmas): the RMSE to the teacher's solution of (1) the recipe itself, (2) the best
    per-sample least-squares combination of the start x_T and every denoiser output the recipe computes (the span
    every learned method except the residual one stays in: AMED, DyWeight, PAS, GS, EPD), and (3) the measured
    default configuration at ``higher_nfe`` (default: about twice the recipe's NFE) on the same sigma range. Returns
    {"solver", "span", "higher", "higher_nfe", "outputs"} (RMSEs per element)."""
    from ..defaults import default_recipe
    from ..sampling import solve
    from ..tune import rmse_to, teacher_solution

    lo, hi = float(recipe.sigmas[-1]), float(recipe.sigmas[0])
    ref = teacher_solution(denoiser, noise, lo, hi, teacher_steps)
    outputs: list[torch.Tensor] = []

    def record(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = denoiser(x, sigma)
        outputs.append(out.detach())
        return out

    record.model_id = getattr(denoiser, "model_id", None)  # type: ignore[attr-defined]
    x = solve(record, noise, predictor=recipe).x
    B = noise.shape[0]
    basis = torch.stack([(noise * hi).reshape(B, -1)] + [o.reshape(B, -1).to(noise.dtype) for o in outputs], -1)
    target = ref.reshape(B, -1, 1).to(basis.dtype)
    coef = torch.linalg.lstsq(basis.double(), target.double()).solution
    span = (basis.double() @ coef).reshape(ref.shape)
    higher_nfe = higher_nfe or 2 * recipe.nfe - 1
    default = default_recipe(denoiser, higher_nfe, sigma_min=lo, sigma_max=hi)
    higher = solve(denoiser, noise, predictor=default).x
    return {"solver": rmse_to(x, ref), "span": rmse_to(span, ref), "higher": rmse_to(higher, ref),
            "higher_nfe": higher_nfe, "higher_label": default.label(), "outputs": len(outputs)}
