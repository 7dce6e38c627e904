"""What a learned operator costs per sampling step, measured against one model call on the same batch: multiply-adds
counted by torch's FLOP counter (:class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix
products, for the operator and the model alike) and wall time (median of a few repetitions after a warm-up)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..sampling import ModelCall, seeded_noise

__all__ = ["measure_cost", "cost_line"]


def _macs(fn: Callable[[], Any]) -> float:
    """Multiply-adds of one ``fn()`` (half the FLOPs the counter reports)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def _seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_cost(sampler: Any, denoiser: Callable, shape: tuple[int, ...], batch: int = 16,
                 dtype: torch.dtype = torch.float32, model_dtype: torch.dtype | None = None,
                 repeats: int = 9) -> dict[str, float] | None:
    """The cost of ``sampler``'s operator per step (:meth:`LearnedSampler.cost`) measured on one batch of ``batch``
    samples of ``shape`` against one call of ``denoiser`` on the same batch: ``parameters``, ``macs_per_step`` and
    ``model_macs`` per sample (FLOP counter), their ratio ``mac_ratio``, and ``time_ratio`` (median of ``repeats``
    timings each). None for a method without an operator."""
    static = sampler.cost(shape)
    x = seeded_noise(denoiser, range(batch), shape, dtype=dtype)
    op = sampler.operator_call(x)
    if static is None or op is None:
        return None
    sigma = torch.tensor(1.0, dtype=dtype)
    call = ModelCall(denoiser, model_dtype=model_dtype)
    with torch.no_grad():
        def model() -> Any:
            return call(x, sigma)

        op_macs, model_macs = _macs(op) / batch, _macs(model) / batch
        op_s, model_s = _seconds(op, repeats), _seconds(model, repeats)
    return {**static, "macs_per_step_counted": op_macs, "model_macs": model_macs,
            "mac_ratio": op_macs / model_macs if model_macs else float("nan"),
            "seconds_per_step": op_s / batch, "model_seconds": model_s / batch, "time_ratio": op_s / model_s,
            "batch": batch}


def _si(v: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def cost_line(method: str, cost: dict[str, float]) -> str:
    """E.g. 'residual operator: 23.4k parameters, 0.37M MACs/step per sample = 3.1% of one model call (time: 4.2%)'."""
    share = "" if cost["mac_ratio"] != cost["mac_ratio"] else f" = {100 * cost['mac_ratio']:.3g}% of one model call"
    return (f"{method} operator: {_si(cost['parameters'])} parameters, {_si(cost['macs_per_step_counted'])} MACs/step "
            f"per sample{share} ({_si(cost['model_macs'])} MACs; time: {100 * cost['time_ratio']:.3g}%, median of "
            f"timings on a batch of {cost['batch']})")
