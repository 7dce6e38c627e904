"""Time-schedule search by dynamic programming over a fine grid (GITS: Chen et al., ICML 2024, "On the Trajectory
Regularity of ODE-based Diffusion Sampling", Sec. 5).

A few hundred teacher trajectories on a fine grid give, for every pair of grid points i < j, the cost of one
Euler step from the teacher's x_i (with the teacher's direction there) to sigma_j, measured against the teacher's
x_j. Dynamic programming picks the K-interval path from sigma_max to sigma_min of least total cost, where the
cost-to-go of the remaining steps is weighted by ``coeff`` (> 1 penalises error made early, which later steps
inherit). The result is a plain schedule, usable with every solver.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from .teacher import teacher_options as teacher_options_for
from .sampling import seeded_noise, solve, steps_for_nfe
from .schedules import get_schedule, validate_sigmas
from .seeds import GITS_WARMUP
from .solvers import get_solver

__all__ = ["cost_matrix", "dp_schedule", "search_schedule", "TEACHERS"]

# Multistep teachers evaluate the model exactly once at each grid point, on the trajectory (UniPC's corrector
# moves x after its evaluation, so it is not one of them).
TEACHERS = ("deis", "ipndm", "ipndm_v", "dpmpp", "euler")


def _teacher(denoiser: Callable, noise: torch.Tensor, grid: torch.Tensor, teacher: str,
             teacher_options: dict[str, Any] | None, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher trajectory on ``grid`` (G, B, ...) and the denoised output at each grid point but the last."""
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}")
    denoised: list[torch.Tensor] = []
    res = solve(denoiser, noise, grid, teacher, trajectory=True, progress=progress,
                 callback=lambda info: denoised.append(info["denoised"]), **teacher_options_for(teacher, teacher_options))
    return res.trajectory, torch.stack(denoised)


