"""The one sampling loop: NFE accounting, AFS, callbacks, progress, trajectory capture, per-seed noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from .schedules import validate_sigmas
from .solvers import Solver, get_solver

__all__ = ["sample", "SampleResult", "NonFiniteError", "noise_for_seeds", "count_nfe", "steps_for_nfe"]


class NonFiniteError(ValueError):
    """The denoiser returned NaN or inf."""


@dataclass
class SampleResult:
    """Result of :func:`sample`: final state, model evaluations used, schedule, optional trajectory."""

    x: torch.Tensor
    nfe: int
    sigmas: torch.Tensor
    trajectory: torch.Tensor | None = None  # (len(sigmas), B, ...): x at every sigma of the schedule


def _all_finite(t: torch.Tensor) -> bool:
    """``bool(torch.isfinite(t).all())`` in one min/max pass: NaN propagates through both and an inf becomes
    one of them. About 5x cheaper on CPU than materialising the mask (the check runs after every model call)."""
    if t.is_floating_point() and t.numel() > 0:
        lo, hi = torch.aminmax(t.detach())
        return bool(lo.isfinite() & hi.isfinite())
    return bool(torch.isfinite(t).all())


class _Evaluator:
    """Calls the denoiser: counts evaluations, applies AFS to the first call, casts dtypes, checks output."""

    def __init__(self, denoiser: Callable, afs: bool, model_dtype: torch.dtype | None = None,
                 check_finite: bool = True, want_features: bool = False) -> None:
        self.denoiser, self.afs_pending = denoiser, afs
        self.model_dtype, self.check_finite = model_dtype, check_finite
        self.nfe, self.step = 0, 0
        self.last_denoised: torch.Tensor | None = None
        # Solvers that learn from the network's features (AMED) read them here after each call.
        self.want_features = want_features
        self.features: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.afs_pending:
            # Analytical first step (Zhou et al., 2024, Sec. 3.3): d = x / sqrt(1 + sigma^2), no model call.
            self.afs_pending = False
            out = x - sigma * x / (1 + sigma**2).sqrt()
            self.features = None
        else:
            dtype = self.model_dtype or x.dtype
            sig = sigma.to(device=x.device, dtype=dtype).reshape(-1).expand(x.shape[0])
            if self.want_features:
                out, self.features = self.denoiser.denoise_with_features(x.to(dtype), sig)
            else:
                out = self.denoiser(x.to(dtype), sig)
            self.nfe += 1
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"denoiser must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
            if not out.is_floating_point():
                raise TypeError(f"denoiser must return a floating-point tensor, got dtype {out.dtype}")
            if self.check_finite and not _all_finite(out):
                raise NonFiniteError(
                    f"denoiser returned NaN/inf at step {self.step} (sigma={float(sigma):.6g}, evaluation {self.nfe})"
                )
            out = out.to(x.dtype)
        self.last_denoised = out
        return out


def _check_noise(noise: Any) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor, got dtype {noise.dtype}")
    if noise.ndim < 2 or noise.shape[0] == 0:
        raise ValueError(f"noise must have shape (B, ...) with B >= 1 and at least 2 dims, got {tuple(noise.shape)}")
    if not _all_finite(noise):
        raise ValueError("noise contains NaN or inf")
    return noise


def count_nfe(solver: Solver, num_sigmas: int, afs: bool = False, denoise_to_zero: bool = False) -> int:
    """Model evaluations :func:`sample` makes for a schedule of ``num_sigmas`` sigmas."""
    return solver.nfe(num_sigmas) - int(afs) + int(denoise_to_zero)


def steps_for_nfe(solver: str | Solver, nfe: int, afs: bool = False, **options: Any) -> int:
    """Number of sigmas that makes ``solver`` use exactly ``nfe`` evaluations, or ValueError."""
    s = get_solver(solver, **options)
    for n in range(2, nfe + 3):
        if count_nfe(s, n, afs) == nfe:
            return n
    raise ValueError(
        f"solver {s.name!r} cannot use exactly nfe={nfe} evaluations with afs={afs} "
        f"(it costs {s.evals_per_step} per step{', minus 1 with AFS' if afs else ''})"
    )


def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor | Iterable[float] | None = None,
    solver: str | Solver | None = None,
    *,
    afs: bool | None = None,
    predictor: Any = None,
    denoise_to_zero: bool = False,
    return_trajectory: bool = False,
    return_result: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    enable_grad: bool = False,
    model_dtype: torch.dtype | None = None,
    check_finite: bool = True,
    **options: Any,
) -> torch.Tensor | SampleResult:
    """Solve the probability-flow ODE from x_T = noise * sigmas[0] down to sigmas[-1].

    ``solver`` is a name in :data:`fewstep.SOLVERS` (options by keyword, named as in the papers) or a
    solver instance. ``afs`` replaces the first model evaluation by d = x / sqrt(1 + sigma^2);
    ``denoise_to_zero`` ends with one more evaluation x0 = D(x, sigma_min). Gradients are off
    (inference mode) unless ``enable_grad``. Returns the final tensor, or a :class:`SampleResult` with
    ``.x``, ``.nfe`` and ``.trajectory`` when ``return_trajectory`` or ``return_result`` is set.
    ``callback`` gets a dict with i, x, sigma, sigma_next, denoised and nfe after every step.

    With an AMED ``predictor`` (``fewstep.amed.train`` / ``fewstep.amed.load``) the schedule, solver and AFS
    come from its config; passing different ones is an error.
    """
    if predictor is not None:
        denoiser, sigmas, solver, afs = _predictor_settings(predictor, denoiser, sigmas, solver, afs, options)
    if sigmas is None:
        raise TypeError("sample() needs sigmas (e.g. fewstep.get_schedule('polynomial', 6)) or a predictor")
    solver = "euler" if solver is None else solver
    afs = False if afs is None else afs
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable (x, sigma) -> x0, got {type(denoiser).__name__}")
    for name, flag in (("afs", afs), ("denoise_to_zero", denoise_to_zero), ("return_trajectory", return_trajectory),
                       ("return_result", return_result), ("progress", progress), ("enable_grad", enable_grad)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    noise = _check_noise(noise)
    sig = validate_sigmas(sigmas)
    solv = get_solver(solver, **options)

    ev = _Evaluator(denoiser, afs, model_dtype, check_finite,
                    want_features=bool(getattr(getattr(solv, "predictor", None), "uses_features", False)))
    grad_ctx = torch.enable_grad() if enable_grad else torch.inference_mode()
    with grad_ctx:
        x = noise * sig[0]
        traj = [x] if return_trajectory else None
        state = solv.init(x, sig)
        n_steps = sig.numel() - 1
        with tqdm(total=n_steps, disable=not progress, desc=f"{solv.name}", leave=False) as bar:
            for i in range(n_steps):
                ev.step = i
                x, state = solv.step(ev, x, i, sig, state)
                if traj is not None:
                    traj.append(x)
                if callback is not None:
                    callback({"i": i, "x": x, "sigma": sig[i], "sigma_next": sig[i + 1],
                              "denoised": ev.last_denoised, "nfe": ev.nfe})
                bar.update(1)
        if denoise_to_zero:
            ev.step = n_steps
            x = ev(x, sig[-1])
    if return_trajectory or return_result:
        return SampleResult(x=x, nfe=ev.nfe, sigmas=sig, trajectory=torch.stack(traj) if traj is not None else None)
    return x


def noise_for_seeds(
    seeds: Iterable[int],
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape), one CPU generator per seed (EDM's
    ``StackedRandomGenerator``): each item depends only on its seed, never on the batch it is in.
    Drawn in float32 and cast, so a seed gives the same values in every dtype."""
    if isinstance(seeds, (str, bytes)) or isinstance(shape, int):
        raise TypeError(f"seeds must be a sequence of ints and shape a tuple of ints, got {seeds!r} and {shape!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise ValueError(f"seeds must be non-negative ints below 2**63, got {s!r}")
    shape = tuple(shape)
    if not shape or any((not isinstance(d, int)) or d <= 0 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    out = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return out.to(dtype=dtype, device=device)


def _predictor_settings(predictor: Any, denoiser: Callable, sigmas: Any, solver: Any, afs: Any,
                        options: dict[str, Any]) -> tuple[Callable, torch.Tensor, Solver, bool]:
    """Denoiser (with features if needed), schedule, solver and AFS that ``predictor`` was trained for."""
    from .amed import HookFeatures, provides_features, student_solver

    cfg = getattr(predictor, "config", None)
    if not isinstance(cfg, dict) or "student" not in cfg:
        raise TypeError("predictor must be an AMED predictor from fewstep.amed.train or fewstep.amed.load")
    if options:
        raise TypeError(f"solver options ({', '.join(options)}) come from the predictor's config; do not pass them")
    trained = torch.tensor(cfg["sigmas"], dtype=torch.float64)
    if sigmas is not None:
        given = validate_sigmas(sigmas)
        if given.shape != trained.shape or not torch.allclose(given, trained, rtol=1e-12, atol=0):
            raise ValueError(f"predictor was trained for sigmas {[round(v, 6) for v in cfg['sigmas']]}; "
                             "pass sigmas=None to use them")
    st = cfg["student"]
    if solver is not None and solver not in (st["solver"], st.get("base")):
        raise ValueError(f"predictor was trained for solver {st.get('base') or st['solver']!r}, got {solver!r}")
    if afs is not None and afs != cfg["afs"]:
        raise ValueError(f"predictor was trained with afs={cfg['afs']}, got afs={afs}")
    want_id, have_id = cfg.get("model_id"), getattr(denoiser, "model_id", None)
    if want_id is not None and have_id is not None and want_id != have_id:
        raise ValueError(f"predictor was trained for model {want_id!r}, but the denoiser is {have_id!r}")
    feats = cfg["features"]
    if feats["source"] != "none" and not provides_features(denoiser):
        if feats["source"] == "hook" and isinstance(denoiser, torch.nn.Module):
            denoiser = HookFeatures(denoiser, denoiser, feats["module"])
        else:
            raise ValueError(
                f"predictor needs {feats['source']} features ({feats.get('module') or 'denoise_with_features'}); "
                "wrap the model with fewstep.amed.HookFeatures(denoiser, network, module)"
            )
    return denoiser, trained, student_solver(cfg, predictor), bool(cfg["afs"])
