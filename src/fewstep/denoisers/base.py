"""The denoiser protocol: the only way fewstep sees a model."""

from __future__ import annotations

import functools
import math
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "sigma_like", "model_dtype", "model_digest", "model_sigma_range", "sigma_range", "EDM_SIGMA_RANGE"]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma) -> x0_hat`` in the EDM parameterisation x = x0 + sigma * n (Karras et al., 2022).

    ``x`` has shape (B, ...); ``sigma`` is a scalar tensor or a tensor of shape (B,). The ODE is
    dx/dsigma = (x - D(x, sigma)) / sigma.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def sigma_like(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast ``sigma`` (scalar or (B,)) to shape (B, 1, ..., 1) matching ``x``'s dtype and device."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s.reshape(-1, *([1] * (x.ndim - 1)))


_HOLDERS = ("model", "denoiser", "inner", "net", "network", "unet", "module", "adapter")
_ANY = object()  # "takes any float dtype and converts itself": stop looking


def model_dtype(denoiser: object) -> torch.dtype | None:
    """The floating dtype a model wants its inputs in, or None if it takes any (or cannot be told).

    Looked up, in this order: ``accepts_any_dtype = True`` on the object (fewstep's adapters, analytic models and
    U-Net convert inputs themselves: None); a ``dtype`` attribute that is a floating ``torch.dtype``; the first
    floating parameter or buffer of an ``nn.Module``; then, recursively, what the object wraps: the usual
    attributes of wrappers (``model``, ``denoiser``, ``unet``, ...), a bound method's object, and the modules a
    function or lambda closes over or names as globals (``lambda x, t: unet(x, t).sample`` finds ``unet``)."""
    found = _lookup(denoiser, 0, set())
    return None if found is _ANY else found


def _lookup(obj: object, depth: int, seen: set[int]) -> object:
    if obj is None or id(obj) in seen or depth > 4 or isinstance(obj, (int, float, str, bytes, bool, type)):
        return None
    seen.add(id(obj))
    if getattr(obj, "accepts_any_dtype", False) is True:
        return _ANY
    dt = getattr(obj, "dtype", None)
    if isinstance(dt, torch.dtype) and dt.is_floating_point:
        return dt
    if isinstance(obj, torch.nn.Module):
        for t in (*obj.parameters(), *obj.buffers()):
            if t.is_floating_point():
                return t.dtype
        return None
    inner: list[object] = []
    if isinstance(obj, functools.partial):
        inner += [obj.func, *obj.args, *obj.keywords.values()]
    if hasattr(obj, "__self__"):
        inner.append(obj.__self__)
    fn = getattr(obj, "__func__", obj)
    code = getattr(fn, "__code__", None)
    if code is not None:
        inner += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
        glb = getattr(fn, "__globals__", {})
        inner += [glb[n] for n in code.co_names if isinstance(glb.get(n), torch.nn.Module)]
    else:
        inner += [getattr(obj, n, None) for n in _HOLDERS]
    for o in inner:
        found = _lookup(o, depth + 1, seen)
        if found is not None:
            return found
    return None


def _filled(cell: object) -> bool:
    try:
        cell.cell_contents  # type: ignore[attr-defined]
    except ValueError:
        return False
    return True


DIGEST_CHARS = 12


def model_digest(obj: object) -> str | None:
    """A short digest of a model's weights: the first 12 hex digits of the SHA-256 over the names, dtypes, shapes
    and bytes of the state dicts (parameters and buffers, :func:`fewstep.io.tensor_digest`) of the torch modules
    that ``obj`` is or holds, or None where it holds none (an analytic model, a plain function).

    The modules are found as :func:`model_dtype` finds a network: ``obj`` itself, the usual attributes of wrappers
    (an adapter's ``model``, ``denoiser``, ``unet``, ...), a bound method's object and the modules a function or
    lambda closes over or names as globals; all of them count, in the order found. The same weights give the same
    digest in every process (the bytes are hashed, not the objects); a 1 MB model takes about a millisecond."""
    from ..io import tensor_digest

    modules: list[torch.nn.Module] = []
    _modules(obj, 0, set(), modules)
    if not modules:
        return None
    if len(modules) == 1:
        return tensor_digest(modules[0].state_dict())[:DIGEST_CHARS]
    parts = {f"{i}.{k}": v for i, m in enumerate(modules) for k, v in m.state_dict().items()}
    return tensor_digest(parts)[:DIGEST_CHARS]


def _modules(obj: object, depth: int, seen: set[int], out: list[torch.nn.Module]) -> None:
    """Collect into ``out`` the outermost nn.Modules reachable from ``obj`` (a module's submodules are in its own
    state dict, so they are not collected again)."""
    if obj is None or id(obj) in seen or depth > 4 or isinstance(obj, (int, float, str, bytes, bool, type)):
        return
    seen.add(id(obj))
    inner: list[object] = []
    if isinstance(obj, torch.nn.Module):
        out.append(obj)
        # Its submodules are in its state dict; a wrapper module (Guided) may also hold a plain-object denoiser.
        inner += [v for v in (getattr(obj, n, None) for n in _HOLDERS) if not isinstance(v, torch.nn.Module)]
    else:
        if isinstance(obj, functools.partial):
            inner += [obj.func, *obj.args, *obj.keywords.values()]
        if hasattr(obj, "__self__"):
            inner.append(obj.__self__)
        fn = getattr(obj, "__func__", obj)
        code = getattr(fn, "__code__", None)
        if code is not None:
            inner += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
            glb = getattr(fn, "__globals__", {})
            inner += [glb[n] for n in code.co_names if isinstance(glb.get(n), torch.nn.Module)]
        else:
            inner += [getattr(obj, n, None) for n in _HOLDERS]
    for o in inner:
        _modules(o, depth + 1, seen, out)


EDM_SIGMA_RANGE = (0.002, 80.0)  # EDM's range (Karras et al., 2022): the default for a model with none of its own
RANGE_SLACK = 1e-3  # an option may pass the model's own range by this relative amount (0.01 for 0.0100005)


UNBOUNDED_SIGMA = 1e3  # a model's sigma_max from here up (a flow model near t = 1) is no schedule start


def model_sigma_range(denoiser: object) -> tuple[float | None, float | None]:
    """The model's own training range as (sigma_min, sigma_max) from its ``sigma_min`` / ``sigma_max`` attributes
    (those of :class:`fewstep.denoisers.VPModel`, a diffusers model, ...); an end the model does not declare (or
    declares as no positive finite number) is None."""
    ends = []
    for v in (getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        ends.append(float(v) if ok else None)
    lo, hi = ends
    return (lo, hi) if lo is None or hi is None or lo < hi else (None, None)


def sigma_range(denoiser: object, sigma_min: float | None = None, sigma_max: float | None = None, *,
                names: tuple[str, str] = ("sigma_min", "sigma_max")) -> tuple[float, float, str]:
    """(sigma_min, sigma_max, where they come from in words): the given values, else the model's own training range
    (:func:`model_sigma_range`), else EDM's 0.002 and 80 (an unbounded model end, e.g. a flow model's sigma at
    t = 1, starts at 80). A value outside the model's own range (by more than a relative 1e-3) is refused: the
    network would be called at noise levels it was never trained on. ``names``: how errors name the two values."""
    own_lo, own_hi = model_sigma_range(denoiser)
    lo = own_lo if own_lo is not None else EDM_SIGMA_RANGE[0]
    # An unbounded model (a flow model reaches sigma = inf at t = 1) starts at EDM's 80.
    hi = own_hi if own_hi is not None and own_hi < UNBOUNDED_SIGMA else EDM_SIGMA_RANGE[1]
    given = dict(zip(names, (sigma_min, sigma_max)))
    for name, v in given.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    lo = float(sigma_min) if sigma_min is not None else lo
    hi = float(sigma_max) if sigma_max is not None else hi
    if not lo < hi:
        raise ValueError(f"{names[0]} ({lo:g}) must be below {names[1]} ({hi:g})")
    if own_lo is not None or own_hi is not None:
        low = own_lo * (1 - RANGE_SLACK) if own_lo is not None else 0.0
        high = own_hi * (1 + RANGE_SLACK) if own_hi is not None else math.inf
        for name, v in given.items():
            if v is not None and not low <= v <= high:
                ends = f"{own_lo if own_lo is not None else 0:.6g} .. {own_hi if own_hi is not None else math.inf:.6g}"
                raise ValueError(f"{name} {v:g} is outside the model's own noise range, sigma {ends} (the noise levels "
                                 "it was trained on): give a value inside it, or leave the option out to use the "
                                 "model's range")
    uses = [own_lo is not None, own_hi is not None and own_hi < UNBOUNDED_SIGMA]
    base = ("the model's own range" if all(uses) else "EDM's default range (the model declares none)" if not any(uses)
            else f"the model's own sigma_{'min' if uses[0] else 'max'}, EDM's default for the other end")
    opts = [n for n, v in given.items() if v is not None]
    source = base if not opts else f"{' and '.join(opts)} as given" + ("" if len(opts) == 2 else f", else {base}")
    return lo, hi, source
