"""Flux (FluxPipeline, FLUX.1-dev style) end to end on a tiny random pipeline built offline
(tests/tiny_pipelines.py build_flux): FewstepScheduler inside the pipeline (exactly NFE transformer calls, the
pipeline's default flow-time list read as the NFE), PromptModel over unpacked latents equal to the pipeline's own
sampling, the guidance embedding instead of a negative branch, and a learned sampler trained in Python that runs in
the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep import learned, solve
from fewstep.cli import main
from fewstep.denoisers import Guided
from fewstep.integrations.diffusers import FewstepScheduler
from fewstep.integrations.diffusers.text import PromptGuided, PromptModel, load_pipeline, pipeline_kind, set_sampler
from fewstep.learned.guidance import conditioning_of
from fewstep.sampling import seeded_noise
from tiny_pipelines import tiny_folder

PX = 8  # image size: 8x8 latents (VAE scale factor 1), 16 packed tokens of 64 channels
T5 = 12  # T5 sequence length (the tokenizer's model_max_length)
PROMPTS = ["a red cat", "a blue dog", "photo of a house", "a tree"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder("flux", tmp_path_factory)


def _calls(pipe) -> list[int]:
    calls: list[int] = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["hidden_states"].shape[0]),
                                               with_kwargs=True)
    return calls


def _run(pipe, prompt, nfe, w=3.5, **kw):
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=nfe, guidance_scale=w, height=PX, width=PX,
                    max_sequence_length=T5, **kw).images


@pytest.mark.parametrize("solver,nfe", [("euler", 3), ("ipndm", 4), ("dpmpp", 4), ("heun", 5), ("unipc", 3)])
def test_flux_pipeline_makes_exactly_nfe_calls_with_classic_solvers(folder, solver, nfe):
    """FluxPipeline passes set_timesteps its own list linspace(1, 1/n, n) and mu, never num_inference_steps:
    FewstepScheduler reads that default list as n model calls (its own schedule, shifted by mu)."""
    pipe = load_pipeline(folder)
    assert pipeline_kind(folder) == "flux"
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver=solver)
    calls = _calls(pipe)
    img = _run(pipe, "a red cat", nfe, output_type="np")
    assert calls == [1] * nfe and np.isfinite(img).all()
    assert pipe.scheduler.chosen.endswith(f"{nfe} model calls")
    # FlowMatch's resolution-shift settings pass through the scheduler's config (FluxPipeline computes mu from them)
    assert pipe.scheduler.config.max_image_seq_len == 4096 and pipe.scheduler.config.base_shift == 0.5


def test_euler_in_the_flux_pipeline_is_its_own_flowmatch_euler(folder):
    """With the pipeline's default list, FewstepScheduler's points follow FluxPipeline's spacing rule (flow times
    linspace(1, 1/n, n) shifted by mu, then the jump to zero): solver="euler" reproduces the pipeline's own
    FlowMatchEulerDiscreteScheduler; other schedules are planned for the NFE."""
    pipe = load_pipeline(folder)
    latents = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(0))
    ref = _run(pipe, "a red cat", 4, latents=latents, output_type="latent")
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="euler")
    ours = _run(pipe, "a red cat", 4, latents=latents, output_type="latent")
    assert "FluxPipeline's spacing" in pipe.scheduler.chosen
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="euler", schedule="logsnr")
    calls = _calls(pipe)
    _run(pipe, "a red cat", 4, latents=latents, output_type="latent")
    assert len(calls) == 4 and "logsnr" in pipe.scheduler.chosen


def test_prompt_model_samples_as_the_flux_pipeline_does(folder):
    """fewstep.solve over PromptGuided (unpacked latents, embedded guidance 4) equals FluxPipeline with
    FewstepScheduler on the same noise: the T5 / pooled embeddings, packing, ids and guidance embedding are the
    pipeline's own; one transformer call per evaluation (no doubled batch)."""
    pipe = load_pipeline(folder)
    model = PromptModel(pipe, ["a red cat"], image_size=PX, max_sequence_length=T5)
    assert model.sample_shape == (16, 8, 8) and model.image_shape == (3, 8, 8)
    den = PromptGuided(model, 4.0)
    noise = seeded_noise(den, [11, 12], model.sample_shape)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, solver="ipndm")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe.scheduler.set_timesteps(sigmas=np.linspace(1, 1 / 4, 4), mu=calculate_shift(16))  # as the pipeline will
    sig = torch.as_tensor(pipe.scheduler._stepper.sigmas, dtype=torch.float64)
    s0 = sig[0]
    latents = pipe._pack_latents((noise * s0 / (1 + s0)).float(), 2, 16, 8, 8)  # EDM state -> packed flow latents
    ref = pipe._unpack_latents(_run(pipe, ["a red cat"] * 2, 4, w=4.0, latents=latents, output_type="latent"),
                               PX, PX, 1)
    calls = _calls(pipe)
    ours = solve(den, noise.double(), sig, "ipndm", afs=False, denoise_to_zero=True).x  # float64 state (flow: 1e6)
    assert calls == [2] * 4  # the batch of 2, once per evaluation
    assert torch.allclose(ours.float(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert conditioning_of(den) == {"guidance": 4.0, "class_labels": None}
    assert model.distilled_guidance is None  # the embedding is PromptGuided's for the duration of its calls
    assert den.decode(ours.float()).shape == (2, 3, 8, 8)


def test_flux_refuses_a_negative_branch_and_guidance_without_an_embedding(folder, tmp_path, tmp_path_factory, capsys):
    pipe = load_pipeline(folder)
    with pytest.raises(ValueError, match="Flux has no negative branch; its guidance is an embedding"):
        PromptModel(pipe, PROMPTS, negative_prompt="blurry", image_size=PX, max_sequence_length=T5)
    model = PromptModel(pipe, PROMPTS, image_size=PX, max_sequence_length=T5)
    x = torch.zeros(1, *model.sample_shape)
    with pytest.raises(ValueError, match="Flux has no negative branch"):
        Guided(model, 0, 3.0)(x, torch.tensor([1.0]))  # classifier-free guidance would call the null label
    with pytest.raises(ValueError, match="set the PromptModel's distilled_guidance"):
        model(x, torch.tensor([1.0]), torch.tensor([0]))
    model.distilled_guidance = 3.5
    assert torch.isfinite(model(x, torch.tensor([1.0]), torch.tensor([0]))).all()
    with pytest.raises(ValueError, match="apply to Flux pipelines"):
        PromptModel(load_pipeline(tiny_folder("sd", tmp_path_factory)), ["a cat"], distilled_guidance=3.5)
    # FLUX.1-schnell style (no guidance embedding): guidance 1 only
    pipe.transformer = type(pipe.transformer).from_config({**pipe.transformer.config, "guidance_embeds": False})
    schnell = PromptModel(pipe, PROMPTS, image_size=PX, max_sequence_length=T5)
    with pytest.raises(ValueError, match="no guidance embedding .*sample it at guidance 1"):
        PromptGuided(schnell, 3.5)
    assert torch.isfinite(PromptGuided(schnell, 1.0)(x, torch.tensor(1.0))).all()
    # The CLI says so too.
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS), encoding="utf-8")
    assert main(["train", "--diffusers", str(folder), "--prompts", str(prompts), "--guidance", "3.5",
                 "--negative-prompt", "blurry", "--no-tune", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "Flux has no negative branch" in capsys.readouterr().err



def test_a_table_sampler_trained_over_flux_prompts_runs_in_the_pipeline(folder):
    """learned.train over PromptGuided (embedded guidance 3.5, AFS off: FluxPipeline never calls
    scale_model_input); set_sampler puts it in the pipeline, which makes exactly its NFE of single calls. A sampler
    with AFS raises there; a residual sampler (its operator needs unpacked images) is refused by set_sampler."""
    pipe = load_pipeline(folder)
    model = PromptModel(pipe, PROMPTS, image_size=PX, max_sequence_length=T5)
    den = PromptGuided(model, 3.5)
    budget = learned.Budget(batch=4, total_samples=8)
    p = learned.train("pas", den, shape=model.sample_shape, nfe=4, afs=False, budget=budget, progress=False)
    assert p.config["training"]["conditioning"] == {"guidance": 3.5, "class_labels": None}
    set_sampler(pipe, p)
    calls = _calls(pipe)
    img = _run(pipe, "a tree", 4, output_type="np")
    assert calls == [1] * 4 and np.isfinite(img).all()

    with_afs = learned.train("pas", den, shape=model.sample_shape, nfe=4, afs=True, budget=budget, progress=False)
    set_sampler(pipe, with_afs)
    with pytest.raises(RuntimeError, match="did not call scheduler.scale_model_input"):
        _run(pipe, "a tree", 4, output_type="latent")
    res = learned.train("residual", den, shape=model.sample_shape, nfe=4, afs=False,
                        budget=learned.Budget(batch=4, total_samples=4), progress=False)
    with pytest.raises(ValueError, match="packed"):
        set_sampler(pipe, res)
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, predictor=res)  # set by hand: step refuses
    with pytest.raises(ValueError, match=r"trained on samples of shape \(16, 8, 8\).*\(16, 64\)"):
        _run(pipe, "a tree", 4, output_type="latent")
