"""Catalog of bad inputs (issue 6): every one gets a clear error naming the problem, the CLI exits non-zero, and no
partial or temporary file is left behind. Complements tests/test_errors.py and tests/test_cli.py (no case repeated)."""

from __future__ import annotations

import errno
import json
import math
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fewstep
from fewstep import distributed, learned
from fewstep.cli import main
from fewstep.denoisers import Gaussian, load_unet
from fewstep.io import tensor_digest
from fewstep.solvers import get_solver

SIG = fewstep.get_schedule("polynomial", 5)
GAUSS = Gaussian(torch.zeros(12), torch.linspace(0.1, 1.0, 12))
NOISE = fewstep.noise_for_seeds(range(2), (3, 2, 2))
FACTORY = ["--model", "factory_model:make", "--shape", "3,2,2", "--threads", "1"]


# Model factories for the CLI's --model test_bad_inputs:NAME.
def not_callable():
    return 42


def other_gaussian():
    g = Gaussian(torch.zeros(12), torch.linspace(0.1, 1.0, 12))
    g.model_id = "some-other-model"
    return g


def nan_model():
    return lambda x, sigma: x * math.nan


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory) -> bytes:
    """A valid predictor-free AMED checkpoint for `factory_model:make`."""
    pred = learned.train("amed", GAUSS, shape=(3, 2, 2), num_steps=3, teacher=learned.Teacher(M=1),
                         budget=learned.Budget(batch=8, total_samples=8), progress=False, model_id="factory_model:make")
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    pred.save(path)
    return path.read_bytes()


@pytest.fixture
def f(tmp_path, ckpt_bytes):
    """Paths for a case: a work folder with a valid checkpoint, and helpers that write bad files into it."""
    work = tmp_path / "inputs"
    work.mkdir()
    good = work / "good.safetensors"
    good.write_bytes(ckpt_bytes)

    def write(name: str, data: bytes | str) -> Path:
        p = work / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def forge(name: str, cfg=None, meta=None, tensors=None) -> Path:
        """A copy of the good checkpoint with its config / metadata / tensors edited (digest kept consistent)."""
        with safe_open(str(good), framework="pt") as fh:
            m, t = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
        c = json.loads(m["config"])
        if cfg:
            cfg(c)
        m["config"] = json.dumps(c)
        if meta:
            meta(m)
        if tensors:
            t = tensors(t)
            m["sha256"] = tensor_digest(t)
        p = work / name
        save_file(t, str(p), metadata=m)
        return p

    def torch_save(name: str) -> Path:
        p = work / name
        torch.save({"table": torch.zeros(2, 3)}, p)  # a zip of pickles
        return p

    return SimpleNamespace(tmp=tmp_path, work=work, good=good, write=write, forge=forge, torch_save=torch_save)


def _flip_last_byte(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 0xFF])


UNET_ASSET = Path(fewstep.__file__).parent / "assets" / "unet16.safetensors"

# ------------------------------------------------------------------------------------------------ API cases
# (id, call(f), exception type, regex the message must match)

