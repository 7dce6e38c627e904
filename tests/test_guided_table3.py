"""Keeps benchmarks/guided_table3.py (AMED Table 3 pattern under guidance, digits model) alive: quick mode."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")


def test_guided_table3_quick(tmp_path):
    from benchmarks import guided_table3

    out = tmp_path / "t3.md"
    assert guided_table3.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    (row,) = res["rows"]
    assert row["nfe"] == 5 and row["amed_plugin"]["afs"] and row["amed_plugin"]["steps"] == 4
    for key in ("dpmpp2m", "dpmpp2m_afs", "amed_plugin"):
        assert 0.0 < row[key]["rmse"] < 2.0 and 0.0 <= row[key]["acc"] <= 1.0
    assert "AMED-Plugin" in out.read_text()
