"""Learned samplers shipped with the package for the shipped models (``fewstep/assets/samplers.json`` lists them;
``scripts/train_shipped.py`` trains them and writes that index). ``fewstep sample`` on a shipped model, without a
solver, schedule or sigma range given, uses the one whose model, NFE and guidance match; everything else falls back
to the measured classic default (:mod:`fewstep.defaults`)."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from .jsonio import load_json

__all__ = ["INDEX", "entries", "shipped_recipe", "shipped_sampler"]

INDEX = "samplers.json"
"""File name of the index inside the package's ``assets`` folder."""

_KEYS = {"file": str, "model_id": str, "nfe": int, "guidance": (list, type(None)), "method": str,
         "measured": (dict, type(None))}


def _assets() -> Path:
    return Path(str(resources.files("fewstep").joinpath("assets")))


def entries() -> list[dict[str, Any]]:
    """The index's entries ({"file", "model_id", "nfe", "guidance": [lo, hi] or None, "method", "measured"}), checked;
    [] if the package ships none."""
    path = _assets() / INDEX
    if not path.is_file():
        return []
    doc = load_json(path, what="shipped sampler index")
    if not isinstance(doc, dict) or not isinstance(doc.get("samplers"), list):
        raise ValueError(f"{path}: expected an object with a list 'samplers'")
    for e in doc["samplers"]:
        if not isinstance(e, dict) or set(e) != set(_KEYS) or any(
                not isinstance(e[k], t) or isinstance(e[k], bool) for k, t in _KEYS.items()):
            raise ValueError(f"{path}: malformed entry {e!r}")
        if "/" in e["file"] or "\\" in e["file"] or not e["file"].endswith(".safetensors"):
            raise ValueError(f"{path}: entry file must be a .safetensors name in the assets folder, got {e['file']!r}")
    return doc["samplers"]


def shipped_sampler(model_id: str | None, nfe: int, guidance: float | None = None) -> Path | None:
    """The shipped learned sampler for ``model_id`` at ``nfe`` model evaluations and classifier-free guidance scale
    ``guidance`` (None: unguided; a guidance-aware sampler matches every scale in its trained range), else None."""
    if model_id is None:
        return None
    for e in entries():
        if e["model_id"] != model_id or e["nfe"] != nfe:
            continue
        g = e["guidance"]
        if g is None and guidance is None:
            return _assets() / e["file"]
        if g is not None and guidance is not None and math.isfinite(guidance) and g[0] <= guidance <= g[1]:
            return _assets() / e["file"]
    return None


def shipped_recipe(model_id: str | None, nfe: int) -> Path | None:
    """The tuned classic configuration shipped for ``model_id`` at ``nfe`` (``assets/tuned_*_nfe{nfe}.json``, written
    by ``fewstep tune``), else None."""
    if model_id is None:
        return None
    for path in sorted(_assets().glob(f"tuned_*_nfe{nfe}.json")):
        info = load_json(path, what="shipped tuned configuration").get("info", {})
        if isinstance(info, dict) and info.get("model_id") == model_id and info.get("nfe") == nfe:
            return path
    return None
