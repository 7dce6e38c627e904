"""No hang on a FIFO (issue 26, class 10): every user path is checked to be a regular file before it is opened
(fewstep.io.regular_file). Each case runs in a subprocess with a timeout, so a regression fails instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), str(ROOT)]),
       "OMP_NUM_THREADS": "1"}
FEWSTEP = [sys.executable, "-c", "import sys; from fewstep import cli; sys.exit(cli.main(sys.argv[1:]))"]

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


def _run(argv, cwd, timeout=120):
    try:
        p = subprocess.run(argv, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[3:]} hung on a FIFO (killed after {timeout} s)")
    return p.returncode, p.stderr


def _png_folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(folder / f"{k}.png")
    os.mkfifo(folder / "z.png")
    return folder


def test_init_images_folder_with_a_fifo_png(tmp_path):
    folder = _png_folder(tmp_path)
    rc, err = _run(FEWSTEP + ["sample", "--model", "factory_model:make_rgb8", "--shape", "3,8,8", "--solver", "euler",
                              "--nfe", "3", "--seeds", "0-1", "--init-images", str(folder), "--strength", "0.5",
                              "--out", str(tmp_path / "x.npz")], tmp_path)
    assert rc == 2 and "z.png is not a regular file (it is a FIFO" in err, err
    assert not (tmp_path / "x.npz").exists()


def test_eval_folder_with_a_fifo_png(tmp_path):
    folder = _png_folder(tmp_path)
    rc, err = _run(FEWSTEP + ["eval", str(folder), "--ref", str(folder), "--features", "pixels"], tmp_path)
    assert rc == 2 and "is not a regular file (it is a FIFO" in err, err


@pytest.mark.parametrize("which", ["schedule", "predictor", "tuned", "render-only"])
def test_cli_input_files_that_are_fifos(tmp_path, which):
    fifo = tmp_path / {"schedule": "s.json", "predictor": "p.safetensors", "tuned": "t.json",
                       "render-only": "t5.json"}[which]
    os.mkfifo(fifo)
    argv = {
        "schedule": ["sample", "--model", "factory_model:make", "--shape", "12", "--schedule", str(fifo),
                     "--seeds", "0-1", "--out", "x.npz"],
        "predictor": ["sample", "--model", "factory_model:make", "--shape", "12", "--predictor", str(fifo),
                      "--seeds", "0-1", "--out", "x.npz"],
        "tuned": ["train", "--model", "factory_model:make", "--shape", "12", "--tuned", str(fifo), "--out",
                  "p.safetensors"],
        "render-only": ["bench", "paper-table5", "--render-only", "--out", str(tmp_path / "t5.md")],
    }[which]
    rc, err = _run(FEWSTEP + argv, tmp_path)
    assert rc == 2 and "FIFO" in err, err


def test_diffusers_folder_whose_config_is_a_fifo(tmp_path):
    pytest.importorskip("diffusers")
    for layout in ("unet", "pipeline", "scheduler"):
        root = tmp_path / layout
        root.mkdir()
        if layout == "unet":
            os.mkfifo(root / "config.json")
        elif layout == "pipeline":
            (root / "model_index.json").write_text("{}")
            (root / "unet").mkdir()
            os.mkfifo(root / "unet" / "config.json")
        else:
            (root / "config.json").write_text('{"_class_name": "UNet2DModel"}')
            os.mkfifo(root / "scheduler_config.json")
        code = ("import sys\nfrom fewstep.integrations.diffusers import load_denoiser\n"
                f"try:\n    load_denoiser({str(root)!r})\nexcept ValueError as e:\n    print(e); sys.exit(2)\n")
        try:
            p = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"load_denoiser hung on the FIFO of the {layout} layout")
        assert p.returncode == 2 and "is not a regular file (it is a FIFO" in p.stdout, (layout, p.stdout, p.stderr)
