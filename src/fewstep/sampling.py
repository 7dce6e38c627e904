"""The model call and the one sampling loop.

:class:`ModelCall` is the only way a solver reaches the model: it counts evaluations, performs the analytical
first step, gives the model the dtype it wants, checks every output and keeps the features of the latest
evaluation. :func:`iterate` advances a solver over a schedule one step at a time (diffrax-style manual stepping);
:func:`solve` / :func:`sample` and every trainer are built on it, so there is one loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from .denoisers.features import provides_features
from .denoisers.base import model_dtype as infer_model_dtype
from .schedules import validate_sigmas
from .solvers import Solver, get_solver

__all__ = [
    "sample", "solve", "iterate", "ModelCall", "Step", "Solution", "NonFiniteError", "noise_for_seeds", "seeded_noise",
    "count_nfe", "steps_for_nfe", "detach_state", "all_finite", "img2img_sigmas",
]


class NonFiniteError(ValueError):
    """The denoiser returned NaN or inf."""


@dataclass
class Solution:
    """Result of :func:`solve`: final state, model evaluations used, schedule run, optional trajectory."""

    x: torch.Tensor
    nfe: int
    sigmas: torch.Tensor
    trajectory: torch.Tensor | None = None  # (len(sigmas), B, ...): x at every sigma of the schedule


def all_finite(t: torch.Tensor) -> bool:
    """``bool(torch.isfinite(t).all())`` in one min/max pass: NaN propagates through both and an inf becomes
    one of them. About 5x cheaper on CPU than materialising the mask (the check runs after every model call)."""
    if t.is_floating_point() and t.numel() > 0:
        lo, hi = torch.aminmax(t.detach())
        return bool(lo.isfinite() & hi.isfinite())
    return bool(torch.isfinite(t).all())


def _sigma_text(sigma: torch.Tensor) -> str:
    """A sigma for an error message: one number, or the range of a per-sample sigma."""
    s = sigma.detach().reshape(-1).double()
    if s.numel() == 1 or bool((s == s[0]).all()):
        return f"{float(s[0]):.6g}"
    return f"{float(s.min()):.6g}..{float(s.max()):.6g} (per sample)"


def _is_dtype_mismatch(err: RuntimeError) -> bool:
    msg = str(err)
    return ("should be the same" in msg and "type" in msg) or "expected scalar type" in msg or \
        ("dtype" in msg and "mismatch" in msg) or "expected both vectors to have same dtype" in msg


class ModelCall:
    """The denoiser as solvers see it: ``call(x, sigma) -> x0``.

    * counts model evaluations in ``nfe`` (AFS costs none);
    * ``afs``: the first call is the analytical first step d = x / sqrt(1 + sigma^2) (Zhou et al., 2024,
      Sec. 3.3) instead of a model evaluation;
    * gives the model ``model_dtype`` (default: the model's own, :func:`fewstep.denoisers.model_dtype`, else
      the dtype of ``x``) and returns x0 in the dtype of ``x``, so a float64 trajectory can drive a float32 model;
    * checks that every output is a finite floating tensor of the input's shape (``check_finite``);
    * with ``features=True`` calls ``denoise_with_features`` and keeps the result in :attr:`features` (None
      after the analytical first step): this is how learned samplers read the network's features.
    :func:`iterate` tells it the step index (:meth:`begin_step`) for error messages.
    """

    def __init__(self, denoiser: Callable, *, afs: bool = False, model_dtype: torch.dtype | None = None,
                 check_finite: bool = True, features: bool = False) -> None:
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable (x, sigma) -> x0, got {type(denoiser).__name__}")
        if model_dtype is not None and not (isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point):
            raise TypeError(f"model_dtype must be a floating torch.dtype or None, got {model_dtype!r}")
        if features and not provides_features(denoiser):
            raise ValueError("features=True needs a denoiser with denoise_with_features(x, sigma) -> (x0, features); "
                             "wrap the model with fewstep.denoisers.HookFeatures(denoiser, network, module)")
        self.denoiser = denoiser
        self.model_dtype = model_dtype if model_dtype is not None else infer_model_dtype(denoiser)
        self.check_finite, self.want_features = check_finite, features
        self._afs_pending = bool(afs)
        self._step = 0
        self.nfe = 0
        self.last_denoised: torch.Tensor | None = None
        self._features: torch.Tensor | None = None

    @property
    def features(self) -> torch.Tensor | None:
        """Features (B, F) of the latest evaluation (None after the analytical first step or without features)."""
        return self._features

    @property
    def step(self) -> int:
        """Index of the current step of the schedule (set by :func:`iterate`)."""
        return self._step

    def begin_step(self, i: int) -> None:
        """Mark the start of step ``i`` (used in error messages)."""
        self._step = i

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self._afs_pending:
            # Analytical first step (Zhou et al., 2024, Sec. 3.3): d = x / sqrt(1 + sigma^2), no model call.
            self._afs_pending = False
            out = x - sigma * x / (1 + sigma**2).sqrt()
            self._features = None
        else:
            if not bool((sigma > 0).all()):
                raise ValueError(f"the model was asked to denoise at sigma {_sigma_text(sigma)} (step {self._step}): "
                                 "sigma must be positive; a learned sampler whose time parameters give this is not "
                                 "usable (retrain it, e.g. with a smaller learning rate)")
            dtype = self.model_dtype or x.dtype
            sig = sigma.to(device=x.device, dtype=dtype).reshape(-1).expand(x.shape[0])
            try:
                if self.want_features:
                    out, self._features = self.denoiser.denoise_with_features(x.to(dtype), sig)
                else:
                    out = self.denoiser(x.to(dtype), sig)
            except RuntimeError as e:
                if _is_dtype_mismatch(e):
                    raise TypeError(
                        f"the model rejected {dtype} input ({e}); pass model_dtype= (e.g. torch.float32) to "
                        "fewstep.sample / fewstep.learned.train, or give the denoiser a .dtype attribute") from e
                raise
            self.nfe += 1
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"denoiser must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
            if not out.is_floating_point():
                raise TypeError(f"denoiser must return a floating-point tensor, got dtype {out.dtype}")
            if self.check_finite and not all_finite(out):
                raise NonFiniteError(f"denoiser returned NaN/inf at step {self._step} (sigma={_sigma_text(sigma)}, "
                                     f"evaluation {self.nfe})")
            out = out.to(x.dtype)
        self.last_denoised = out
        return out


@dataclass(frozen=True)
class Step:
    """What :func:`iterate` yields after step ``i`` (sigmas[i] -> sigmas[i + 1])."""

    i: int
    x: torch.Tensor
    state: Any
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    denoised: torch.Tensor | None
    nfe: int


def detach_state(state: Any) -> Any:
    """Detach every tensor in a solver state (dataclasses, tuples, lists), for one backward per step."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: detach_state(getattr(state, f.name))
                                             for f in dataclasses.fields(state)})
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    return state


