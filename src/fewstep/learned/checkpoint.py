"""Reading learned samplers: one loader for every method (the writer is :meth:`LearnedSampler.save`), and the
conversion of AMED files written before AMED became a method here (format ``fewstep-amed-predictor``; the weights
keep their names, the config is rewritten into the one schema on reading).

Safe by construction: only safetensors, the config's schema checked strictly (a file may be edited or forged),
the parameter shapes derived from the config and compared with the file header before anything is allocated,
finite values, a SHA-256 of the weights, and the model the sampler was trained for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..io import (
    SafetensorsFileError,
    read_safetensors,
    read_safetensors_config,
    read_safetensors_header,
    tensor_digest,
)
from ..recipe import Recipe
from .registry import METHODS
from .sampler import FORMAT, CheckpointError, LearnedSampler, check_config

__all__ = ["load", "read_config", "LEGACY_AMED_FORMAT"]

LEGACY_AMED_FORMAT = "fewstep-amed-predictor"
LEGACY_AMED_KEYS = frozenset({"version", "student", "sigmas", "schedule", "afs", "scale_dir", "scale_time", "features",
                              "architecture", "model_id", "training", "guidance"})
LEGACY_AMED_REQUIRED = frozenset({"version", "student", "sigmas", "afs", "scale_dir", "scale_time", "features",
                                  "architecture"})
MAX_BYTES = 2**28  # tables are a few kB; AMED's feature network a few MB
WHAT = "fewstep learned sampler"


def _legacy_amed(cfg: Any, where: str) -> dict[str, Any]:
    """An AMED predictor's config (before the redesign) in the one schema: method "amed" / "plugin", the AMED
    settings as options, the plugin's base solver as base."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: config must be a JSON object")
    unknown, missing = set(cfg) - LEGACY_AMED_KEYS, LEGACY_AMED_REQUIRED - set(cfg)
    if unknown:
        raise CheckpointError(f"{where}: unknown config keys {', '.join(sorted(unknown))}")
    if missing:
        raise CheckpointError(f"{where}: config lacks {', '.join(sorted(missing))}")
    st, feats, arch = cfg["student"], cfg["features"], cfg["architecture"]
    if not isinstance(st, dict) or st.get("solver") not in ("amed", "amed_plugin") or \
            not isinstance(st.get("options", {}), dict):
        raise CheckpointError(f"{where}: config student must be an object with solver 'amed' or 'amed_plugin', got "
                              f"{str(st)[:100]!r}")
    if not isinstance(feats, dict) or not isinstance(arch, dict):
        raise CheckpointError(f"{where}: config features and architecture must be JSON objects")
    plugin = st["solver"] == "amed_plugin"
    st_opts = dict(st.get("options", {}))
    if "c_mode" in st_opts and not plugin:
        raise CheckpointError(f"{where}: config student.options must be without c_mode for the AMED-Solver (c_mode is "
                              "an AMED-Plugin option)")
    options = {"scale_dir": cfg["scale_dir"], "scale_time": cfg["scale_time"], "features": feats.get("source"),
               "feature_module": feats.get("module"),
               "feature_dim": feats.get("dim") if feats.get("source") != "none" else None,
               "hidden": arch.get("hidden"), "emb_dim": arch.get("emb_dim"), "feat_proj": arch.get("feat_proj")}
    if plugin:
        options["c_mode"] = st_opts.pop("c_mode", "increment")
    new = {"version": 1, "method": "plugin" if plugin else "amed", "options": options,
           "base": {"solver": st.get("base"), "options": st_opts} if plugin else {"solver": "amed", "options": {}},
           "sigmas": cfg["sigmas"], "schedule": cfg.get("schedule"), "afs": cfg["afs"], "time_shift": False,
           "model_id": cfg.get("model_id"), "training": cfg.get("training")}
    if cfg.get("guidance") is not None:
        new["guidance"] = cfg["guidance"]
    if isinstance(cfg["version"], bool) or cfg["version"] != 1:
        raise CheckpointError(f"{where}: checkpoint version {cfg['version']!r}, this fewstep reads version 1")
    return new


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """(the checked config in the one schema, the file's format)."""
    if not os.path.lexists(path) or os.path.isdir(path):  # a FIFO or device is refused unread by the header reader
        raise FileNotFoundError(f"no checkpoint at {path}{' (a folder)' if os.path.isdir(path) else ''}")
    try:
        fmt = read_safetensors_header(path, max_bytes=MAX_BYTES, what=WHAT)[1].get("format")
        if fmt == LEGACY_AMED_FORMAT:
            cfg = _legacy_amed(read_safetensors_config(path, fmt=fmt, what=WHAT, max_bytes=MAX_BYTES), str(path))
        else:
            cfg = read_safetensors_config(path, fmt=FORMAT, what=WHAT, max_bytes=MAX_BYTES)
    except SafetensorsFileError as e:
        raise CheckpointError(str(e)) from None
    check_config(cfg, str(path), METHODS)
    return cfg, fmt


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated config of a learned-sampler checkpoint (any method; older AMED files converted)."""
    return _read(Path(path))[0]


def load(path: str | os.PathLike, model_id: str | None = None) -> LearnedSampler | Recipe:
    """Load any learned sampler, or the tuned classic configuration of a recipe file (``.json``, written by
    ``fewstep tune``: :class:`fewstep.recipe.Recipe`, used the same way). Refuses pickles, forged configs, weights of
    other shapes (checked on the header before allocation), non-finite weights, a wrong digest and files trained for
    another ``model_id``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return Recipe.load(path, model_id=model_id)
    cfg, fmt = _read(path)
    if model_id is not None and cfg.get("model_id") not in (None, model_id):
        raise CheckpointError(f"{path} was trained for model {cfg['model_id']!r}, not {model_id!r}")
    cls = METHODS[cfg["method"]]
    with torch.device("meta"):  # the shapes the config implies, before any allocation
        expect = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}
    try:
        tensors, meta = read_safetensors(path, fmt=fmt, max_bytes=MAX_BYTES, what=WHAT, expect=expect)
    except SafetensorsFileError as e:
        raise CheckpointError(str(e)) from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: weights do not match their SHA-256")
    dtypes = {v.dtype for v in tensors.values()}
    want = cls.PARAM_DTYPE
    if (want is not None and dtypes - {want}) or len(dtypes) > 1 or not all(d.is_floating_point for d in dtypes):
        raise CheckpointError(f"{path}: weights must be {want or 'of one floating dtype'}, got "
                              f"{', '.join(sorted(map(str, dtypes)))}")
    for k, v in tensors.items():
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: weight {k!r} holds NaN/inf; this sampler cannot be used (retrain it, e.g. "
                                  "with a smaller learning rate)")
    sampler = cls(cfg)
    if want is None and dtypes:
        sampler.to(next(iter(dtypes)))
    try:
        sampler.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured sampler: {e}") from None
    return sampler.eval()