API = [
    # schedules
    ("schedule-num-steps-bool", lambda f: fewstep.get_schedule("polynomial", True), TypeError, "num_steps must be an int"),
    ("schedule-sigma-min-zero", lambda f: fewstep.get_schedule("polynomial", 5, sigma_min=0), ValueError,
     "sigma_min must be a positive finite number, got 0"),
    ("schedule-rho-nan", lambda f: fewstep.get_schedule("polynomial", 5, rho=math.nan), ValueError,
     "rho must be a positive finite number, got nan"),
    ("schedule-sigma-max-string", lambda f: fewstep.get_schedule("logsnr", 5, sigma_max="80"), ValueError,
     "sigma_max must be a positive finite number, got '80'"),
    ("schedule-discrete-alphas-out-of-range",
     lambda f: fewstep.get_schedule("discrete", 5, alphas_cumprod=torch.ones(10)), ValueError,
     r"alphas_cumprod must be a 1-D tensor with values in \(0, 1\)"),
    ("schedule-discrete-too-many-steps", lambda f: fewstep.get_schedule("discrete", 2000), ValueError,
     "num_steps=2000 exceeds the .* discrete timesteps"),
    ("schedule-tensor-length-mismatch", lambda f: fewstep.get_schedule(torch.tensor([3.0, 2.0, 1.0]), 5), ValueError,
     "num_steps=5 does not match the given schedule of 3 sigmas"),
    ("schedule-path-with-formula-kind", lambda f: fewstep.get_schedule("logsnr", 5, path="s.json"), ValueError,
     "path= is only used with kind='file'"),
    ("schedule-file-without-path", lambda f: fewstep.get_schedule("file"), ValueError, r"needs path=\.\.\."),
    ("schedule-file-missing", lambda f: fewstep.get_schedule("file", path=f.work / "none.json"), FileNotFoundError,
     "no schedule file at"),
    ("schedule-file-invalid-json", lambda f: fewstep.get_schedule("file", path=f.write("s.json", "{80, 1")),
     ValueError, "is not a JSON schedule file"),
    ("schedule-file-foreign-format",
     lambda f: fewstep.get_schedule("file", path=f.write("s.json", '{"format": "k-diffusion", "sigmas": [2, 1]}')),
     ValueError, "unsupported schedule format 'k-diffusion'"),
    ("schedule-file-string-sigmas",
     lambda f: fewstep.get_schedule("file", path=f.write("s.json", '{"sigmas": ["80", "1"]}')), ValueError,
     "'sigmas' must be a list of numbers"),
    ("schedule-file-is-a-pickle",
     lambda f: fewstep.get_schedule("file", path=f.write("s.json", pickle.dumps([80.0, 1.0]))), ValueError,
     "is not a JSON schedule file"),
    ("schedule-sequence-of-strings", lambda f: fewstep.get_schedule(["80", "1"]), TypeError,
     "schedule must be a 1-D tensor or sequence of floats, got list"),
    ("schedule-kind-none", lambda f: fewstep.get_schedule(None, 5), TypeError,
     "schedule must be a 1-D tensor or sequence of floats, got NoneType"),
    # solver options
    ("solver-name-not-a-string", lambda f: get_solver(123), ValueError, "unknown solver 123; choose one of euler"),
    ("dpm2-r-nan", lambda f: get_solver("dpm2", r=math.nan), ValueError, r"r must be a number in \(0, 1\], got nan"),
    ("ipndm-max-order-bool", lambda f: get_solver("ipndm", max_order=True), TypeError,
     "max_order must be an int, got bool"),
    ("deis-mode-none", lambda f: get_solver("deis", deis_mode=None), ValueError,
     "deis_mode must be one of 'tab', 'rhoab', 'logrho', got None"),
    ("unipc-lower-order-final-string", lambda f: get_solver("unipc", lower_order_final="no"), TypeError,
     "lower_order_final must be True or False"),
    ("nfe-zero", lambda f: fewstep.steps_for_nfe("euler", 0), ValueError, "nfe must be a positive int, got 0"),
    # shapes, dtypes, values
    ("noise-complex-dtype", lambda f: fewstep.sample(GAUSS, torch.zeros(2, 12, dtype=torch.complex64), SIG, "euler"),
     TypeError, "noise must be a floating-point tensor, got dtype torch.complex64"),
    ("noise-size-model-does-not-take", lambda f: fewstep.sample(GAUSS, torch.zeros(2, 5), SIG, "euler"), ValueError,
     r"12 features per item, got \(2, 5\)"),
    ("denoiser-returns-ndarray", lambda f: fewstep.sample(lambda x, s: x.numpy(), NOISE, SIG, "euler"), ValueError,
     "denoiser must return a tensor of the input's shape .*, got ndarray"),
    ("denoiser-returns-int-tensor", lambda f: fewstep.sample(lambda x, s: x.long(), NOISE, SIG, "euler"), TypeError,
     "denoiser must return a floating-point tensor, got dtype torch.int64"),
    ("sample-without-schedule", lambda f: fewstep.sample(GAUSS, NOISE), TypeError, r"sample\(\) need sigmas"),
    ("predictor-not-an-amed-predictor", lambda f: fewstep.sample(GAUSS, NOISE, predictor=object()), TypeError,
     "predictor must be a learned sampler from fewstep.learned"),
    ("seed-bool", lambda f: fewstep.noise_for_seeds([True], (3,)), ValueError, "non-negative ints below 2\\*\\*63, got True"),
    ("seed-too-large", lambda f: fewstep.noise_for_seeds([2**63], (3,)), ValueError, "below 2\\*\\*63, got 9223372036854775808"),
    ("seeds-a-string", lambda f: fewstep.noise_for_seeds("012", (3,)), TypeError, "seeds must be a sequence of ints"),
    ("shape-an-int", lambda f: fewstep.noise_for_seeds([1], 3), TypeError, "shape a tuple of ints"),
    ("shape-float-dims", lambda f: fewstep.noise_for_seeds([1], (3.0,)), ValueError,
     r"shape must be a non-empty tuple of positive ints, got \(3\.0,\)"),
    # checkpoints
    ("ckpt-truncated-half", lambda f: learned.load(f.write("c.safetensors", f.good.read_bytes()[:500])), ValueError,
     "is not a readable safetensors file"),
    ("ckpt-truncated-tail", lambda f: learned.load(f.write("c.safetensors", f.good.read_bytes()[:-4])), ValueError,
     "tensor 'table' does not fit the file \\(corrupted or truncated\\)"),
    ("ckpt-weights-bit-flipped", lambda f: learned.load(f.write("c.safetensors", _flip_last_byte(f.good.read_bytes()))),
     ValueError, "is corrupted: weights do not match their SHA-256"),
    ("ckpt-empty-file", lambda f: learned.load(f.write("c.safetensors", b"")), ValueError,
     r"too short to be a safetensors file \(0 bytes\)"),
    ("ckpt-torch-save-zip", lambda f: learned.load(f.torch_save("c.pt")), ValueError,
     "looks like a pickle / torch.save file; fewstep only loads safetensors"),
    ("ckpt-foreign-safetensors",
     lambda f: (save_file({"w": torch.zeros(2)}, str(f.work / "c.safetensors")),
                learned.load(f.work / "c.safetensors")),
     ValueError, r"is not a fewstep learned sampler \(format None\)"),
    ("ckpt-unknown-config-key", lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.update(colour=7.5))),
     ValueError, "unknown config keys colour"),
    ("ckpt-bad-guidance", lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.update(guidance=7.5))),
     ValueError, "config guidance must be an object"),
    ("ckpt-missing-config-key", lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.pop("sigmas"))),
     ValueError, "config lacks sigmas"),
    ("ckpt-future-version", lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.update(version=2))),
     ValueError, "version 2, this fewstep reads version 1"),
    ("ckpt-config-invalid-json",
     lambda f: learned.load(f.forge("c.safetensors", meta=lambda m: m.update(config="{'a': 1}"))), ValueError,
     "has no valid JSON config"),
    ("ckpt-config-not-an-object",
     lambda f: learned.load(f.forge("c.safetensors", meta=lambda m: m.update(config="[1]"))),
     ValueError, "config must be a JSON object"),
    ("ckpt-weights-wrong-shape",
     lambda f: learned.load(f.forge("c.safetensors", tensors=lambda t: {k: torch.zeros(3) for k in t})), ValueError,
     r"tensors do not match the configuration \(missing \[\], unexpected \[\], wrong shape \['table'\]\)"),
    ("ckpt-extra-tensor",
     lambda f: learned.load(f.forge("c.safetensors", tensors=lambda t: {**t, "junk": torch.zeros(1)})), ValueError,
     "tensors do not match the configuration .*unexpected \\['junk'\\]"),
    ("ckpt-sigmas-increasing",
     lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.update(sigmas=[0.002, 1.0, 80.0]))), ValueError,
     "config sigmas must be strictly decreasing"),
    ("ckpt-method-garbage", lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.update(method="ipndm"))),
     ValueError, "config method must be one of amed, plugin, .*got 'ipndm'"),
    ("ckpt-plugin-unknown-base",
     lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: (
         c.update(method="plugin", base={"solver": "rk4", "options": {}}), c["options"].update(c_mode="increment")))),
     ValueError, "config base: the base solver of plugin must be one of euler.*got 'rk4'"),
    ("ckpt-feature-source-unknown",
     lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c["options"].update(features="clip"))), ValueError,
     "config options.features must be one of 'none', 'adapter', 'hook', got 'clip'"),
    ("ckpt-architecture-missing",  # the network sizes (the old "architecture" block) are options now
     lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: [c["options"].pop(k) for k in
                                                                     ("hidden", "emb_dim", "feat_proj")])),
     ValueError, r"config options must be an object with exactly \['emb_dim', 'feat_proj', 'feature_dim', "
     r"'feature_module', 'features', 'hidden', 'scale_dir', 'scale_time'\]"),
    ("ckpt-hidden-out-of-range",
     lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c["options"].update(hidden=2**17))), ValueError,
     r"config options.hidden must be a int in \[1, 65536\], got '131072'"),
    ("ckpt-afs-not-bool", lambda f: learned.load(f.forge("c.safetensors", cfg=lambda c: c.update(afs="yes"))),
     ValueError, "config afs must be true or false, got 'yes'"),
    ("ckpt-for-another-model", lambda f: learned.load(f.good, model_id="smallunet-1234"), ValueError,
     "was trained for model 'factory_model:make', not 'smallunet-1234'"),
    ("ckpt-for-another-solver",
     lambda f: fewstep.sample(GAUSS, NOISE, solver="dpmpp", predictor=learned.load(f.good)), ValueError,
     "this sampler was trained as amed, got solver 'dpmpp'"),
    ("ckpt-missing", lambda f: learned.load(f.work / "none.safetensors"), FileNotFoundError, "no checkpoint at"),
    ("ckpt-is-a-directory", lambda f: learned.load(f.work), FileNotFoundError, "no checkpoint at"),
    ("unet-file-is-a-learned-sampler", lambda f: load_unet(f.good), ValueError,
     "is not a fewstep SmallUNet file \\(format 'fewstep-learned-sampler'"),
    ("unet-file-truncated", lambda f: load_unet(f.write("u.safetensors", UNET_ASSET.read_bytes()[:4000])), ValueError,
     "is not a readable safetensors file"),
    # torchrun environment
    ("env-world-size-not-int",
     lambda f: distributed.init_distributed("cpu", env={"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"}),
     ValueError, "environment variable WORLD_SIZE='two' must be an integer"),
    ("env-rank-not-below-world-size",
     lambda f: distributed.init_distributed("cpu", env={"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}),
     ValueError, "RANK=2 must be smaller than WORLD_SIZE=2"),
    ("device-unknown", lambda f: distributed.init_distributed("tpu", env={}), ValueError,
     "device must be cpu, cuda or cuda:N, got 'tpu'"),
    # learned-sampler training arguments with clear errors
    ("train-method-unknown", lambda f: learned.train("rk4", GAUSS, shape=(3, 2, 2), progress=False), ValueError,
     "method must be one of amed, plugin, .*got 'rk4'"),
    ("train-plugin-base-unknown",
     lambda f: learned.train("plugin", GAUSS, shape=(3, 2, 2), base="rk4", progress=False), ValueError,
     "the base solver of plugin must be one of euler.*got 'rk4'"),
    ("train-teacher-unknown-option",
     lambda f: learned.train("amed", GAUSS, shape=(3, 2, 2), teacher=learned.Teacher(options={"order": 4}),
                             progress=False), TypeError,
     "solver 'deis' got unknown option\\(s\\) order; allowed: max_order, deis_mode"),
    ("train-distance-unknown",
     lambda f: learned.train("amed", GAUSS, shape=(3, 2, 2), objective=learned.Objective(distance="l1"),
                             progress=False), ValueError, "distance must be one of l2, mse, got 'l1'"),
    ("train-shape-zero", lambda f: learned.train("amed", GAUSS, shape=(0, 3), progress=False), ValueError,
     r"shape must be a non-empty tuple of positive ints, got \(0, 3\)"),
]

# Bad inputs to learned.train (their errors were unclear or missing before); each entry gives the keywords that
# replace those of a valid small run (built when the case runs: a settings object refuses a bad field when made).
TRAIN_BAD = [
    ("train-seed-negative", lambda: {"budget": learned.Budget(batch=8, total_samples=8, seed=-1)}, ValueError,
     "seed must be a non-negative int below 2\\*\\*30, got -1"),
    ("train-afs-string", lambda: {"afs": "yes"}, TypeError, "afs must be True or False"),
    ("train-hidden-zero", lambda: {"options": {"hidden": 0}}, ValueError,
     r"option hidden of amed must be a int in \[1, 65536\], got 0"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, hidden temporaries included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("call,exc,match", [pytest.param(c, e, m, id=i) for i, c, e, m in API])
def test_api_bad_input(f, call, exc, match):
    with pytest.raises(exc, match=match):
        call(f)
    # nothing but the inputs the case wrote itself
    assert {p.parent for p in f.tmp.rglob("*") if p.is_file()} <= {f.work}


@pytest.mark.parametrize("kwargs,exc,match", [
    pytest.param(k, e, m, id=i) for i, k, e, m in TRAIN_BAD])
def test_amed_train_bad_input(kwargs, exc, match):
    good = dict(num_steps=3, teacher=learned.Teacher(M=1), budget=learned.Budget(batch=8, total_samples=8),
                progress=False)
    with pytest.raises(exc, match=match):
        learned.train("amed", GAUSS, shape=(3, 2, 2), **{**good, **kwargs()})


# ------------------------------------------------------------------------------------------------ CLI cases
# (id, argv(f, out) with out = a fresh path under tmp, regex for stderr); the exit code must be non-zero and
# the files under tmp must be exactly those from before the call.

CLI = [
    ("cli-seeds-empty-range", lambda f, o: ["sample", *FACTORY, "--seeds", "9-3", "--out", o],
     "argument --seeds: expected seeds like 0-99 or 1,5,9, got '9-3'"),
    ("cli-shape-zero-dim", lambda f, o: ["sample", "--model", "factory_model:make", "--shape", "3,0", "--out", o],
     "argument --shape: expected positive dimensions, got '3,0'"),
    ("cli-shape-not-int", lambda f, o: ["sample", "--model", "factory_model:make", "--shape", "3,a", "--out", o],
     "argument --shape: expected a shape like 3,32,32, got '3,a'"),
    ("cli-nfe-zero", lambda f, o: ["sample", *FACTORY, "--nfe", "0", "--out", o],
     "argument --nfe: expected a positive integer, got '0'"),
    ("cli-batch-zero", lambda f, o: ["sample", *FACTORY, "--batch", "0", "--out", o],
     "argument --batch: expected a positive integer, got '0'"),
    ("cli-threads-zero", lambda f, o: ["sample", "--model", "factory_model:make", "--shape", "3", "--threads", "0",
                                       "--out", o], "argument --threads: expected a positive integer, got '0'"),
    ("cli-unknown-solver", lambda f, o: ["sample", *FACTORY, "--solver", "rk4", "--out", o],
     "unknown solver 'rk4'; choose one of euler"),
    ("cli-unknown-schedule", lambda f, o: ["sample", *FACTORY, "--schedule", "karras", "--out", o],
     "argument --schedule"),
    ("cli-unknown-format", lambda f, o: ["sample", *FACTORY, "--format", "jpg", "--out", o],
     "argument --format: invalid choice: 'jpg'"),
    ("cli-format-with-npz-file", lambda f, o: ["sample", *FACTORY, "--format", "npy", "--out", o + ".npz"],
     "--format applies to an output folder"),
    ("cli-out-is-a-file", lambda f, o: ["sample", *FACTORY, "--out", str(f.good)], "exists and is not a directory"),
    ("cli-npz-out-is-a-folder",
     lambda f, o: (Path(o + ".npz").mkdir(), ["sample", *FACTORY, "--out", o + ".npz"])[1],
     "exists and is not a file"),
    ("cli-png-four-channels", lambda f, o: ["sample", "--model", "factory_model:make", "--shape", "4,3,1", "--out", o],
     r"PNG output needs samples of shape \(C, H, W\) with C = 1 or 3, got \(4, 3, 1\)"),
    ("cli-png-flat-samples", lambda f, o: ["sample", "--model", "factory_model:make", "--shape", "12", "--out", o],
     r"PNG output needs .* got \(12,\); use --format npy"),
    ("cli-out-under-a-file", lambda f, o: ["sample", *FACTORY, "--out", str(f.good / "samples")],
     "cannot write to the output folder .*good.safetensors/samples: Not a directory"),
    ("cli-out-unwritable-folder", lambda f, o: ["sample", *FACTORY, "--out", "/proc/fewstep-test-out"],
     "cannot write to the output folder /proc/fewstep-test-out"),
    ("cli-npz-out-unwritable", lambda f, o: ["sample", *FACTORY, "--out", "/proc/fewstep-test-out.npz"],
     "cannot write /proc/fewstep-test-out.npz"),
    ("cli-unknown-model", lambda f, o: ["sample", "--model", "sd15", "--out", o], "unknown model 'sd15'; use gmm"),
    ("cli-model-file-missing", lambda f, o: ["sample", "--model", str(f.work / "m.safetensors"), "--out", o],
     "no fewstep SmallUNet file at"),
    ("cli-model-factory-attr-missing", lambda f, o: ["sample", "--model", "factory_model:nope", "--shape", "3",
                                                     "--out", o], "has no attribute 'nope'"),
    ("cli-model-factory-not-a-denoiser", lambda f, o: ["sample", "--model", "test_bad_inputs:not_callable", "--shape",
                                                       "3", "--out", o], "returned int, not a denoiser"),
    ("cli-predictor-missing", lambda f, o: ["sample", *FACTORY, "--predictor", str(f.work / "p.safetensors"),
                                            "--out", o], "no checkpoint at"),
    ("cli-predictor-for-another-model",
     lambda f, o: ["sample", "--model", "test_bad_inputs:other_gaussian", "--shape", "3,2,2", "--predictor",
                   str(f.good), "--out", o], "was trained for model 'factory_model:make', not 'some-other-model'"),
    ("cli-predictor-is-a-torch-save-file", lambda f, o: ["sample", *FACTORY, "--predictor", str(f.torch_save("p.pt")),
                                                         "--out", o], "looks like a pickle / torch.save file"),
    ("cli-corrupt-manifest",
     lambda f, o: (Path(o).mkdir(), (Path(o) / "fewstep-sample.json").write_text("{"),
                   ["sample", *FACTORY, "--out", o])[2], "is not a fewstep sample manifest"),
    ("cli-device-unknown", lambda f, o: ["sample", *FACTORY, "--device", "tpu", "--out", o],
     "device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("cli-train-teacher-options-not-json",
     lambda f, o: ["train", *FACTORY, "--teacher-options", "{order: 4}", "--out", o + ".safetensors"],
     "--teacher-options must be a JSON object"),
    ("cli-train-teacher-options-not-an-object",
     lambda f, o: ["train", *FACTORY, "--teacher-options", "[4]", "--out", o + ".safetensors"],
     "--teacher-options must be a JSON object .*got '\\[4\\]'"),
    ("cli-train-teacher-option-unknown",
     lambda f, o: ["train", *FACTORY, "--teacher-options", '{"order": 4}', "--out", o + ".safetensors"],
     r"unknown option\(s\) order; allowed: max_order, deis_mode"),
    ("cli-nan-from-model", lambda f, o: ["sample", "--model", "test_bad_inputs:nan_model", "--shape", "3,2,2",
                                         "--out", o], r"denoiser returned NaN/inf at step \d+ \(sigma=[0-9.e+-]+, evaluation 1\)"),
    ("cli-nan-from-model-npz", lambda f, o: ["sample", "--model", "test_bad_inputs:nan_model", "--shape", "3,2,2",
                                             "--out", o + ".npz"], "denoiser returned NaN/inf"),
]


def _run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse errors
        return int(e.code)


@pytest.mark.parametrize("argv,match", [pytest.param(a, m, id=i) for i, a, m in CLI])
def test_cli_bad_input(f, capsys, argv, match):
    out = str(f.tmp / "out")
    args = argv(f, out)
    before = _snapshot(f.tmp)
    rc = _run_cli(args)
    err = capsys.readouterr().err
    assert rc != 0
    assert "error:" in err and re.search(match, err), err
    assert _snapshot(f.tmp) == before  # no partial output, no temporaries
    assert not Path("/proc/fewstep-test-out").exists()


def test_cli_device_cuda_without_cuda(f, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["sample", *FACTORY, "--device", "cuda", "--out", str(f.tmp / "out")]) == 2
    assert "device 'cuda' asked for, but CUDA is not available" in capsys.readouterr().err
    assert not (f.tmp / "out").exists()


# --------------------------------------------------------------------------------------- disk full mid-run


def _enospc_after(monkeypatch, cls, name: str, ok_calls: int) -> None:
    """Let ``ok_calls`` writes through, then write a few bytes and fail with ENOSPC, as a full disk does."""
    real, calls = getattr(cls, name), []

    def writer(self_or_file, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) > ok_calls:
            target = fp if isinstance(fp, (str, Path)) else self_or_file
            Path(target).write_bytes(b"\x89PNG\r\n partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self_or_file, fp, *args, **kwargs)

    monkeypatch.setattr(cls, name, writer)


def test_disk_full_while_writing_pngs(f, monkeypatch, capsys):
    from PIL import Image

    args = ["sample", *FACTORY, "--seeds", "0-7", "--batch", "4", "--nfe", "3"]
    assert main([*args, "--out", str(f.tmp / "ref")]) == 0
    _enospc_after(monkeypatch, Image.Image, "save", 5)
    out = f.tmp / "out"
    assert main([*args, "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["000000/000000.png", "000000/000001.png", "000000/000002.png", "000000/000003.png",
                     "000000/000004.png", "fewstep-sample.json"]  # complete files only, no temporary
    monkeypatch.undo()
    for p in out.rglob("*.png"):
        Image.open(p).verify()
    # after freeing space, the same command completes the set exactly
    assert main([*args, "--out", str(out)]) == 0
    assert _snapshot(out) == _snapshot(f.tmp / "ref")


def test_disk_full_while_writing_the_npz(f, monkeypatch, capsys):
    def full(file, **arrays):
        Path(file).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    before = _snapshot(f.tmp)
    assert main(["sample", *FACTORY, "--seeds", "0-3", "--out", str(f.tmp / "s.npz")]) == 2
    assert "cannot write" in (err := capsys.readouterr().err) and "No space left on device" in err
    assert _snapshot(f.tmp) == before
