"""The AMED predictor g_phi(h, t_{n+1}, t_n) -> (r_n, c_n, a_n) (Zhou et al., 2024, Sec. 3.4).

Two forms share the output heads:
  * feature-based: pooled bottleneck features -> LayerNorm -> linear projection, concatenated with sinusoidal
    embeddings of log t_{n+1} and log t_n, then two fully connected layers (a few thousand parameters);
  * predictor-free (``feature_dim=None``): a learned table of per-step logits, exportable as plain numbers.
Heads: r = sigmoid, c = 1 + scale_dir tanh, a = 1 + scale_time tanh; zero-initialised output, so an untrained
predictor is r = 0.5, c = a = 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["AMEDPredictor", "LearnedSchedule"]


class AMEDPredictor(nn.Module):
    """Per-step r_n, c_n, a_n for ``num_steps`` intervals; ``config`` holds everything needed to sample."""

    def __init__(
        self,
        num_steps: int,
        feature_dim: int | None = None,
        scale_dir: float = 0.0,
        scale_time: float = 0.0,
        hidden: int = 128,
        emb_dim: int = 8,
        feat_proj: int = 16,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
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
