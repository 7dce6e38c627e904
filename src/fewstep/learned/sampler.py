"""The learned sampler: per-step parameters around a base solver, one config schema and one file format.

A learned sampler is an ``nn.Module`` holding the per-step parameters of one method (AMED-Solver, AMED-Plugin,
DyWeight, EPD, PAS, GS, ...), initialised so that its solver equals its base solver (the neutral initialisation),
and a ``config`` with everything needed to sample: the method and its options, the base solver, the trained
sigmas, AFS, whether model-input time shifts are learned, the model id, the training record and the guidance range.
``save(path)`` writes one safetensors file (the JSON config and a SHA-256 of the weights in its metadata);
:func:`fewstep.learned.load` reads it back. A method is a subclass with its :class:`Option` table and measured
:class:`Defaults`, registered in :data:`fewstep.learned.METHODS` (docs/adding-a-method.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..io import tensor_digest, write_safetensors
from ..schedules import same_sigmas, validate_sigmas
from ..solvers import SOLVERS, Solver, TimeShift, get_solver
from .guidance import (
    ScaleAware,
    check_conditioning_record,
    check_guidance_config,
    conditioning_of,
    conditioning_problem,
)

__all__ = ["LearnedSampler", "Option", "Defaults", "CheckpointError", "check_config", "same_solver", "describe_solver",
           "positive_factor",
           "FORMAT",
           "VERSION", "CONFIG_KEYS"]

FORMAT = "fewstep-learned-sampler"
VERSION = 1
CONFIG_KEYS = frozenset({"version", "method", "options", "sigmas", "schedule", "afs", "base", "time_shift",
                         "model_id", "training", "guidance"})
REQUIRED_KEYS = frozenset({"version", "method", "options", "sigmas", "afs", "base", "time_shift"})


class CheckpointError(ValueError):
    """A file is not a valid fewstep learned sampler, or does not match what it is used with."""


@dataclass(frozen=True)
class Option:
    """One option of a method: its default, type (int, float, str or bool), range or choices. Stored in the
    checkpoint's ``options`` and checked on every load (a file may be edited or forged)."""

    default: Any
    kind: type = int
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    help: str = ""
    below: float | None = None  # an exclusive upper bound

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is allowed, else what is allowed."""
        if value is None:
            return None if self.nullable else f"a {self.kind.__name__}"
        if self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool))
        want = f"a {self.kind.__name__}"
        if self.choices is not None:
            want = f"one of {', '.join(map(repr, self.choices))}"
            ok = ok and value in self.choices
        if self.lo is not None or self.hi is not None:
            want += f" in [{self.lo}, {self.hi}]"
            ok = ok and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
        if self.below is not None:
            want += f" below {self.below}"
            ok = ok and value < self.below
        return None if ok else want + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Defaults:
    """A method's measured training defaults: Adam learning rate, batch, training samples, teacher steps inserted per
    interval (M), whether the interior sigmas and the model-input time shifts are learned."""

    lr: float
    batch: int = 64
    total_samples: int = 8192
    M: int = 8
    learn_schedule: bool = False
    time_shift: bool = False


def same_solver(a: Solver, b: Solver) -> bool:
    """Whether two solvers are built alike: same class and equal fields, nested solvers compared the same way and
    the parameter module (``predictor``) by identity."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, Solver) or isinstance(vb, Solver):
            if not (isinstance(va, Solver) and isinstance(vb, Solver) and same_solver(va, vb)):
                return False
        elif isinstance(va, nn.Module) or isinstance(vb, nn.Module):
            if va is not vb:
                return False
        elif va != vb:
            return False
    return True


LOG_FACTOR_BOUND = 30.0  # exp(+-30): a learned time factor stays a positive finite number


def positive_factor(z: torch.Tensor) -> torch.Tensor:
    """exp(z) for a learned log time factor, z clamped to [-30, 30]: positive and finite by construction (exp of
    -1000 is 0 in floating point, and the model would be called at sigma 0)."""
    return torch.clamp(z, -LOG_FACTOR_BOUND, LOG_FACTOR_BOUND).exp()


def describe_solver(solver: Solver) -> str:
    """A solver instance in words: 'amed_plugin on euler', 'time_shift around dyweight', with its non-default
    options, e.g. 'amed_plugin on dpmpp (c_mode=data)'."""
    parts = [solver.name]
    for f in dataclasses.fields(solver):
        v = getattr(solver, f.name)
        if isinstance(v, Solver):
            parts.append(f"{'around' if f.name == 'inner' else 'on'} {describe_solver(v)}")
    opts = [f"{f.name}={getattr(solver, f.name)}" for f in dataclasses.fields(solver)
            if not isinstance(getattr(solver, f.name), (Solver, nn.Module)) and f.default is not dataclasses.MISSING
            and getattr(solver, f.name) != f.default]
    return " ".join(parts) + (f" ({', '.join(opts)})" if opts else "")


