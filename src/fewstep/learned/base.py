"""The base class of learned samplers beyond AMED and their safe checkpoint format.

A learned sampler is an ``nn.Module`` holding per-step parameters, zero-initialised so that its solver equals the
base solver, and a ``config`` with everything needed to sample: the method, its options, the trained sigmas, AFS,
the base solver, whether model-input time shifts are learned, and the model id. ``save(path)`` writes one
safetensors file (config JSON + SHA-256 of the weights in its metadata, :func:`fewstep.io.write_safetensors`);
:func:`load` reads it with the checks of AMED checkpoints (strict config schema, parameter shapes derived from the
config and compared with the file header before allocation, finite values, digest) and also reads AMED checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..amed import load as amed_load
from ..amed.checkpoint import FORMAT as AMED_FORMAT
from ..amed.predictor import CheckpointError
from ..io import (
    SafetensorsFileError,
    read_safetensors,
    read_safetensors_config,
    read_safetensors_header,
    tensor_digest,
    write_safetensors,
)
from ..scale_basis import ScaleAware, check_guidance_config
from ..schedules import same_sigmas, validate_sigmas
from ..solvers import Solver, TimeShift

__all__ = ["LearnedSampler", "load", "read_config", "FORMAT", "VERSION", "CONFIG_KEYS", "METHODS", "register",
           "CheckpointError"]

FORMAT = "fewstep-learned-sampler"
VERSION = 1
CONFIG_KEYS = frozenset({"version", "method", "options", "sigmas", "schedule", "afs", "base", "time_shift",
                         "model_id", "training", "guidance"})
REQUIRED_KEYS = frozenset({"version", "method", "options", "sigmas", "afs", "base", "time_shift"})
MAX_BYTES = 2**24  # tens of numbers per step
METHODS: dict[str, type["LearnedSampler"]] = {}


def register(cls: type["LearnedSampler"]) -> type["LearnedSampler"]:
    """Class decorator: make a learned sampler loadable by its ``method`` name."""
    METHODS[cls.method] = cls
    return cls


class LearnedSampler(ScaleAware, nn.Module):
    """Base class: subclasses set ``method``, ``OPTIONS`` ({name: (default, lo, hi)} of int options), implement
    :meth:`build_parameters` (parameters for ``num_intervals`` steps, neutral at zero), :meth:`make_solver` and
    :meth:`base_solver_config`. Time shifts xi (``config["time_shift"]``) and guidance-scale conditioning
    (``config["guidance"]``, :mod:`fewstep.scale_basis`) are handled here for every method."""

    method: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, tuple[int, int, int]]] = {}
    uses_features: ClassVar[bool] = False  # tables: no network features
    learns_schedule_by_default: ClassVar[bool] = False  # train(learn_schedule=None) means this
    time_shift_by_default: ClassVar[bool] = False  # train(time_shift=None) means this

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        n = len(self.config["sigmas"]) - 1
        self.num_intervals = n
        self.build_parameters(n, self.options)
        if self.config["time_shift"]:
            self.xi = nn.Parameter(torch.zeros(n, dtype=torch.float64))
        self.init_guidance(self.config.get("guidance"))

    # ------------------------------------------------------------------ configuration
    @classmethod
    def make_config(cls, sigmas: Any, *, afs: bool, options: dict[str, Any] | None = None, time_shift: bool = False,
                    schedule: Any = None, model_id: str | None = None, training: dict | None = None,
                    guidance: dict[str, Any] | None = None) -> dict[str, Any]:
        """A validated config for this method (options filled with their defaults). ``guidance``:
        {"scales": [lo, hi], "degree": d} makes every table a polynomial in the guidance scale
        (:mod:`fewstep.scale_basis`)."""
        opts = {k: v[0] for k, v in cls.OPTIONS.items()}
        opts.update(options or {})
        cfg = {"version": VERSION, "method": cls.method, "options": opts,
               "sigmas": [float(v) for v in validate_sigmas(sigmas, "sigmas")], "schedule": schedule, "afs": afs,
               "base": cls.base_solver_config(opts), "time_shift": time_shift, "model_id": model_id,
               "training": training}
        if guidance is not None:
            cfg["guidance"] = guidance
        check_config(cfg, "config")
        return cfg

    @property
    def options(self) -> dict[str, Any]:
        return self.config["options"]

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        """{"solver": name, "options": {...}}: the solver this method equals at its neutral initialisation."""
        raise NotImplementedError

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def make_solver(self) -> Solver:
        """The method's solver reading its parameters from ``self`` (without time shifts)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ parameters the solvers read
    def time_factor(self, i: int) -> torch.Tensor:
        """exp(xi_i): the model-input time factor of step ``i``."""
        return self.xi[i].exp()

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

    def sampling_setup(self, denoiser: Callable, *, sigmas: Any = None, solver: Any = None,
                       afs: bool | None = None) -> tuple[Callable, torch.Tensor, Solver, bool]:
        """(denoiser, sigmas, solver, afs) to sample with: the trained settings; given ones must agree."""
        cfg = self.config
        trained = torch.tensor(cfg["sigmas"], dtype=torch.float64)
        if sigmas is not None and not same_sigmas(validate_sigmas(sigmas), trained):
            raise ValueError(f"this {cfg['method']} sampler was trained for sigmas "
                             f"{[float(f'{v:.6g}') for v in cfg['sigmas']]}; pass sigmas=None to use them")
        if solver is not None and solver != cfg["method"]:
            raise ValueError(f"this sampler was trained as {cfg['method']!r}, got solver {solver!r}")
        if afs is not None and afs != cfg["afs"]:
            raise ValueError(f"this sampler was trained with afs={cfg['afs']}, got afs={afs}")
        want_id, have_id = cfg.get("model_id"), getattr(denoiser, "model_id", None)
        if want_id is not None and have_id is not None and want_id != have_id:
            raise ValueError(f"this sampler was trained for model {want_id!r}, but the denoiser is {have_id!r}")
        self.use_scale_of(denoiser)
        return denoiser, trained, self.solver(), bool(cfg["afs"])

    def check_solver(self, solver: Solver, sigmas: torch.Tensor, afs: bool) -> None:
        """Refuse a solver instance holding this sampler but built differently from what it was trained for."""
        want = self.solver()
        inner_w, inner_g = getattr(want, "inner", want), getattr(solver, "inner", solver)
        same = type(solver) is type(want) and type(inner_g) is type(inner_w) and all(
            getattr(inner_g, k, None) == getattr(inner_w, k, None) for k in ("max_order", "K", "coords", "multiplicative"))
        if not same:
            raise ValueError(f"this sampler was trained as {self.config['method']} "
                             f"({'with' if self.config['time_shift'] else 'without'} time shifts); it is inside "
                             f"{solver.name}; use fewstep.sample(..., predictor=p)")
        if not same_sigmas(sigmas, torch.tensor(self.config["sigmas"], dtype=torch.float64)):
            raise ValueError("this sampler was trained for other sigmas; use fewstep.sample(..., predictor=p)")
        if afs != self.config["afs"]:
            raise ValueError(f"this sampler was trained with afs={self.config['afs']}, got afs={afs}")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file: the weights, the JSON config and their SHA-256 (atomic, reproducible bytes)."""
        check_config(self.config, "config")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for k, v in tensors.items():
            if not bool(torch.isfinite(v).all()):
                raise CheckpointError(f"sampler weight {k!r} holds NaN/inf (training diverged?); not saving it")
        meta = {"format": FORMAT, "config": json.dumps(self.config, sort_keys=True, allow_nan=False),
                "sha256": tensor_digest(tensors)}
        return write_safetensors(path, tensors, meta)


def check_config(cfg: Any, where: str) -> None:
    """The strict schema of a learned sampler's config (a file may be edited or forged)."""

    def bad(key: str, want: str, got: Any) -> CheckpointError:
        return CheckpointError(f"{where}: config {key} must be {want}, got {str(got)[:100]!r}")

    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: config must be a JSON object")
    unknown, missing = set(cfg) - CONFIG_KEYS, REQUIRED_KEYS - set(cfg)
    if unknown:
        raise CheckpointError(f"{where}: unknown config keys {', '.join(sorted(unknown))}")
    if missing:
        raise CheckpointError(f"{where}: config lacks {', '.join(sorted(missing))}")
    if cfg["version"] != VERSION:
        raise CheckpointError(f"{where}: version {cfg['version']!r}, this fewstep reads version {VERSION}")
    if cfg["method"] not in METHODS:
        raise bad("method", f"one of {', '.join(METHODS)}", cfg["method"])
    cls = METHODS[cfg["method"]]
    if not isinstance(cfg["sigmas"], list) or not 2 <= len(cfg["sigmas"]) <= 1000:
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
    for k, (_, lo, hi) in cls.OPTIONS.items():
        v = opts[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(f"options.{k}", f"an int in {lo}..{hi}", v)
    if cfg["base"] != cls.base_solver_config(opts):
        raise bad("base", repr(cls.base_solver_config(opts)), cfg["base"])
    if cfg.get("model_id") is not None and not isinstance(cfg["model_id"], str):
        raise bad("model_id", "a string or null", cfg["model_id"])
    for k in ("schedule", "training"):
        if cfg.get(k) is not None and not isinstance(cfg[k], dict):
            raise bad(k, "a JSON object or null", cfg[k])
    if cfg.get("guidance") is not None and (why := check_guidance_config(cfg["guidance"])) is not None:
        raise bad("guidance", why, cfg["guidance"])


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated config of a learned-sampler checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        cfg = read_safetensors_config(path, fmt=FORMAT, what="fewstep learned sampler", max_bytes=MAX_BYTES)
    except SafetensorsFileError as e:
        raise CheckpointError(str(e)) from None
    check_config(cfg, str(path))
    return cfg


def load(path: str | os.PathLike, model_id: str | None = None) -> Any:
    """Load any learned sampler: a ``fewstep.learned`` checkpoint (DyWeight, EPD, ...) or an AMED one (dispatched to
    :func:`fewstep.amed.load`). Refuses pickles, forged configs, weights of other shapes (checked on the header
    before allocation), non-finite weights, a wrong digest and files trained for another ``model_id``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:  # the format decides; AMED predictors with features may be larger than a table
        meta = read_safetensors_header(path, max_bytes=2**28, what="fewstep learned sampler")[1]
    except SafetensorsFileError as e:
        raise CheckpointError(str(e)) from None
    if meta.get("format") == AMED_FORMAT:
        return amed_load(path, model_id=model_id)
    cfg = read_config(path)
    if model_id is not None and cfg.get("model_id") not in (None, model_id):
        raise CheckpointError(f"{path} was trained for model {cfg['model_id']!r}, not {model_id!r}")
    cls = METHODS[cfg["method"]]
    with torch.device("meta"):  # the shapes the config implies, before any allocation
        expect = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}
    try:
        tensors, meta = read_safetensors(path, fmt=FORMAT, max_bytes=MAX_BYTES, what="fewstep learned sampler",
                                         expect=expect)
    except SafetensorsFileError as e:
        raise CheckpointError(str(e)) from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: weights do not match their SHA-256")
    for k, v in tensors.items():
        if v.dtype != torch.float64:
            raise CheckpointError(f"{path}: weight {k!r} must be float64, got {v.dtype}")
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: weight {k!r} holds NaN/inf; this sampler cannot be used")
    sampler = cls(cfg)
    try:
        sampler.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured sampler: {e}") from None
    return sampler.eval()
