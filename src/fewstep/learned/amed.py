"""AMED-Solver and AMED-Plugin as learned methods (Zhou et al., "Fast ODE-based Sampling for Diffusion Models in
Around 5 Steps", CVPR 2024, Sec. 3.3-3.4).

The predictor g_phi(h, t_{n+1}, t_n) -> (r_n, c_n, a_n) has two forms sharing the output heads:
  * predictor-free (``features="none"``): a learned table of per-step logits, exportable as plain numbers;
  * feature-based: pooled bottleneck features -> LayerNorm -> linear projection, concatenated with sinusoidal
    embeddings of log t_{n+1} and log t_n, then two fully connected layers (a few thousand parameters).
Heads: r = sigmoid, c = 1 + scale_dir tanh, a = 1 + scale_time tanh; zero-initialised output, so an untrained
predictor is r = 0.5, c = a = 1: the AMED-Solver is then DPM-Solver-2 and the AMED-Plugin its base solver with one
more evaluation at the geometric midpoint of every interval.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..denoisers.features import BOTTLENECK_NAMES, HookFeatures, provides_features
from ..solvers import AMEDPlugin, AMEDSolver, Solver, get_solver
from ..solvers.amed import C_MODES
from .sampler import Defaults, LearnedSampler, Option, classic_bases

__all__ = ["AMEDSampler", "AMEDPluginSampler", "FEATURE_SOURCES"]

FEATURE_SOURCES = ("none", "adapter", "hook")
MAX_WIDTH = 2**16  # hidden, feature and embedding sizes beyond this are not ours

OPTIONS = {
    "scale_dir": Option(0.01, float, 0.0, None, below=1.0, help="c = 1 + scale_dir tanh(z)"),
    "scale_time": Option(0.0, float, 0.0, None, below=1.0, help="a = 1 + scale_time tanh(z)"),
    "features": Option("none", str, choices=FEATURE_SOURCES,
                       help="none (a table) | adapter (denoise_with_features) | hook (a module's output); "
                            "to train: none, adapter, auto (a U-Net's middle block) or a module name"),
    "feature_module": Option(None, str, nullable=True, help="the hooked module"),
    "feature_dim": Option(None, int, 1, MAX_WIDTH, nullable=True, help="features per sample"),
    "hidden": Option(128, int, 1, MAX_WIDTH, help="width of the feature network"),
    "emb_dim": Option(8, int, 2, MAX_WIDTH, help="sinusoidal time embedding size"),
    "feat_proj": Option(16, int, 1, MAX_WIDTH, help="projected feature size"),
}


class AMEDSampler(LearnedSampler):
    """AMED-Solver: per interval t_{n+1} -> t_n one evaluation at t_{n+1}, an Euler step to the learned intermediate
    time s_n = t_n^r t_{n+1}^(1-r), a second evaluation at (x_s, a_n s_n) and x_{t_n} = x_{t_{n+1}} + c_n (t_n -
    t_{n+1}) eps(x_s, s_n) (:class:`fewstep.solvers.AMEDSolver`). Neutral: DPM-Solver-2."""

    method = "amed"
    summary = "AMED-Solver: learned intermediate time and direction scale per step (Zhou et al., 2024)"
    OPTIONS: ClassVar[dict[str, Option]] = OPTIONS
    # Measured on the natural-patch bed: the 3-number-per-step table wants a large step (lr 0.1), the feature network
    # 0.02; teacher DEIS-logrho order 4 with M = 8; the final-point loss beat Algorithm 1's per-step loss there.
    DEFAULTS = Defaults(lr=0.1, batch=64, total_samples=8192, M=8)
    LOSSES = ("final", "per_step")
    PARAM_DTYPE = None  # the trajectories' dtype (float64 by default)

    @property
    def uses_features(self) -> bool:  # type: ignore[override]
        return self.options["features"] != "none"

    @classmethod
    def default_lr(cls, options: dict[str, Any]) -> float:
        return cls.DEFAULTS.lr if options.get("features", "none") == "none" else 2e-2

    @classmethod
    def base_solver_config(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"solver": "amed", "options": {}}

    @classmethod
    def config_problem(cls, cfg: dict[str, Any]) -> str | None:
        o = cfg["options"]
        if (o["features"] == "none") != (o["feature_dim"] is None):
            return "options.feature_dim must be an int for a feature source and null for features 'none'"
        if (o["features"] == "hook") != (o["feature_module"] is not None):
            return "options.feature_module must name the module for features 'hook' and be null otherwise"
        if cfg.get("guidance") is not None and o["features"] != "none":
            return "guidance must be null for a feature-based predictor"
        return None

    @classmethod
    def for_training(cls, denoiser: Callable, options: dict[str, Any] | None,
                     probe: Callable[[Callable], torch.Tensor | None],
                     shape: tuple[int, ...] = ()) -> tuple[Callable, dict[str, Any] | None]:
        """Resolve ``features``: "auto" takes the best available (the denoiser's own ``denoise_with_features``, else
        the middle block of a known U-Net, else none: a table), a module name hooks that module of the denoiser,
        "adapter" needs ``denoise_with_features``; the feature size comes from one probe evaluation."""
        opts = dict(options or {})
        feats = opts.get("features", "none")
        if not isinstance(feats, str):
            raise ValueError(f"features must be 'none', 'adapter', 'auto' or a module name, got {feats!r}")
        if feats == "auto":
            if provides_features(denoiser):
                feats = "adapter"
            elif not (isinstance(denoiser, nn.Module) and any(n in BOTTLENECK_NAMES
                                                               for n, _ in denoiser.named_modules())):
                feats = "none"
                warnings.warn(f"features='auto': {type(denoiser).__name__} provides no features and has no known "
                              f"middle block ({', '.join(BOTTLENECK_NAMES)}); training a predictor-free table",
                              UserWarning, stacklevel=3)
            opts["features"] = feats
        if feats == "none":
            return denoiser, opts
        if feats == "adapter":
            if not provides_features(denoiser):
                raise ValueError("features='adapter' needs a denoiser with denoise_with_features(x, sigma)")
            model, module = denoiser, None
        else:
            if not isinstance(denoiser, nn.Module):
                raise ValueError(f"features={feats!r} hooks a module of the network: the denoiser must be an "
                                 "nn.Module (or wrap it with fewstep.denoisers.HookFeatures and pass features='adapter')")
            model = HookFeatures(denoiser, denoiser, None if feats == "auto" else feats)
            module, feats = model.module_name, "hook"
        f = probe(model)
        opts.update(features=feats, feature_module=module, feature_dim=int(f.reshape(1, -1).shape[1]))
        return model, opts

    def build_parameters(self, num_intervals: int, options: dict[str, Any]) -> None:
        self.scale_dir, self.scale_time = options["scale_dir"], options["scale_time"]
        dim = options["feature_dim"]
        if options["features"] == "none":
            self.table = nn.Parameter(torch.zeros(num_intervals, 3))
        else:
            emb, proj, hidden = options["emb_dim"], options["feat_proj"], options["hidden"]
            self.norm = nn.LayerNorm(dim)
            self.proj = nn.Linear(dim, proj)
            self.fc1 = nn.Linear(proj + 4 * (emb // 2), hidden)  # two embeddings of sin and cos
            self.fc2 = nn.Linear(hidden, 3)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
            self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), emb // 2)), persistent=False)
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _embed(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        arg = t.reshape(-1, 1).to(self.freqs.dtype).log() * self.freqs
        return torch.cat([arg.sin(), arg.cos()], -1).expand(batch, -1)

    def logits(self, i: int, t_cur: torch.Tensor, t_next: torch.Tensor, features: torch.Tensor | None,
               batch: int) -> torch.Tensor:
        if not 0 <= i < self.num_intervals:
            raise ValueError(f"step {i} is outside the {self.num_intervals} steps this predictor was trained for")
        if not self.uses_features:
            return self.table[i].expand(batch, 3)
        dtype, dim = self.fc1.weight.dtype, self.options["feature_dim"]
        if features is None:  # e.g. the analytical first step made no model call
            features = torch.zeros(batch, dim, dtype=dtype, device=self.fc1.weight.device)
        features = features.reshape(batch, -1).to(dtype)
        if features.shape[1] != dim:
            raise ValueError(f"predictor expects {dim} features per sample, got {features.shape[1]}")
        h = torch.cat([self.proj(self.norm(features)), self._embed(t_cur, batch), self._embed(t_next, batch)], -1)
        return self.fc2(torch.nn.functional.silu(self.fc1(h)))

    def forward(self, i: int, t_cur: torch.Tensor, t_next: torch.Tensor, features: torch.Tensor | None,
                batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, c, a) of step ``i``, each of shape (batch,): the solver's StepPredictor protocol."""
        z = self.logits(i, t_cur, t_next, features, batch).to(torch.float64)
        r = torch.sigmoid(z[:, 0])
        c = 1 + self.scale_dir * torch.tanh(z[:, 1])
        a = 1 + self.scale_time * torch.tanh(z[:, 2])
        if self.training and torch.is_grad_enabled():
            self._seen.append((r.detach(), c.detach()))
        return r, c, a

    def progress(self) -> dict[str, str]:
        if not self._seen:
            return {}
        r, c = (torch.cat(v) for v in zip(*self._seen))
        self._seen = []
        return {"r": f"{r.mean():.3f}±{r.std():.3f}", "c": f"{c.mean():.4f}±{c.std():.4f}"}

    def table_values(self) -> list[dict[str, float]]:
        """The predictor-free table as plain numbers: [{"r", "c", "a"}] per step (largest sigma first)."""
        if self.uses_features:
            raise ValueError("table_values() needs a predictor-free predictor (features 'none')")
        with torch.no_grad():
            out = []
            for i in range(self.num_intervals):
                r, c, a = self(i, torch.ones(()), torch.ones(()), None, 1)
                out.append({"r": float(r[0]), "c": float(c[0]), "a": float(a[0])})
        return out

    def export_steps(self) -> list[dict[str, float]] | None:
        return None if self.uses_features or self.guidance_aware else self.table_values()

    def make_solver(self) -> Solver:
        return AMEDSolver(predictor=self)

    def prepare(self, denoiser: Callable) -> Callable:
        """The denoiser with the feature hook the predictor was trained with."""
        o = self.options
        if o["features"] == "none" or provides_features(denoiser):
            return denoiser
        # The network whose module is hooked: the denoiser itself, or the one a wrapper names (fewstep.k's model
        # wrapper, a host's model) as ``feature_network``.
        network = denoiser if isinstance(denoiser, nn.Module) else getattr(denoiser, "feature_network", None)
        if o["features"] == "hook" and isinstance(network, nn.Module):
            return HookFeatures(denoiser, network, o["feature_module"])
        raise ValueError(f"this predictor needs {o['features']} features ({o['feature_module'] or 'denoise_with_features'});"
                         " wrap the model with fewstep.denoisers.HookFeatures(denoiser, network, module)")


