"""A recipe: one classic sampling configuration (solver, options, AFS, sigmas) measured for one model and NFE, as
``fewstep tune`` writes it. It is used wherever a learned sampler is (``predictor=`` of :func:`fewstep.sample`,
:func:`fewstep.k.sample_learned` and the diffusers scheduler; ``fewstep sample --predictor FILE``), and as the
base a learned sampler starts from (``fewstep train --tuned FILE``). The file is a schedule file (every schedule
reader takes its sigmas) whose ``info`` holds the rest, read back with strict types."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .schedules import get_schedule, read_schedule_file, same_sigmas, save_schedule, validate_sigmas
from .solvers import SOLVERS, Solver, get_solver

__all__ = ["Recipe", "option_label", "make_sigmas", "model_timesteps", "RECIPE_FORMAT"]

RECIPE_FORMAT = "fewstep-recipe"
NOT_CLASSIC = ("amed_plugin",)  # needs a base solver instance: not a recipe's solver


def model_timesteps(denoiser: Any) -> torch.Tensor | None:
    """The alphas_cumprod of a discrete model's training timesteps (from its ``log_sigmas``), else None."""
    logs = getattr(denoiser, "log_sigmas", None)
    if not isinstance(logs, torch.Tensor) or logs.ndim != 1 or logs.numel() < 2:
        return None
    return 1 / (1 + logs.double().exp() ** 2)


def make_sigmas(kind: str, num: int, lo: float, hi: float, rho: float, denoiser: Any) -> torch.Tensor | None:
    """A schedule of ``num`` sigmas of ``kind`` on [lo, hi], or None where it cannot be made (a discrete schedule of
    a continuous model, more steps than timesteps, ends that miss the range)."""
    try:
        if kind == "discrete":
            ac = model_timesteps(denoiser)
            if ac is None:
                return None
            s = get_schedule("discrete", num, lo, hi, rho, alphas_cumprod=ac)
            if abs(math.log(float(s[0]) / hi)) > 1e-6 or abs(math.log(float(s[-1]) / lo)) > 1e-6:
                return None  # its ends are the nearest timesteps: comparable only when they are the range's
            s[0], s[-1] = hi, lo
            return s
        return get_schedule(kind, num, lo, hi, rho)
    except ValueError:
        return None


def option_label(solver: str, options: dict[str, Any], afs: bool, schedule: str) -> str:
    """E.g. 'unipc (max_order=3, variant=bh1) +AFS, polynomial rho=2'."""
    opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{solver}{f' ({opts})' if opts else ''}{' +AFS' if afs else ''}, {schedule}"