def iterate(call: ModelCall | Callable, solver: Solver, x: torch.Tensor, sigmas: Any, *, state: Any = None,
            detach: bool = False, check_state: bool = False, progress: bool = False,
            desc: str | None = None) -> Iterator[Step]:
    """Advance ``x`` (the state at sigmas[0]) over the schedule, yielding a :class:`Step` after every step.

    The one loop of fewstep (diffrax-style manual stepping): :func:`sample` consumes it, trainers compute their
    losses on the yielded states. ``detach``: after each yield the state is detached from the graph (one
    backward per step, AMED's Algorithm 1). ``check_state``: raise :class:`NonFiniteError` when a step produces
    NaN/inf from finite model outputs (a learned sampler's parameters or the schedule are to blame). Gradients are
    whatever the caller's context says."""
    n = len(sigmas) - 1
    state = solver.init(x, sigmas) if state is None else state
    with tqdm(total=n, disable=not progress, desc=desc or solver.name, leave=False) as bar:
        for i in range(n):
            if isinstance(call, ModelCall):
                call.begin_step(i)
            x, state = solver.step(call, x, i, sigmas, state)
            if check_state and not all_finite(x):
                raise NonFiniteError(
                    f"solver {solver.name!r} produced NaN/inf at step {i} (sigma {_sigma_text(sigmas[i])} -> "
                    f"{_sigma_text(sigmas[i + 1])}) although the model's outputs were finite: its learned parameters "
                    "or the schedule are not usable")
            yield Step(i, x, state, sigmas[i], sigmas[i + 1], getattr(call, "last_denoised", None),
                       getattr(call, "nfe", 0))
            if detach:
                x, state = x.detach(), detach_state(state)
            bar.update(1)


