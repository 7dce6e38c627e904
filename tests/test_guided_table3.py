"""Keeps the guidance benchmarks alive in quick mode: benchmarks/guided_table3.py (AMED Table 3 pattern) and
benchmarks/guidance_scales.py (guidance-aware samplers), both on the digits model."""

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


def test_guidance_scales_quick(tmp_path):
    """benchmarks/guidance_scales.py (one guidance-aware sampler vs per-scale ones vs the base) in quick mode."""
    from benchmarks import guidance_scales

    out = tmp_path / "gs.md"
    assert guidance_scales.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    (row,) = res["rows"]
    assert row["w"] == 3.0 and res["aware_tables"]["plugin"] == {"scales": [2.0, 4.0], "degree": 2}
    for key in ("base", "plugin_aware", "plugin_single"):
        assert 0.0 < row[key]["rmse"] < 2.0 and 0.0 <= row[key]["acc"] <= 1.0
    assert "guidance-aware" in out.read_text()
    with pytest.raises(SystemExit, match="never trained at"):
        guidance_scales.main(["--eval-scales", "2", "--train-scales", "1,2", "--out", str(out)])
