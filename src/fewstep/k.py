"""k-diffusion-style sampling functions (Crowson's k-diffusion ``sampling.py`` call convention), for code such as
ComfyUI that calls ``sample_xxx(model, x, sigmas, extra_args=None, callback=None, disable=None)``.

``model(x, sigma, **extra_args)`` is a denoiser returning x0 with sigma of shape (B,); ``x`` is the already
scaled start ``noise * sigmas[0]``; ``sigmas`` is descending and may end with 0 (k-diffusion's convention),
which here means fewstep's ``denoise_to_zero``: the last positive sigma is the end of the solver's schedule
and one more evaluation returns x0 (what k-diffusion's Euler, Heun, DPM-2 and DPM++ do on their last step
to 0). Every function is a thin wrapper over :func:`fewstep.sample` (the one sampling loop); solver options
are keywords, named as in fewstep. ``callback`` gets k-diffusion's dict {x, i, sigma, sigma_hat, denoised}
once per step: x and sigma at the start of step i and the first model output of that step (or, with AFS,
the analytical one). Every function takes ``afs`` (the analytical first step, Zhou et al., 2024: one model call
fewer; the multistep ones through their options), so a schedule searched or learned with AFS costs here exactly
its trained NFE (``fewstep schedule export`` says how).

Functions named as in k-diffusion (``sample_euler``, ``sample_heun``, ``sample_dpm_2``, ``sample_dpmpp_2m``) do by
default what k-diffusion's do (tests/test_kdiffusion.py runs both on the same model and sigmas): in particular
the multistep ones keep their full order up to the last positive sigma (``lower_order_final=False``); pass
``lower_order_final=True`` for fewstep's default (the last steps lowered, more stable at very few steps).
k-diffusion's ``s_churn`` / ``s_tmin`` / ``s_tmax`` / ``s_noise`` are accepted at their deterministic defaults;
stochastic churn (``s_churn > 0``) is refused. ``sigmas`` may start below the model's sigma_max (image-to-image:
the host passes ``x = image + noise * sigmas[0]``), which needs nothing special here.

``sample_default`` runs fewstep's measured default (:mod:`fewstep.defaults`, docs/defaults.md) for the NFE and
guidance scale: unguided UniPC(2M) +AFS, guided (scale > 1) DEIS with 3 points (AFS from NFE 8). On the host's
``sigmas`` only the solver, its options and AFS are the default's (for the NFE those sigmas give); without ``sigmas``,
``nfe=`` also takes the default's schedule on the model's own sigma range (:func:`default_sigmas`).
:func:`describe_default` says in words what it runs.

``sample_learned`` runs any learned sampler (:mod:`fewstep.learned`: AMED-Solver, AMED-Plugin, DyWeight, EPD, PAS,
GS; AMED's feature predictors included) or a tuned recipe (``fewstep tune``'s file, :class:`fewstep.recipe.Recipe`),
given as an object or a file path, with its trained schedule, solver and AFS. The model is called where the sampler calls it (time shifts included); the callback's sigma is the
schedule's.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch

from .defaults import Choice, choice_for_sigmas, default_choice, default_recipe
from .sampling import sample

__all__ = [
    "sample_euler", "sample_heun", "sample_dpm_2", "sample_dpmpp", "sample_dpmpp_2m", "sample_dpmpp_3m",
    "sample_unipc", "sample_ipndm", "sample_ipndm_v", "sample_deis", "sample_amed", "sample_amed_plugin",
    "sample_learned", "sample_default", "default_sigmas", "describe_default",
]

Model = Callable[..., torch.Tensor]


class _KModel:
    """Adds ``extra_args`` to each call and keeps the first output of each step for the callback."""

    def __init__(self, model: Model, extra_args: dict[str, Any]) -> None:
        self.model, self.extra_args, self.first = model, extra_args, None
        self.model_id = getattr(model, "model_id", None)  # checked against a learned sampler's model
        if callable(getattr(model, "denoise_with_features", None)):  # feature-based AMED predictors read these
            self.denoise_with_features = self._with_features
        elif isinstance(model, torch.nn.Module):  # a plain network: a hook-feature predictor hooks its module
            self.feature_network = model

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.model(x, sigma, **self.extra_args)
        if self.first is None:
            self.first = out
        return out

    def _with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, feats = self.model.denoise_with_features(x, sigma, **self.extra_args)
        if self.first is None:
            self.first = out
        return out, feats


def _run(solver: str, model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None,
         callback: Callable[[dict[str, Any]], Any] | None, disable: bool | None, **options: Any) -> torch.Tensor:
    """k-diffusion arguments -> :func:`fewstep.sample`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (noise * sigmas[0]), got {type(x).__name__}")
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    denoise_to_zero = sig.numel() > 2 and float(sig[-1]) == 0.0
    if denoise_to_zero:
        sig = sig[:-1]
    if sig.numel() < 2 or float(sig[0]) <= 0:
        raise ValueError("sigmas must hold at least two positive, descending values (optionally ending with 0)")
    kmodel = _KModel(model, dict(extra_args or {}))
    start = {"x": x}
    # The callback's sigma is the host's own value (its dtype and device), as in k-diffusion.
    host_sig = sigmas if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 else sig

    def on_step(info: dict[str, Any]) -> None:
        if callback is not None:
            den = kmodel.first if kmodel.first is not None else info["denoised"]
            s = host_sig[info["i"]]
            callback({"x": start["x"], "i": info["i"], "sigma": s, "sigma_hat": s, "denoised": den})
        start["x"], kmodel.first = info["x"], None

    # fewstep.sample starts at noise * sigmas[0]: pass noise = x / sigmas[0].
    out = sample(kmodel, x / sig[0].to(x.dtype), sig, solver, denoise_to_zero=denoise_to_zero, callback=on_step,
                 progress=not disable, **options)
    if callback is not None and denoise_to_zero:  # k-diffusion reports its last step (to 0) too
        i = sig.numel() - 1
        callback({"x": start["x"], "i": i, "sigma": host_sig[i], "sigma_hat": host_sig[i], "denoised": out})
    return out