def _check_noise(noise: Any) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor, got dtype {noise.dtype}")
    if noise.ndim < 2 or noise.shape[0] == 0:
        raise ValueError(f"noise must have shape (B, ...) with B >= 1 and at least 2 dims, got {tuple(noise.shape)}")
    if not all_finite(noise):
        raise ValueError("noise contains NaN or inf")
    return noise


def count_nfe(solver: Solver, num_sigmas: int, afs: bool = False, denoise_to_zero: bool = False) -> int:
    """Model evaluations :func:`sample` makes for a schedule of ``num_sigmas`` sigmas."""
    return solver.nfe(num_sigmas) - int(afs) + int(denoise_to_zero)


def steps_for_nfe(solver: str | Solver, nfe: int, afs: bool = False, **options: Any) -> int:
    """Number of sigmas (the ``num_steps`` of :func:`fewstep.get_schedule`) at which ``solver`` (a name with its
    ``options``, or an instance, e.g. a learned sampler's ``solver()``) makes exactly ``nfe`` model evaluations, or
    a ValueError naming the reachable ones. Computed directly: every solver's cost is affine in the number of steps.
    For the AMED-Plugin pass ``"amed_plugin"`` with ``base=...``."""
    s = get_solver(solver, **options)
    from .jsonio import MAX_NFE

    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    if nfe > MAX_NFE:
        raise ValueError(f"nfe must be at most {MAX_NFE}, got {nfe}")
    first, per = count_nfe(s, 2, afs), count_nfe(s, 3, afs) - count_nfe(s, 2, afs)
    if per < 1:
        raise ValueError(f"solver {s.name!r} makes no model evaluation per step")
    k, rem = divmod(nfe - first, per)
    if rem == 0 and k >= 0 and count_nfe(s, k + 2, afs) == nfe:
        return k + 2
    costs = [c for c in (first + j * per for j in range(8)) if c > 0][:6]
    raise ValueError(
        f"solver {s.name!r} cannot use exactly nfe={nfe} evaluations with afs={afs}; it can use "
        f"{', '.join(map(str, costs))}, ... (it costs {per} per step{', minus 1 with AFS' if afs else ''})")


def img2img_sigmas(sigmas: Any, strength: float) -> torch.Tensor:
    """The tail of a schedule that image-to-image with ``strength`` runs (diffusers' convention): of the N - 1
    steps of ``sigmas`` the last ``int(strength * (N - 1))`` are kept, so strength 1 is the whole schedule and
    strength 0.5 starts about half-way down. A ValueError if that keeps no step. To keep the number of steps
    instead, make a schedule that starts lower: ``get_schedule(kind, n, sigma_min, sigma_max=s)`` and
    ``sample(..., x_init=images)``."""
    sig = validate_sigmas(sigmas)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    steps = sig.numel() - 1
    keep = min(int(strength * steps + 1e-9), steps)
    if keep < 1:
        raise ValueError(f"strength {strength} keeps no step of this {sig.numel()}-sigma schedule (it keeps "
                         f"int(strength * {steps}) steps); raise strength to at least {1 / steps:.3g} or use more steps")
    return sig[steps - keep:]


def _check_x_init(x_init: Any, noise: torch.Tensor) -> torch.Tensor:
    if not isinstance(x_init, torch.Tensor) or not x_init.is_floating_point():
        raise TypeError(f"x_init must be a floating-point torch.Tensor of images, got "
                        f"{getattr(x_init, 'dtype', type(x_init).__name__)}")
    if x_init.shape != noise.shape and not (x_init.ndim == noise.ndim and x_init.shape[0] == 1
                                            and x_init.shape[1:] == noise.shape[1:]):
        raise ValueError(f"x_init must have the noise's shape {tuple(noise.shape)} (or batch 1), got "
                         f"{tuple(x_init.shape)}")
    if not all_finite(x_init):
        raise ValueError("x_init contains NaN or inf")
    return x_init.to(device=noise.device, dtype=noise.dtype)


