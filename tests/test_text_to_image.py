"""Text-to-image pipelines end to end (issue 27): prompt files, the pipeline's network as a prompt-conditioned
denoiser (equal to the pipeline's own sampling), training from a prompt file through the CLI and the trained sampler
back in the real pipeline, and clear errors on bad input. Pipelines are tiny random ones built offline
(tests/tiny_pipelines.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep import learned, solve
from fewstep.cli import main
from fewstep.integrations.diffusers import FewstepScheduler
from fewstep.integrations.diffusers.text import (
    PromptGuided,
    PromptModel,
    load_pipeline,
    pipeline_kind,
    prompt_for_seed,
    read_prompts,
    set_sampler,
    split_prompts,
)
from fewstep.learned.guidance import conditioning_of
from fewstep.sampling import seeded_noise
from fewstep.teacher import model_key
from tiny_pipelines import tiny_folder

PROMPTS = ["a red cat", "a blue dog", "photo of a house", "a tree", "the red house", "a cat in a tree",
           "blue photo", "a dog and a cat", "red tree", "house of the dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Pipeline folders by kind (:func:`tiny_folder`: built once per session); "sdv" is Stable Diffusion with
    v-prediction (a random eps-network's x0 estimates grow with sigma, a random v-network's stay at data scale: a
    usable training bed)."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            if kind == "sdv":
                path = tmp_path_factory.mktemp("t2i") / "sdv"
                import shutil

                shutil.copytree(get("sd"), path)
                cfg_file = path / "scheduler" / "scheduler_config.json"
                cfg = json.loads(cfg_file.read_text())
                cfg["prediction_type"] = "v_prediction"
                cfg_file.write_text(json.dumps(cfg))
                made[kind] = path
            else:
                made[kind] = tiny_folder(kind, tmp_path_factory)
        return made[kind]

    return get


@pytest.fixture
def prompt_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("# training prompts\n" + "\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------------------ prompt files
def test_read_prompts_skips_blank_and_comment_lines(prompt_file):
    assert read_prompts(prompt_file) == PROMPTS


@pytest.mark.parametrize("content,match", [
    (b"", "has no prompts"), (b"# only a comment\n\n   \n", "has no prompts"),
    (b"a cat\n\xff\xfe dog\n", "not UTF-8"), (b"x" * 2001 + b"\n", "line 1: a prompt of 2001 characters"),
])
def test_bad_prompt_files_are_refused_by_name(tmp_path, content, match):
    p = tmp_path / "p.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_prompts(p)


def test_missing_or_fifo_prompt_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prompt file"):
        read_prompts(tmp_path / "nope.txt")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        read_prompts(fifo)


def test_split_holds_out_every_fifth_prompt():
    train, held = split_prompts(PROMPTS)
    assert held == [4, 9] and train == [0, 1, 2, 3, 5, 6, 7, 8]
    assert split_prompts(PROMPTS[:4]) == ([0, 1, 2, 3], [])


def test_prompt_for_seed_depends_on_the_seed_only_and_covers_the_prompts():
    draws = [prompt_for_seed(s, 7) for s in range(700)]
    assert draws == [prompt_for_seed(s, 7) for s in range(700)]
    counts = np.bincount(draws, minlength=7)
    assert counts.min() > 60 and counts.max() < 140  # about 100 each
    assert prompt_for_seed(2**63 - 1, 3) in (0, 1, 2)


# ------------------------------------------------------------------------------------------------ pipeline kinds
def test_pipeline_kinds(folders, tmp_path):
    assert pipeline_kind(folders("sd")) == "sd"
    assert pipeline_kind(folders("sdxl")) == "sdxl"
    assert pipeline_kind(folders("sd3")) == "sd3"
    assert pipeline_kind(folders("ddpm")) is None
    other = tmp_path / "kandinsky"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline", "unet": ["x", "y"]}))
    with pytest.raises(ValueError, match="holds a KandinskyPipeline; fewstep supports .*StableDiffusion3Pipeline"):
        pipeline_kind(other)
    with pytest.raises(ValueError, match="not a text-to-image pipeline"):
        load_pipeline(folders("ddpm"))


# ------------------------------------------------------------------------------------------------ the denoiser
@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3"])
def test_prompt_model_samples_as_the_pipeline_does(folders, kind):
    """fewstep.sample over PromptGuided equals the real pipeline with FewstepScheduler on the same noise (same
    solver, schedule and guidance): the text conditioning, added time ids, pooled embeddings and the negative
    branch are the pipeline's own."""
    pipe = load_pipeline(folders(kind))
    model = PromptModel(pipe, ["a red cat"])
    den = PromptGuided(model, 4.0)
    noise = seeded_noise(den, [11, 12], model.sample_shape)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="ipndm", timestep_type="interp")
    pipe.scheduler.set_timesteps(4)
    sig = torch.as_tensor(pipe.scheduler._stepper.sigmas, dtype=torch.float64)
    s0 = sig[0]
    space = (1 + s0) if kind == "sd3" else (1 + s0**2).sqrt()  # EDM state -> the pipeline's (flow / VP) latents
    h = model.sample_shape[-1] * model.vae_scale_factor
    with torch.no_grad():
        ref = pipe(["a red cat"] * 2, num_inference_steps=4, guidance_scale=4.0, latents=(noise * s0 / space).float(),
                   height=h, width=h, output_type="latent").images
    ours = solve(den, noise.double(), sig, "ipndm", afs=False, denoise_to_zero=True).x  # float64 state (flow: 1e6)
    assert torch.allclose(ours.float(), ref.float(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert conditioning_of(den) == {"guidance": 4.0, "class_labels": None}


def test_prompts_are_drawn_per_seed_and_keyed_by_their_table(folders):
    pipe = load_pipeline(folders("sd"))
    model = PromptModel(pipe, PROMPTS[:3], negative_prompt="blurry")
    den = PromptGuided(model, 3.0, pool=[0, 2])
    seeded_noise(den, [5, 6, 7], model.sample_shape)
    assert den.labels.tolist() == [[0, 2][prompt_for_seed(s, 2)] for s in (5, 6, 7)]
    assert den.prompts_for_seeds([5]) == [PROMPTS[[0, 2][prompt_for_seed(5, 2)]]]
    key = model_key(den)
    assert "labels" not in key and key["conditions"] == den.conditions_key
    other = PromptGuided(PromptModel(pipe, PROMPTS[:3]), 3.0, pool=[0, 2])  # another negative prompt
    assert model_key(other)["conditions"] != key["conditions"]
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        model(torch.zeros(1, *model.sample_shape), torch.tensor([1.0]), torch.tensor([4]))
    with pytest.raises(ValueError, match="pool must be"):
        PromptGuided(model, 3.0, pool=[3])


# ------------------------------------------------------------------------------------------------ the CLI
def test_train_from_a_prompt_file_beats_its_base_on_held_out_prompts_and_runs_in_the_pipeline(
        folders, prompt_file, tmp_path, capsys):
    out = tmp_path / "sdv.safetensors"
    assert main(["train", "--diffusers", str(folders("sdv")), "--prompts", str(prompt_file), "--guidance", "5",
                 "--nfe", "5", "--no-tune", "--total-samples", "128", "--report-seeds", "16", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prompts: 8 train, 2 held out for the report (every 5th prompt" in text
    rows = [line for line in text.splitlines() if " NFE  5 " in line]
    trained, untrained = (float(r.split()[-1]) for r in rows[:2])
    assert rows[0].lstrip().startswith("trained") and "untrained" in rows[1]
    assert trained < 0.95 * untrained, text  # measured: 0.064 vs 0.076 at 256 samples
    # The teacher it was distilled from, measured the same way: the floor a student approaches (here about 0.045).
    teacher = [line for line in text.splitlines() if "its teacher: deis with M = 4" in line]
    assert len(teacher) == 1 and 0 < float(teacher[0].split()[-1]) < untrained

    p = learned.load(out)
    assert p.config["training"]["conditioning"] == {"guidance": 5.0, "class_labels": None}
    # In the real pipeline: exactly its NFE of UNet calls, each on the doubled (guided) batch.
    pipe = load_pipeline(folders("sdv"))
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    set_sampler(pipe, out)
    img = pipe("a red cat", num_inference_steps=5, guidance_scale=5.0, height=8, width=8, output_type="np").images
    assert calls == [2] * 5 and np.isfinite(img).all()
    # fewstep sample --prompt writes decoded images.
    images = tmp_path / "imgs"
    assert main(["sample", "--diffusers", str(folders("sdv")), "--prompt", "a red cat", "--guidance", "5",
                 "--predictor", str(out), "--seeds", "0-1", "--out", str(images)]) == 0
    pngs = sorted(images.rglob("*.png"))
    assert len(pngs) == 2
    settings = json.loads((images / "fewstep-sample.json").read_text())
    assert "a red cat" in json.dumps(settings)
    # ... and refuses another scale or another pipeline's network.
    assert main(["sample", "--diffusers", str(folders("sdv")), "--prompt", "x", "--guidance", "3",
                 "--predictor", str(out), "--seeds", "0", "--out", str(tmp_path / "a.npz")]) == 2
    assert "trained at guidance scale 5, not 3" in capsys.readouterr().err
    with pytest.raises(ValueError, match="trained for model"):
        set_sampler(load_pipeline(folders("sdxl")), p)


@pytest.mark.parametrize("argv,match", [
    (["--guidance", "5"], "applies to text-to-image pipelines"),  # on the DDPM pipeline
    ([], "needs --guidance W"),
    (["--guidance", "5", "--class", "1"], "--class applies to class-conditional models"),
    (["--guidance", "5", "--eval-prompts", "SAME"], "repeats 10 training prompt"),
    (["--guidance", "1", "--negative-prompt", "blurry"], "--negative-prompt has no effect at --guidance 1"),
])
def test_train_refuses_bad_prompt_settings(folders, prompt_file, tmp_path, capsys, argv, match):
    path = folders("ddpm") if "applies to text" in match else folders("sd")
    argv = [str(prompt_file) if a == "SAME" else a for a in argv]
    assert main(["train", "--diffusers", str(path), "--prompts", str(prompt_file), *argv, "--no-tune",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_text_pipeline_without_prompts_and_prompt_options_elsewhere_are_refused(folders, tmp_path, capsys):
    assert main(["sample", "--diffusers", str(folders("sd")), "--seeds", "0", "--out", str(tmp_path / "a.npz")]) == 2
    assert "is a text-to-image pipeline: give its prompts" in capsys.readouterr().err
    assert main(["sample", "--diffusers", str(folders("sd")), "--prompt", "a cat", "--seeds", "0",
                 "--out", str(tmp_path / "a.npz")]) == 2
    assert "--prompt needs --guidance W" in capsys.readouterr().err
    assert main(["sample", "--model", "gmm", "--negative-prompt", "x", "--seeds", "0",
                 "--out", str(tmp_path / "a.npz")]) == 2
    assert "--negative-prompt applies with --prompt only" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sdxl", "sd3"])
def test_python_training_for_sdxl_and_sd3_runs_in_their_pipelines(folders, kind):
    """The Python path: learned.train over PromptGuided; the sampler (AFS off: SD3's pipeline never calls
    scale_model_input) runs in the real pipeline at exactly its NFE."""
    pipe = load_pipeline(folders(kind))
    model = PromptModel(pipe, PROMPTS[:4])
    # SD3's pipeline never calls scale_model_input: a method whose first model call stays put (no AFS, no time
    # shift or scale; DyWeight learns a time scale).
    method = "residual" if kind == "sd3" else "dyweight"
    p = learned.train(method, PromptGuided(model, 4.0), shape=model.sample_shape, nfe=4, afs=False,
                      budget=learned.Budget(batch=4, total_samples=8), progress=False)
    calls = []
    net = pipe.transformer if kind == "sd3" else pipe.unet
    net.register_forward_pre_hook(lambda m, a, kw=None: calls.append(1), with_kwargs=False)
    set_sampler(pipe, p)
    img = pipe("a tree", num_inference_steps=4, guidance_scale=4.0, height=8, width=8, output_type="np").images
    assert len(calls) == 4 and np.isfinite(img).all()


def test_train_runs_the_network_in_its_own_dtype_and_refuses_a_missing_device(folders, prompt_file, tmp_path, capsys):
    """--model-dtype bfloat16: the network runs in bfloat16 while fewstep's state stays float32 on the CPU (the GPU
    recipe's split, docs/text_to_image.md); a device this machine lacks is a clear error; both need --prompts."""
    out = tmp_path / "bf16.safetensors"
    base = ["train", "--diffusers", str(folders("sdv")), "--prompts", str(prompt_file), "--guidance", "5", "--nfe",
            "4", "--no-tune", "--total-samples", "16", "--batch", "8", "--report-seeds", "4", "--no-cache"]
    assert main([*base, "--model-dtype", "bfloat16", "--out", str(out)]) == 0
    assert learned.load(out).nfe() == 4
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda", "--out", str(tmp_path / "c.safetensors")]) == 2
        assert "cannot move the pipeline to --device cuda" in capsys.readouterr().err
    assert main(["train", "--model", "gmm", "--device", "cuda", "--out", str(tmp_path / "g.safetensors")]) == 2
    assert "--device applies with --prompts only" in capsys.readouterr().err


def test_prompt_model_keeps_the_state_where_it_is(folders):
    """The network's device and dtype are its own: a bfloat16 network returns float64 x0 for a float64 state."""
    pipe = load_pipeline(folders("sdv")).to(dtype=torch.bfloat16)
    den = PromptGuided(PromptModel(pipe, ["a cat"]), 2.0)
    x = torch.randn(2, *den.sample_shape, dtype=torch.float64)
    out = den(x, torch.tensor(3.0, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.device == x.device and torch.isfinite(out).all()
    assert den.denoiser.text.dtype == torch.bfloat16


def test_guidance_aware_training_over_prompts_reports_each_scale(folders, prompt_file, tmp_path, capsys):
    """--guidance-scales: one sampler over the scales, reported at each on the held-out prompts (the cost line of a
    guidance-aware residual operator, printed before training, once failed: its tables need a scale)."""
    out = tmp_path / "aware.safetensors"
    assert main(["train", "--diffusers", str(folders("sdv")), "--prompts", str(prompt_file), "--guidance-scales",
                 "2,5", "--nfe", "4", "--no-tune", "--total-samples", "16", "--batch", "8", "--report-seeds", "4",
                 "--no-cache", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "residual operator:" in text and "at guidance scale 2:" in text and "at guidance scale 5:" in text
    p = learned.load(out)
    assert p.config["guidance"]["scales"] == [2.0, 5.0]
    assert p.config["training"]["conditioning"] == {"guidance": None, "class_labels": None}
