"""fewstep eval: Fréchet distance / KID of generated images against reference statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fewstep import metrics
from fewstep.cli import main


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = np.clip(rng.normal(0, 0.5, (300, 3, 4, 4)), -1, 1).astype(np.float32)
    b = np.clip(rng.normal(0.3, 0.4, (300, 3, 4, 4)), -1, 1).astype(np.float32)
    pa, pb = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(pa, images=a)
    np.savez(pb, images=b)
    return pa, pb


def _run(args, capsys):
    assert main(args + ["--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_identical_sets_have_zero_distance(images, capsys):
    pa, pb = images
    res = _run(["eval", str(pa), "--ref", str(pa), "--kid"], capsys)
    other = _run(["eval", str(pa), "--ref", str(pb), "--kid"], capsys)
    assert abs(res["fd"]) < 1e-6 and other["fd"] > 0.1
    assert abs(res["kid"]) < 0.05 * other["kid"]  # KID draws its own subsets: only statistically zero


def test_cached_reference_statistics(images, tmp_path, capsys):
    pa, pb = images
    stats = tmp_path / "ref_stats.npz"
    first = _run(["eval", str(pa), "--ref", str(pb), "--save-ref-stats", str(stats)], capsys)
    assert first["fd"] > 0.1 and set(np.load(stats).files) == {"mu", "sigma", "features", "record"}
    again = _run(["eval", str(pa), "--ref", str(stats)], capsys)
    assert again["fd"] == pytest.approx(first["fd"], rel=1e-12)
    assert main(["eval", str(pa), "--ref", str(stats), "--features", "pixels"]) == 2
    assert "holds random statistics" in capsys.readouterr().err


def test_uint8_and_png_folder_inputs(images, tmp_path, capsys):
    import matplotlib.pyplot as plt

    pa, _ = images
    x = np.load(pa)["images"]
    u8 = ((x + 1) * 127.5).round().astype(np.uint8)
    np.savez(tmp_path / "u8.npz", images=u8)
    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(40):
        plt.imsave(folder / f"{i:03d}.png", u8[i].transpose(1, 2, 0))
    loaded = metrics.load_images(folder)
    assert loaded.shape == (40, 3, 4, 4)
    np.testing.assert_allclose(loaded, u8[:40].astype(np.float32) / 127.5 - 1, atol=1e-6)
    res = _run(["eval", str(tmp_path / "u8.npz"), "--ref", str(pa), "--features", "pixels"], capsys)
    assert res["fd"] < 1e-3


@pytest.mark.parametrize("args,match", [
    (["eval", "missing.npz", "--ref", "patches:4"], "no image file at missing.npz"),
    (["eval", "{a}", "--ref", "{a}", "--features", "inception"], "needs --inception PATH"),
    (["eval", "{a}", "--ref", "patches:8"], "reference images have shape"),
])
def test_eval_errors(images, capsys, args, match):
    pa, _ = images
    args = [v.format(a=pa) for v in args]
    assert main(args) == 2
    assert match in capsys.readouterr().err


def test_kid_detects_difference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (400, 8)), rng.normal(0.5, 1, (400, 8))
    assert metrics.kid(a, b, subset_size=200) > 10 * abs(metrics.kid(a, a[::-1], subset_size=200))


def test_load_images_reads_greyscale_and_rgba_pngs(tmp_path):
    from PIL import Image

    from fewstep.metrics import load_images

    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(grey, mode="L").save(tmp_path / "a.png")
    Image.fromarray(grey[::-1].copy(), mode="L").save(tmp_path / "b.png")
    arr = load_images(tmp_path)
    assert arr.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(arr[0, 0], grey / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(arr[1, 0], grey[::-1] / 127.5 - 1, atol=1e-6)
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.fromarray(np.full((4, 4, 4), 200, dtype=np.uint8), mode="RGBA").save(rgba / "c.png")
    assert load_images(rgba).shape == (1, 3, 4, 4)
