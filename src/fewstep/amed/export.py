"""Schedules and AMED tables as plain numbers for other tools (``fewstep schedule export``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["EXPORT_FORMATS", "export_schedule"]

EXPORT_FORMATS = ("json", "list", "k")


def export_schedule(source: str | os.PathLike, fmt: str = "json") -> dict[str, Any] | list[float]:
    """A schedule file (.json) or an AMED checkpoint (.safetensors) as plain numbers.

    ``fmt="list"``: the sigmas; ``"k"``: the sigmas ending in 0, as k-diffusion / diffusers ``sigmas=`` take them;
    ``"json"``: a dict with ``sigmas`` (for a checkpoint also ``afs``, ``student`` and, for a predictor-free table,
    ``steps``: per step t_cur, t_next, r, the intermediate time s = t_next^r t_cur^(1-r) (AMED eq. 10), the sigma
    the model is evaluated at there (a * s) and c) and ``k_diffusion_sigmas``."""
    from ..schedules import load_schedule
    from ..solvers.base import geometric_time
    from .checkpoint import load

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    source = Path(source)
    if source.suffix == ".safetensors":
        pred = load(source)
        sig = pred.config["sigmas"]
        doc: dict[str, Any] = {"sigmas": sig, "afs": pred.config["afs"], "student": pred.config["student"]}
        if not pred.uses_features:
            steps = []
            for i, v in enumerate(pred.table_values()):
                s_n = geometric_time(sig[i], sig[i + 1], v["r"])  # AMED eq. 10
                steps.append({"t_cur": sig[i], "t_next": sig[i + 1], "r": v["r"], "s": s_n, "eval_sigma": v["a"] * s_n,
                              "c": v["c"]})
            doc["steps"] = steps
    else:
        sig = load_schedule(source).tolist()
        doc = {"sigmas": sig}
    if fmt == "list":
        return sig
    if fmt == "k":  # k-diffusion / diffusers `sigmas=`: the final jump to 0 is part of the list
        return sig + [0.0]
    doc["k_diffusion_sigmas"] = sig + [0.0]
    return doc
