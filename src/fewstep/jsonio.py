"""The one reader of JSON a user hands in (recipes and tune files, schedule files, checkpoint metadata, U-Net
safetensors metadata, ``--method-options`` / ``--teacher-options`` / ``--solver-options``, diffusers
``config.json`` / ``scheduler_config.json`` / ``model_index.json``), typed accessors for the fields read from it,
and the size limits of everything read from files and arguments (one place, documented in README "Failure
behaviour").

Untrusted JSON is checked before and after parsing: a bounded size, a nesting depth found by a flat scan before
:func:`json.loads` runs (Python's parser recurses, so deep nesting would otherwise be a RecursionError), no
NaN/Infinity and no number that overflows to inf (``1e999``), and the top-level type the caller expects. Every
failure is a ``ValueError`` naming the source and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "load_json", "JSONInputError", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "get_bool", "get_int", "get_float", "get_str",
    "MAX_TRAIN_TIMESTEPS", "MAX_SAMPLE_SIZE", "MAX_CHANNELS", "MAX_SAMPLE_ELEMENTS", "MAX_NFE", "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE", "check_size", "MAX_SCHEDULE_STEPS", "MAX_ARRAY_BYTES", "check_shape",
]

# ------------------------------------------------------------------------------------------------- limits
MAX_JSON_BYTES = 2**24  # 16 MiB: configs and metadata are kB; a safetensors header of a large U-Net a few MB
MAX_JSON_DEPTH = 64  # no config, recipe or header fewstep reads nests deeper than 5
MAX_TRAIN_TIMESTEPS = 100_000  # a discrete model's timesteps (diffusers models use 1000; tables are O(this))
MAX_SAMPLE_SIZE = 16_384  # pixels (or latents) per side of one sample
MAX_CHANNELS = 4_096  # channels of one sample
MAX_SAMPLE_ELEMENTS = 2**28  # elements of one sample (C * H * W): 1 GiB in float32
MAX_NFE = 100_000  # model evaluations per sample: few-step sampling uses < 100, a reference solve a few thousand
MAX_SCHEDULE_STEPS = MAX_NFE + 1  # sigmas of one schedule
MAX_IMAGE_PIXELS = 2**26  # pixels of one image read from a folder (8192 x 8192); Pillow's bomb limit is lowered to it
MAX_IMAGE_SIDE = MAX_SAMPLE_SIZE
MAX_ARRAY_BYTES = 2**32  # arrays read from .npz files or image folders (4 GiB)


def check_size(name: str, value: Any, hi: int, where: str = "", lo: int = 1) -> int:
    """``value`` as an int in [lo, hi] (bools refused), else a ValueError naming ``name`` (and ``where``)."""
    at = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{at}{name} must be an integer in [{lo}, {hi}], got {str(value)[:60]!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{at}{name} must be in [{lo}, {hi}], got {value}")
    return value


def check_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """A sample shape (no batch): a non-empty tuple of positive ints, each side at most :data:`MAX_SAMPLE_SIZE` and
    at most :data:`MAX_SAMPLE_ELEMENTS` elements in all; a ValueError naming ``name`` otherwise."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) or type(shape).__name__ == "Size" else shape
    if not isinstance(shape, tuple) or not shape or len(shape) > 8 or \
            any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {str(shape)[:80]} (one sample, no "
                         "batch; at most 8 dimensions)")
    n = 1
    for d in shape:
        if d > MAX_SAMPLE_SIZE:
            raise ValueError(f"{name} {shape}: each dimension must be at most {MAX_SAMPLE_SIZE}")
        n *= d
    if n > MAX_SAMPLE_ELEMENTS:
        raise ValueError(f"{name} {shape} has {n} elements per sample; at most {MAX_SAMPLE_ELEMENTS} are allowed")
    return shape


# ------------------------------------------------------------------------------------------------- reading
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def _depth(text: str) -> int:
    """The deepest bracket nesting of JSON text, strings skipped (a flat scan, no recursion)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class JSONInputError(ValueError):
    """Untrusted JSON refused; ``detail`` is the reason without the name of the source."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}{detail}")
        self.detail = detail.lstrip(": ")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number (numbers must be finite)")