def solve(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor | Iterable[float] | None = None,
    solver: str | Solver | None = None,
    *,
    x_init: torch.Tensor | None = None,
    strength: float | None = None,
    afs: bool | None = None,
    predictor: Any = None,
    denoise_to_zero: bool = False,
    trajectory: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    enable_grad: bool = False,
    model_dtype: torch.dtype | None = None,
    check_finite: bool = True,
    **options: Any,
) -> Solution:
    """Solve the probability-flow ODE from x_T = noise * sigmas[0] down to sigmas[-1]; the :class:`Solution` holds
    the final state ``x``, the model evaluations made (``nfe``), the schedule run and, with ``trajectory``, the
    state at every sigma. :func:`sample` is ``solve(...).x``.

    ``solver`` is a name in :data:`fewstep.SOLVERS` (options by keyword, named as in the papers) or a
    solver instance. ``afs`` replaces the first model evaluation by d = x / sqrt(1 + sigma^2);
    ``denoise_to_zero`` ends with one more evaluation x0 = D(x, sigma_min). Gradients are off
    (inference mode) unless ``enable_grad``. ``callback`` gets a dict with i, x, sigma, sigma_next, denoised and nfe
    after every step. ``model_dtype``: the dtype the model is called in (default: its parameters', see
    :class:`ModelCall`).

    With a learned sampler as ``predictor`` (:func:`fewstep.learned.train` / :func:`fewstep.learned.load`, any
    method) the schedule, solver and AFS come from its config (its ``sampling_setup``); passing different ones is an
    error.

    Image-to-image (partial denoising, every solver): with ``x_init`` (images in the model's space, shape of
    ``noise`` or batch 1) the ODE starts at x = x_init + noise * sigmas[0], i.e. the images noised to sigmas[0],
    which is then below the model's sigma_max. ``strength`` (needs ``x_init``) first cuts ``sigmas`` to the tail
    :func:`img2img_sigmas` keeps; strength 1 keeps the whole schedule and starts from noise * sigmas[0] exactly as
    plain sampling (at sigma_max the images are ignored). NFE is that of the schedule actually run. A learned
    sampler was trained from pure noise on one schedule and is refused here. AFS (d = x / sqrt(1 + sigma^2))
    assumes pure noise at a large sigma and is a poor first step from a noised image.
    """
    if (x_init is not None or strength is not None) and predictor is not None:
        raise ValueError("image-to-image (x_init / strength) cannot use a learned sampler: it is trained from pure "
                         "noise on its one schedule. Use a plain solver, or train a sampler for the partial schedule "
                         "(fewstep.learned.train(..., schedule=ScheduleSpec(sigma_max=<the start sigma>))) and "
                         "sample it from noise")
    if strength is not None and x_init is None:
        raise TypeError("strength needs x_init (the images to start from)")
    if predictor is not None:
        setup = getattr(predictor, "sampling_setup", None)
        if not callable(setup):
            raise TypeError("predictor must be a learned sampler from fewstep.learned.train / fewstep.learned.load, "
                            f"got {type(predictor).__name__}")
        if options:
            raise TypeError(f"solver options ({', '.join(options)}) come from the predictor's config; do not pass them")
        shape = tuple(noise.shape[1:]) if isinstance(noise, torch.Tensor) and noise.ndim >= 2 else None
        denoiser, sigmas, solver, afs = setup(denoiser, sigmas=sigmas, solver=solver, afs=afs, shape=shape)
    if sigmas is None:
        raise TypeError("solve() / sample() need sigmas (e.g. fewstep.get_schedule('polynomial', 6)) or a predictor")
    solver = "euler" if solver is None else solver
    afs = False if afs is None else afs
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable (x, sigma) -> x0, got {type(denoiser).__name__}")
    for name, flag in (("afs", afs), ("denoise_to_zero", denoise_to_zero), ("trajectory", trajectory),
                       ("progress", progress), ("enable_grad", enable_grad)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    noise = _check_noise(noise)
    sig = validate_sigmas(sigmas)
    if x_init is not None:
        x_init = _check_x_init(x_init, noise)
        if strength is not None:
            full = sig.numel()
            sig = img2img_sigmas(sig, strength)
            if sig.numel() == full:  # strength 1: plain sampling from noise * sigma_max
                x_init = None
    solv = get_solver(solver, **options)
    learned = getattr(solv, "predictor", None)
    if learned is not None and callable(getattr(learned, "check_solver", None)):
        learned.check_solver(solv, sig, afs)
    call = ModelCall(denoiser, afs=afs, model_dtype=model_dtype, check_finite=check_finite,
                     features=bool(getattr(learned, "uses_features", False)))
    grad_ctx = torch.enable_grad() if enable_grad else torch.inference_mode()
    with grad_ctx:
        x = noise * sig[0] if x_init is None else x_init + noise * sig[0]
        traj = [x] if trajectory else None
        for st in iterate(call, solv, x, sig, check_state=check_finite, progress=progress, desc=solv.name):
            x = st.x
            if traj is not None:
                traj.append(x)
            if callback is not None:
                callback({"i": st.i, "x": x, "sigma": st.sigma, "sigma_next": st.sigma_next,
                          "denoised": st.denoised, "nfe": st.nfe})
        if denoise_to_zero:
            call.begin_step(sig.numel() - 1)
            x = call(x, sig[-1])
    # Learned per-sample parameters (float64) may promote the state; the result has the noise's dtype.
    path = torch.stack([t.to(noise.dtype) for t in traj]) if traj is not None else None
    return Solution(x=x.to(noise.dtype), nfe=call.nfe, sigmas=sig, trajectory=path)


def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    sigmas: torch.Tensor | Iterable[float] | None = None,
    solver: str | Solver | None = None,
    *,
    x_init: torch.Tensor | None = None,
    strength: float | None = None,
    afs: bool | None = None,
    predictor: Any = None,
    denoise_to_zero: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    enable_grad: bool = False,
    model_dtype: torch.dtype | None = None,
    check_finite: bool = True,
    **options: Any,
) -> torch.Tensor:
    """The samples x_0 = :func:`solve` (...).x: the probability-flow ODE solved from x_T = noise * sigmas[0] to
    sigmas[-1] with ``solver`` (a name in :data:`fewstep.SOLVERS` and its options, or an instance) or a learned
    sampler (``predictor``). Every argument as in :func:`solve`, which also returns the NFE and the trajectory."""
    return solve(denoiser, noise, sigmas, solver, x_init=x_init, strength=strength, afs=afs, predictor=predictor,
                 denoise_to_zero=denoise_to_zero, callback=callback, progress=progress, enable_grad=enable_grad,
                 model_dtype=model_dtype, check_finite=check_finite, **options).x


