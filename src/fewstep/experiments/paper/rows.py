"""Table rows as reports use them: Markdown, JSON (int NFE keys <-> string keys) and the bed's description."""

from __future__ import annotations

from typing import Any, Sequence

from ...evaluation import format_table
from ..bed import Bed
from .reference import NFES

__all__ = ["format_rows", "int_keys", "json_safe", "bed_info"]


def format_rows(rows: list[dict[str, Any]], nfes: Sequence[int] = NFES, key: str | None = None) -> str:
    """Markdown table of RMSE rows (or of ``row[key][nfe]``, e.g. ``key="fd"``); best per NFE in bold."""
    if key is not None:
        rows = [{"label": r["label"], **{n: r.get(key, {}).get(n) for n in nfes}} for r in rows]
    return format_table(rows, nfes)


def int_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as saved in JSON (NFE keys as strings) -> NFE keys as ints (rows computed here pass unchanged)."""
    out = []
    for r in rows:
        r2 = {(int(k) if isinstance(k, str) and k.isdigit() else k): v for k, v in r.items()}
        for sub in ("tables", "train_s", "fd", "teacher_nfe"):
            if isinstance(r2.get(sub), dict):
                r2[sub] = {(int(k) if isinstance(k, str) and k.isdigit() else k): v for k, v in r2[sub].items()}
        out.append(r2)
    return out


def bed_info(bed: Bed | dict[str, Any]) -> dict[str, Any]:
    """What a report says about the bed (description, seeds, reference steps and error), JSON-ready."""
    if isinstance(bed, dict):
        return bed
    return {"description": bed.description, "seeds": bed.info["seeds"], "first_seed": bed.info.get("first_seed", 0),
            "ref_steps": bed.info["ref_steps"], "ref_error": bed.ref_error}


def json_safe(obj: Any) -> Any:
    """Rows with int keys -> JSON-serialisable (keys as strings)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