def _no_churn(fn: str, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    """k-diffusion's churn arguments: accepted at their defaults (a deterministic ODE step), else refused."""
    if s_churn != 0:
        raise ValueError(f"fewstep.k.{fn} is deterministic: s_churn={s_churn!r} (stochastic churn, Karras et al. "
                         "Alg. 2) is not supported; use s_churn=0 or k-diffusion's own sampler")


def sample_euler(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 afs: bool = False) -> torch.Tensor:
    """Euler (DDIM) in sigma (Karras et al., 2022, Alg. 2 without churn); equals k-diffusion's."""
    _no_churn("sample_euler", s_churn, s_tmin, s_tmax, s_noise)
    return _run("euler", model, x, sigmas, extra_args, callback, disable, afs=afs)


def sample_heun(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                callback: Callable | None = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                afs: bool = False) -> torch.Tensor:
    """Heun's second-order method (Karras et al., 2022, Alg. 1); equals k-diffusion's (a trailing 0 is one
    Euler step to 0, i.e. x0 of the last evaluation, in both)."""
    _no_churn("sample_heun", s_churn, s_tmin, s_tmax, s_noise)
    return _run("heun", model, x, sigmas, extra_args, callback, disable, afs=afs)


def sample_dpm_2(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0, r: float = 0.5,
                 afs: bool = False) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al., 2022), midpoint in log sigma (``r=0.5``); equals k-diffusion's."""
    _no_churn("sample_dpm_2", s_churn, s_tmin, s_tmax, s_noise)
    return _run("dpm2", model, x, sigmas, extra_args, callback, disable, r=r, afs=afs)


