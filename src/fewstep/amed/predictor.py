"""The AMED predictor g_phi(h, t_{n+1}, t_n) -> (r_n, c_n, a_n) (Zhou et al., 2024, Sec. 3.4).

Two forms share the output heads:
  * feature-based: pooled bottleneck features -> LayerNorm -> linear projection, concatenated with sinusoidal
    embeddings of log t_{n+1} and log t_n, then two fully connected layers (a few thousand parameters);
  * predictor-free (``feature_dim=None``): a learned table of per-step logits, exportable as plain numbers.
Heads: r = sigmoid, c = 1 + scale_dir tanh, a = 1 + scale_time tanh; zero-initialised output, so an untrained
predictor is r = 0.5, c = a = 1.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..denoisers.features import HookFeatures, provides_features
from ..io import tensor_digest, write_safetensors
from ..scale_basis import ScaleAware
from ..schedules import same_sigmas, validate_sigmas
from ..solvers import AMEDSolver, Solver, get_solver

__all__ = ["AMEDPredictor", "LearnedSchedule", "student_solver", "FORMAT", "VERSION", "CONFIG_KEYS",
           "CheckpointError"]

FORMAT = "fewstep-amed-predictor"
VERSION = 1
CONFIG_KEYS = frozenset({
    "version", "student", "sigmas", "schedule", "afs", "scale_dir", "scale_time", "features", "architecture",
    "model_id", "training", "guidance",
})


class CheckpointError(ValueError):
    """A file is not a valid fewstep AMED checkpoint, or does not match what it is used with."""


def student_solver(config: dict[str, Any], predictor: Any) -> Solver:
    """The solver a predictor was trained for: AMED-Solver, or AMED-Plugin over its base solver."""
    st = config["student"]
    if st["solver"] == "amed":
        return AMEDSolver(predictor=predictor)
    # The options hold the base solver's and the plugin's own (c_mode); get_solver routes each to its owner.
    return get_solver("amed_plugin", base=st["base"], predictor=predictor, **st.get("options", {}))


def _describe(solver: Solver) -> str:
    """'amed', 'amed_plugin on ipndm', or with a non-default c_mode 'amed_plugin on dpmpp (c_mode='data')'."""
    base = getattr(solver, "base", None)
    mode = getattr(solver, "c_mode", "increment")
    return solver.name + ("" if base is None else f" on {base.name}") + \
        ("" if mode == "increment" else f" (c_mode={mode!r})")


class AMEDPredictor(ScaleAware, nn.Module):
    """Per-step r_n, c_n, a_n for ``num_intervals`` intervals (a schedule of ``num_intervals + 1`` sigmas);
    ``config`` holds everything needed to sample. ``save(path)`` writes a safe checkpoint
    (:func:`fewstep.amed.load` reads it); ``fewstep.sample(denoiser, noise, predictor=p)`` samples with it."""

    def __init__(
        self,
        num_intervals: int | None = None,
        feature_dim: int | None = None,
        scale_dir: float = 0.0,
        scale_time: float = 0.0,
        hidden: int = 128,
        emb_dim: int = 8,
        feat_proj: int = 16,
        config: dict[str, Any] | None = None,
        *,
        num_steps: int | None = None,
    ) -> None:
        super().__init__()
        if num_steps is not None:  # the old name of num_intervals (it counted intervals, not sigmas)
            import warnings

            warnings.warn("AMEDPredictor(num_steps=) is now num_intervals=", DeprecationWarning, stacklevel=2)
            num_intervals = num_steps
        num_steps = num_intervals
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_intervals must be a positive int, got {num_steps!r}")
        for name, v in (("scale_dir", scale_dir), ("scale_time", scale_time)):
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
        if feature_dim is not None and (not isinstance(feature_dim, int) or feature_dim < 1):
            raise ValueError(f"feature_dim must be None or a positive int, got {feature_dim!r}")
        self.num_steps, self.feature_dim = num_steps, feature_dim
        self.scale_dir, self.scale_time = float(scale_dir), float(scale_time)
        self.hidden, self.emb_dim, self.feat_proj = hidden, emb_dim, feat_proj
        self.config: dict[str, Any] = dict(config or {})
        if feature_dim is None:
            self.table = nn.Parameter(torch.zeros(num_steps, 3))
        else:
            self.norm = nn.LayerNorm(feature_dim)
            self.proj = nn.Linear(feature_dim, feat_proj)
            self.fc1 = nn.Linear(feat_proj + 2 * emb_dim, hidden)
            self.fc2 = nn.Linear(hidden, 3)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
            freqs = torch.exp(torch.linspace(0, math.log(100.0), emb_dim // 2))
            self.register_buffer("freqs", freqs, persistent=False)
        if self.config.get("guidance") is not None:
            if feature_dim is not None:
                raise ValueError("a guidance-aware AMED predictor is a table (features='none'); a feature-based "
                                 "predictor does not take the guidance scale")
            self.init_guidance(self.config["guidance"])  # the table is a polynomial in the guidance scale

    @property
    def uses_features(self) -> bool:
        return self.feature_dim is not None

    def _embed(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        arg = t.reshape(-1, 1).to(self.freqs.dtype).log() * self.freqs
        return torch.cat([arg.sin(), arg.cos()], -1).expand(batch, -1)

    def logits(self, i: int, t_cur: torch.Tensor, t_next: torch.Tensor, features: torch.Tensor | None,
               batch: int) -> torch.Tensor:
        if not 0 <= i < self.num_steps:
            raise ValueError(f"step {i} is outside the {self.num_steps} steps this predictor was trained for")
        if self.feature_dim is None:
            return self.table[i].expand(batch, 3)
        dtype = self.fc1.weight.dtype
        if features is None:  # e.g. the analytical first step made no model call
            features = torch.zeros(batch, self.feature_dim, dtype=dtype, device=self.fc1.weight.device)
        features = features.reshape(batch, -1).to(dtype)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"predictor expects {self.feature_dim} features per sample, got {features.shape[1]}")
        h = torch.cat([self.proj(self.norm(features)), self._embed(t_cur, batch), self._embed(t_next, batch)], -1)
        return self.fc2(torch.nn.functional.silu(self.fc1(h)))

    def forward(self, i: int, t_cur: torch.Tensor, t_next: torch.Tensor, features: torch.Tensor | None,
                batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.logits(i, t_cur, t_next, features, batch).to(torch.float64)
        r = torch.sigmoid(z[:, 0])
        c = 1 + self.scale_dir * torch.tanh(z[:, 1])
        a = 1 + self.scale_time * torch.tanh(z[:, 2])
        return r, c, a

    def table_values(self) -> list[dict[str, float]]:
        """The predictor-free table as plain numbers: [{"r", "c", "a"}] per step (largest sigma first)."""
        if self.feature_dim is not None:
            raise ValueError("table_values() needs a predictor-free predictor (feature_dim=None)")
        with torch.no_grad():
            out = []
            for i in range(self.num_steps):
                r, c, a = self(i, torch.ones(()), torch.ones(()), None, 1)
                out.append({"r": float(r[0]), "c": float(c[0]), "a": float(a[0])})
        return out


    # ------------------------------------------------------------------ sampling with the predictor
    @property
    def num_intervals(self) -> int:
        return self.num_steps

    def solver(self) -> Solver:
        """The solver this predictor drives (AMED-Solver, or AMED-Plugin on the trained base solver)."""
        return student_solver(self.config, self)

    def sampling_setup(self, denoiser: Callable, *, sigmas: Any = None, solver: Any = None,
                       afs: bool | None = None) -> tuple[Callable, torch.Tensor, Solver, bool]:
        """(denoiser, sigmas, solver, afs) to sample with: the trained settings. A given ``sigmas`` must equal the
        trained ones (a float32 copy is accepted), a given ``solver`` / ``afs`` the trained ones; the denoiser must be
        the trained model (``model_id``) and is wrapped with its feature hook where the predictor reads features."""
        cfg = self.config
        trained = torch.tensor(cfg["sigmas"], dtype=torch.float64)
        if sigmas is not None:
            given = validate_sigmas(sigmas)
            if not same_sigmas(given, trained):
                raise ValueError(f"predictor was trained for sigmas {[float(f'{v:.6g}') for v in cfg['sigmas']]} "
                                 f"({trained.numel()}); the given {given.numel()} sigmas differ beyond float32 "
                                 "rounding. Pass sigmas=None to use the trained ones")
        st = cfg["student"]
        if solver is not None and solver not in (st["solver"], st.get("base")):
            raise ValueError(f"predictor was trained for solver {st.get('base') or st['solver']!r}, got {solver!r}")
        if afs is not None and afs != cfg["afs"]:
            raise ValueError(f"predictor was trained with afs={cfg['afs']}, got afs={afs}")
        want_id, have_id = cfg.get("model_id"), getattr(denoiser, "model_id", None)
        if want_id is not None and have_id is not None and want_id != have_id:
            raise ValueError(f"predictor was trained for model {want_id!r}, but the denoiser is {have_id!r}")
        feats = cfg["features"]
        if feats["source"] != "none" and not provides_features(denoiser):
            if feats["source"] == "hook" and isinstance(denoiser, torch.nn.Module):
                denoiser = HookFeatures(denoiser, denoiser, feats["module"])
            else:
                raise ValueError(
                    f"predictor needs {feats['source']} features ({feats.get('module') or 'denoise_with_features'}); "
                    "wrap the model with fewstep.denoisers.HookFeatures(denoiser, network, module)")
        self.use_scale_of(denoiser)
        return denoiser, trained, self.solver(), bool(cfg["afs"])

    def check_solver(self, solver: Solver, sigmas: torch.Tensor, afs: bool) -> None:
        """Refuse a solver instance that holds this predictor but differs from what it was trained for (the checks
        of :meth:`sampling_setup` for ``AMEDSolver(predictor=p)`` built by hand)."""
        if not self.config:
            return  # a bare predictor made in code, with no training record
        want = self.solver()
        if type(solver) is not type(want) or getattr(solver, "base", None) != getattr(want, "base", None) or \
                getattr(solver, "c_mode", None) != getattr(want, "c_mode", None):
            raise ValueError(f"this predictor was trained for {_describe(want)}; it is inside {_describe(solver)}")
        if not same_sigmas(sigmas, torch.tensor(self.config["sigmas"], dtype=torch.float64)):
            raise ValueError("this predictor was trained for other sigmas; use fewstep.sample(..., predictor=p)")
        if afs != self.config["afs"]:
            raise ValueError(f"this predictor was trained with afs={self.config['afs']}, got afs={afs}")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the predictor to ``path``: one safetensors file, the JSON config and a SHA-256 of the weights in
        its metadata (written atomically; byte-identical for identical predictors)."""
        cfg = dict(self.config)
        unknown = set(cfg) - CONFIG_KEYS
        if unknown:
            raise CheckpointError(f"predictor config has unknown keys: {', '.join(sorted(unknown))}")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for k, v in tensors.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise CheckpointError(f"predictor weight {k!r} holds NaN/inf (training diverged?); not saving it")
        meta = {"format": FORMAT, "config": json.dumps(cfg, sort_keys=True, allow_nan=False),
                "sha256": tensor_digest(tensors)}
        return write_safetensors(path, tensors, meta)


class LearnedSchedule(nn.Module):
    """A schedule with fixed end points whose log-sigma increments are a softmax of learnable logits:
    log sigma_k = log sigma_max - (sum_{j<k} softmax(z)_j) (log sigma_max - log sigma_min). Always strictly
    decreasing; initialised to reproduce ``init`` exactly (up to rounding)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        init = torch.as_tensor(init, dtype=torch.float64)
        logs = init.log()
        self.register_buffer("ends", init[[0, -1]].clone())
        self.logits = nn.Parameter((logs[:-1] - logs[1:]).log())

    def forward(self) -> torch.Tensor:
        lo_max, lo_min = self.ends.log()
        frac = torch.softmax(self.logits.to(torch.float64), 0).cumsum(0)[:-1]
        inner = (lo_max - frac * (lo_max - lo_min)).exp()
        return torch.cat([self.ends[:1], inner, self.ends[1:]])