def noise_for_seeds(
    seeds: Iterable[int],
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape), one CPU generator per seed (EDM's
    ``StackedRandomGenerator``): each item depends only on its seed, never on the batch it is in nor on torch's
    global default dtype. Drawn in float32 and cast, so a seed gives the same values in every dtype."""
    if isinstance(seeds, (str, bytes)) or isinstance(shape, int):
        raise TypeError(f"seeds must be a sequence of ints and shape a tuple of ints, got {seeds!r} and {shape!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise ValueError(f"seeds must be non-negative ints below 2**63, got {s!r}")
    from .jsonio import check_shape

    shape = check_shape(tuple(shape))  # bounded before anything is allocated
    out = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32)
                       for s in seeds])
    return out.to(dtype=dtype, device=device)


def seeded_noise(denoiser: Any, seeds: Iterable[int], shape: tuple[int, ...] | torch.Size,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`noise_for_seeds`, after conditioning ``denoiser`` on these seeds when it draws a condition per seed
    (``draw_for_seeds``, e.g. the prompt of each sample of a text-to-image model:
    :class:`fewstep.integrations.diffusers.PromptGuided`). Every seeded loop of fewstep (training batches, tuning,
    reports, sampling) draws its noise here, so a seed always comes with the same condition."""
    seeds = list(seeds)
    noise = noise_for_seeds(seeds, shape, dtype=dtype, device=device)
    obj = denoiser
    for _ in range(4):  # the denoiser, or what a training wrapper holds
        draw = getattr(obj, "draw_for_seeds", None)
        if callable(draw):
            draw(seeds)
            break
        obj = next((getattr(obj, n) for n in ("denoiser", "model", "inner") if getattr(obj, n, None) is not None),
                   None)
        if obj is None:
            break
    return noise
