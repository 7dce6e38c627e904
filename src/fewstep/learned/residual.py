"""An out-of-span learned correction (after SpanLift, "Learning to Solve Generative ODEs Beyond the Linear Span",
arXiv 2606.08672): a small convolutional operator adds a spatial residual to every step of a base solver.

Every other learned method moves the state inside the span of the start noise and the model outputs it has seen
(weights, intermediate times, coordinates), so at fixed evaluation points it cannot go below the best per-sample
linear combination of those outputs (``fewstep analyze span``). The operator here reads the current state and the
last ``history`` denoiser outputs as images and returns a correction that is a nonlinear, spatial function of
them: x_{i+1} = base(x_i) + (1 - t_{i+1} / t_i) R_theta(x_i / sqrt(1 + t_i^2), D_i, D_{i-1}, ...; step i), i.e. R
corrects the denoised estimate of an Euler step (x0 units; its weight 1 - t_{i+1}/t_i is in (0, 1], so an
optimiser step of a given size moves the state as much at sigma 80 as at sigma 0.1; the first form tried,
(t_{i+1} - t_i) R, scaled the first steps' corrections by ~50 and one Adam step could ruin a sample). No model
evaluation is added. The trunk (``depth`` 3x3 convolutions of ``width`` channels with SiLU) is shared by the steps
and conditioned on each by FiLM (a per-step scale and shift of every layer); every step has its own output
convolution, initialised at zero, so that the untrained sampler is its base solver bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..solvers import Solver, get_solver
from ..solvers.base import Model
from .sampler import Defaults, LearnedSampler, Option, classic_bases

__all__ = ["ResidualSampler", "ResidualStep", "ResidualState"]


@dataclass(frozen=True)
class ResidualState:
    """The base solver's state and the latest denoiser outputs, newest first."""

    base: Any = None
    history: tuple[torch.Tensor, ...] = ()


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) as is, (B, C, L) as (B, C, L, 1), (B, D) as (B, D, 1, 1)."""
    return x.reshape(*x.shape, *(1,) * (4 - x.ndim))


class _Recorder:
    """The model as the base solver sees it, remembering its outputs during one step."""

    def __init__(self, model: Model) -> None:
        self.model, self.outputs = model, []

    @property
    def features(self) -> Any:
        return getattr(self.model, "features", None)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.model(x, sigma)
        self.outputs.append(out)
        return out


@dataclass(frozen=True, eq=False)
class ResidualStep(Solver):
    """``base``'s step plus (1 - t_{i+1} / t_i) R(...) from the sampler's operator (``predictor.residual``); without a
    predictor it is ``base`` bitwise. NFE and model calls are the base's."""

    name = "residual"
    base: Solver | None = None
    predictor: Any = None
    history: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.base, Solver):
            raise TypeError("residual needs a base solver instance, e.g. get_solver('ipndm', max_order=3)")

    def nfe(self, num_sigmas: int) -> int:
        return self.base.nfe(num_sigmas)

    def timing(self) -> Solver:
        """The base: the correction moves the state, never the evaluation times."""
        return self.base.timing()

    def init(self, x: torch.Tensor, sigmas: Any) -> ResidualState:
        return ResidualState(self.base.init(x, sigmas), ())

    def step(self, model: Model, x: torch.Tensor, i: int, sigmas: Any,
             state: ResidualState) -> tuple[torch.Tensor, ResidualState]:
        rec = _Recorder(model)
        x_next, base_state = self.base.step(rec, x, i, sigmas, state.base)
        history = (tuple(reversed(rec.outputs)) + state.history)[: self.history]
        if self.predictor is not None:
            t = sigmas[i]
            x_next = x_next + ((t - sigmas[i + 1]) / t) * self.predictor.residual(x, history, i, t).to(x.dtype)
        return x_next, ResidualState(base_state, history)