@dataclass(frozen=True)
class Recipe:
    """``solver`` with ``options`` and ``afs`` on ``sigmas`` (made as ``schedule`` says) at ``nfe`` model
    evaluations, for the model ``model_id`` (and guidance scale ``guidance``); ``rmse``: its error on the tuning
    seeds against the teacher. Usable as ``predictor=`` wherever a learned sampler is."""

    solver: str
    options: dict[str, Any]
    afs: bool
    sigmas: tuple[float, ...]
    schedule: str
    nfe: int
    model_id: str | None = None
    guidance: float | None = None
    rmse: float | None = None

    uses_features = False  # the sampler protocol: no network features

    def __post_init__(self) -> None:
        if not isinstance(self.solver, str) or self.solver not in SOLVERS or self.solver in NOT_CLASSIC:
            raise ValueError(f"recipe solver must be a classic solver name, got {self.solver!r}")
        if not isinstance(self.options, dict) or not all(
                isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in self.options.items()):
            raise TypeError(f"recipe options must be a dict of numbers / strings, got {self.options!r}")
        if not isinstance(self.afs, bool):
            raise TypeError(f"recipe afs must be true or false, got {self.afs!r}")
        sig = validate_sigmas(list(self.sigmas), "recipe sigmas")
        object.__setattr__(self, "sigmas", tuple(float(v) for v in sig))
        cost = self.solver_instance().nfe(len(self.sigmas)) - int(self.afs)
        if cost != self.nfe:
            raise ValueError(f"recipe: {self.solver} on {len(self.sigmas)} sigmas with afs={self.afs} makes {cost} "
                             f"model evaluations, not nfe={self.nfe}")

    # ------------------------------------------------------------------ what it is
    def solver_instance(self) -> Solver:
        """The configured solver."""
        return get_solver(self.solver, **self.options)

    def label(self) -> str:
        """E.g. 'ipndm (max_order=3) +AFS, polynomial rho=5'."""
        return option_label(self.solver, self.options, self.afs, self.schedule)

    describe = label

    @property
    def config(self) -> dict[str, Any]:
        """The sampler protocol's config: method "recipe", sigmas, AFS, model id."""
        return {"method": "recipe", "sigmas": list(self.sigmas), "afs": self.afs, "model_id": self.model_id,
                "base": {"solver": self.solver, "options": dict(self.options)}}

    def rounds(self) -> int:
        """Sequential model rounds per sample (one per evaluation for a classic solver)."""
        return self.nfe

    # ------------------------------------------------------------------ sampling
    def sampling_setup(self, denoiser: Callable, *, sigmas: Any = None, solver: Any = None,
                       afs: bool | None = None, shape: Any = None) -> tuple[Callable, torch.Tensor, Solver, bool]:
        """(denoiser, sigmas, solver, afs) to sample with; given ones must agree, and the denoiser must be the model
        the recipe was tuned on (a classic solver works on any ``shape``)."""
        mine = torch.tensor(self.sigmas, dtype=torch.float64)
        if sigmas is not None and not same_sigmas(validate_sigmas(sigmas), mine):
            raise ValueError(f"this recipe was tuned for sigmas {[float(f'{v:.6g}') for v in self.sigmas]}; pass "
                             "sigmas=None to use them")
        if solver is not None and solver != self.solver:
            raise ValueError(f"this recipe is {self.label()}, got solver {solver!r}")
        if afs is not None and afs != self.afs:
            raise ValueError(f"this recipe was tuned with afs={self.afs}, got afs={afs}")
        have = getattr(denoiser, "model_id", None)
        if self.model_id is not None and have is not None and have != self.model_id:
            raise ValueError(f"this recipe was tuned for model {self.model_id!r}, but the denoiser is {have!r}")
        return denoiser, mine, self.solver_instance(), self.afs

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """A schedule file whose ``info`` holds the rest (written atomically)."""
        info = {k: v for k, v in asdict(self).items() if k != "sigmas"}
        return save_schedule(path, self.sigmas, format=RECIPE_FORMAT, **info)

    @classmethod
    def load(cls, path: str | os.PathLike, model_id: str | None = None) -> "Recipe":
        """A recipe written by :meth:`save` (``fewstep tune``); every field's type is checked (a JSON ``"false"`` is
        not false). ``model_id``: refuse a recipe tuned for another model."""
        sig, info = read_schedule_file(path)  # the one bounded, typed reader of schedule files
        if info.get("format") != RECIPE_FORMAT:
            raise ValueError(f"{path} is a schedule file but not a fewstep recipe (fewstep tune writes one)")
        want: dict[str, tuple[type, ...]] = {"solver": (str,), "options": (dict,), "afs": (bool,), "schedule": (str,),
                                             "nfe": (int,)}
        for k, types in want.items():
            v = info.get(k)
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise ValueError(f"{path}: recipe {k} must be a {types[0].__name__}, got {v!r}")
        if info.get("model_id") is not None and not isinstance(info["model_id"], str):
            raise ValueError(f"{path}: recipe model_id must be a string or null, got {info['model_id']!r}")
        for k in ("guidance", "rmse"):
            v = info.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"{path}: recipe {k} must be a finite number or null, got {v!r}")
        unknown = set(info) - {"format", *want, "model_id", "guidance", "rmse"}
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys {', '.join(sorted(unknown))}")
        if model_id is not None and info.get("model_id") not in (None, model_id):
            raise ValueError(f"{path} was tuned for model {info['model_id']!r}, not {model_id!r}")
        return cls(solver=info["solver"], options=info["options"], afs=info["afs"], sigmas=tuple(sig.tolist()),
                   schedule=info["schedule"], nfe=info["nfe"], model_id=info.get("model_id"),
                   guidance=info.get("guidance"), rmse=info.get("rmse"))
