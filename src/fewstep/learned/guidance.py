"""Guidance-aware parameter tables: one learned sampler for every classifier-free guidance scale.

A learned sampler trained at one guidance scale w must be retrained for every other. Here each of its parameter
tables theta becomes a function of the scale,

    theta(w) = sum_{p=0..d} P_p(u) theta_p,    u = 2 (w - lo) / (hi - lo) - 1,

with P_p the Legendre polynomials (P_0 = 1) and [lo, hi] the range of scales it was trained over. theta_0 starts at
the sampler's neutral values and theta_{p>0} at zero, so before training the sampler equals its base solver at
every scale. Training draws one scale per batch (:func:`fewstep.learned.train` with ``guidance_scales=``); at
sampling time the scale comes from the denoiser (``Guided.scale``) or from ``sampler.guidance_scale``.

:func:`make_scale_aware` rewires a module's own parameters with ``torch.nn.utils.parametrize``: the module keeps
reading ``self.table`` (now the table at the current scale) and its state dict holds the (d + 1, ...) coefficients.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["ScaleState", "make_scale_aware", "check_guidance_config", "resolve_scale", "legendre", "MAX_DEGREE",
           "NEEDS_SCALE",
           "check_guidance_scales", "scale_cycle", "ScaleAware", "guidance_entry", "conditioning_of",
           "check_conditioning_record", "conditioning_problem"]

MAX_DEGREE = 4
NEEDS_SCALE = ("this sampler is guidance-aware and needs the guidance scale: sample a Guided denoiser (its scale is "
               "used; fewstep sample --class C --guidance W) or set sampler.guidance_scale = w")


def legendre(u: float, degree: int) -> torch.Tensor:
    """(P_0(u), ..., P_degree(u)) in float64 (Bonnet's recursion)."""
    vals = [1.0, u]
    for n in range(1, degree):
        vals.append(((2 * n + 1) * u * vals[n] - n * vals[n - 1]) / (n + 1))
    return torch.tensor(vals[:degree + 1], dtype=torch.float64)


class ScaleState:
    """The guidance range [lo, hi], the basis degree and the current scale shared by one sampler's tables."""

    def __init__(self, lo: float, hi: float, degree: int) -> None:
        self.lo, self.hi, self.degree = float(lo), float(hi), int(degree)
        self.scale: float | None = None

    def basis(self) -> torch.Tensor:
        if self.scale is None:
            raise ValueError(NEEDS_SCALE)
        return legendre(2 * (self.scale - self.lo) / (self.hi - self.lo) - 1, self.degree)


class _ScaleBasis(nn.Module):
    """theta(w) = sum_p P_p(u(w)) theta_p, as a parametrization of one parameter tensor."""

    def __init__(self, state: ScaleState) -> None:
        super().__init__()
        self.state = state

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        return torch.tensordot(self.state.basis().to(coeffs), coeffs, dims=1)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        """The coefficients of a scale-independent table: theta_0 = value, the others zero."""
        out = value.new_zeros((self.state.degree + 1, *value.shape))
        out[0] = value
        return out


def make_scale_aware(module: nn.Module, lo: float, hi: float, degree: int) -> ScaleState:
    """Make every parameter registered directly on ``module`` a degree-``degree`` polynomial in the guidance scale
    over [lo, hi] (values unchanged at every scale until trained); returns the shared :class:`ScaleState`."""
    state = ScaleState(lo, hi, degree)
    for name in list(module._parameters):
        if module._parameters[name] is not None:
            parametrize.register_parametrization(module, name, _ScaleBasis(state), unsafe=True)
    return state


def guidance_entry(scales: Sequence[float] | None, degree: int) -> dict[str, Any] | None:
    """The checkpoint's ``guidance`` entry for a sampler trained over ``scales`` (None: not guidance-aware)."""
    return None if scales is None else {"scales": [min(scales), max(scales)], "degree": degree}


def check_guidance_config(cfg: Any) -> str | None:
    """None if ``cfg`` is a valid guidance entry ({"scales": [lo, hi], "degree": d}), else what is wrong."""
    if not isinstance(cfg, dict) or set(cfg) != {"scales", "degree"}:
        return 'an object {"scales": [lo, hi], "degree": d}'
    s, d = cfg["scales"], cfg["degree"]
    if (not isinstance(s, list) or len(s) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                      or not math.isfinite(v) for v in s) or not s[0] < s[1]):
        return "scales: two finite numbers lo < hi"
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DEGREE:
        return f"degree: an int in 1..{MAX_DEGREE}"
    return None