def sample_dpmpp(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
    """Multistep DPM-Solver++ (Lu et al., 2023); options: max_order, solver_type, lower_order_final, predict_x0."""
    return _run("dpmpp", model, x, sigmas, extra_args, callback, disable, **options)


def sample_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                    callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2023, Alg. 2); equals k-diffusion's: second order up to the last positive
    sigma (``lower_order_final=False`` by default; True gives fewstep's lowered final step)."""
    return sample_dpmpp(model, x, sigmas, extra_args, callback, disable,
                        **{"max_order": 2, "lower_order_final": False, **options})


def sample_dpmpp_3m(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                    callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al., 2023), deterministic, full order up to the last positive sigma
    (``lower_order_final=False`` by default, as k-diffusion's ``sample_dpmpp_3m_sde`` with ``eta=0``). It differs
    from that one only in its warm-up step of order 2: midpoint form here, the Taylor (phi_2) form there."""
    return sample_dpmpp(model, x, sigmas, extra_args, callback, disable,
                        **{"max_order": 3, "lower_order_final": False, **options})


def sample_unipc(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
    """UniPC (Zhao et al., 2023); options: max_order, variant ("bh1"/"bh2"), corrector, lower_order_final."""
    return _run("unipc", model, x, sigmas, extra_args, callback, disable, **options)


def sample_ipndm(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, max_order: int = 4,
                 afs: bool = False) -> torch.Tensor:
    """Improved PNDM (Zhang & Chen, 2023), fixed Adams-Bashforth weights."""
    return _run("ipndm", model, x, sigmas, extra_args, callback, disable, max_order=max_order, afs=afs)


def sample_ipndm_v(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                   callback: Callable | None = None, disable: bool | None = None, max_order: int = 4,
                   afs: bool = False) -> torch.Tensor:
    """iPNDM with variable-step Adams-Bashforth weights (Zhang & Chen, 2023)."""
    return _run("ipndm_v", model, x, sigmas, extra_args, callback, disable, max_order=max_order, afs=afs)


def sample_deis(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                callback: Callable | None = None, disable: bool | None = None, max_order: int = 3,
                deis_mode: str = "tab", afs: bool = False) -> torch.Tensor:
    """DEIS (Zhang & Chen, 2023); ``deis_mode`` "tab", "rhoab" or "logrho"."""
    return _run("deis", model, x, sigmas, extra_args, callback, disable, max_order=max_order, deis_mode=deis_mode,
                afs=afs)


def sample_amed(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                callback: Callable | None = None, disable: bool | None = None, afs: bool | None = None,
                predictor: Any = None) -> torch.Tensor:
    """AMED-Solver (Zhou et al., CVPR 2024) untrained: r = 0.5, c = a = 1 (DPM-Solver-2); with ``predictor`` (a
    trained AMED-Solver, as ``fewstep.sample(..., predictor=)`` takes it) :func:`sample_learned`."""
    if predictor is not None:
        return _trained("amed", model, x, sigmas, extra_args, callback, disable, predictor, afs)
    return _run("amed", model, x, sigmas, extra_args, callback, disable, afs=bool(afs))


def sample_amed_plugin(model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None = None,
                       callback: Callable | None = None, disable: bool | None = None, afs: bool | None = None,
                       base: str = "ipndm", predictor: Any = None, **base_options: Any) -> torch.Tensor:
    """AMED-Plugin (Zhou et al., CVPR 2024) untrained on a ``base`` solver (with its options): the base on the
    schedule refined at the geometric midpoints; with ``predictor`` (a trained AMED-Plugin) :func:`sample_learned`."""
    if predictor is not None:
        if base_options:
            raise ValueError(f"{', '.join(base_options)}: a trained AMED-Plugin fixes its base solver and options")
        return _trained("plugin", model, x, sigmas, extra_args, callback, disable, predictor, afs)
    return _run("amed_plugin", model, x, sigmas, extra_args, callback, disable, afs=bool(afs), base=base,
                **base_options)


def _trained(method: str, model: Model, x: torch.Tensor, sigmas: Any, extra_args: dict | None,
             callback: Callable | None, disable: bool | None, predictor: Any, afs: bool | None) -> torch.Tensor:
    """:func:`sample_learned` for a predictor that must be of ``method``."""
    if isinstance(predictor, (str, os.PathLike)):
        from .learned import load

        predictor = load(predictor)
    config = getattr(predictor, "config", None)
    got = config.get("method") if isinstance(config, dict) else None
    if got != method:
        raise ValueError(f"predictor must be a trained {method} sampler, got {got or type(predictor).__name__}; any "
                         "learned sampler runs with fewstep.k.sample_learned")
    return sample_learned(model, x, sigmas, extra_args, callback, disable, predictor=predictor, afs=afs)


def sample_learned(model: Model, x: torch.Tensor, sigmas: Any = None, extra_args: dict | None = None,
                   callback: Callable | None = None, disable: bool | None = None,
                   predictor: Any = None, afs: bool | None = None) -> torch.Tensor:
    """Any learned sampler (:mod:`fewstep.learned`: AMED-Solver, AMED-Plugin, DyWeight, EPD, PAS, GS), an object or
    the path of its checkpoint (:func:`fewstep.learned.load`), with its trained schedule, solver and AFS (Zhou et
    al., 2024; the methods' papers in :mod:`fewstep.learned`). ``x`` is ``noise * sigmas[0]`` of the
    trained schedule; ``sigmas``, if given, must be the trained ones, optionally with a trailing 0 (then one more
    evaluation returns x0)."""
    if predictor is None:
        raise ValueError("sample_learned needs predictor= (a learned sampler from fewstep.learned, or the path of its "
                         "checkpoint)")
    if isinstance(predictor, (str, os.PathLike)):
        from .learned import load

        predictor = load(predictor)
    setup, config = getattr(predictor, "sampling_setup", None), getattr(predictor, "config", None)
    if not (callable(setup) and isinstance(config, dict)):
        raise TypeError("predictor must be a learned sampler (fewstep.learned.train / load) or the path of its "
                        f"checkpoint, got {type(predictor).__name__}")
    if sigmas is None:
        sigmas = torch.tensor(config["sigmas"], dtype=torch.float64)
    return _run(None, model, x, sigmas, extra_args, callback, disable, predictor=predictor, afs=afs)


def _guidance(model: Model, guidance: float | None) -> float | None:
    """The given scale, else the model's own (a :class:`fewstep.denoisers.Guided` has ``scale``), else None."""
    if guidance is None:
        w = getattr(model, "scale", None)
        return float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else None
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0 (None or 1: unguided), got {guidance!r}")
    return float(guidance)


def default_sigmas(model: Model, nfe: int, guidance: float | None = None, sigma_min: float | None = None,
                   sigma_max: float | None = None) -> torch.Tensor:
    """The measured default's schedule for ``nfe`` model calls at ``guidance`` (:func:`fewstep.defaults.default_recipe`)
    on the model's own sigma range (its ``sigma_min`` / ``sigma_max`` attributes, else the given ones, else EDM's
    0.002 .. 80): float64, descending, no trailing 0."""
    rec = default_recipe(model, nfe, _guidance(model, guidance), sigma_min=sigma_min, sigma_max=sigma_max)
    return torch.tensor(rec.sigmas, dtype=torch.float64)


def _plan_default(model: Model, sigmas: Any, nfe: int | None, guidance: float | None, sigma_min: float | None,
                  sigma_max: float | None) -> tuple[Any, Choice, int, str]:
    """(sigmas, choice, NFE, where the sigmas come from) of :func:`sample_default`."""
    w = _guidance(model, guidance)
    if sigmas is None:
        if nfe is None:
            raise ValueError("sample_default needs sigmas (the host's schedule) or nfe= (the number of model calls)")
        return default_sigmas(model, nfe, w, sigma_min, sigma_max), default_choice(nfe, w), nfe, "its own schedule"
    if nfe is not None or sigma_min is not None or sigma_max is not None:
        raise ValueError("sample_default: with sigmas given, nfe / sigma_min / sigma_max do not apply (the sigmas fix "
                         "them); give either sigmas or nfe=")
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    dtz = sig.numel() > 2 and float(sig[-1]) == 0.0
    c, k = choice_for_sigmas(int(sig.numel()) - int(dtz), w)
    return sigmas, c, k + int(dtz), f"the given {sig.numel()} sigmas{', the last 0 a jump to zero' if dtz else ''}"


def describe_default(model: Model, sigmas: Any = None, nfe: int | None = None, guidance: float | None = None,
                     sigma_min: float | None = None, sigma_max: float | None = None) -> str:
    """What :func:`sample_default` runs with these arguments, in one line."""
    sig, c, k, where = _plan_default(model, sigmas, nfe, guidance, sigma_min, sigma_max)
    w = _guidance(model, guidance)
    guided = f"guidance scale {w:g}" if w is not None and w > 1 else "unguided"
    label = c.label() if sigmas is None else c.label().rsplit(", ", 1)[0]
    jump = int("jump to zero" in where)
    return f"fewstep's measured default for NFE {k - jump}, {guided}: {label} on {where} ({k} model calls)"


def sample_default(model: Model, x: torch.Tensor, sigmas: Any = None, extra_args: dict | None = None,
                   callback: Callable | None = None, disable: bool | None = None, *, nfe: int | None = None,
                   guidance: float | None = None, sigma_min: float | None = None,
                   sigma_max: float | None = None) -> torch.Tensor:
    """fewstep's measured default sampler (docs/defaults.md) for the NFE and classifier-free guidance scale
    ``guidance`` (None: the model's ``scale`` attribute if it has one, else unguided): UniPC(2M) +AFS unguided, DEIS
    (3 points, tab) when guided, AFS from NFE 8. With the host's ``sigmas`` (k-diffusion's convention, optionally
    ending with 0) it picks the solver, options and AFS of the rule for the NFE the solver makes on them (one call
    per interval, one fewer with AFS; a trailing 0 adds one call, the jump to zero); with ``sigmas=None`` and ``nfe=`` it also takes the
    default's schedule on the model's own range (:func:`default_sigmas`; then ``x = noise * that[0]``).
    :func:`describe_default` says which; equals :func:`fewstep.sample` with
    ``predictor=fewstep.defaults.default_recipe(model, nfe, guidance)``."""
    sig, c, _, _ = _plan_default(model, sigmas, nfe, guidance, sigma_min, sigma_max)
    return _run(c.solver, model, x, sig, extra_args, callback, disable, afs=c.afs, **c.options)
