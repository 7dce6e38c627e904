"""The learned samplers shipped for the shipped models (fewstep.shipped, src/fewstep/assets/samplers.json): the index
matches the files, each loads for its model only, and `fewstep sample` uses one exactly where model, NFE and
guidance match, saying so."""

from __future__ import annotations

import json

import pytest

from fewstep import learned, shipped
from fewstep.cli import main
from fewstep.denoisers import default_unet, digits_unet


def test_the_index_matches_the_files():
    entries = shipped.entries()
    assert {(e["model_id"], e["nfe"], e["guidance"] is not None) for e in entries} == {
        (default_unet().model_id, 3, False), (default_unet().model_id, 5, False), (default_unet().model_id, 7, False),
        (digits_unet().model_id, 5, True)}
    for e in entries:
        s = learned.load(shipped.shipped_sampler(e["model_id"], e["nfe"], 4.0 if e["guidance"] else None),
                         model_id=e["model_id"])
        assert s.nfe() == e["nfe"] and s.config["method"] == e["method"]
        assert (s.config.get("guidance") or {}).get("scales") == e["guidance"]
        m = e["measured"]
        assert m["trained"] < m["base"] == m["best_classic"]  # trained from the tuned best classic, and better
        with pytest.raises(ValueError, match="model"):
            learned.load(shipped.shipped_sampler(e["model_id"], e["nfe"], 4.0 if e["guidance"] else None),
                         model_id="someone-elses-model")


@pytest.mark.parametrize("model_id, nfe, guidance, found", [
    (default_unet().model_id, 5, None, "sampler_unet_nfe5"),
    (default_unet().model_id, 4, None, None),        # no sampler at NFE 4: the measured classic default
    (default_unet().model_id, 5, 4.0, None),         # the U-Net is unconditional: no guided sampler
    (digits_unet().model_id, 5, 7.5, "sampler_digits_nfe5"),
    (digits_unet().model_id, 5, 9.0, None),          # outside the trained range [1, 8]
    (digits_unet().model_id, 5, None, None),         # the digits model unguided
    (None, 5, None, None),
])
def test_lookup(model_id, nfe, guidance, found):
    path = shipped.shipped_sampler(model_id, nfe, guidance)
    assert (path.stem if path is not None else None) == found


def test_the_index_is_read_strictly(tmp_path, monkeypatch):
    (tmp_path / shipped.INDEX).write_text(json.dumps({"samplers": [{"file": "../x.safetensors"}]}))
    monkeypatch.setattr(shipped, "_assets", lambda: tmp_path)
    with pytest.raises(ValueError, match="malformed entry"):
        shipped.entries()


@pytest.mark.parametrize("extra, uses", [
    (["--model", "unet", "--nfe", "5"], "the learned sampler shipped for this model at NFE 5"),
    (["--model", "unet", "--nfe", "4"], "fewstep's measured default for NFE 4"),
    (["--model", "unet", "--nfe", "5", "--solver", "euler"], "euler"),
    (["--model", "unet", "--nfe", "5", "--sigma-min", "0.01"], "fewstep's measured default for NFE 5"),
    (["--model", "digits", "--class", "3", "--guidance", "4", "--nfe", "5"],
     "the learned sampler shipped for this model at NFE 5"),
])
def test_sample_uses_a_shipped_sampler_where_it_matches(tmp_path, capsys, extra, uses):
    assert main(["sample", *extra, "--seeds", "0-1", "--threads", "1", "--out", str(tmp_path / "s.npz")]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("sigmas:"))
    assert uses in line, line