def resolve_scale(state: ScaleState, explicit: float | None, denoiser: Callable) -> float:
    """The scale to sample at: the denoiser's ``scale`` (a :class:`fewstep.denoisers.Guided`) or ``explicit``; both
    given must agree. Warns outside the trained range (a polynomial extrapolates poorly)."""
    have = getattr(denoiser, "scale", None)
    if isinstance(have, bool) or not isinstance(have, (int, float)):
        have = None
    if have is not None and explicit is not None and float(have) != float(explicit):
        raise ValueError(f"sampler.guidance_scale is {explicit:g} but the denoiser guides with scale {have:g}; set "
                         "one of them (or sampler.guidance_scale = None)")
    w = have if have is not None else explicit
    if w is None:
        raise ValueError(NEEDS_SCALE)
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"guidance scale must be finite, got {w}")
    if not state.lo <= w <= state.hi:  # refused, not warned: a polynomial in w extrapolates without any control
        raise ValueError(f"guidance scale {w:g} is outside the range [{state.lo:g}, {state.hi:g}] this sampler was "
                         "trained over; its tables would be extrapolated (polynomials in w diverge outside their "
                         "range). Sample at a scale in the range, or train over scales that include it "
                         "(--guidance-scales)")
    return w


# ------------------------------------------------------------------------------------------------- conditioning
# What a sampler was trained under, recorded in its checkpoint (config["training"]["conditioning"]) and so in the
# resume fingerprint: the classifier-free guidance scale (None: unguided, or guidance-aware over config "guidance")
# and the class labels (None: no labels, the model as it is). Sampling under other settings is refused (a ValueError,
# not a warning): the per-step parameters are fitted to the trajectories of those settings, and nothing measures how
# they transfer.

def conditioning_of(denoiser: Any) -> dict[str, Any] | None:
    """{"guidance": w or None, "class_labels": sorted distinct labels or None} of a denoiser: a
    :class:`fewstep.denoisers.Guided` (its scale and labels), a class-conditional model called without labels
    (``null_label``: the unconditional model, no guidance, no labels), or None where it cannot be told (a plain
    callable, e.g. a host's own guidance wrapper)."""
    w, labels = getattr(denoiser, "scale", None), getattr(denoiser, "labels", None)
    numeric = not isinstance(w, bool) and isinstance(w, (int, float))
    if numeric and getattr(denoiser, "prompt_conditioned", False) is True:
        return {"guidance": float(w), "class_labels": None}  # prompts: a sampler applies to any prompt of the model
    if numeric and labels is not None:
        if isinstance(labels, int) and not isinstance(labels, bool):
            ys = [labels]
        elif isinstance(labels, torch.Tensor) and not labels.is_floating_point():
            ys = sorted({int(v) for v in labels.reshape(-1).tolist()})
        else:
            return None
        return {"guidance": float(w), "class_labels": ys}
    null = getattr(denoiser, "null_label", None)
    if isinstance(null, int) and not isinstance(null, bool):
        return {"guidance": None, "class_labels": None}
    return None


def check_conditioning_record(rec: Any) -> str | None:
    """None if ``rec`` is a valid ``conditioning`` entry, else what is allowed."""
    if not isinstance(rec, dict) or set(rec) != {"guidance", "class_labels"}:
        return 'an object {"guidance": number or null, "class_labels": [int, ...] or null}'
    w, ys = rec["guidance"], rec["class_labels"]
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)):
        return "guidance: a finite number or null"
    if ys is not None and (not isinstance(ys, list) or not 1 <= len(ys) <= 100_000 or
                           any(isinstance(y, bool) or not isinstance(y, int) for y in ys)):
        return "class_labels: a non-empty list of ints or null"
    return None


