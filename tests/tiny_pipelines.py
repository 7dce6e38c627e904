"""Tiny random diffusers pipelines built from configs, offline: Stable Diffusion, SDXL, SD3, Flux and DDPM with a few
thousand random weights each (torch.manual_seed), written with ``save_pretrained(safe_serialization=True)`` into a
given folder and read back with :func:`load` (``local_files_only``: nothing is downloaded). The text encoders share
one tiny CLIP tokenizer (:func:`write_clip_tokenizer`). Latents are 8x8 (SD / SDXL: a one-block VAE, scale factor 1,
so ``height=width=8``; SD3: 2x2 patches of 8x8 latents; Flux: 8x8x16 latents packed into 16 tokens, its T5 tokenizer
built in memory by :func:`t5_tokenizer`).

    from tiny_pipelines import build_sd, load
    pipe = load(build_sd(tmp_path / "sd"))

:func:`tiny_folder` / :func:`tiny_pipeline` build each kind once per pytest session (in ``tmp_path_factory``'s base
folder)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import diffusers
import torch
import transformers

__all__ = ["write_clip_tokenizer", "t5_tokenizer", "build_sd", "build_sdxl", "build_sd3", "build_flux", "build_ddpm",
           "load", "tiny_folder", "tiny_pipeline", "BUILDERS", "HEIGHT", "WIDTH"]

HEIGHT = WIDTH = 8  # image size of the SD-style pipelines (VAE scale factor 1); DDPM images are 8x8 too
T5_LENGTH = 12  # the T5 tokenizer's model_max_length (FluxPipeline pads prompts to max_sequence_length)
MAX_LENGTH = 16  # the tokenizer's model_max_length = the text encoders' max_position_embeddings


def _vocab() -> dict[str, int]:
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return vocab


def write_clip_tokenizer(dir) -> transformers.CLIPTokenizer:
    """A tiny CLIP tokenizer: "!" (0, also padding), the start and end tokens, each lowercase letter alone and at a
    word's end, no merges; ``model_max_length`` 16. Its vocab.json and merges.txt are written into ``dir``."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(_vocab()), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=MAX_LENGTH)


def _text_config() -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=len(_vocab()), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH, bos_token_id=1, eos_token_id=2, pad_token_id=0, projection_dim=32)


def _unet(**kw) -> diffusers.UNet2DConditionModel:
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, attention_head_dim=4, **kw)


def _vae(**kw) -> diffusers.AutoencoderKL:
    return diffusers.AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=16, **kw)


def _tokenizer() -> transformers.CLIPTokenizer:
    with tempfile.TemporaryDirectory() as d:
        return write_clip_tokenizer(d)


def _save(pipe, root) -> Path:
    root = Path(root)
    pipe.save_pretrained(root, safe_serialization=True)
    return root


def build_sd(root) -> Path:
    """A StableDiffusionPipeline (CLIP text encoder, conditional UNet, one-block VAE, DDIM scheduler of SD) saved in
    ``root``; returns ``root``."""
    torch.manual_seed(0)
    tok = _tokenizer()
    pipe = diffusers.StableDiffusionPipeline(
        vae=_vae(), text_encoder=transformers.CLIPTextModel(_text_config()), tokenizer=tok,
        unet=_unet(cross_attention_dim=32),
        scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return _save(pipe, root)


def build_sdxl(root) -> Path:
    """A StableDiffusionXLPipeline (two CLIP text encoders, the second with projection; a UNet with SDXL's
    text-time embedding; Euler scheduler of SDXL) saved in ``root``; returns ``root``."""
    torch.manual_seed(0)
    tok = _tokenizer()
    text_encoder = transformers.CLIPTextModel(_text_config())
    text_encoder_2 = transformers.CLIPTextModelWithProjection(_text_config())
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok, tokenizer_2=tok,
        unet=_unet(cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=8 * 6 + 32),
        scheduler=diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                   steps_offset=1))
    return _save(pipe, root)


def build_sd3(root) -> Path:
    """A StableDiffusion3Pipeline (MMDiT transformer, two CLIP text encoders with projection, no T5; flow-matching
    Euler scheduler with shift 3) saved in ``root``; returns ``root``."""
    torch.manual_seed(0)
    tok = _tokenizer()
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=4)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0),  # SD3's pipeline shifts latents by the VAE's shift_factor: it must be set
        text_encoder=transformers.CLIPTextModelWithProjection(_text_config()), tokenizer=tok,
        text_encoder_2=transformers.CLIPTextModelWithProjection(_text_config()), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    return _save(pipe, root)


def t5_tokenizer() -> transformers.T5TokenizerFast:
    """A tiny T5 tokenizer built in memory (a Unigram over the pad, end and unknown tokens, the word-start mark and the
    lowercase letters alone and after it); ``save_pretrained`` writes its tokenizer.json."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab += [(c, -3.0) for c in letters] + [("\u2581" + c, -2.5) for c in letters]
    return transformers.T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=T5_LENGTH)


def build_flux(root) -> Path:
    """A FluxPipeline (FLUX.1-dev style: a two-block FluxTransformer2DModel with a guidance embedding on 2x2 packed
    patches of 16-channel latents, a CLIP text encoder for the pooled embedding, a tiny T5 encoder, a one-block VAE
    with 16 latent channels, scaling and shift factors, and FlowMatch Euler with dynamic shifting) saved in ``root``;
    returns ``root``. Latents of 8x8 images are 8x8 (VAE scale factor 1), packed to 16 tokens of 64 channels."""
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=16, norm_num_groups=8, sample_size=16,
        scaling_factor=0.3611, shift_factor=0.1159)
    pipe = diffusers.FluxPipeline(
        transformer=transformer, vae=vae, text_encoder=transformers.CLIPTextModel(_text_config()),
        tokenizer=_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                            max_shift=1.15, base_image_seq_len=256,
                                                            max_image_seq_len=4096))
    return _save(pipe, root)


def build_ddpm(root) -> Path:
    """A DDPMPipeline (unconditional 8x8 RGB UNet2DModel, DDPM scheduler) saved in ``root``; returns ``root``."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8)
    return _save(diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()), root)


def load(path) -> diffusers.DiffusionPipeline:
    """A pipeline saved by one of the builders, read back offline (components saved as ``[null, null]`` in
    model_index.json, such as SD3's absent T5, are passed as None, as from_pretrained requires)."""
    path = Path(path)
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    absent = {k: None for k, v in index.items()
              if not k.startswith("_") and isinstance(v, list) and all(x is None for x in v)}
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True, **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux, "ddpm": build_ddpm}


def tiny_folder(kind: str, tmp_path_factory) -> Path:
    """The folder of a pipeline of ``kind`` ("sd", "sdxl", "sd3", "flux", "ddpm"), built once per pytest session
    (``tmp_path_factory``'s base folder; later calls only return it). Tests must not modify it."""
    root = Path(tmp_path_factory.getbasetemp()) / "tiny-pipelines" / kind
    if not (root / "model_index.json").exists():
        BUILDERS[kind](root)
    return root


def tiny_pipeline(kind: str, tmp_path_factory) -> diffusers.DiffusionPipeline:
    """A fresh pipeline object of ``kind``, loaded from :func:`tiny_folder`."""
    return load(tiny_folder(kind, tmp_path_factory))