def _json_scalars(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))
                                       for k, v in d.items())


class LearnedSampler(ScaleAware, nn.Module):
    """Base class of every method. A subclass sets ``method``, ``summary``, ``OPTIONS`` and ``DEFAULTS`` and
    implements :meth:`build_parameters` (parameters for ``num_intervals`` steps, neutral at their initial values),
    :meth:`make_solver` and, unless the user picks the base (``takes_base``), :meth:`base_solver_config`. Time
    shifts xi (``config["time_shift"]``) and guidance-scale conditioning (``config["guidance"]``,
    :mod:`fewstep.learned.guidance`) are handled here for every method."""

    method: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for `fewstep train --help`
    OPTIONS: ClassVar[dict[str, Option]] = {}
    DEFAULTS: ClassVar[Defaults]
    takes_base: ClassVar[bool] = False  # the user picks the base solver (``base=``), e.g. AMED-Plugin
    BASES: ClassVar[tuple[str, ...]] = ()  # allowed base solvers when ``takes_base``
    LOSSES: ClassVar[tuple[str, ...]] = ("final",)  # training losses the method supports
    uses_features: ClassVar[bool] = False  # reads the network's features (then a denoiser must provide them)
    PARAM_DTYPE: ClassVar[torch.dtype | None] = torch.float64  # None: the trajectories' dtype (AMED's network)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:  # a concrete method: everything the registry, the CLI and the trainer read must be here
            if not isinstance(getattr(cls, "DEFAULTS", None), Defaults) or not cls.summary:
                raise TypeError(f"learned method {cls.method!r} needs DEFAULTS = Defaults(lr=...) and a summary")
            bad = [k for k, o in cls.OPTIONS.items() if not isinstance(o, Option) or o.problem(o.default)]
            if bad:
                raise TypeError(f"learned method {cls.method!r}: options {bad} need an Option whose default is valid")
            if cls.takes_base and not cls.BASES:
                raise TypeError(f"learned method {cls.method!r} takes a base solver: list them in BASES")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        n = len(self.config["sigmas"]) - 1
        self.num_intervals = n
        self.build_parameters(n, self.options)
        if self.config["time_shift"]:  # in the dtype of the method's other parameters
            self.xi = nn.Parameter(torch.zeros(n, dtype=self.PARAM_DTYPE or torch.get_default_dtype()))
        self.init_guidance(self.config.get("guidance"))
        self.log: Any = None  # the training log (fewstep.learned.TrainLog) after fewstep.learned.train
        self.cost_measured: dict[str, float] | None = None  # fewstep.learned.cost.measure_cost, when training showed it

    # ------------------------------------------------------------------ configuration
    @classmethod
    def check_options(cls, options: dict[str, Any] | None) -> dict[str, Any]:
        """The options filled with their defaults; unknown or invalid ones are a ValueError naming what is allowed."""
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options of {cls.method} must be a dict, got {type(options).__name__}")
        given = dict(options or {})
        unknown = sorted(set(given) - set(cls.OPTIONS))
        if unknown:
            allowed = ", ".join(f"{k} ({o.help or o.kind.__name__})" for k, o in cls.OPTIONS.items()) or "none"
            raise ValueError(f"method {cls.method!r} has no option(s) {', '.join(unknown)}; its options: {allowed}")
        out = {k: o.default for k, o in cls.OPTIONS.items()}
        out.update(given)
        for k, o in cls.OPTIONS.items():
            if (why := o.problem(out[k])) is not None:
                raise ValueError(f"option {k} of {cls.method} must be {why}, got {out[k]!r}")
            if o.kind is float and out[k] is not None:
                out[k] = float(out[k])
        return out

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        """{"solver": name, "options": {...}}: the classic solver this method is built on and equals at its neutral
        initialisation (methods whose base the user picks, ``takes_base``, do not implement this)."""
        raise NotImplementedError

    @classmethod
    def check_base(cls, base: Any) -> dict[str, Any]:
        """A user-picked base ({"solver": name, "options": {...}}) checked against ``BASES`` and the solver's own
        option checks."""
        if not (isinstance(base, dict) and set(base) == {"solver", "options"} and _json_scalars(base["options"])):
            raise ValueError('base must be {"solver": name, "options": {name: number or string}}, got '
                             f"{str(base)[:100]!r}")
        if base["solver"] not in cls.BASES:
            raise ValueError(f"the base solver of {cls.method} must be one of {', '.join(cls.BASES)}, got "
                             f"{base['solver']!r}")
        get_solver(base["solver"], **base["options"])  # the solver's own option checks
        return {"solver": base["solver"], "options": dict(base["options"])}

    @classmethod
    def make_config(cls, sigmas: Any, *, afs: bool, options: dict[str, Any] | None = None, base: Any = None,
                    time_shift: bool = False, schedule: Any = None, model_id: str | None = None,
                    training: dict | None = None, guidance: dict[str, Any] | None = None) -> dict[str, Any]:
        """A validated config for this method (options filled with their defaults). ``base``: the base solver's name
        (or {"solver": name, "options": {...}}) for methods that take one. ``guidance``: {"scales": [lo, hi],
        "degree": d} makes every table a polynomial in the guidance scale (:mod:`fewstep.learned.guidance`)."""
        opts = cls.check_options(options)
        if cls.takes_base:
            base = {"solver": "ipndm" if base is None else base, "options": {}} if not isinstance(base, dict) else base
            base = cls.check_base(base)
        elif base is not None:
            raise ValueError(f"method {cls.method!r} is built on {cls.base_solver_config(opts)['solver']} and takes no "
                             f"base solver, got base={base!r}")
        else:
            base = cls.base_solver_config(opts)
        cfg = {"version": VERSION, "method": cls.method, "options": opts,
               "sigmas": [float(v) for v in validate_sigmas(sigmas, "sigmas")], "schedule": schedule, "afs": afs,
               "base": base, "time_shift": time_shift, "model_id": model_id, "training": training}
        if guidance is not None:
            cfg["guidance"] = guidance
        check_config(cfg, "config", {cls.method: cls})
        return cfg

    @classmethod
    def probe_solver(cls, options: dict[str, Any] | None = None, base: Any = None, afs: bool = False) -> Solver:
        """The method's solver on a two-sigma placeholder schedule: what :func:`fewstep.steps_for_nfe` counts."""
        config = cls.make_config([80.0, 0.002], afs=afs, options=options, base=base)
        with torch.device("meta"):
            return cls(config).solver()

    @property
    def options(self) -> dict[str, Any]:
        return self.config["options"]

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def make_solver(self) -> Solver:
        """The method's solver reading its parameters from ``self`` (without time shifts)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks with defaults
    @classmethod
    def default_lr(cls, options: dict[str, Any]) -> float:
        """The measured Adam learning rate for these options."""
        return cls.DEFAULTS.lr

    @classmethod
    def options_for_base(cls, solver: str, options: dict[str, Any]) -> dict[str, Any] | None:
        """The method's options that make its base the classic ``solver`` with ``options`` (so that training starts
        from a tuned configuration, ``fewstep train --tuned``), or None where the method cannot be built on it."""
        return None

    @classmethod
    def for_training(cls, denoiser: Callable, options: dict[str, Any] | None,
                     probe: Callable[[Callable], torch.Tensor | None],
                     shape: tuple[int, ...] = ()) -> tuple[Callable, dict[str, Any] | None]:
        """(the denoiser to train with, the options to store) from the options given to :func:`train`; ``probe(model)``
        makes one model evaluation and returns its features; ``shape``: one sample's. As given by default."""
        return denoiser, options

    @classmethod
    def config_problem(cls, cfg: dict[str, Any]) -> str | None:
        """What is wrong with a config beyond the shared schema (options that contradict each other), or None."""
        return None

    def prepare(self, denoiser: Callable) -> Callable:
        """The denoiser as this sampler's solver calls it (e.g. with a feature hook); as it is by default."""
        return denoiser

    def export_steps(self) -> list[dict[str, float]] | None:
        """Per-step numbers a host sampler can apply (``fewstep schedule export``); None: none exist."""
        return None

    def progress(self) -> dict[str, str]:
        """Extra fields for the training progress bar."""
        return {}

    def cost(self, shape: tuple[int, ...]) -> dict[str, float] | None:
        """The cost of this method's operator per step for one sample of ``shape``: ``parameters`` (all steps),
        ``macs_per_step`` (multiply-adds), ...; None for methods without one (tables of coefficients and times, whose
        per-step work is a few vector operations). :func:`fewstep.learned.cost.measure_cost` measures it."""
        return None

    def operator_call(self, x: torch.Tensor) -> Callable[[], Any] | None:
        """A call running one step's operator on the batch ``x`` (for FLOP counting and timing), or None."""
        return None

    # ------------------------------------------------------------------ parameters the solvers read
    def time_factor(self, i: int) -> torch.Tensor:
        """exp(xi_i): the model-input time factor of step ``i`` (:func:`positive_factor`)."""
        return positive_factor(self.xi[i])

    # ------------------------------------------------------------------ sampling
    def solver(self) -> Solver:
        """The solver this sampler drives (with the time-shift wrapper when it learns xi)."""
        inner = self.make_solver()
        return TimeShift(inner=inner, predictor=self) if self.config["time_shift"] else inner

    def rounds(self) -> int:
        """Sequential model rounds per sample (parallel evaluations of one step count once), AFS deducted."""
        s, n = self.solver(), len(self.config["sigmas"])
        r = getattr(s, "rounds", None)
        return (r(n) if callable(r) else s.nfe(n)) - int(self.config["afs"])

    def nfe(self) -> int:
        """Model evaluations per sample (AFS deducted)."""
        return self.solver().nfe(len(self.config["sigmas"])) - int(self.config["afs"])

    def describe(self) -> str:
        """E.g. 'plugin on ipndm (max_order=3)' or 'dyweight (window=3)': the options that differ from the
        defaults."""
        opts = ", ".join(f"{k}={self.options[k]}" for k, o in self.OPTIONS.items() if self.options[k] != o.default)
        base = self.config["base"]
        on = ""
        if self.takes_base:
            bo = ", ".join(f"{k}={v}" for k, v in base["options"].items())
            on = f" on {base['solver']}" + (f" ({bo})" if bo else "")
        return f"{self.method}{on}" + (f" ({opts})" if opts else "")

    def sampling_setup(self, denoiser: Callable, *, sigmas: Any = None, solver: Any = None,
                       afs: bool | None = None, shape: Any = None) -> tuple[Callable, torch.Tensor, Solver, bool]:
        """(denoiser, sigmas, solver, afs) to sample with: the trained settings; given ones must agree (a float32
        copy of the sigmas is accepted). The denoiser must be the trained model (``model_id``), under the trained
        guidance scale (or in the trained range) and classes, and ``shape`` (one sample's, when known) the trained
        one: each mismatch is a ValueError (refused, not warned: the per-step parameters are fitted to the
        trajectories of those settings and nothing measures how they transfer). Checkpoints written before these
        settings were recorded are not checked for them."""
        cfg = self.config
        trained = torch.tensor(cfg["sigmas"], dtype=torch.float64)
        if sigmas is not None and not same_sigmas(validate_sigmas(sigmas), trained):
            raise ValueError(f"this {cfg['method']} sampler was trained for sigmas "
                             f"{[float(f'{v:.6g}') for v in cfg['sigmas']]}; pass sigmas=None to use them")
        solv = self.solver()
        if solver is not None and solver not in (cfg["method"], solv.name, cfg["base"]["solver"]):
            raise ValueError(f"this sampler was trained as {self.describe()}, got solver {solver!r}")
        if afs is not None and afs != cfg["afs"]:
            raise ValueError(f"this sampler was trained with afs={cfg['afs']}, got afs={afs}")
        want_id, have_id = cfg.get("model_id"), getattr(denoiser, "model_id", None)
        if want_id is not None and have_id is not None and want_id != have_id:
            raise ValueError(f"this sampler was trained for model {want_id!r}, but the denoiser is {have_id!r}")
        self.check_trained_for(denoiser, shape)
        denoiser = self.prepare(denoiser)
        self.use_scale_of(denoiser)
        return denoiser, trained, solv, bool(cfg["afs"])

    def check_trained_for(self, denoiser: Callable, shape: Any = None) -> None:
        """Refuse a sample shape, guidance scale or class set other than the trained ones (recorded in
        ``config["training"]``; older checkpoints lack them and are not checked)."""
        rec = self.config.get("training") or {}
        want = rec.get("shape")
        if shape is not None and isinstance(want, list) and tuple(shape) != tuple(want):
            raise ValueError(f"this {self.method} sampler was trained on samples of shape {tuple(want)}, not "
                             f"{tuple(shape)}; its per-step parameters are fitted to that shape's trajectories. "
                             "Train a sampler on this shape")
        cond = rec.get("conditioning")
        if cond is not None and (why := conditioning_problem(cond, conditioning_of(denoiser),
                                                             self.guidance_aware)) is not None:
            raise ValueError(f"this {self.method} sampler cannot sample this denoiser: {why}")

    def check_solver(self, solver: Solver, sigmas: torch.Tensor, afs: bool) -> None:
        """Refuse a solver instance holding this sampler but built differently from what it was trained for."""
        want = self.solver()
        if not same_solver(solver, want):
            raise ValueError(f"this sampler was trained as {self.describe()} "
                             f"({'with' if self.config['time_shift'] else 'without'} time shifts); it is inside "
                             f"{describe_solver(solver)}; use fewstep.sample(..., predictor=p)")
        if not same_sigmas(sigmas, torch.tensor(self.config["sigmas"], dtype=torch.float64)):
            raise ValueError("this sampler was trained for other sigmas; use fewstep.sample(..., predictor=p)")
        if afs != self.config["afs"]:
            raise ValueError(f"this sampler was trained with afs={self.config['afs']}, got afs={afs}")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file: the weights, the JSON config and their SHA-256 (atomic, reproducible bytes)."""
        check_config(self.config, "config", {self.method: type(self)})
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for k, v in tensors.items():
            if not bool(torch.isfinite(v).all()):
                raise CheckpointError(f"sampler weight {k!r} holds NaN/inf (training diverged?); not saving it")
        meta = {"format": FORMAT, "config": json.dumps(self.config, sort_keys=True, allow_nan=False),
                "sha256": tensor_digest(tensors)}
        return write_safetensors(path, tensors, meta)


def check_config(cfg: Any, where: str, methods: dict[str, type[LearnedSampler]]) -> type[LearnedSampler]:
    """The strict schema of a learned sampler's config (a file may be edited or forged); returns its class."""

    def bad(key: str, want: str, got: Any) -> CheckpointError:
        return CheckpointError(f"{where}: config {key} must be {want}, got {str(got)[:100]!r}")

    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: config must be a JSON object")
    unknown, missing = set(cfg) - CONFIG_KEYS, REQUIRED_KEYS - set(cfg)
    if unknown:
        raise CheckpointError(f"{where}: unknown config keys {', '.join(sorted(unknown))}")
    if missing:
        raise CheckpointError(f"{where}: config lacks {', '.join(sorted(missing))}")
    if isinstance(cfg["version"], bool) or cfg["version"] != VERSION:
        raise CheckpointError(f"{where}: version {cfg['version']!r}, this fewstep reads version {VERSION}")
    if not isinstance(cfg["method"], str) or cfg["method"] not in methods:
        raise bad("method", f"one of {', '.join(methods)}", cfg["method"])
    cls = methods[cfg["method"]]
    if not isinstance(cfg["sigmas"], list) or not 2 <= len(cfg["sigmas"]) <= 1000 or \
            any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in cfg["sigmas"]):
        raise bad("sigmas", "a list of 2 to 1000 numbers", cfg["sigmas"])
    try:
        validate_sigmas(cfg["sigmas"], "sigmas")
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{where}: config {e}") from None
    for k in ("afs", "time_shift"):
        if not isinstance(cfg[k], bool):
            raise bad(k, "true or false", cfg[k])
    opts = cfg["options"]
    if not isinstance(opts, dict) or set(opts) != set(cls.OPTIONS):
        raise bad("options", f"an object with exactly {sorted(cls.OPTIONS)}", opts)
    for k, o in cls.OPTIONS.items():
        if (why := o.problem(opts[k])) is not None:
            raise bad(f"options.{k}", why, opts[k])
    try:
        want_base = cls.check_base(cfg["base"]) if cls.takes_base else cls.base_solver_config(opts)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: config base: {e}") from None
    if cfg["base"] != want_base:
        raise bad("base", repr(want_base), cfg["base"])
    if cfg.get("model_id") is not None and not isinstance(cfg["model_id"], str):
        raise bad("model_id", "a string or null", cfg["model_id"])
    for k in ("schedule", "training"):
        if cfg.get(k) is not None and not isinstance(cfg[k], dict):
            raise bad(k, "a JSON object or null", cfg[k])
    rec = cfg.get("training") or {}
    if "shape" in rec and not (isinstance(rec["shape"], list) and 1 <= len(rec["shape"]) <= 8 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in rec["shape"])):
        raise bad("training.shape", "a list of 1 to 8 positive ints", rec["shape"])
    if rec.get("conditioning") is not None and (why := check_conditioning_record(rec["conditioning"])) is not None:
        raise bad("training.conditioning", why, rec["conditioning"])
    if cfg.get("guidance") is not None and (why := check_guidance_config(cfg["guidance"])) is not None:
        raise bad("guidance", why, cfg["guidance"])
    if (why := cls.config_problem(cfg)) is not None:
        raise CheckpointError(f"{where}: config {why}")
    return cls


def classic_bases(*exclude: str) -> tuple[str, ...]:
    """The classic solvers a wrapper method can be built on (every solver but the learned AMED ones)."""
    return tuple(n for n in SOLVERS if n not in ("amed", "amed_plugin", *exclude))
