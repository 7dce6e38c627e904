"""Reliability of eval / metrics, reference statistics, CLI parsing, resumable sampling and schedule files: every bad
input is a clear error (API: ValueError / OSError naming the problem; CLI: exit 2 and "fewstep CMD: error: ...")."""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from fewstep import distributed, metrics
from fewstep.cli import main
from fewstep.schedules import load_schedule, save_schedule

FACTORY = ["--model", "factory_model:make", "--shape", "3,2,2", "--threads", "1"]


def _cli_error(capsys, argv: list[str], match: str) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = int(e.code)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(rf"fewstep {argv[0]}: error: .*{match}", err), err
    return err


def _signed(n: int = 300, shape=(3, 4, 4), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 0.5, (n, *shape)), -1, 1).astype(np.float32)


@pytest.fixture
def ref_npz(tmp_path) -> Path:
    p = tmp_path / "ref.npz"
    np.savez(p, images=_signed(seed=1))
    return p


# ---------------------------------------------------------------------------------- A: image inputs, FD


BAD_IMAGES = [
    pytest.param(lambda x: (x + 1) / 2, r"float32 .*\[0, 1\]", id="float-0-1"),
    pytest.param(lambda x: (x + 1) * 127.5, r"outside \[-1, 1\]", id="float-0-255"),
    pytest.param(lambda x: ((x + 1) * 127.5).astype(np.int16), r"dtype int16, values 0\.\.", id="int16"),
    pytest.param(lambda x: x > 0, r"dtype bool", id="bool"),
    pytest.param(lambda x: np.where(x > 0.9, np.nan, x), r"NaN or inf", id="nan"),
    pytest.param(lambda x: np.where(x > 0.9, np.inf, x), r"NaN or inf", id="inf"),
    pytest.param(lambda x: x.astype(np.float64) * 1.5, r"float64 .*outside \[-1, 1\]", id="float-beyond-1"),
]


@pytest.mark.parametrize("bad,match", BAD_IMAGES)
def test_api_refuses_images_outside_the_accepted_inputs(tmp_path, bad, match):
    p = tmp_path / "bad.npz"
    np.savez(p, images=bad(_signed()))
    with pytest.raises(ValueError, match=match) as e:
        metrics.load_images(p)
    assert str(p) in str(e.value) and "uint8 in [0, 255], or floats in [-1, 1]" in str(e.value)


def test_api_accepts_uint8_and_signed_floats(tmp_path):
    x = _signed()
    u8 = ((x + 1) * 127.5).round().astype(np.uint8)
    np.testing.assert_allclose(metrics.check_images(u8), u8 / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(metrics.check_images(x.astype(np.float64)), x)


@pytest.mark.parametrize("bad,match", BAD_IMAGES[:5])
def test_cli_eval_refuses_bad_images(tmp_path, capsys, ref_npz, bad, match):
    p = tmp_path / "bad.npz"
    np.savez(p, images=bad(_signed()))
    _cli_error(capsys, ["eval", str(p), "--ref", str(ref_npz), "--threads", "1"], match)


def _fd_reference(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_is_robust():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 6)), rng.normal(0.3, 1.2, size=(500, 6))
    (m1, s1), (m2, s2) = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(_fd_reference(m1, s1, m2, s2), rel=1e-9)
    # singular (rank-deficient) covariances from fewer samples than features: finite and >= 0, never scipy's error
    few = rng.normal(size=(4, 64))
    mf, sf = metrics.gaussian_stats(few)
    for _ in range(20):
        other = few + 1e-9 * rng.normal(size=few.shape)
        mo, so = metrics.gaussian_stats(other)
        assert 0 <= metrics.frechet_distance(mf, sf, mo, so) < 1e-6
    assert metrics.frechet_distance(mf, sf, mf, sf) == 0.0
    # a slightly asymmetric (rounded) covariance is symmetrised
    assert metrics.frechet_distance(m1, s1 + 1e-13 * np.triu(np.ones_like(s1)), m1, s1) >= 0
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.frechet_distance(m1, np.full_like(s1, np.nan), m2, s2)
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.frechet_distance(m1 * np.inf, s1, m2, s2)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        metrics.frechet_distance(m1, -s1, m2, s2)  # would give a negative "distance"
    with pytest.raises(ValueError, match="not symmetric"):
        metrics.frechet_distance(m1, s1 + np.triu(np.ones_like(s1)), m2, s2)
    with pytest.raises(ValueError, match="mismatched shapes"):
        metrics.frechet_distance(m1, s1, m2[:3], s2[:3, :3])


