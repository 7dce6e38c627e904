"""Command line: train, sample, demo argument handling."""

from __future__ import annotations

import numpy as np
import pytest

from fewstep import learned
from fewstep.cli import main
from fewstep.cli.args import parse_seeds


def test_seed_ranges():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("", "5-2", "a", "-3"):
        with pytest.raises(Exception):
            parse_seeds(bad)


def test_train_then_sample(tmp_path, capsys):
    ckpt = tmp_path / "p.safetensors"
    rc = main(["train", "--model", "gmm", "--out", str(ckpt), "--nfe", "5", "--total-samples", "32",
               "--batch", "16", "--M", "2", "--threads", "1"])
    assert rc == 0 and ckpt.is_file()
    cfg = learned.read_config(ckpt)
    assert cfg["model_id"].startswith("gmm-bed") and cfg["afs"] is True
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", "gmm", "--predictor", str(ckpt), "--seeds", "0-4", "--out", str(out),
                 "--threads", "1"]) == 0
    data = np.load(out)
    assert data["images"].shape == (5, 3, 8, 8) and list(data["seeds"]) == [0, 1, 2, 3, 4]
    assert "(5 NFE each)" in capsys.readouterr().out
    # existing output is not overwritten silently
    assert main(["train", "--model", "gmm", "--out", str(ckpt)]) == 2
    assert "exists" in capsys.readouterr().err


def test_sample_bad_predictor_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junkjunkjunk")
    out = tmp_path / "s.npz"
    assert main(["sample", "--predictor", str(bad), "--out", str(out)]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".s.npz*"))


def test_sample_unreachable_nfe(tmp_path, capsys):
    assert main(["sample", "--solver", "heun", "--nfe", "5", "--out", str(tmp_path / "x.npz")]) == 2
    assert "cannot use exactly nfe=5" in capsys.readouterr().err


def test_user_model_factory(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", "factory_model:make", "--shape", "3,2,2", "--solver", "ipndm", "--nfe", "4",
                 "--seeds", "0-2", "--out", str(out), "--threads", "1"]) == 0
    assert np.load(out)["images"].shape == (3, 3, 2, 2)
    assert main(["sample", "--model", "factory_model:make", "--out", str(out), "--overwrite"]) == 2
    assert "--shape is required" in capsys.readouterr().err
    assert main(["sample", "--model", "no_such_module:make", "--shape", "3", "--out", str(out), "--overwrite"]) == 2
    assert "cannot load model factory" in capsys.readouterr().err


def test_train_on_shipped_unet_with_hook_features(tmp_path):
    ckpt = tmp_path / "u.safetensors"
    assert main(["train", "--model", "unet", "--out", str(ckpt), "--method", "plugin", "--base", "ipndm",
                 "--total-samples", "8",
                 "--batch", "8", "--M", "1", "--threads", "1"]) == 0
    cfg = learned.read_config(ckpt)
    assert cfg["method"] == "plugin" and cfg["base"] == {"solver": "ipndm", "options": {}}
    opts = cfg["options"]
    assert (opts["features"], opts["feature_module"]) == ("hook", "mid")
    assert isinstance(opts["feature_dim"], int) and opts["feature_dim"] > 0
    assert cfg["model_id"].startswith("smallunet-")
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", "unet", "--predictor", str(ckpt), "--seeds", "0-1", "--out", str(out),
                 "--threads", "1"]) == 0
    assert np.load(out)["images"].shape == (2, 3, 16, 16)


def test_analyze_pca_and_predictor(tmp_path, capsys):
    assert main(["analyze", "pca", "--model", "factory_model:make", "--shape", "3,2,2", "--seeds", "0-7",
                 "--steps", "8", "--max-k", "3", "--out", str(tmp_path / "pca"), "--threads", "1"]) == 0
    lines = (tmp_path / "pca.csv").read_text().splitlines()
    assert lines[0] == "k,mean_rel_error,max_rel_error,explained_variance" and len(lines) == 4
    errs = [float(line.split(",")[1]) for line in lines[1:]]
    assert errs[0] > errs[1] > errs[2] >= 0 and (tmp_path / "pca.png").is_file()
    ckpt = tmp_path / "p.safetensors"
    assert main(["train", "--model", "factory_model:make", "--shape", "3,2,2", "--out", str(ckpt), "--method", "amed",
                 "--features", "none", "--total-samples", "16", "--batch", "8", "--M", "1", "--threads", "1"]) == 0
    assert main(["analyze", "predictor", "--predictor", str(ckpt), "--out", str(tmp_path / "rc")]) == 0
    rows = (tmp_path / "rc.csv").read_text().splitlines()
    assert rows[0] == "step,sigma_cur,sigma_next,r,c,a" and len(rows) == 4
    assert main(["analyze", "predictor", "--out", str(tmp_path / "x")]) == 2
    assert "needs --predictor" in capsys.readouterr().err
