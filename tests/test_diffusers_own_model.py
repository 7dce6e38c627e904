"""Your own diffusers model, end to end: noise settings from the folder or from arguments (never assumed), model
identity by weights, the model's sigma range, diffusers as an optional extra, and AFS-trained AMED tables run at
their trained NFE in a pipeline loop. Tiny random UNets (about 10k parameters) saved into tmp_path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import fewstep
from fewstep import learned

diffusers = pytest.importorskip("diffusers")
from fewstep.integrations.diffusers import (  # noqa: E402
    INSTALL_HINT,
    DiffusersDenoiser,
    FewstepScheduler,
    load_denoiser,
    model_sigma_range,
    run_pipeline_loop,
    unet_model_id,
)

LDM = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}  # Stable Diffusion / LDM


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2, attention_head_dim=4).eval()


def tiny_cond_unet(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=6, attention_head_dim=2, norm_num_groups=2).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def bare_folder(unet, tmp_path_factory):
    """A UNet folder without any scheduler config."""
    path = tmp_path_factory.mktemp("bare") / "model"
    unet.save_pretrained(path)
    return path


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------- noise settings
def test_folder_without_scheduler_config_is_refused(bare_folder):
    with pytest.raises(ValueError) as err:
        load_denoiser(bare_folder)
    msg = str(err.value)
    for part in ("prediction_type", "beta_schedule", str(bare_folder), "scheduler_config=", "save_pretrained"):
        assert part in msg
    # Only what is still missing is named.
    with pytest.raises(ValueError, match=r"beta_schedule \(or trained_betas\) is unknown") as err:
        load_denoiser(bare_folder, prediction_type="epsilon")
    assert "prediction_type and" not in str(err.value)
    with pytest.raises(ValueError, match="prediction_type is unknown"):
        load_denoiser(bare_folder, beta_schedule="linear")
    # The Python wrapper makes no assumption either.
    with pytest.raises(ValueError, match="prediction_type and beta_schedule"):
        DiffusersDenoiser(tiny_unet())


def test_explicit_noise_settings(bare_folder, unet):
    den = load_denoiser(bare_folder, prediction_type="v_prediction", **LDM)
    nc = den.noise_config
    assert nc["source"] == "argument" and nc["file"] is None
    assert (nc["prediction_type"], nc["beta_schedule"], nc["beta_start"], nc["beta_end"]) == \
        ("v_prediction", "scaled_linear", 0.00085, 0.012)
    assert nc["defaults"] == ["num_train_timesteps"] and nc["num_train_timesteps"] == 1000
    line = den.describe()
    assert "\n" not in line and line.startswith(den.model_id)
    assert "v prediction" in line and "scaled_linear" in line and "from arguments" in line
    # The same model as the wrapper given the equivalent scheduler config.
    ref = DiffusersDenoiser(unet, diffusers.DDPMScheduler(prediction_type="v_prediction", **LDM).config)
    assert ref.noise_config["source"] == "argument" and ref.noise_config["defaults"] == []
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([2.0, 0.3])
    with torch.no_grad():
        assert torch.allclose(den(x, s), ref(x, s), atol=1e-6)
        other = load_denoiser(bare_folder, prediction_type="epsilon", **LDM)(x, s)
    assert not torch.allclose(den(x, s).detach(), other, atol=1e-3)  # the setting is used, not ignored
    # scheduler_config= instead of keywords (here a flow model).
    flow = load_denoiser(bare_folder, scheduler_config=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    assert flow.noise_config["prediction_type"] == "flow_prediction" and flow.noise_config["source"] == "argument"
    assert "rectified flow" in flow.describe()


def test_noise_settings_from_file(unet, tmp_path):
    pipe = tmp_path / "pipe"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(prediction_type="v_prediction", **LDM)) \
        .save_pretrained(pipe)
    den = load_denoiser(pipe)
    file = str(pipe / "scheduler" / "scheduler_config.json")
    assert den.noise_config["source"] == "file" and den.noise_config["file"] == file
    assert den.noise_config["prediction_type"] == "v_prediction" and file in den.describe()
    # A keyword overrides the file, and both are named as the source.
    mixed = load_denoiser(pipe, prediction_type="epsilon")
    assert mixed.noise_config["source"] == "file+argument" and mixed.noise_config["prediction_type"] == "epsilon"
    assert "and arguments" in mixed.describe()
    # A saved config without prediction_type (early Stable Diffusion PNDM configs): its class's default, as
    # diffusers loads it, and said so.
    folder = tmp_path / "unet"
    unet.save_pretrained(folder)
    diffusers.PNDMScheduler(**LDM).save_pretrained(folder)
    cfg = json.loads((folder / "scheduler_config.json").read_text())
    del cfg["prediction_type"]
    (folder / "scheduler_config.json").write_text(json.dumps(cfg))
    den = load_denoiser(folder)
    assert den.noise_config["prediction_type"] == "epsilon"
    assert den.noise_config["class_defaults"] == ["prediction_type"]
    assert "PNDMScheduler defaults for prediction_type" in den.describe()
    # A hand-written config without a class is not completed.
    (folder / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "linear"}))
    with pytest.raises(ValueError, match="prediction_type is unknown"):
        load_denoiser(folder)
    with pytest.raises(ValueError, match="beta_schedule must be"):
        load_denoiser(folder, prediction_type="epsilon", beta_schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type must be"):
        load_denoiser(folder, prediction_type="score")


# ----------------------------------------------------------------------------------------------- identity by weights
def test_model_id_is_a_digest_of_the_weights(unet, tmp_path):
    a = tmp_path / "a" / "model"
    unet.save_pretrained(a)
    kw = {"prediction_type": "epsilon", "beta_schedule": "linear"}
    id_a = load_denoiser(a, **kw).model_id
    assert id_a.startswith("diffusers:") and len(id_a) == len("diffusers:") + 16
    int(id_a.removeprefix("diffusers:"), 16)
    shutil.copytree(a, tmp_path / "copy" / "renamed")  # a copied folder: the same model
    assert load_denoiser(tmp_path / "copy" / "renamed", **kw).model_id == id_a
    tiny_unet(seed=5).save_pretrained(tmp_path / "b" / "model")  # other weights in a same-named folder
    assert load_denoiser(tmp_path / "b" / "model", **kw).model_id != id_a
    assert DiffusersDenoiser(unet, **kw).model_id == id_a == unet_model_id(unet)  # the wrapper too
    assert load_denoiser(a, model_id="mine", **kw).model_id == "mine"  # an explicit id stays


def test_predictor_for_another_model_is_refused(unet):
    den = DiffusersDenoiser(unet, prediction_type="epsilon", beta_schedule="linear")
    pred = _table_predictor("amed", model_id="diffusers:0123456789abcdef")
    with pytest.raises(ValueError, match="trained for model"):
        fewstep.sample(den, torch.randn(1, 3, 8, 8), predictor=pred)


# ----------------------------------------------------------------------------------------------- sigma range
def test_model_sigma_range(bare_folder):
    den = load_denoiser(bare_folder, prediction_type="epsilon", **LDM)
    assert den.sigma_max == pytest.approx(14.6, abs=0.05) and den.sigma_min == pytest.approx(0.0292, abs=5e-4)
    assert isinstance(den.sigma_max, float) and isinstance(den.sigma_min, float)
    sched = FewstepScheduler.from_config(diffusers.DDPMScheduler(**LDM).config)
    assert (den.sigma_min, den.sigma_max) == sched._model_range()
    ddpm = load_denoiser(bare_folder, prediction_type="epsilon", beta_schedule="linear")
    assert ddpm.sigma_max == pytest.approx(157.4, abs=0.1) and ddpm.sigma_min == pytest.approx(0.01, rel=1e-3)
    cfg = diffusers.FlowMatchEulerDiscreteScheduler().config
    flow = load_denoiser(bare_folder, scheduler_config=cfg)
    assert (flow.sigma_min, flow.sigma_max) == FewstepScheduler.from_config(cfg)._model_range()
    assert (flow.sigma_min, flow.sigma_max) == model_sigma_range(flow.adapter, 1000)
    assert flow.sigma_min == pytest.approx(1 / 999)


# ----------------------------------------------------------------------------------------------- AFS at the trained NFE
def _table_predictor(solver: str, model_id: str | None = None) -> learned.AMEDSampler:
    """An untrained predictor-free table with AFS (3 intervals: NFE 5), with clearly non-default entries: the
    AMED-Solver for ``solver="amed"``, else the AMED-Plugin on that base solver."""
    cls = learned.AMEDSampler if solver == "amed" else learned.AMEDPluginSampler
    cfg = cls.make_config([14.0, 2.5, 0.4, 0.03], afs=True, options={"scale_dir": 0.2, "scale_time": 0.2},
                          base=None if solver == "amed" else solver, model_id=model_id)
    pred = cls(cfg)
    with torch.no_grad():
        pred.table.copy_(torch.tensor([[0.3, 0.5, -0.4], [-0.2, -0.4, 0.3], [0.1, 0.2, 0.5]]))
    return pred.eval()


def _count_calls(module: torch.nn.Module) -> list:
    calls: list = []
    module.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


@pytest.mark.parametrize("solver", ["amed", "ipndm"])
def test_afs_predictor_pipeline_loop_makes_the_trained_nfe(solver):
    unet = tiny_unet()
    cfg = diffusers.DDPMScheduler().config
    pred = _table_predictor(solver)
    den = DiffusersDenoiser(unet, cfg)
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    s0 = torch.tensor(pred.config["sigmas"][0], dtype=torch.float64)
    res = fewstep.solve(den, latents.double() * (1 + s0**2).sqrt() / s0, predictor=pred)
    assert res.nfe == 5  # 3 intervals x 2 calls, minus 1 for the analytical first step
    sched = FewstepScheduler.from_config(cfg, predictor=pred)
    calls = _count_calls(unet)
    out = run_pipeline_loop(unet, sched, latents, res.nfe)
    assert len(calls) == len(sched.timesteps) == res.nfe
    # The predictor ends at its last sigma: the pipeline's sample there is VP, x_edm / sqrt(1 + sigma^2).
    assert rel(out.double() * (1 + res.sigmas[-1] ** 2).sqrt(), res.x) <= 1e-5
    # DDPMPipeline never calls scale_model_input: refused with a pointer to the helper, not a wrong sample.
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=FewstepScheduler.from_config(cfg, predictor=pred))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(RuntimeError, match="run_pipeline_loop"):
        pipe(batch_size=1, num_inference_steps=res.nfe, output_type="np")


def test_pipeline_loop_refuses_a_predictor_of_another_model():
    unet = tiny_unet()
    cfg = diffusers.DDPMScheduler().config
    sched = FewstepScheduler.from_config(cfg, predictor=_table_predictor("amed", model_id="diffusers:0123456789abcdef"))
    with pytest.raises(ValueError, match="trained for model 'diffusers:0123456789abcdef'"):
        run_pipeline_loop(unet, sched, torch.randn(1, 3, 8, 8), 5)
    sched = FewstepScheduler.from_config(cfg, predictor=_table_predictor("amed", model_id=unet_model_id(unet)))
    assert run_pipeline_loop(unet, sched, torch.randn(1, 3, 8, 8), 5).shape == (1, 3, 8, 8)


def test_pipeline_loop_with_guidance_equals_sample():
    unet = tiny_cond_unet()
    cfg = diffusers.DDPMScheduler(**LDM).config
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(2, 5, 6, generator=g), torch.randn(1, 5, 6, generator=g)
    kw = {"encoder_hidden_states": cond, "negative_encoder_hidden_states": uncond, "guidance_scale": 3.0}
    den = DiffusersDenoiser(unet, cfg, **kw)
    pred = _table_predictor("ipndm")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    s0 = torch.tensor(pred.config["sigmas"][0], dtype=torch.float64)
    res = fewstep.solve(den, latents.double() * (1 + s0**2).sqrt() / s0, predictor=pred)
    sched = FewstepScheduler.from_config(cfg, predictor=pred)
    calls = _count_calls(unet)
    out = run_pipeline_loop(unet, sched, latents, res.nfe, **kw)
    assert len(calls) == res.nfe == 5  # CFG: one call on the doubled batch per entry
    assert rel(out.double() * (1 + res.sigmas[-1] ** 2).sqrt(), res.x) <= 1e-5
    # Any diffusers scheduler runs in the helper; without AFS its count is len(timesteps) too.
    calls.clear()
    ref = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
    run_pipeline_loop(unet, ref, latents, 4, **kw)
    assert len(calls) == len(ref.timesteps) == 4


# ----------------------------------------------------------------------------------------------- packaging, logging
def test_load_does_not_print_the_accelerate_notice(bare_folder, capfd):
    logger = diffusers.utils.logging.get_logger(diffusers.UNet2DModel.from_pretrained.__module__)
    before = list(logger.filters)
    load_denoiser(bare_folder, prediction_type="epsilon", beta_schedule="linear")
    err = capfd.readouterr().err
    assert "accelerate" not in err
    assert logger.filters == before  # the filter is gone after loading; nothing global was changed


def test_missing_diffusers_gives_the_install_hint():
    code = (
        "import sys\n"
        "sys.modules['diffusers'] = None\n"
        "for how in ('module', 'load_denoiser'):\n"
        "    try:\n"
        "        if how == 'module':\n"
        "            import fewstep.integrations.diffusers\n"
        "        else:\n"
        "            import fewstep.integrations\n"
        "            fewstep.integrations.load_denoiser\n"
        "    except ImportError as e:\n"
        "        print(how, isinstance(e, ModuleNotFoundError), isinstance(e, ValueError), e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines == [f"module True True {INSTALL_HINT}", f"load_denoiser True True {INSTALL_HINT}"]
    assert INSTALL_HINT == "the diffusers integration needs the 'diffusers' package: pip install 'fewstep[diffusers]'"
