"""The classic configuration fewstep samples with when none is given (no solver, no tuned recipe): chosen by NFE and
guidance scale, measured on every model we have so that its worst ratio to each model's best configuration is
smallest (docs/defaults.md, ``benchmarks/defaults.py``). The sigma range is always the model's own. ``fewstep tune``
measures the best configuration for one model instead. And the learned method ``fewstep train`` trains when none is
given (:data:`METHOD_RULES`, :func:`default_method`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .denoisers import sigma_range
from .recipe import Recipe, make_sigmas
from .sampling import steps_for_nfe
from .solvers import get_solver

__all__ = ["Choice", "RULES", "default_choice", "choice_for_sigmas", "default_recipe", "METHOD_RULES", "MethodChoice",
           "default_method"]


@dataclass(frozen=True)
class Choice:
    """A classic configuration: ``solver`` with ``options`` and ``afs`` on a ``schedule`` kind with ``rho``."""

    solver: str
    options: dict[str, Any] = field(default_factory=dict)
    afs: bool = True
    schedule: str = "polynomial"
    rho: float = 7.0

    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        sched = "logsnr" if self.schedule == "logsnr" else f"{self.schedule} rho={self.rho:g}"
        return f"{self.solver}{f' ({opts})' if opts else ''}{' +AFS' if self.afs else ''}, {sched}"


# (largest NFE, largest guidance scale, choice): the first rule that fits is used; guidance None or <= 1 is
# unguided. Measured (docs/defaults.md, benchmarks/defaults.py): each rule minimises the worst ratio of its RMSE to
# each model's best configuration at that NFE, over the GMM bed, the shipped U-Net, the digits model and the
# DDPM-style example (unguided: worst ratio 1.13-2.25 at NFE 3-10, against 5.0-8.9 for the earlier default iPNDM4 +
# AFS rho 7) and over the digits model at w = 2, 4, 7.5 (guided: 1.10-1.41, against 4.7-15.1; class accuracy at
# w = 4 / 7.5, NFE 5: 0.99 / 1.00, the teacher's 0.99 / 1.00).
UNIPC2 = {"max_order": 2}  # bh2, lower order at the end: UniPC's own defaults
DEIS_TAB2 = {"max_order": 3, "deis_mode": "tab"}
RULES: tuple[tuple[int, float, Choice], ...] = (
    (6, 1.0, Choice("unipc", UNIPC2, True, "time_uniform", 1.0)),
    (10**9, 1.0, Choice("unipc", UNIPC2, True, "logsnr", 1.0)),
    (7, float("inf"), Choice("deis", DEIS_TAB2, False, "time_uniform", 2.0)),
    (10**9, float("inf"), Choice("deis", DEIS_TAB2, True, "time_uniform", 2.0)),
)


def default_choice(nfe: int, guidance: float | None = None) -> Choice:
    """The measured default configuration at ``nfe`` model evaluations and classifier-free guidance scale
    ``guidance`` (None or 1: unguided)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    w = 1.0 if guidance is None else float(guidance)
    for max_nfe, max_w, choice in RULES:
        if nfe <= max_nfe and w <= max_w:
            return choice
    raise AssertionError("RULES end with a rule for every NFE and scale")


def choice_for_sigmas(num_sigmas: int, guidance: float | None = None) -> tuple[Choice, int]:
    """(choice, NFE) of the measured default on a given schedule of ``num_sigmas`` sigmas (a host's own, e.g.
    k-diffusion-style samplers and diffusers' custom ``sigmas``): the solver, options and AFS of the rule for the NFE
    the solver makes there (every default solver is multistep: one call per interval, one fewer with AFS; a host's
    jump to zero is one call more, not counted here, as in the measurements); the schedule kind is the host's. Where
    no rule fits its own NFE (guided, 8 intervals: the rule at NFE 8 has AFS, which makes 7 calls; the one at 7 has
    none, which makes 8) the choice at that number of intervals is taken without AFS."""
    if isinstance(num_sigmas, bool) or not isinstance(num_sigmas, int) or num_sigmas < 2:
        raise ValueError(f"a schedule needs at least 2 sigmas, got {num_sigmas!r}")

    def cost(c: Choice, afs: bool) -> int:
        return get_solver(c.solver, **c.options).nfe(num_sigmas) - int(afs)

    calls = num_sigmas - 1  # a multistep solver without AFS
    for nfe in (calls - 1, calls):
        if nfe >= 1:
            c = default_choice(nfe, guidance)
            if cost(c, c.afs) == nfe:
                return c, nfe
    c = default_choice(calls, guidance)
    return Choice(c.solver, dict(c.options), False, c.schedule, c.rho), cost(c, False)


