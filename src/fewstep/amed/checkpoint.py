"""Safe AMED checkpoints: one safetensors file whose metadata holds the JSON config and a SHA-256 of the weights.

Loading never executes code: no pickle, a strict config schema, tensor shapes checked against the config before
anything is allocated, finite values only, and refusal of files that do not match the model or solver they are
used with. Writing is :meth:`AMEDPredictor.save`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..io import SafetensorsFileError, read_safetensors, read_safetensors_config, tensor_digest
from ..scale_basis import check_guidance_config
from ..schedules import validate_sigmas
from ..solvers import SOLVERS
from ..solvers.amed import C_MODES
from .predictor import CONFIG_KEYS, FORMAT, VERSION, AMEDPredictor, CheckpointError

__all__ = ["save", "load", "read_config", "FORMAT", "VERSION", "CONFIG_KEYS", "CheckpointError"]

REQUIRED_KEYS = frozenset({"version", "student", "sigmas", "afs", "scale_dir", "scale_time", "features", "architecture"})
MAX_BYTES = 2**28  # a predictor is a few kB to a few MB
MAX_WIDTH = 2**16  # hidden, feature and embedding sizes beyond this are not ours


def save(predictor: AMEDPredictor, path: str | os.PathLike) -> Path:
    """``predictor.save(path)`` as a function."""
    return predictor.save(path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated JSON config stored in a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        cfg = read_safetensors_config(path, fmt=FORMAT, what="fewstep AMED checkpoint", max_bytes=MAX_BYTES)
    except SafetensorsFileError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    unknown, missing = set(cfg) - CONFIG_KEYS, REQUIRED_KEYS - set(cfg)
    if unknown:
        raise CheckpointError(f"{path}: unknown config keys {', '.join(sorted(unknown))}")
    if missing:
        raise CheckpointError(f"{path}: config lacks {', '.join(sorted(missing))}")
    if cfg["version"] != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {cfg['version']!r}, this fewstep reads version {VERSION}")
    _check_values(path, cfg)
    return cfg


def _check_values(path: Path, cfg: dict[str, Any]) -> None:
    """The config's values have the types and ranges sampling relies on (a file may be edited or forged)."""

    def bad(key: str, want: str, got: Any) -> CheckpointError:
        return CheckpointError(f"{path}: config {key} must be {want}, got {str(got)[:100]!r}")

    if not isinstance(cfg["sigmas"], list) or len(cfg["sigmas"]) > 10_000:
        raise bad("sigmas", "a list of at most 10000 numbers", cfg["sigmas"])
    try:
        validate_sigmas(cfg["sigmas"], "sigmas")
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: config {e}") from None
    if not isinstance(cfg["afs"], bool):
        raise bad("afs", "true or false", cfg["afs"])
    for k in ("scale_dir", "scale_time"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise bad(k, "a number in [0, 1)", v)
    st = cfg["student"]
    if not isinstance(st, dict) or st.get("solver") not in ("amed", "amed_plugin"):
        raise bad("student", "an object with solver 'amed' or 'amed_plugin'", st)
    if st["solver"] == "amed_plugin" and st.get("base") not in SOLVERS:
        raise bad("student.base", f"one of {', '.join(SOLVERS)}", st.get("base"))
    if not isinstance(st.get("options", {}), dict):
        raise bad("student.options", "a JSON object", st.get("options"))
    opts = st.get("options", {})
    if {"base", "predictor"} & set(opts):
        raise bad("student.options", "the base solver's and the plugin's options (no 'base' or 'predictor')", opts)
    if "c_mode" in opts:  # AMED-Plugin's placement of c_n (fewstep.solvers.AMEDPlugin)
        if st["solver"] != "amed_plugin":
            raise bad("student.options", "without c_mode for the AMED-Solver (c_mode is an AMED-Plugin option)", opts)
        if opts["c_mode"] not in C_MODES:
            raise bad("student.options.c_mode", f"one of {', '.join(C_MODES)}", opts["c_mode"])
        if opts["c_mode"] == "data" and st["base"] != "dpmpp":
            raise bad("student.options.c_mode", f"'increment' for base {st['base']!r} ('data' needs dpmpp)",
                      opts["c_mode"])
    feats = cfg["features"]
    if not isinstance(feats, dict) or feats.get("source") not in ("none", "adapter", "hook"):
        raise bad("features", "an object with source 'none', 'adapter' or 'hook'", feats)
    dim = feats.get("dim")
    if feats["source"] != "none" and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_WIDTH):
        raise bad("features.dim", f"an int in 1..{MAX_WIDTH}", dim)
    if cfg.get("guidance") is not None:
        if (why := check_guidance_config(cfg["guidance"])) is not None:
            raise bad("guidance", why, cfg["guidance"])
        if feats["source"] != "none":
            raise bad("guidance", "null for a feature-based predictor", cfg["guidance"])
    arch = cfg["architecture"]
    for k in ("hidden", "emb_dim", "feat_proj"):
        v = arch.get(k) if isinstance(arch, dict) else None
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WIDTH:
            raise bad(f"architecture.{k}", f"an int in 1..{MAX_WIDTH}", v)


def _build(cfg: dict[str, Any]) -> AMEDPredictor:
    arch, feats = cfg["architecture"], cfg["features"]
    return AMEDPredictor(
        num_intervals=len(cfg["sigmas"]) - 1, feature_dim=feats.get("dim") if feats["source"] != "none" else None,
        scale_dir=cfg["scale_dir"], scale_time=cfg["scale_time"], hidden=arch["hidden"], emb_dim=arch["emb_dim"],
        feat_proj=arch["feat_proj"], config=cfg,
    )


def load(path: str | os.PathLike, *, model_id: str | None = None, solver: str | None = None) -> AMEDPredictor:
    """Load a predictor; refuse corrupted files, non-finite weights, and files made for another model or student
    solver."""
    path = Path(path)
    cfg = read_config(path)
    if model_id is not None and cfg.get("model_id") not in (None, model_id):
        raise CheckpointError(f"{path} was trained for model {cfg['model_id']!r}, not {model_id!r}")
    student = cfg["student"]
    if solver is not None and solver not in (student.get("solver"), student.get("base")):
        raise CheckpointError(f"{path} was trained for solver {student.get('base') or student.get('solver')!r}, "
                              f"not {solver!r}")
    with torch.device("meta"):  # the shapes the config implies, before any allocation
        expect = {k: tuple(v.shape) for k, v in _build(cfg).state_dict().items()}
    try:
        tensors, meta = read_safetensors(path, fmt=FORMAT, max_bytes=MAX_BYTES, what="fewstep AMED checkpoint",
                                         expect=expect)
    except SafetensorsFileError as e:
        raise CheckpointError(f"{e}") from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: weights do not match their SHA-256")
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: predictor weight {k!r} holds NaN/inf; this predictor cannot be used "
                                  "(retrain it, e.g. with a smaller learning rate)")
    dtypes = {v.dtype for v in tensors.values()}
    if len(dtypes) > 1 or (dtypes and not next(iter(dtypes)).is_floating_point):
        raise CheckpointError(f"{path}: weights must share one floating dtype, got {sorted(map(str, dtypes))}")
    pred = _build(cfg)
    if tensors:
        pred.to(next(iter(tensors.values())).dtype)
    try:
        pred.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured predictor: {e}") from None
    return pred.eval()