def _finite_floats(value: Any) -> str | None:
    """Where a float parsed to inf (e.g. 1e999), or None; iterative (the depth is already bounded)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where or "the top level"
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return None


def _kind(t: Any) -> str:
    names = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "an integer", float: "a number",
             bool: "true or false"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def load_json(source: str | bytes | os.PathLike, *, what: str = "JSON", max_depth: int = MAX_JSON_DEPTH,
              max_bytes: int = MAX_JSON_BYTES, expect: type | tuple[type, ...] | None = dict) -> Any:
    """Parse untrusted JSON: ``source`` is a path (``os.PathLike``: a regular file of at most ``max_bytes``; FIFOs and
    devices are refused unread) or the text itself (``str`` / ``bytes``). Refuses nesting deeper than ``max_depth``,
    NaN/Infinity and numbers that overflow to inf, and a top level that is not ``expect`` (None: anything), each a
    ValueError naming ``what`` (and the file)."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        name = f"{path} ({what})"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {what} at {path}") from None
        if not stat.S_ISREG(st.st_mode):  # refused unread: opening a FIFO blocks forever
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "a device or socket")
            raise JSONInputError(name, f" is not a regular file (it is {kind}; a {what} must be one)")
        if st.st_size > max_bytes:
            raise JSONInputError(name, f" is {st.st_size} bytes; at most {max_bytes} are read")
        with open(path, "rb") as f:
            raw: str | bytes = f.read(max_bytes + 1)
    elif isinstance(source, (str, bytes, bytearray)):
        name, raw = what, bytes(source) if isinstance(source, bytearray) else source
    else:
        raise TypeError(f"{what}: expected a path or JSON text, got {type(source).__name__}")
    if len(raw) > max_bytes:
        raise JSONInputError(name, f" is longer than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise JSONInputError(name, f" is not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if (d := _depth(text)) > max_depth:
        raise JSONInputError(name, f" nests {d} levels deep; at most {max_depth} are allowed")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise JSONInputError(name, f" nests too deeply; at most {max_depth} levels are allowed") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise JSONInputError(name, f" is not valid JSON: {str(e)[:200]}") from None
    if (where := _finite_floats(value)) is not None:
        raise JSONInputError(name, f": the number at {where} is out of range (numbers must be finite)")
    if expect is not None and (not isinstance(value, expect) or (isinstance(value, bool) and bool not in
                                                                  (expect if isinstance(expect, tuple) else (expect,)))):
        raise JSONInputError(name, f" must be {_kind(expect)} at the top level, got {_kind(type(value))}")
    return value


# ------------------------------------------------------------------------------------------------- typed fields
_MISSING = object()


def _get(doc: dict, key: str, default: Any, where: str) -> Any:
    if key in doc:
        return doc[key]
    if default is _MISSING:
        raise ValueError(f"{where}: {key} is missing")
    return default


def get_bool(doc: dict, key: str, where: str, default: Any = _MISSING) -> Any:
    """``doc[key]`` as a real JSON bool (``"false"``, 0 and 1 are refused); ``default`` when absent (else required)."""
    v = _get(doc, key, default, where)
    if v is default and key not in doc:
        return v
    if not isinstance(v, bool):
        raise ValueError(f"{where}: {key} must be true or false, got {str(v)[:60]!r} ({type(v).__name__})")
    return v


def get_int(doc: dict, key: str, where: str, default: Any = _MISSING, lo: int | None = None,
            hi: int | None = None, nullable: bool = False) -> Any:
    """``doc[key]`` as an int (bools and floats refused) in [lo, hi]; ``default`` when absent."""
    v = _get(doc, key, default, where)
    if (v is default and key not in doc) or (v is None and nullable):
        return v
    rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{where}: {key} must be an integer{rng}{' or null' if nullable else ''}, got "
                         f"{str(v)[:60]!r}")
    return v


def get_float(doc: dict, key: str, where: str, default: Any = _MISSING, lo: float | None = None,
              hi: float | None = None, nullable: bool = False, positive: bool = False) -> Any:
    """``doc[key]`` as a finite float (ints accepted, bools and strings refused) in [lo, hi]; ``default`` when
    absent."""
    v = _get(doc, key, default, where)
    if (v is default and key not in doc) or (v is None and nullable):
        return v
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (lo is None or v >= lo) and (hi is None or v <= hi) and (not positive or v > 0)
    if not ok:
        rng = " > 0" if positive else (f" in [{lo}, {hi}]" if lo is not None or hi is not None else "")
        raise ValueError(f"{where}: {key} must be a finite number{rng}{' or null' if nullable else ''}, got "
                         f"{str(v)[:60]!r}")
    return float(v)


def get_str(doc: dict, key: str, where: str, default: Any = _MISSING, choices: Any = None,
            nullable: bool = False) -> Any:
    """``doc[key]`` as a string (one of ``choices`` if given); ``default`` when absent."""
    v = _get(doc, key, default, where)
    if (v is default and key not in doc) or (v is None and nullable):
        return v
    if not isinstance(v, str) or (choices is not None and v not in choices):
        want = f"one of {', '.join(map(repr, choices))}" if choices is not None else "a string"
        raise ValueError(f"{where}: {key} must be {want}{' or null' if nullable else ''}, got {str(v)[:60]!r}")
    return v