def test_api_bad_files_name_the_file(tmp_path):
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    (png_dir / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"000\.png is not a readable PNG image"):
        metrics.load_images(png_dir)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"bad\.npz is not a readable \.npz"):
        metrics.load_images(bad_npz)
    no_sigma = tmp_path / "stats.npz"
    np.savez(no_sigma, mu=np.zeros(64))
    with pytest.raises(ValueError, match=r"stats\.npz has 'mu' but no 'sigma'"):
        metrics.load_stats(no_sigma, "random")
    fake = tmp_path / "inception.pt"
    fake.write_bytes(b"not a TorchScript file")
    with pytest.raises(ValueError, match=r"inception\.pt is not a TorchScript Inception network"):
        metrics.FeatureExtractor("inception", 48, str(fake))


def test_cli_bad_files_name_the_file(tmp_path, capsys, ref_npz):
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    (png_dir / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _cli_error(capsys, ["eval", str(png_dir), "--ref", str(ref_npz)], r"000\.png is not a readable PNG")
    no_sigma = tmp_path / "stats.npz"
    np.savez(no_sigma, mu=np.zeros(64), features=np.array("random"))
    _cli_error(capsys, ["eval", str(ref_npz), "--ref", str(no_sigma)], r"stats\.npz has 'mu' but no 'sigma'")
    fake = tmp_path / "inception.pt"
    fake.write_bytes(b"not a TorchScript file")
    _cli_error(capsys, ["eval", str(ref_npz), "--ref", str(ref_npz), "--features", "inception", "--inception",
                        str(fake)], r"inception\.pt is not a TorchScript")


def test_few_images_warn_but_work(tmp_path, capsys, ref_npz):
    with pytest.warns(metrics.FewSamplesWarning, match="heavily biased"):
        metrics.feature_stats(_signed(64), metrics.FeatureExtractor("random", 48))
    few = tmp_path / "few.npz"
    np.savez(few, images=_signed(4))
    assert main(["eval", str(few), "--ref", str(ref_npz), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "fewstep eval: warning: only 4 images for 64 features" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error", metrics.FewSamplesWarning)
        metrics.feature_stats(_signed(300), metrics.FeatureExtractor("random", 48))


# ------------------------------------------------------------------------------ B: reference statistics


def test_api_stats_record_their_source(tmp_path):
    ext = metrics.FeatureExtractor("random", 3 * 4 * 4)
    mu, sigma, _ = metrics.feature_stats(_signed(), ext)
    p = metrics.save_stats(tmp_path / "s.npz", mu, sigma, ext, (3, 4, 4), 300)
    got = metrics.load_stats(p, ext, (3, 4, 4))
    np.testing.assert_array_equal(got[0], mu)
    with pytest.raises(ValueError, match=r"image_shape \[3, 4, 4\] there, \[3, 2, 2\] here"):
        metrics.load_stats(p, metrics.FeatureExtractor("random", 12), (3, 2, 2))
    with pytest.raises(ValueError, match="extractor"):
        metrics.load_stats(p, metrics.FeatureExtractor("random", 12), (3, 4, 4))
    # old files without a record: only where the feature count checks them
    old = tmp_path / "old.npz"
    np.savez(old, mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="cannot be checked.*--save-ref-stats"):
        metrics.load_stats(old, "random", (3, 4, 4))
    old_px = tmp_path / "old_px.npz"
    np.savez(old_px, mu=np.zeros(48), sigma=np.eye(48))
    assert metrics.load_stats(old_px, "pixels", (3, 4, 4))[0].shape == (48,)
    with pytest.raises(ValueError, match="48 pixel features"):
        metrics.load_stats(old_px, "pixels", (3, 8, 8))


def test_cli_refuses_stats_of_other_images(tmp_path, capsys):
    big, small = tmp_path / "big.npz", tmp_path / "small.npz"
    np.savez(big, images=_signed(300, (3, 8, 8)))
    np.savez(small, images=_signed(300, (3, 4, 4)))
    stats = tmp_path / "stats.npz"
    assert main(["eval", str(big), "--ref", str(big), "--save-ref-stats", str(stats), "--threads", "1"]) == 0
    rec = json.loads(str(np.load(stats)["record"]))
    assert rec["image_shape"] == [3, 8, 8] and rec["extractor"] == {"kind": "random", "in_dim": 192, "dim": 64,
                                                                      "seed": 0}
    capsys.readouterr()
    _cli_error(capsys, ["eval", str(small), "--ref", str(stats)], r"statistics of other images.*image_shape")
    old = tmp_path / "old.npz"
    np.savez(old, mu=np.zeros(64), sigma=np.eye(64), features=np.array("random"))
    _cli_error(capsys, ["eval", str(small), "--ref", str(old)], "cannot be checked")


# ------------------------------------------------------------------------------------- C: CLI parsing


@pytest.mark.parametrize("argv,match", [
    pytest.param(["analyze", "error", *FACTORY, "--solver", ",", "--seeds", "0-1"], "at least one solver",
                 id="analyze-error-empty-solvers"),
    pytest.param(["analyze", "align", *FACTORY, "--solver", "amed,,ipndm", "--seeds", "0-1"], "empty entry",
                 id="analyze-align-empty-entry"),
    pytest.param(["analyze", "error", *FACTORY, "--solver", "ipndm,ipndm", "--seeds", "0-1"], "more than once",
                 id="analyze-error-repeated"),
    pytest.param(["analyze", "pca", *FACTORY, "--steps", "4", "--max-k", "9", "--seeds", "0-1"], "max_k must be",
                 id="analyze-pca-max-k"),
    pytest.param(["schedule", "search", *FACTORY, "--solver-options", "[3]"], "must be a JSON object",
                 id="schedule-options-list"),
    pytest.param(["schedule", "learn", *FACTORY, "--solver-options", "{max_order: 3}"], "must be a JSON object",
                 id="schedule-options-bad-json"),
    pytest.param(["schedule", "search", *FACTORY, "--coeff", "nan"], "--coeff must be a positive finite",
                 id="schedule-coeff-nan"),
    pytest.param(["eval", "x.npz", "--ref", "patches:big"], "patches:SIZE needs a positive integer",
                 id="eval-patches-size"),
])
def test_cli_parsing_errors(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    argv = argv + (["--out", str(out if argv[0] != "schedule" else tmp_path / "s.json")] if argv[0] != "eval" else [])
    _cli_error(capsys, argv, match)
    assert list(tmp_path.iterdir()) == []


def test_api_solver_options_parser():
    from fewstep.cli.schedule import parse_solver_options

    assert parse_solver_options('{"max_order": 3}') == {"max_order": 3}
    assert parse_solver_options(None) == {}
    for bad in ("[3]", "3", '"x"', "[" * 100000, '{"a": NaN}'):
        with pytest.raises(ValueError, match="must be a JSON object"):
            parse_solver_options(bad)


# -------------------------------------------------------------------------------- D: stale temporaries


def test_api_successful_npz_write_removes_stale_temporaries(tmp_path):
    out = tmp_path / "samples.npz"
    stale = [tmp_path / ".samples.npz.ab12_x9q.npz", tmp_path / ".samples.npz.zz.npz"]
    keep = [tmp_path / ".samples.npz.backup", tmp_path / ".other.npz.ab12cd34.npz", tmp_path / "samples.npz.ab.npz",
            tmp_path / ".samples.npz.a.b.npz"]
    for p in stale + keep:
        p.write_bytes(b"half")
    old = time.time() - 60
    for p in stale:
        os.utime(p, (old, old))
    distributed.save_samples_npz(out, [0, 1], torch.zeros(2, 3, 2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name] + [p.name for p in keep])
    np.testing.assert_array_equal(np.load(out)["seeds"], [0, 1])


def test_api_resume_removes_stale_temporaries(tmp_path):
    out = tmp_path / "run"
    folder = out / "000000"
    folder.mkdir(parents=True)
    (out / distributed.MANIFEST).write_text(json.dumps({"format": "fewstep-samples", "settings": {"k": 1}}))
    old = time.time() - 60
    stale = [out / ".fewstep-sample.json.k2j4h8ab.tmp", folder / ".000001.npy.x9x9x9x9.npy"]
    keep = [folder / ".000001.npy.notes", folder / "README", folder / ".000007.png.abcdefgh.png"]
    for p in stale + keep:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    counts = distributed.sample_seeds_to_dir(lambda s: torch.zeros(len(s), 1, 2, 2), range(3), out, batch=2,
                                             fmt="npy", settings={"k": 1})
    assert counts["written"] == 3
    assert all(not p.exists() for p in stale) and all(p.exists() for p in keep)


# ------------------------------------------------------------------------- E: resume needs a manifest


def test_api_resume_refuses_a_folder_without_manifest(tmp_path):
    out = tmp_path / "run"
    (out / "000000").mkdir(parents=True)
    (out / "000000" / "000001.npy").write_bytes(b"not a sample of these settings")
    calls = []

    def sample_batch(seeds):
        calls.append(seeds)
        return torch.zeros(len(seeds), 1, 2, 2)

    for settings in ({"k": 1}, None):
        with pytest.raises(ValueError, match="no fewstep-sample.json.*choose an empty folder"):
            distributed.sample_seeds_to_dir(sample_batch, range(3), out, batch=2, fmt="npy", settings=settings)
    assert calls == [] and sorted(p.name for p in out.rglob("*")) == ["000000", "000001.npy"]
    # an empty existing folder is fine, and so is a resume with settings=None (a manifest is written anyway)
    empty = tmp_path / "empty"
    empty.mkdir()
    distributed.sample_seeds_to_dir(sample_batch, range(3), empty, batch=2, fmt="npy")
    assert (empty / distributed.MANIFEST).is_file()
    assert distributed.sample_seeds_to_dir(sample_batch, range(3), empty, batch=2, fmt="npy")["skipped"] == 3


def test_cli_sample_refuses_a_folder_without_manifest(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    _cli_error(capsys, ["sample", *FACTORY, "--seeds", "0-1", "--format", "npy", "--out", str(out)],
               "choose an empty folder")
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


# --------------------------------------------------------------------------------- F: schedule files


@pytest.fixture
def bad_schedules(tmp_path):
    files = {"deep.json": "[" * 200000, "bigint.json": "[" + "9" * 5000 + ", 1]", "nan.json": "[80, NaN, 0.002]",
             "inf.json": "[Infinity, 1, 0.002]", "huge.json": "[1e400, 1, 0.002]", "big.json": "[" + "1, " * 600000 + "1]",
             "dict.json": '{"sigmas": [80, "1", 0.002]}'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    os.mkfifo(tmp_path / "fifo.json")
    return tmp_path


@pytest.mark.parametrize("name,match", [
    ("deep.json", "not a JSON schedule file"), ("bigint.json", "not a JSON schedule file"),
    ("nan.json", "NaN is not a number"), ("inf.json", "Infinity is not a number"), ("huge.json", "finite"),
    ("big.json", "at most"), ("dict.json", "list of numbers"), ("fifo.json", "not a regular file"),
])
def test_api_load_schedule_refuses_bad_files(bad_schedules, name, match):
    with pytest.raises(ValueError, match=match) as e:
        load_schedule(bad_schedules / name)
    assert name in str(e.value)


def test_api_load_schedule_refuses_devices():
    with pytest.raises(ValueError, match="/dev/zero is not a regular file"):
        load_schedule("/dev/zero")


@pytest.mark.parametrize("name,match", [("fifo.json", "not a regular file"), ("deep.json", "not a JSON schedule"),
                                        ("nan.json", "NaN")])
def test_cli_schedule_files_are_checked(bad_schedules, capsys, name, match):
    _cli_error(capsys, ["schedule", "export", str(bad_schedules / name)], match)
    _cli_error(capsys, ["sample", *FACTORY, "--schedule", str(bad_schedules / name), "--seeds", "0-1", "--out",
                        str(bad_schedules / "o.npz")], match)
    assert not (bad_schedules / "o.npz").exists()


def test_api_save_schedule_never_writes_nan(tmp_path):
    p = tmp_path / "s.json"
    for sig, info, match in (([80.0, math.nan, 0.1], {}, "finite"), ([80.0, math.inf], {}, "finite"),
                             ([80.0, 1.0], {"lr": math.nan}, "info lr holds NaN or inf")):
        with pytest.raises(ValueError, match=match):
            save_schedule(p, sig, **info)
    assert list(tmp_path.iterdir()) == []
    save_schedule(p, [80.0, 1.0], lr=0.05)
    assert load_schedule(p).tolist() == [80.0, 1.0]