def _cost(traj: torch.Tensor, denoised: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    traj = traj.to(torch.float64).flatten(2)  # (G, B, D)
    g = grid.to(torch.float64)
    d = (traj[:-1] - denoised.to(torch.float64).flatten(2)) / g[:-1, None, None]  # dx/dsigma at x_i
    G = len(g)
    cost = torch.full((G, G), float("inf"), dtype=torch.float64)
    for i in range(G - 1):
        step = traj[i] + (g[i + 1:, None, None] - g[i]) * d[i]  # (G-i-1, B, D)
        cost[i, i + 1:] = (step - traj[i + 1:]).norm(dim=-1).mean(-1)
    return cost


def cost_matrix(denoiser: Callable, noise: torch.Tensor, grid: torch.Tensor, teacher: str = "deis",
                teacher_options: dict[str, Any] | None = None, progress: bool = False) -> torch.Tensor:
    """(G, G) matrix: ``C[i, j]`` (i < j) = mean over samples of ||x_i + (sigma_j - sigma_i) d_i - x_j||, the
    one-step Euler error between grid points on the teacher trajectory; ``inf`` for j <= i."""
    grid = validate_sigmas(grid, "grid")
    return _cost(*_teacher(denoiser, noise, grid, teacher, teacher_options, progress), grid)


def dp_schedule(cost: torch.Tensor, intervals: int, coeff: float = 1.15) -> list[int]:
    """Indices 0 = i_0 < i_1 < ... < i_K = G-1 that minimise C[i_0,i_1] + coeff (C[i_1,i_2] + coeff (...)),
    i.e. sum_k coeff^k C[i_k, i_{k+1}] (GITS' dynamic programme)."""
    G = cost.shape[0]
    if cost.shape != (G, G):
        raise ValueError(f"cost must be a square matrix, got shape {tuple(cost.shape)}")
    if isinstance(intervals, bool) or not isinstance(intervals, int) or not 1 <= intervals <= G - 1:
        raise ValueError(f"intervals must be an int in [1, {G - 1}] for a grid of {G} points, got {intervals!r}")
    if not coeff > 0:
        raise ValueError(f"coeff must be positive, got {coeff!r}")
    c = cost.to(torch.float64)
    # V[k][i]: least weighted cost from grid point i to the end in exactly k intervals; nxt[k][i]: the next point.
    V = torch.full((intervals + 1, G), float("inf"), dtype=torch.float64)
    nxt = torch.full((intervals + 1, G), -1, dtype=torch.long)
    V[1] = c[:, -1]
    V[1, -1] = float("inf")
    nxt[1] = G - 1
    for k in range(2, intervals + 1):
        total = c[:, :-1] + coeff * V[k - 1, None, :-1]  # (i, j): step i -> j, then k-1 intervals from j
        V[k], nxt[k] = total.min(dim=1)
    if not torch.isfinite(V[intervals, 0]):
        raise ValueError(f"no path of {intervals} intervals through a grid of {G} points")
    path, i = [0], 0
    for k in range(intervals, 0, -1):
        i = int(nxt[k, i])
        path.append(i)
    return path


def search_schedule(
    denoiser: Callable,
    shape: Sequence[int],
    *,
    nfe: int,
    solver: str = "ipndm",
    solver_options: dict[str, Any] | None = None,
    afs: bool = False,
    grid: int | torch.Tensor = 61,
    grid_kind: str = "polynomial",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    warmup: int = 256,
    coeff: float = 1.15,
    teacher: str = "deis",
    teacher_options: dict[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    info: dict[str, Any] | None = None,
) -> torch.Tensor:
    """GITS schedule for ``solver`` at ``nfe`` evaluations: ``warmup`` teacher trajectories on a fine ``grid``
    (a number of points of ``grid_kind``, or a tensor), the Euler cost matrix, and dynamic programming.

    With ``afs`` a solver of one evaluation per step gets one more interval for the same NFE; as in GITS, the
    programme then places the other points and the extra one is chosen inside the first interval by the final error
    on the warm-up batch. (For two-evaluation solvers AFS only saves the first call; the programme places all points.)
    Warm-up seeds are ``seed * 10**9 + 500_000_000 + k``, apart from AMED's training seeds and from 0, 1, ...
    (evaluation). ``info``, if given, receives the cost matrix, grid indices and grid. Returns the sigmas."""
    options = dict(solver_options or {})
    num_steps = steps_for_nfe(solver, nfe, afs, **options)
    g = get_schedule(grid_kind, grid, sigma_min, sigma_max, rho) if isinstance(grid, int) else validate_sigmas(grid, "grid")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be a positive int, got {warmup!r}")
    from .jsonio import MAX_ARRAY_BYTES

    need = 2 * g.numel() * warmup * math.prod(shape) * 8  # the trajectories and denoised outputs, float64
    if need > MAX_ARRAY_BYTES:
        raise ValueError(f"grid {g.numel()} x warmup {warmup} x sample {tuple(shape)} needs {need} bytes of teacher "
                         f"trajectories; at most {MAX_ARRAY_BYTES}: use a coarser grid or fewer warm-up samples")
    first = seed * 10**9 + GITS_WARMUP
    noise = seeded_noise(denoiser, range(first, first + warmup), shape, dtype=dtype)
    traj, denoised = _teacher(denoiser, noise, g, teacher, teacher_options, progress)
    cost = _cost(traj, denoised, g)
    solv = get_solver(solver, **options)
    extra = afs and solv.nfe(3) - solv.nfe(2) == 1  # AFS buys a whole interval
    idx = dp_schedule(cost, num_steps - 1 - int(extra), coeff)
    if extra:
        if idx[1] < 2:
            raise ValueError("the grid is too coarse to place the AFS point; use a finer grid")
        ref = traj[-1]  # the teacher's solution
        best = None
        for k in range(1, idx[1]):
            cand = [0, k] + idx[1:]
            x = solve(denoiser, noise, g[cand], solver, afs=True, **options).x
            err = float((x - ref).flatten(1).norm(dim=1).mean())
            if best is None or err < best[0]:
                best = (err, cand)
        idx = best[1]
    if info is not None:
        info.update({"cost": cost, "indices": idx, "grid": g})
    return g[idx].clone()
