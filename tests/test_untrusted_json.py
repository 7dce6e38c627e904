"""Issue 26, classes 3, 6 and 7: one reader for every JSON a user hands in (types, depth, size, finite numbers),
strict types in schedule files, export statements counted rather than assumed, and sizes from files and arguments
bounded before anything is allocated."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep
import fewstep.k as fk
from fewstep import learned
from fewstep.cli import main
from fewstep.io import write_safetensors
from fewstep.jsonio import MAX_NFE, check_shape, get_bool, get_float, get_int, load_json
from fewstep.learned import METHODS
from fewstep.learned.export import export_document
from fewstep.schedule_search import search_schedule
from fewstep.schedules import load_schedule, read_schedule_file, save_schedule

torch.set_num_threads(1)

FACTORY = ["--model", "factory_model:make", "--shape", "3,2,2", "--threads", "1"]
DEEP = "[" * 100_000 + "]" * 100_000  # Python's json recurses: a RecursionError unless checked first
DEEP_OBJ = '{"a":' * 5_000 + "1" + "}" * 5_000


# ------------------------------------------------------------------------------------------------ class 6: reader


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "must be a JSON object at the top level, got a JSON list"),
    ('"x"', "must be a JSON object at the top level, got a string"),
    ("true", "must be a JSON object at the top level, got true or false"),
    (DEEP, "nests 100000 levels deep; at most 64"),
    (DEEP_OBJ, "nests 5000 levels deep"),
    ('{"a": [' + "[" * 70 + "]" * 70 + "]}", "levels deep"),
    ('{"a": NaN}', "NaN is not a number"),
    ('{"a": -Infinity}', "Infinity is not a number"),
    ('{"a": [1e999]}', r"number at a\[0\] is out of range"),
    ('{"a": 1' + "0" * 5000 + "}", "not valid JSON"),
    ("{'a': 1}", "not valid JSON"),
    (b'{"a": "\xff"}', "not UTF-8"),
])
def test_load_json_refuses_hostile_text(text, match):
    with pytest.raises(ValueError, match=match):
        load_json(text, what="--x-options")


def test_load_json_counts_depth_outside_strings_only():
    assert load_json('{"a": "[[[[[[[[[[[[\\"[[[[["}', max_depth=1) == {"a": '[[[[[[[[[[[["[[[[['}
    assert load_json("[[1]]", expect=list, max_depth=2) == [[1]]
    with pytest.raises(ValueError, match="3 levels deep; at most 2"):
        load_json("[[[1]]]", expect=list, max_depth=2)


def test_load_json_files(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": 1}')
    assert load_json(p, what="config") == {"a": 1}
    p.write_text("[1]")
    with pytest.raises(ValueError, match=f"{p} \\(config\\) must be a JSON object"):
        load_json(p, what="config")
    big = tmp_path / "big.json"
    big.write_text("{}" + " " * 20)
    with pytest.raises(ValueError, match="is 22 bytes; at most 10 are read"):
        load_json(big, what="x", max_bytes=10)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_json(fifo, what="config")
    with pytest.raises(FileNotFoundError, match="no config at"):
        load_json(tmp_path / "missing.json", what="config")


def test_typed_fields():
    doc = {"afs": "false", "n": True, "m": 3.0, "x": float("nan"), "ok": False, "k": 4, "one": 1}
    for key in ("afs", "m", "one", "k"):
        with pytest.raises(ValueError, match=f"f.json: {key} must be true or false"):
            get_bool(doc, key, "f.json")
    assert get_bool(doc, "ok", "f") is False and get_bool(doc, "absent", "f", True) is True
    for key in ("n", "m", "afs"):
        with pytest.raises(ValueError, match=f"{key} must be an integer"):
            get_int(doc, key, "f")
    assert get_int(doc, "k", "f", lo=1, hi=4) == 4
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        get_int(doc, "k", "f", lo=1, hi=3)
    for key in ("x", "n", "afs"):
        with pytest.raises(ValueError, match=f"{key} must be a finite number"):
            get_float(doc, key, "f")


@pytest.mark.parametrize("option", ["--method-options", "--teacher-options"])
@pytest.mark.parametrize("value,match", [(DEEP_OBJ, "levels deep"), ("[4]", "must be a JSON object"),
                                         ('{"a": NaN}', "NaN is not a number"), ("{a: 1}", "not valid JSON")])
def test_cli_train_options_are_read_safely(tmp_path, capsys, option, value, match):
    out = tmp_path / "p.safetensors"
    rc = main(["train", *FACTORY, "--method", "dyweight", "--no-tune", option, value, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"fewstep train: error: {option} must be a JSON object" in err and match in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("value", [DEEP_OBJ, "[1]", '{"max_order": Infinity}'])
def test_cli_solver_options_are_read_safely(tmp_path, capsys, value):
    for argv in (["sample", *FACTORY, "--solver", "ipndm", "--solver-options", value, "--seeds", "0",
                  "--out", str(tmp_path / "s.npz")],
                 ["schedule", "search", *FACTORY, "--solver-options", value, "--out", str(tmp_path / "s.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error: " in err and "--solver-options" in err and "Traceback" not in err


def _safetensors_with(path: Path, fmt: str, config: str, **extra: str) -> Path:
    return write_safetensors(path, {"w": torch.zeros(1)}, {"format": fmt, "config": config, **extra})


@pytest.mark.parametrize("config,match", [(DEEP, "levels deep"), ("[1]", "must be a JSON object"),
                                          ('{"a": 1e999}', "out of range")])
def test_checkpoint_and_unet_metadata_are_read_safely(tmp_path, config, match):
    ck = _safetensors_with(tmp_path / "c.safetensors", "fewstep-learned-sampler", config)
    with pytest.raises(learned.CheckpointError, match=match):
        learned.load(ck)
    from fewstep.denoisers.unet import FORMAT, read_unet_metadata

    un = _safetensors_with(tmp_path / "u.safetensors", FORMAT, config, name="x", recipe="{}", sha256="0", version="1")
    with pytest.raises(ValueError, match=match):
        read_unet_metadata(un)
    un = _safetensors_with(tmp_path / "v.safetensors", FORMAT, "{}", name="x", recipe=config, sha256="0", version="1")
    with pytest.raises(ValueError, match=match):
        read_unet_metadata(un)


def test_safetensors_header_depth_is_checked(tmp_path):
    from fewstep.io import SafetensorsFileError, read_safetensors_header

    head = ('{"t": {"dtype": "F32", "shape": ' + "[" * 5000 + "]" * 5000 + ', "data_offsets": [0, 0]}}').encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(SafetensorsFileError, match="levels deep"):
        read_safetensors_header(p)


# ------------------------------------------------------------------------------------------------ diffusers folders


diffusers_only = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed")


def _tiny_unet_folder(path: Path, channels: int = 3) -> Path:
    import diffusers

    torch.manual_seed(0)
    diffusers.UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2, attention_head_dim=4).save_pretrained(path)
    return path


@diffusers_only
@pytest.mark.parametrize("name,text,match", [
    ("config.json", "[1, 2]", "must be a JSON object at the top level, got a JSON list"),
    ("config.json", DEEP, "levels deep"),
    ("scheduler_config.json", "[]", "must be a JSON object"),
    ("scheduler_config.json", DEEP_OBJ, "levels deep"),
    ("scheduler_config.json", '{"num_train_timesteps": 1000000000000, "prediction_type": "epsilon", '
                              '"beta_schedule": "linear"}', r"num_train_timesteps must be an int in \[2, 100000\]"),
    ("model_index.json", "[0]", "must be a JSON object"),
    ("scheduler_config.json", '{"prediction_type": "epsilon", "beta_schedule": "linear", "beta_start": "0.1"}',
     "beta_start .* must be a finite number"),
    ("scheduler_config.json", '{"prediction_type": "epsilon", "trained_betas": [true, 0.5]}',
     "trained_betas .* must be a list"),
    ("scheduler_config.json", '{"prediction_type": ["epsilon"], "beta_schedule": "linear"}',
     "prediction_type .* must be a string"),
    ("scheduler_config.json", '{"_class_name": [1], "prediction_type": "epsilon", "beta_schedule": "linear"}',
     "_class_name must be a string"),
])
def test_diffusers_configs_are_read_safely(tmp_path, name, text, match):
    from fewstep.integrations.diffusers import load_denoiser

    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text('{"_class_name": "UNet2DModel", "sample_size": 8}')
    if name == "model_index.json":
        (root / "unet").mkdir()
        (root / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (root / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        load_denoiser(root)


@diffusers_only
@pytest.mark.parametrize("key,value,match", [
    ("sample_size", 10**6, r"sample_size must be in \[1, 16384\]"), ("sample_size", [8, 10**6], "sample_size"),
    ("in_channels", 10**7, "in_channels"), ("block_out_channels", [4, 10**8], "block_out_channels"),
    ("sample_size", "8", "sample_size must be an integer"), ("layers_per_block", True, "layers_per_block"),
])
def test_diffusers_sizes_are_bounded_before_loading(tmp_path, key, value, match):
    from fewstep.integrations.diffusers import load_denoiser

    root = _tiny_unet_folder(tmp_path / "m")
    cfg = json.loads((root / "config.json").read_text())
    cfg[key] = value
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        load_denoiser(root, prediction_type="epsilon", beta_schedule="linear")


@diffusers_only
def test_diffusers_weights_of_another_shape_name_the_file(tmp_path):
    from fewstep.integrations.diffusers import load_denoiser

    root = _tiny_unet_folder(tmp_path / "m")
    other = _tiny_unet_folder(tmp_path / "o", channels=4)
    (root / "diffusion_pytorch_model.safetensors").write_bytes(
        (other / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_denoiser(root, prediction_type="epsilon", beta_schedule="linear")


# ------------------------------------------------------------------------------------------------ class 3: types


def _schedule(tmp_path: Path, **info) -> Path:
    return save_schedule(tmp_path / "s.json", fewstep.get_schedule("polynomial", 5), **info)


@pytest.mark.parametrize("key,value,match", [
    ("afs", "false", "info afs must be true or false"), ("afs", 1, "info afs must be true or false"),
    ("afs", None, "info afs must be true or false"), ("nfe", True, "nfe must be a positive integer"),
    ("nfe", 4.0, "nfe must be a positive integer"), ("nfe", 0, "nfe must be a positive integer"),
    ("solver", 3, "solver must be a string"), ("solver_options", [1], "solver_options must be a JSON object"),
    ("model_id", ["x"], "model_id must be a string"), ("denoise_to_zero", "no", "denoise_to_zero must be true"),
])
def test_schedule_file_info_types_are_strict(tmp_path, key, value, match):
    p = _schedule(tmp_path, **{key: value})
    for read in (load_schedule, read_schedule_file, export_document):
        with pytest.raises(ValueError, match=match):
            read(p)
    assert main(["schedule", "export", str(p)]) == 2


def test_schedule_file_afs_false_is_false(tmp_path):
    p = _schedule(tmp_path, solver="euler", afs=False)
    assert export_document(p)["nfe"] == 4 and read_schedule_file(p)[1]["afs"] is False


def _calls(fn, *args, **kw) -> int:  # noqa: ANN001
    n = [0]

    def model(x, s):  # noqa: ANN001, ANN202
        n[0] += 1
        return torch.zeros_like(x)
    fn(model, *args, **kw)
    return n[0]


@pytest.mark.parametrize("K,num", [(3, 3), (2, 5), (1, 4)])
def test_epd_export_states_counted_calls(tmp_path, K, num):
    """EPD makes K + 1 calls per step in fewstep; a host sampler on its sigmas makes 1 or 2: every number the export
    states is what a counting model sees, and no host is said to pay the trained NFE."""
    cls = METHODS["epd"]
    sig = fewstep.get_schedule("polynomial", num)
    p = cls(cls.make_config(sig, afs=False, options={"K": K}, training={"shape": [2]}))
    path = p.save(tmp_path / "e.safetensors")
    doc = export_document(path, schedule_only=True)
    x = torch.zeros(1, 2, dtype=torch.float64) + 80.0
    assert doc["nfe"] == _calls(fk.sample_learned, x, None, predictor=learned.load(path), disable=True) \
        == (K + 1) * (num - 1)
    assert f"{doc['nfe']} model calls" in doc["host"]["to_pay_nfe"]
    for row in doc["host"]["model_calls"]:
        fn = fk.sample_heun if row["evals_per_step"] == 2 else fk.sample_euler
        s = torch.tensor(doc["k_diffusion_sigmas"] if row["trailing_zero"] else doc["sigmas"], dtype=torch.float64)
        assert _calls(fn, x, s, disable=True, afs=row["afs"]) == row["model_calls"]
    assert "use a" not in doc["host"]["elsewhere"] and "no host pays" in doc["host"]["elsewhere"]


def test_schedule_export_for_a_solver_with_options_states_what_runs(tmp_path):
    p = _schedule(tmp_path, solver="dpmpp", solver_options={"max_order": 3}, afs=True)
    doc = export_document(p)
    assert "fewstep.sample(" in doc["host"]["to_pay_nfe"] and "max_order=3" in doc["host"]["to_pay_nfe"]
    sig = torch.tensor(doc["sigmas"], dtype=torch.float64)
    n = _calls(lambda m: fewstep.sample(m, torch.zeros(1, 2, dtype=torch.float64), sig, solver="dpmpp", afs=True,
                                        max_order=3))
    assert doc["nfe"] == n and f"{n} model calls" in doc["host"]["to_pay_nfe"]


# ------------------------------------------------------------------------------------------------ class 7: sizes


@pytest.mark.parametrize("call,match", [
    (lambda: fewstep.steps_for_nfe("euler", 10**9), f"nfe must be at most {MAX_NFE}"),
    (lambda: fewstep.steps_for_nfe("heun", 10**12, True), "at most"),
    (lambda: fewstep.get_schedule("polynomial", 10**12), "num_steps must be at most"),
    (lambda: fewstep.noise_for_seeds([0], (10**6, 10**6)), "each dimension must be at most"),
    (lambda: fewstep.noise_for_seeds([0], (4096, 4096, 4096)), "elements per sample"),
    (lambda: check_shape((3, 0)), "positive ints"),
    (lambda: learned.train("dyweight", lambda x, s: x, shape=(10**7,)), "at most"),
    (lambda: learned.Budget(batch=10**12), "batch must be at most"),
    (lambda: learned.Teacher(M=10**9), "teacher M must be at most"),
    (lambda: search_schedule(lambda x, s: x, (3, 64, 64), nfe=5, grid=10**5), "bytes of teacher trajectories"),
])
def test_sizes_from_arguments_are_bounded(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unet_config_sizes_are_bounded():
    from fewstep.denoisers.unet import UNetConfig

    for kw, match in [({"img_resolution": 2**20}, "img_resolution: must be at most"),
                      ({"base_channels": 10**6}, "base_channels: must be at most"),
                      ({"channel_mult": (1,) * 50}, "channel_mult"),
                      ({"num_classes": 10**9}, "num_classes")]:
        with pytest.raises(ValueError, match=match):
            UNetConfig(**kw)


def test_cli_huge_nfe_is_refused_at_once(tmp_path, capsys):
    for argv in (["sample", *FACTORY, "--solver", "euler", "--nfe", str(10**9), "--seeds", "0",
                  "--out", str(tmp_path / "s.npz")],
                 ["train", *FACTORY, "--method", "dyweight", "--no-tune", "--nfe", str(10**9),
                  "--out", str(tmp_path / "p.safetensors")],
                 ["sample", "--model", "factory_model:make", "--shape", "100000,100000", "--solver", "euler",
                  "--seeds", "0", "--out", str(tmp_path / "t.npz")]):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own refusal of --shape: "fewstep sample: error: ..." and exit 2
            rc = e.code
        assert rc == 2
        err = capsys.readouterr().err
        assert "error:" in err and "at most" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@diffusers_only
def test_scheduler_huge_nfe_is_computed_not_listed():
    from fewstep.integrations.diffusers import FewstepScheduler

    s = FewstepScheduler(solver="heun")
    with pytest.raises(ValueError, match="at most|1 \.\. 100000"):
        s.set_timesteps(10**9)


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("w,h", [(14000, 14000), (20000, 1), (9000, 9000)])
def test_decompression_bomb_png_is_refused_unread(tmp_path, w, h):
    from fewstep.metrics import load_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png_header(w, h))
    with pytest.raises(ValueError, match=r"a.png is (\d+x\d+ pixels; images read here are at most|refused as a "
                                         "decompression bomb)"):
        load_images(folder)


def test_image_folders_and_npz_are_bounded(tmp_path, monkeypatch):
    import fewstep.jsonio
    from fewstep.metrics import load_images

    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i}.png")
    np.savez_compressed(tmp_path / "x.npz", images=np.zeros((4, 3, 64, 64), np.uint8))
    assert load_images(folder).shape == (3, 3, 8, 8) and load_images(tmp_path / "x.npz").shape == (4, 3, 64, 64)
    monkeypatch.setattr(fewstep.jsonio, "MAX_ARRAY_BYTES", 1000)
    with pytest.raises(ValueError, match="more than 1000 bytes"):
        load_images(folder)
    with pytest.raises(ValueError, match="uncompressed; at most 1000"):
        load_images(tmp_path / "x.npz")


@pytest.mark.parametrize("key,value,match", [("version", True, "version"), ("afs", "false", "afs must be true or false"),
                                             ("sigmas", [80.0, True], "sigmas must be a list"),
                                             ("time_shift", 0, "time_shift must be true or false")])
def test_checkpoint_config_types_are_strict(tmp_path, key, value, match):
    from fewstep.io import tensor_digest
    from learned_helpers import make_sampler

    p = make_sampler(METHODS["dyweight"], fewstep.get_schedule("polynomial", 4))
    cfg = dict(p.config, **{key: value})
    tensors = {k: v.detach().contiguous() for k, v in p.state_dict().items()}
    path = write_safetensors(tmp_path / "c.safetensors", tensors, {
        "format": "fewstep-learned-sampler", "config": json.dumps(cfg), "sha256": tensor_digest(tensors)})
    with pytest.raises(learned.CheckpointError, match=match):
        learned.load(path)


@pytest.mark.parametrize("key,value", [("dropout", False), ("sigma_data", True), ("noise_max_freq", "64"),
                                       ("img_resolution", 16.0), ("mid_attention", 1)])
def test_unet_config_types_are_strict(key, value):
    from fewstep.denoisers.unet import UNetConfig

    with pytest.raises(ValueError, match=key):
        UNetConfig(**{key: value})