def default_recipe(denoiser: Callable, nfe: int, guidance: float | None = None, *, sigma_min: float | None = None,
                   sigma_max: float | None = None, model_id: str | None = None) -> Recipe:
    """The default configuration as a :class:`Recipe` on the model's own sigma range (or the given one), ready for
    ``fewstep.sample(denoiser, noise, predictor=...)``. ``guidance`` defaults to the denoiser's own scale (a
    :class:`fewstep.denoisers.Guided`)."""
    if guidance is None:
        w = getattr(denoiser, "scale", None)
        guidance = float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else None
    c = default_choice(nfe, guidance)
    lo, hi, source = sigma_range(denoiser, sigma_min, sigma_max)
    n = steps_for_nfe(c.solver, nfe, c.afs, **c.options)
    sig = make_sigmas(c.schedule, n, lo, hi, c.rho, denoiser)
    if sig is None:
        raise ValueError(f"the default {c.label()} cannot make {n} sigmas on {hi:g} .. {lo:g}")
    return Recipe(solver=c.solver, options=dict(c.options), afs=c.afs, sigmas=tuple(sig.tolist()),
                  schedule=f"{c.schedule} rho={c.rho:g}" if c.schedule != "logsnr" else "logsnr", nfe=nfe,
                  model_id=model_id if model_id is not None else getattr(denoiser, "model_id", None),
                  guidance=guidance)



@dataclass(frozen=True)
class MethodChoice:
    """A learned method (a name of :data:`fewstep.learned.METHODS`) and why it is the default (the measurement)."""

    method: str
    why: str


# (largest NFE, guided (w > 1), choice): the first rule that fits is used; ``fewstep train`` without --method trains
# that method from ``fewstep tune``'s best classic configuration. Measured (docs/methods.md, README "Beyond AMED";
# RMSE to the teacher on held-out seeds, each method with its own defaults from the tuned start):
# unguided: the out-of-span residual operator halves the tuned classic solver's error on the shipped U-Net at NFE
# 3/4/5/7 (0.048/0.030/0.022/0.0093 vs 0.102/0.068/0.044/0.023; DyWeight: 0.0385 at NFE 4, 0.0193 at NFE 5) and
# gains 3 % on the example DDPM at NFE 5 (0.0508 vs 0.0526), where DyWeight diverged at NFE 4 and 5 (its learned
# schedule drifted; the best window kept: 0.21 / 0.12, 2.3-2.9x worse than its start). residual: never far from
# its base on any model measured; DyWeight: better on the analytic beds (docs/frontier.md), fragile elsewhere.
# guided: the same operator, guidance-aware over w in [1, 8] on the digits model, beats the measured guided default
# (DEIS, 3 points) at w = 2 / 4 / 7.5: 0.043 / 0.062 / 0.112 vs 0.077 / 0.093 / 0.122, same class accuracy as the
# teacher (docs/shipped.md).
METHOD_RULES: tuple[tuple[int, bool, MethodChoice], ...] = (
    (10**9, False, MethodChoice("residual", "measured best from the tuned start on the image models (docs/methods.md)")),
    (10**9, True, MethodChoice("residual", "measured under guidance on the digits model, guidance-aware over w in "
                                           "[1, 8] (docs/shipped.md)")),
)


def default_method(nfe: int | None = None, guided: bool = False) -> MethodChoice:
    """The learned method measured best at ``nfe`` model evaluations (None: any) with (``guided``: classifier-free
    guidance at w > 1) or without guidance (:data:`METHOD_RULES`)."""
    if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
        raise ValueError(f"nfe must be a positive int or None, got {nfe!r}")
    if not isinstance(guided, bool):
        raise TypeError(f"guided must be True or False, got {guided!r}")
    for max_nfe, rule_guided, choice in METHOD_RULES:
        if (nfe is None or nfe <= max_nfe) and guided == rule_guided:
            return choice
    raise AssertionError("METHOD_RULES end with a rule for every NFE, guided and not")