def _same_scale(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def conditioning_problem(trained: dict[str, Any], now: dict[str, Any] | None, aware: bool) -> str | None:
    """Why sampling under ``now`` (:func:`conditioning_of` the denoiser) contradicts the ``trained`` record, or None.
    ``aware``: the sampler is guidance-aware (its scale range is checked by :func:`resolve_scale`)."""
    if now is None:
        return None
    tw, ty = trained["guidance"], trained["class_labels"]
    nw, ny = now["guidance"], now["class_labels"]
    if ty is None and ny is not None:
        return (f"it was trained on the model without classes or guidance, but the denoiser guides towards class(es) "
                f"{_labels(ny)} at scale {nw:g}")
    if ty is not None and ny is None:
        return (f"it was trained under guidance for class(es) {_labels(ty)}, but the denoiser is the model without "
                "classes; sample a Guided denoiser of those classes (fewstep sample --class C --guidance W)")
    if ty is not None and not set(ny) <= set(ty):
        return (f"it was trained for class(es) {_labels(ty)}, not {_labels(sorted(set(ny) - set(ty)))} (its per-step "
                "parameters are fitted to those classes' trajectories); sample those classes or train for these")
    if not aware and tw is not None and nw is not None and not _same_scale(tw, nw):
        return (f"it was trained at guidance scale {tw:g}, not {nw:g} (its per-step parameters are fitted to that "
                "scale's trajectories); sample at that scale, or train a guidance-aware sampler over the scales "
                "(--guidance-scales)")
    return None


def _labels(ys: list[int]) -> str:
    return ", ".join(map(str, ys[:10])) + (f", ... ({len(ys)} classes)" if len(ys) > 10 else "")


def check_guidance_scales(scales: Sequence[float] | None, degree: int, denoiser: Any) -> list[float] | None:
    """The validated training scales (None: not guidance-aware)."""
    if scales is None:
        return None
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__"):
        raise TypeError(f"guidance_scales must be a sequence of numbers, got {scales!r}")
    ws = list(scales)
    if len(ws) < 2 or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) for w in ws) \
            or min(ws) == max(ws):
        raise ValueError(f"guidance_scales must hold at least two different finite numbers, got {scales!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"guidance_degree must be an int in 1..{MAX_DEGREE}, got {degree!r}")
    w0 = getattr(denoiser, "scale", None)
    if isinstance(w0, bool) or not isinstance(w0, (int, float)):
        raise TypeError("guidance_scales needs a denoiser whose guidance scale can be set per batch: wrap the "
                        "conditional model in fewstep.denoisers.Guided(model, labels, scale)")
    return [float(w) for w in ws]


@contextlib.contextmanager
def scale_cycle(denoiser: Any, sampler: Any, scales: list[float] | None) -> Iterator[Callable[[int], None] | None]:
    """A ``before_batch`` hook setting batch ``it``'s guidance scale on the denoiser and the sampler (None without
    scales); the denoiser's own scale and the sampler's are restored afterwards."""
    if scales is None:
        yield None
        return
    w0 = denoiser.scale

    def before_batch(it: int) -> None:
        denoiser.scale = sampler.guidance_scale = scales[it % len(scales)]

    try:
        yield before_batch
    finally:
        denoiser.scale = w0
        sampler.guidance_scale = None


class ScaleAware:
    """Mixin of learned samplers (:class:`fewstep.learned.LearnedSampler`, :class:`fewstep.amed.AMEDPredictor`):
    ``init_guidance(config.get("guidance"))`` after the parameters are built, ``use_scale_of(denoiser)`` in
    ``sampling_setup``; ``guidance_scale`` is the scale used when the denoiser carries none."""

    _scale_state: ScaleState | None = None
    _guidance_scale: float | None = None

    def init_guidance(self, guidance: dict[str, Any] | None) -> None:
        if guidance is not None:
            self._scale_state = make_scale_aware(self, *guidance["scales"], guidance["degree"])  # type: ignore[arg-type]

    @property
    def guidance_aware(self) -> bool:
        """Whether the tables depend on the guidance scale (trained with ``guidance_scales=``)."""
        return self._scale_state is not None

    @property
    def guidance_scale(self) -> float | None:
        """The guidance scale to sample at when the denoiser does not carry one (``Guided.scale`` otherwise)."""
        return self._guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, w: float | None) -> None:
        if self._scale_state is None:
            raise ValueError("this sampler was trained at one guidance setting (no guidance_scales); it has no "
                             "guidance_scale to set")
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))):
            raise TypeError(f"guidance_scale must be a number or None, got {w!r}")
        self._guidance_scale = None if w is None else float(w)
        self._scale_state.scale = self._guidance_scale

    def use_scale_of(self, denoiser: Callable) -> None:
        """Set the tables to the scale of ``denoiser`` (or :attr:`guidance_scale`); no-op unless guidance-aware."""
        if self._scale_state is not None:
            self._scale_state.scale = resolve_scale(self._scale_state, self._guidance_scale, denoiser)
