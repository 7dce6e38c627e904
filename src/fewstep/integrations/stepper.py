"""Run a fewstep solver one model evaluation at a time (for loops that own the model call, like diffusers').

A diffusers pipeline calls the network itself and hands each output to ``scheduler.step``; a fewstep solver
instead calls the denoiser as often as it needs inside ``solver.step`` (twice for Heun/DPM-2/AMED, more with
the AMED-Plugin, K + 1 times for EPD). :class:`Stepper` bridges the two as a small re-entrant state machine: solvers
are pure functions of (x, state, model outputs), so an interval is replayed with the outputs received so far and stops
at the first evaluation not yet answered, which becomes the next :class:`Request` (with the sigma the model is
called at: a learned sampler's time shift or time scale included). Each interval is replayed once per model call
it makes; the arithmetic is fewstep's own (``solver.step`` and the driver's evaluator with
its analytical first step), so results equal :func:`fewstep.sample` up to the model-space round trip.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..sampling import ModelCall
from ..schedules import validate_sigmas
from ..solvers import Solver, get_solver

__all__ = ["Stepper", "Request", "evaluation_sigmas", "DRY_RUN_SHAPE"]

# The state of the dry runs that list the model calls: one sample of a few dimensions, since evaluation times do not
# depend on the sample, but a solver may need some room (PAS takes up to 3 principal components of its directions).
DRY_RUN_SHAPE = (1, 8)


@dataclass(frozen=True)
class Request:
    """The solver needs D(x, sigma): EDM state ``x`` (B, ...) and a 0-dim float64 ``sigma``."""

    x: torch.Tensor
    sigma: torch.Tensor


class _NeedEval(Exception):
    def __init__(self, x: torch.Tensor, sigma: torch.Tensor) -> None:
        super().__init__("model evaluation needed")
        self.x, self.sigma = x, sigma


class _Replay:
    """A denoiser that answers from the outputs received so far and stops at the first one missing."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        self.outputs, self.calls = outputs, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        k, self.calls = self.calls, self.calls + 1
        if k < len(self.outputs):
            return self.outputs[k]
        raise _NeedEval(x, sigma)


class Stepper:
    """``start(x_T)`` and ``feed(D)`` return the next :class:`Request`, or the final state (a tensor).

    ``sigmas``, ``afs`` and ``denoise_to_zero`` mean what they mean in :func:`fewstep.sample`. Evaluation
    times must be the same for every sample of the batch (true for all solvers, predictor-free AMED tables and
    the learned samplers of :mod:`fewstep.learned`; a feature-based AMED predictor chooses them per sample and is
    refused). For a learned sampler pass the solver of its ``sampling_setup``.

    ``final_jump_is_step``: with ``denoise_to_zero`` the solver sees the schedule with a trailing 0, so
    ``lower_order_final`` counts the jump to zero as the last (first-order) step, as diffusers' multistep
    schedulers do with ``final_sigmas_type="zero"``; the jump itself is still the x0 of the last evaluation.
    """

    def __init__(self, solver: str | Solver, sigmas: Any, *, afs: bool = False, denoise_to_zero: bool = False,
                 final_jump_is_step: bool = False, **options: Any) -> None:
        self.solver = get_solver(solver, **options)
        if getattr(getattr(self.solver, "predictor", None), "uses_features", False):
            raise ValueError(
                "a feature-based AMED predictor picks each sample's evaluation time from the network's features "
                "during sampling, so the timesteps cannot be listed in advance for a scheduler; use a predictor-free "
                "table (fewstep.learned.train('amed', ..., options={'features': 'none'})) or fewstep.sample with the model as a denoiser")
        self.sigmas = validate_sigmas(sigmas)
        self.afs, self.denoise_to_zero = bool(afs), bool(denoise_to_zero)
        self.final_jump_is_step = bool(final_jump_is_step) and self.denoise_to_zero
        zero = torch.zeros(1, dtype=torch.float64)
        self.solver_sigmas = torch.cat([self.sigmas, zero]) if self.final_jump_is_step else self.sigmas
        self.i, self.x, self.state, self.outputs = 0, None, None, []
        self.nfe, self.finished = 0, False

    @property
    def num_intervals(self) -> int:
        """Intervals of the schedule, ``len(sigmas) - 1`` (elsewhere in fewstep ``num_steps`` counts sigmas)."""
        return self.sigmas.numel() - 1

    @property
    def at_interval_start(self) -> bool:
        """True when the pending request is the first model call of an interval (made at its start x)."""
        return not self.outputs and not (self.afs and self.i == 0)

    def timing(self) -> "Stepper":
        """A copy for dry runs on a placeholder state: its solver evaluates at the same sigmas
        (:meth:`fewstep.solvers.Solver.timing`)."""
        dry = copy.copy(self)
        dry.solver = self.solver.timing()
        return dry

    def start(self, x: torch.Tensor) -> Request | torch.Tensor:
        """Begin at EDM state ``x`` at sigmas[0]."""
        self.i, self.x, self.outputs, self.nfe, self.finished = 0, x, [], 0, False
        self.state = self.solver.init(x, self.solver_sigmas)
        return self._advance()

    def replace_start(self, x: torch.Tensor) -> None:
        """Use ``x`` as the current interval's start (e.g. latents the pipeline edited); only at its first call."""
        if not self.at_interval_start:
            raise RuntimeError("replace_start is only allowed before the first model call of an interval")
        self.x = x

    def feed(self, denoised: torch.Tensor) -> Request | torch.Tensor:
        """Answer the pending request with D(x, sigma)."""
        if self.finished:
            raise RuntimeError("sampling has finished; call start() again")
        self.nfe += 1
        if self.i == self.num_intervals:  # the evaluation of denoise_to_zero
            self.finished = True
            return denoised
        self.outputs.append(denoised)
        return self._advance()

    def _advance(self) -> Request | torch.Tensor:
        with torch.no_grad():
            while self.i < self.num_intervals:
                ev = ModelCall(_Replay(self.outputs), afs=self.afs and self.i == 0, check_finite=False)
                ev.begin_step(self.i)
                try:
                    x_next, state = self.solver.step(ev, self.x, self.i, self.solver_sigmas, self.state)
                except _NeedEval as need:
                    sig = need.sigma.reshape(-1).to(torch.float64)
                    if not bool((sig == sig[0]).all()):
                        raise ValueError("the solver asked for different evaluation times within one batch; "
                                         "a scheduler needs one time per model call") from None
                    return Request(need.x, sig[0].cpu())
                self.x, self.state, self.outputs, self.i = x_next, state, [], self.i + 1
            if self.denoise_to_zero:
                return Request(self.x, self.sigmas[-1])
            self.finished = True
            return self.x


def evaluation_sigmas(stepper: Stepper) -> list[float]:
    """The sigma of every model call, found by a dry run on a zero state (:data:`DRY_RUN_SHAPE`) with D = 0."""
    stepper = stepper.timing()
    req = stepper.start(torch.zeros(DRY_RUN_SHAPE, dtype=torch.float64))
    out: list[float] = []
    while isinstance(req, Request):
        out.append(float(req.sigma))
        req = stepper.feed(torch.zeros_like(req.x))
    return out
