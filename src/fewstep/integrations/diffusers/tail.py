"""Image-to-image starts of ``FewstepScheduler``: :class:`Tail` runs the solver from a model call inside the
schedule (after ``set_begin_index``) with the same call count, built by :func:`tail_runner`."""

from __future__ import annotations

from typing import Any

import torch

from ..stepper import Request, Stepper

__all__ = ["Tail", "tail_runner"]


class Tail:
    """A :class:`Stepper`-like runner for an image-to-image start: an optional Euler step from ``sigma_from`` to
    ``tail[0]`` (one model call at ``sigma_from``), then the solver on ``tail`` (a schedule tail; with one sigma
    only the denoise-to-zero call, if any). Same ``start`` / ``feed`` / ``at_interval_start`` / ``replace_start``."""

    afs = False

    def __init__(self, sigma_from: torch.Tensor | None, tail: torch.Tensor, make: Any, denoise_to_zero: bool) -> None:
        self.sigma_from, self.tail, self.denoise_to_zero = sigma_from, tail, denoise_to_zero
        self.sigmas = tail
        self.rest = make(tail) if tail.numel() > 1 else None
        self.phase, self.x = "", None

    def start(self, x: torch.Tensor) -> Request | torch.Tensor:
        self.x = x
        if self.sigma_from is not None:
            self.phase = "euler"
            return Request(x, self.sigma_from)
        return self._after(x)

    def _after(self, x: torch.Tensor) -> Request | torch.Tensor:
        if self.rest is not None:
            self.phase = "rest"
            return self.rest.start(x)
        self.x = x
        if self.denoise_to_zero:
            self.phase = "zero"
            return Request(x, self.tail[-1])
        self.phase = "done"
        return x

    @property
    def at_interval_start(self) -> bool:
        return self.rest.at_interval_start if self.phase == "rest" else self.phase in ("euler", "zero")

    def replace_start(self, x: torch.Tensor) -> None:
        if self.phase == "rest":
            self.rest.replace_start(x)
        else:
            self.x = x

    def feed(self, denoised: torch.Tensor) -> Request | torch.Tensor:
        if self.phase == "euler":
            s0 = self.sigma_from.to(self.x)
            x_next = self.x + (self.tail[0].to(self.x) - s0) * (self.x - denoised) / s0
            return self._after(x_next)
        if self.phase == "rest":
            return self.rest.feed(denoised)
        if self.phase == "zero":
            self.phase = "done"
            return denoised
        raise RuntimeError("sampling has finished; call start() again")


def tail_runner(full: Stepper, call: tuple[float, int, bool]) -> Tail:
    """The runner for a start at a model call > 0 of ``full`` (AFS off; ``call``: its entry of
    :func:`.planning.call_plan`): the solver on the schedule's tail from the interval that call opens, or, inside
    a two-evaluation step, an Euler step from the call's sigma to the next schedule point first; either way it
    makes as many calls as ``full`` has left from that call."""
    sigma, i, opens = call
    sig = full.sigmas
    dtz = full.denoise_to_zero

    def make(tail: torch.Tensor) -> Stepper:
        return Stepper(full.solver, tail, afs=False, denoise_to_zero=dtz, final_jump_is_step=full.final_jump_is_step)

    if opens:
        return Tail(None, sig[i:], make, dtz)
    return Tail(torch.tensor(sigma, dtype=torch.float64), sig[i + 1:], make, dtz)