class ResidualSampler(LearnedSampler):
    """The operator's parameters (a shared trunk, per-step FiLM and per-step zero-initialised output convolutions)
    around a base solver the user picks (``base=``; by default the tuned best classic configuration, ``fewstep
    train``). Options: ``width`` and ``depth`` of the trunk, ``history`` (denoiser outputs it reads) and
    ``channels`` (of the samples, set when training starts)."""

    method = "residual"
    summary = ("out-of-span correction: a small conv operator adds a learned spatial residual to every step of a "
               "base solver (after SpanLift, 2026); no extra model evaluation")
    OPTIONS: ClassVar[dict[str, Option]] = {
        "width": Option(32, int, 1, 1024, help="channels of the operator's trunk"),
        "depth": Option(2, int, 1, 8, help="3x3 convolutions in the trunk"),
        "history": Option(2, int, 1, 8, help="latest denoiser outputs the operator reads"),
        "channels": Option(None, int, 1, 64, nullable=True, help="channels of the samples (set by training)"),
    }
    DEFAULTS = Defaults(lr=1e-3, batch=16, total_samples=4096, M=4, learn_schedule=True)
    takes_base = True
    BASES = classic_bases()
    PARAM_DTYPE = torch.float32  # convolutions: float32 (the trajectories may be float64)

    @classmethod
    def for_training(cls, denoiser: Callable, options: dict[str, Any] | None, probe: Callable,
                     shape: tuple[int, ...] = ()) -> tuple[Callable, dict[str, Any] | None]:
        """The channels come from the samples' shape (C, ...): images (C, H, W) are convolved spatially; vectors
        (D,) are D channels at one location, where the 3x3 convolutions reduce to channel mixing."""
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"the residual operator takes samples of shape (C,), (C, L) or (C, H, W), got "
                             f"{tuple(shape)}")
        opts = dict(options or {})
        if opts.get("channels") not in (None, shape[0]):
            raise ValueError(f"options channels={opts['channels']} but the samples have {shape[0]} channels")
        opts["channels"] = shape[0]
        return denoiser, opts

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        c, w, d, k = options["channels"] or 1, options["width"], options["depth"], options["history"]
        self.convs = nn.ModuleList([nn.Conv2d(c * (k + 1) if j == 0 else w, w, 3, padding=1) for j in range(d)])
        self.film_scale = nn.Parameter(torch.zeros(num_intervals, d, w))
        self.film_shift = nn.Parameter(torch.zeros(num_intervals, d, w))
        self.head_weight = nn.Parameter(torch.zeros(num_intervals, c, w, 3, 3))
        self.head_bias = nn.Parameter(torch.zeros(num_intervals, c))

    def residual(self, x: torch.Tensor, history: tuple[torch.Tensor, ...], i: int,
                 sigma: torch.Tensor) -> torch.Tensor:
        """R_theta of step ``i``: the scaled state and the denoiser outputs (zeros where there are none yet)."""
        dtype = self.head_weight.dtype
        k = self.options["history"]
        parts = [x / (1 + sigma**2).sqrt()] + [history[j] if j < len(history) else torch.zeros_like(x)
                                              for j in range(k)]
        if _as_image(x).shape[1] != (self.options["channels"] or 1):
            raise ValueError(f"this residual sampler was made for samples of {self.options['channels'] or 1} channels, "
                             f"got samples of shape {tuple(x.shape[1:])}")
        h = torch.cat([_as_image(p).to(dtype) for p in parts], 1)
        for j, conv in enumerate(self.convs):
            z = conv(h) * (1 + self.film_scale[i, j])[None, :, None, None] + self.film_shift[i, j][None, :, None, None]
            z = F.silu(z)
            h = z if j == 0 else h + z
        return F.conv2d(h, self.head_weight[i], self.head_bias[i], padding=1).reshape(x.shape)

    def make_solver(self) -> Solver:
        base = self.config["base"]
        return ResidualStep(base=get_solver(base["solver"], **base["options"]), predictor=self,
                            history=self.options["history"])

    def operator_call(self, x: torch.Tensor) -> Callable[[], Any]:
        """The correction of the first step on ``x``, its history filled with ``x`` (the work of every step)."""
        sigma = torch.as_tensor(self.config["sigmas"][0], dtype=x.dtype)
        history = (x,) * self.options["history"]
        return lambda: self.residual(x, history, 0, sigma)

    def cost(self, shape: tuple[int, ...]) -> dict[str, float]:
        """Parameters and multiply-adds of one step's correction for one sample of ``shape``."""
        c, hgt, wid = (*shape, 1, 1)[:3]
        w, d, k = self.options["width"], self.options["depth"], self.options["history"]
        macs = hgt * wid * 9 * (c * (k + 1) * w + (d - 1) * w * w + w * c)
        per_step = sum(p.numel() for n, p in self.named_parameters() if not n.startswith(("film", "head")))
        per_step += (self.film_scale.numel() + self.film_shift.numel() + self.head_weight.numel()
                     + self.head_bias.numel()) // self.num_intervals
        return {"parameters": sum(p.numel() for p in self.parameters()), "parameters_per_step": per_step,
                "macs_per_step": macs}