class AMEDPluginSampler(AMEDSampler):
    """AMED-Plugin on a base solver (:class:`fewstep.solvers.AMEDPlugin`): the base steps t_{n+1} -> s_n -> t_n on
    the refined schedule, the second sub-step's model call at a_n s_n, c_n scaling the second increment
    (``c_mode="increment"``) or, for DPM-Solver++ in data prediction, its data-prediction terms (``"data"``).
    Neutral: the base solver on the schedule refined at the geometric midpoints (one more evaluation per interval);
    on DPM-Solver-2 the paper's generalised DPM-Solver-2 (same NFE as the base)."""

    method = "plugin"
    summary = "AMED-Plugin: AMED's learned intermediate time and scales around a base solver (--base)"
    OPTIONS: ClassVar[dict[str, Option]] = {
        **OPTIONS, "c_mode": Option("increment", str, choices=C_MODES, help="where c acts: increment | data (dpmpp)")}
    takes_base = True
    BASES = classic_bases("heun")  # no plugin on Heun: its second point t_n is r = 1, outside (0, 1)

    @classmethod
    def config_problem(cls, cfg: dict[str, Any]) -> str | None:
        try:
            get_solver("amed_plugin", base=cfg["base"]["solver"], c_mode=cfg["options"]["c_mode"],
                       **cfg["base"]["options"])
        except (TypeError, ValueError) as e:
            return f"base/options: {e}"
        return super().config_problem(cfg)

    def make_solver(self) -> Solver:
        base = self.config["base"]
        return AMEDPlugin(base=get_solver(base["solver"], **base["options"]), predictor=self,
                          c_mode=self.options["c_mode"])
