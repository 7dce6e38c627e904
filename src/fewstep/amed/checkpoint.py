"""Safe AMED checkpoints: one safetensors file whose metadata holds the JSON config and a SHA-256 of the weights.

Loading never executes code: no pickle, a strict config schema, and refusal of files that do not match the model
or solver they are used with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..io import atomic_path, tensor_digest
from .predictor import AMEDPredictor

__all__ = ["save", "load", "read_config", "FORMAT", "VERSION", "CONFIG_KEYS", "CheckpointError"]

FORMAT = "fewstep-amed-predictor"
VERSION = 1
CONFIG_KEYS = frozenset({
    "version", "student", "sigmas", "schedule", "afs", "scale_dir", "scale_time", "features", "architecture",
    "model_id", "training",
})
REQUIRED_KEYS = frozenset({"version", "student", "sigmas", "afs", "scale_dir", "scale_time", "features", "architecture"})


class CheckpointError(ValueError):
    """A file is not a valid fewstep AMED checkpoint, or does not match what it is used with."""


def save(predictor: AMEDPredictor, path: str | os.PathLike) -> Path:
    """Write ``predictor`` to ``path`` (safetensors, written to a temporary file and renamed)."""
    path = Path(path)
    cfg = dict(predictor.config)
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise CheckpointError(f"predictor config has unknown keys: {', '.join(sorted(unknown))}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(cfg, sort_keys=True), "sha256": tensor_digest(tensors)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _sniff(path: Path) -> None:
    """Refuse pickles / torch.save zips with a clear message. A safetensors file is an 8-byte little-endian header
    length followed by a JSON header, so byte 8 is "{" (its first byte may well be 0x80, like a pickle's)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(
            f"{path} looks like a pickle / torch.save file; fewstep only loads safetensors checkpoints "
            "(pickle can execute code when loaded)"
        )
    if len(head) < 8:
        raise CheckpointError(f"{path} is too short to be a safetensors file ({len(head)} bytes)")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The validated JSON config stored in a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fewstep AMED checkpoint (format {meta.get('format')!r})")
    try:
        cfg = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has no valid JSON config: {e}") from None
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
    from ..schedules import validate_sigmas
    from ..solvers import SOLVERS

    def bad(key: str, want: str, got: Any) -> CheckpointError:
        return CheckpointError(f"{path}: config {key} must be {want}, got {got!r}")

    try:
        validate_sigmas(cfg["sigmas"], "sigmas")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config {e}") from None
    if not isinstance(cfg["afs"], bool):
        raise bad("afs", "true or false", cfg["afs"])
    st = cfg["student"]
    if not isinstance(st, dict) or st.get("solver") not in ("amed", "amed_plugin"):
        raise bad("student", "an object with solver 'amed' or 'amed_plugin'", st)
    if st["solver"] == "amed_plugin" and st.get("base") not in SOLVERS:
        raise bad("student.base", f"one of {', '.join(SOLVERS)}", st.get("base"))
    if not isinstance(st.get("options", {}), dict):
        raise bad("student.options", "a JSON object", st.get("options"))
    feats = cfg["features"]
    if not isinstance(feats, dict) or feats.get("source") not in ("none", "adapter", "hook"):
        raise bad("features", "an object with source 'none', 'adapter' or 'hook'", feats)
    arch = cfg["architecture"]
    for k in ("hidden", "emb_dim", "feat_proj"):
        v = arch.get(k) if isinstance(arch, dict) else None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(f"architecture.{k}", "a positive int", v)


def load(path: str | os.PathLike, *, model_id: str | None = None, solver: str | None = None) -> AMEDPredictor:
    """Load a predictor; refuse corrupted files, and files made for another model or student solver."""
    path = Path(path)
    cfg = read_config(path)
    if model_id is not None and cfg.get("model_id") not in (None, model_id):
        raise CheckpointError(f"{path} was trained for model {cfg['model_id']!r}, not {model_id!r}")
    student = cfg["student"]
    if solver is not None and solver not in (student.get("solver"), student.get("base")):
        raise CheckpointError(f"{path} was trained for solver {student.get('base') or student.get('solver')!r}, "
                              f"not {solver!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from None
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupted: weights do not match their SHA-256")
    arch, feats = cfg["architecture"], cfg["features"]
    pred = AMEDPredictor(
        num_steps=len(cfg["sigmas"]) - 1, feature_dim=feats.get("dim"), scale_dir=cfg["scale_dir"],
        scale_time=cfg["scale_time"], hidden=arch["hidden"], emb_dim=arch["emb_dim"], feat_proj=arch["feat_proj"],
        config=cfg,
    )
    if tensors:
        pred.to(next(iter(tensors.values())).dtype)
    try:
        pred.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured predictor: {e}") from None
    return pred.eval()
