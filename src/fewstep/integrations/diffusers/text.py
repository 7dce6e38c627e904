"""Text-to-image pipelines as fewstep denoisers, so that learned samplers train over a set of prompts (as AMED's
Stable Diffusion results do) and plug back into the pipeline.

* :func:`read_prompts`: a prompt file (UTF-8, one prompt per line; blank lines and ``#`` lines skipped).
* :func:`load_pipeline`: a text-to-image pipeline folder saved with ``save_pretrained`` (offline, safetensors), of
  a kind in :data:`PIPELINE_KINDS`: Stable Diffusion (UNet2DConditionModel + CLIP), SDXL (two text encoders, pooled
  embeddings and added time ids), SD3 (a flow-matching transformer, FlowMatch scheduler) and Flux (FluxPipeline:
  packed latents, T5 + pooled CLIP embeddings, the guidance embedding of FLUX.1-dev instead of a negative branch).
* :class:`PromptModel`: the pipeline's network as a conditional EDM denoiser ``D(x, sigma, labels)``; label ``i`` is
  prompt ``i`` (its text embeddings computed once by the pipeline's own ``encode_prompt`` and kept), label ``P`` (the
  null label) is the negative prompt (default: the pipeline's own unconditional embedding). Latents in, latents out;
  :meth:`PromptModel.decode` makes images with the VAE.
* :class:`PromptGuided`: classifier-free guidance over it (:class:`fewstep.denoisers.Guided`, one call on the doubled
  batch), the prompt of each sample drawn from its seed (:func:`prompt_for_seed`), so that training batches, resumed
  and data-parallel runs, the teacher cache and held-out reports all see the same prompt for the same seed.
* :func:`set_sampler`: ``pipe.scheduler`` = a :class:`FewstepScheduler` running a learned sampler, after checking
  that it was trained for this pipeline's network.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...denoisers.guidance import Guided
from ...io import regular_file, tensor_digest
from ...jsonio import load_json
from .backend import diffusers, quiet_loading
from .model import unet_model_id
from .noise import describe_noise, resolve_noise_config
from .spaces import make_adapter, model_sigma_range

__all__ = ["PIPELINE_KINDS", "read_prompts", "split_prompts", "pipeline_kind", "load_pipeline", "PromptModel",
           "PromptGuided", "prompt_for_seed", "set_sampler"]

# Pipeline classes (model_index.json "_class_name") fewstep trains for, and how their network is called.
PIPELINE_KINDS = {
    "StableDiffusionPipeline": "sd", "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3", "StableDiffusion3Img2ImgPipeline": "sd3",
    "FluxPipeline": "flux",
}
# Whether the pipeline's loop calls scheduler.scale_model_input: where it does not (SD3, Flux), a sampler whose first
# model input moves (AFS, learned time shifts or scales) cannot run in it (FewstepScheduler raises), so training
# defaults to AFS off there.
CALLS_SCALE_MODEL_INPUT = {"sd": True, "sdxl": True, "sd3": False, "flux": False}
FLUX_NO_NEGATIVE = ("Flux has no negative branch; its guidance is an embedding (FLUX.1-dev is guidance-distilled): "
                    "PromptGuided(model, W) / --guidance W samples at embedded guidance W, one call per evaluation")
# Unconditional pipelines: load_denoiser (a UNet2DModel) takes these.
UNCONDITIONAL = ("DDPMPipeline", "DDIMPipeline")
MAX_PROMPTS = 100_000
MAX_PROMPT_CHARS = 2_000
MAX_PROMPT_FILE = 64 * 2**20
_ENCODE_CHUNK = 64


def supported_kinds() -> str:
    """The pipeline classes fewstep loads, for messages."""
    return ", ".join(sorted(PIPELINE_KINDS)) + " (prompts); " + ", ".join(UNCONDITIONAL) + " (unconditional)"


def read_prompts(path: str | os.PathLike, what: str = "prompt file") -> list[str]:
    """The prompts of a UTF-8 text file, one per line (surrounding spaces stripped; blank lines and lines starting
    with ``#`` skipped). A missing, unreadable, non-UTF-8 or empty file, or one with more than
    :data:`MAX_PROMPTS` prompts or a line longer than :data:`MAX_PROMPT_CHARS` characters, is a clear error naming
    the file."""
    regular_file(path, what, MAX_PROMPT_FILE)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}); write one prompt per line") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_PROMPT_CHARS:
            raise ValueError(f"{what} {path}, line {n}: a prompt of {len(line)} characters (at most "
                             f"{MAX_PROMPT_CHARS})")
        prompts.append(line)
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"{what} {path} has more than {MAX_PROMPTS} prompts")
    if not prompts:
        raise ValueError(f"{what} {path} has no prompts (one per line; blank lines and lines starting with # are "
                         "skipped)")
    return prompts


def split_prompts(prompts: Sequence[str], every: int = 5) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices): every ``every``-th prompt (the 5th, 10th, ...) is held out for the
    report, the rest train; with fewer than ``every`` prompts none is held out (the report then uses the training
    prompts on held-out seeds)."""
    idx = list(range(len(prompts)))
    held = idx[every - 1::every] if len(prompts) >= every else []
    return [i for i in idx if i not in set(held)], held


def prompt_for_seed(seed: int, n: int) -> int:
    """The prompt (0..n-1) of the sample drawn from ``seed``: a fixed 64-bit mix of the seed (splitmix64's
    finaliser) modulo n, so it depends on the seed alone, never on the batch, the process or the run."""
    m = 2**64 - 1
    z = (int(seed) + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return (z ^ (z >> 31)) % n


def _index(path: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's model_index.json (checked as untrusted JSON), or None where there is none."""
    index = Path(path) / "model_index.json"
    if not os.path.lexists(index):
        return None
    return load_json(index, what="diffusers model_index.json", expect=dict)


def pipeline_kind(path: str | os.PathLike) -> str | None:
    """The kind (:data:`PIPELINE_KINDS` value) of the text-to-image pipeline saved in folder ``path``, None for an
    unconditional pipeline (a UNet2DModel's) or a bare UNet folder (no model_index.json); any other pipeline class is
    a ValueError that lists the supported ones."""
    return _kind_of(_index(path), path)


def _kind_of(cfg: dict[str, Any] | None, path: str | os.PathLike) -> str | None:
    """:func:`pipeline_kind` of an index already read (None: the folder has none)."""
    if cfg is None:
        return None
    name = cfg.get("_class_name")
    if name in PIPELINE_KINDS:
        return PIPELINE_KINDS[name]
    if name in UNCONDITIONAL or cfg.get("unet") == ["diffusers", "UNet2DModel"]:
        return None  # an unconditional UNet (load_denoiser)
    raise ValueError(f"{path} holds a {str(name)[:80]}; fewstep supports {supported_kinds()}")


def load_pipeline(path: str | os.PathLike) -> Any:
    """The diffusers text-to-image pipeline saved in folder ``path`` (a kind of :data:`PIPELINE_KINDS`), loaded
    offline from safetensors only (no pickled weights, nothing downloaded); components saved as null (e.g. SD3
    without its T5 encoder) stay None. Needs ``transformers`` for the text encoders."""
    from ..._extras import require

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no diffusers pipeline folder at {root}")
    index = _index(root)
    if _kind_of(index, root) is None:
        raise ValueError(f"{root} is not a text-to-image pipeline; fewstep supports {supported_kinds()}")
    require("transformers", extra="text", purpose="text-to-image pipelines (their text encoders and tokenizers)")
    empty = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}
    for weights in root.glob("*/*.safetensors"):  # from_pretrained would block on a FIFO
        regular_file(weights, "diffusers weights file")
    with quiet_loading():
        cls = getattr(diffusers, index["_class_name"])  # imports transformers' models (notices silenced)
    with quiet_loading(cls):
        try:
            pipe = cls.from_pretrained(root, local_files_only=True, use_safetensors=True, **empty)
        except (RuntimeError, ValueError, KeyError, OSError, EnvironmentError, TypeError) as e:
            raise ValueError(f"{root}: cannot load the {index['_class_name']}: {' '.join(str(e).split())[:400]}") \
                from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _backbone(pipe: Any) -> nn.Module:
    net = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if net is None:
        raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return net


class PromptModel(nn.Module):
    """A text-to-image pipeline's network as a conditional EDM denoiser ``D(x, sigma, labels) -> x0`` on latents.

    ``prompts``: the texts of labels 0..P-1, encoded once here by the pipeline's own ``encode_prompt`` (in chunks,
    without gradients) and kept as buffers; label P (``null_label``) is ``negative_prompt``, default: what the
    pipeline itself uses without one (the empty prompt, or zeros where the pipeline's config forces them). How the
    network is called follows the pipeline kind: Stable Diffusion (``encoder_hidden_states``), SDXL (plus pooled
    ``text_embeds`` and ``time_ids`` for the full-size, uncropped image), SD3 (``pooled_projections``, flow
    matching) and Flux (below). The noise settings come from the pipeline's scheduler config (never assumed), the
    sample shape and sigma range from its network; ``model_id`` is the digest of the network's weights
    (:func:`unet_model_id`), the id learned samplers record; ``conditions_key`` is a digest of the prompt embeddings
    (the teacher cache's key). Wrap it in :class:`PromptGuided` to sample or train.

    **Flux** (FluxPipeline): samples are the UNPACKED latents (C, h, w) (C = the transformer's in_channels / 4, so
    the residual operator and decode see images); each call packs them into 2x2 patches and unpacks the output with
    the pipeline's own ``_pack_latents`` / ``_unpack_latents``, with its ``_prepare_latent_image_ids`` and zero text
    ids, as FluxPipeline does (its scheduler sees the packed (B, h*w/4, 4C) latents: elementwise, the same numbers).
    ``image_size`` (pixels, int or (H, W); default the pipeline's 1024) sets h, w; ``max_sequence_length`` the T5
    length (default 512, the pipeline's). FLUX.1-dev is guidance-distilled: no negative branch, its guidance is
    the transformer's embedding input ``distilled_guidance`` (what FluxPipeline's ``guidance_scale`` sets), so a
    ``negative_prompt`` and the null label are refused (the text buffers hold the P prompts only);
    :class:`PromptGuided` at scale W embeds W (one call per evaluation). A transformer without ``guidance_embeds``
    (FLUX.1-schnell) takes no guidance."""

    accepts_any_dtype = True
    prompt_conditioned = True

    def __init__(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None = None, *,
                 timestep_type: str = "interp", scheduler_config_file: str | os.PathLike | None = None,
                 distilled_guidance: float | None = None, image_size: int | tuple[int, int] | None = None,
                 max_sequence_length: int = 512) -> None:
        super().__init__()
        name = type(pipe).__name__
        if name not in PIPELINE_KINDS:
            raise ValueError(f"a {name} is not a supported text-to-image pipeline; fewstep supports "
                             f"{supported_kinds()}")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a non-empty list of strings")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
        self.kind, self.pipeline_class = PIPELINE_KINDS[name], name
        if self.kind != "flux" and (distilled_guidance is not None or image_size is not None):
            raise ValueError("distilled_guidance and image_size apply to Flux pipelines")
        if self.kind == "flux" and negative_prompt is not None:
            raise ValueError(f"negative_prompt: {FLUX_NO_NEGATIVE}")
        self.net = _backbone(pipe)
        self.distilled_guidance = distilled_guidance
        self.vae = pipe.vae
        self.prompts, self.negative_prompt = list(prompts), negative_prompt
        self.null_label = len(self.prompts)
        nc = resolve_noise_config(dict(pipe.scheduler.config), file=scheduler_config_file,
                                  context=f"the {name}'s scheduler config ({type(pipe.scheduler).__name__})")
        self.noise_config = nc
        self.adapter = make_adapter(nc["prediction_type"], nc, timestep_type)
        self.adapter.model = self._network
        self.sigma_min, self.sigma_max = model_sigma_range(self.adapter, nc["num_train_timesteps"])
        cfg = self.net.config
        self.vae_scale_factor = int(getattr(pipe, "vae_scale_factor", 8))
        if self.kind == "flux":
            self.max_sequence_length = int(max_sequence_length)
            self._pack, self._unpack = pipe._pack_latents, pipe._unpack_latents
            self._image_ids = pipe._prepare_latent_image_ids
            px = image_size if image_size is not None else pipe.default_sample_size * self.vae_scale_factor
            px = (px, px) if isinstance(px, int) else tuple(px)
            size = tuple(2 * (int(p) // (2 * self.vae_scale_factor)) for p in px)  # as FluxPipeline rounds
            if len(size) != 2 or min(size) < 2:
                raise ValueError(f"image_size must be an int or (H, W) of at least {2 * self.vae_scale_factor} "
                                 f"pixels (2x2 latent patches), got {image_size!r}")
            self.sample_shape = (int(cfg.in_channels) // 4, *size)
        else:
            size = cfg.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.sample_shape = (int(cfg.in_channels), *map(int, size))
        self.image_shape = (int(self.vae.config.out_channels), *(s * self.vae_scale_factor for s in size))
        with torch.no_grad():
            embeds = self._encode(pipe)
        for k, v in embeds.items():
            self.register_buffer(k, v.to(self.net.dtype), persistent=False)
        self._model_id: str | None = None
        self._conditions_key: str | None = None
        self._labels: torch.Tensor | None = None

    def _encode(self, pipe: Any) -> dict[str, torch.Tensor]:
        """{"text": (P+1, L, D), "pooled": (P+1, D) for SDXL/SD3/Flux}: the prompts' embeddings, then the
        negative's (Flux: no negative row)."""
        extra = {"prompt_2": None, "prompt_3": None} if self.kind == "sd3" else {}
        device = next(self.net.parameters()).device

        def encode(prompts: list[str], negative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            if self.kind == "flux":  # (T5 embeddings, pooled CLIP embeddings, text ids: zeros)
                out = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
                                         max_sequence_length=self.max_sequence_length)
                return out[0], out[1]
            out = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=negative,
                                     negative_prompt=None if not negative or self.negative_prompt is None
                                     else [self.negative_prompt] * len(prompts), **extra)
            if self.kind == "sd":
                return out[1 if negative else 0], None
            return (out[1], out[3]) if negative else (out[0], out[2])

        texts, pooled = [], []
        for i in range(0, len(self.prompts), _ENCODE_CHUNK):
            t, p = encode(self.prompts[i:i + _ENCODE_CHUNK], False)
            texts.append(t)
            pooled.append(p)
        if self.kind != "flux":
            t, p = encode(self.prompts[:1], True)
            texts.append(t)
            pooled.append(p)
        out = {"text": torch.cat(texts).detach()}
        if self.kind != "sd":
            out["pooled"] = torch.cat(pooled).detach()
        return out

    @property
    def model_id(self) -> str:
        """The digest of the network's weights (computed once)."""
        if self._model_id is None:
            self._model_id = unet_model_id(self.net)
        return self._model_id

    @property
    def conditions_key(self) -> str:
        """A digest of the prompt embeddings (prompts, negative prompt and text encoders all show in it)."""
        if self._conditions_key is None:
            self._conditions_key = tensor_digest({k: v for k, v in self.named_buffers()})[:16]
        return self._conditions_key

    def describe(self) -> str:
        """One line: pipeline, model id, prompts, noise settings and sigma range."""
        neg = "the pipeline's own unconditional embedding" if self.negative_prompt is None else \
            repr(self.negative_prompt[:40])
        if self.kind == "flux":
            neg = "none (guidance is an embedding)"
        return (f"{self.pipeline_class} {self.model_id}, {len(self.prompts)} prompt(s), negative {neg}: "
                f"{describe_noise(self.noise_config, self.sigma_min, self.sigma_max)}")

    def _network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's raw output at network input ``x``, time ``t``, for the labels of the current call."""
        labels = self._labels
        dtype, B = self.net.dtype, x.shape[0]
        xin = x.to(dtype)
        tin = t.to(device=x.device, dtype=torch.float32).reshape(-1).expand(B)
        text = self.text[labels]
        if self.kind == "sd":
            out = self.net(xin, tin, encoder_hidden_states=text).sample
        elif self.kind == "sdxl":
            h, w = (s * self.vae_scale_factor for s in self.sample_shape[1:])
            ids = torch.tensor([h, w, 0, 0, h, w], dtype=dtype, device=x.device).expand(B, 6)
            pooled = self.pooled[labels]
            out = self.net(xin, tin, encoder_hidden_states=text,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        elif self.kind == "sd3":
            pooled = self.pooled[labels]
            out = self.net(hidden_states=xin, timestep=tin, encoder_hidden_states=text,
                           pooled_projections=pooled).sample
        else:
            out = self._flux(xin, tin, text, self.pooled[labels])
        return out.to(x.dtype)

    def _flux(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The Flux transformer on unpacked latents x (B, C, h, w), called as FluxPipeline calls it."""
        (B, C, h, w), dtype, vsf = x.shape, self.net.dtype, self.vae_scale_factor
        guidance = None
        if self.net.config.guidance_embeds:
            if self.distilled_guidance is None:
                raise ValueError("this Flux transformer takes a guidance embedding (FLUX.1-dev style): set the "
                                 "PromptModel's distilled_guidance (FluxPipeline's guidance_scale, e.g. 3.5), or "
                                 "sample through PromptGuided(model, W)")
            guidance = torch.full((B,), float(self.distilled_guidance), device=x.device, dtype=torch.float32)
        out = self.net(hidden_states=self._pack(x, B, C, h, w), timestep=t / 1000, guidance=guidance,
                       pooled_projections=pooled, encoder_hidden_states=text,
                       txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=dtype),
                       img_ids=self._image_ids(B, h // 2, w // 2, x.device, dtype), return_dict=False)[0]
        return self._unpack(out, h * vsf, w * vsf, vsf)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """D(x, sigma, labels): labels (B,) in 0..P (P: the negative prompt)."""
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        if self.kind == "flux" and bool((labels == self.null_label).any()):
            raise ValueError(f"label {self.null_label} (the negative prompt): {FLUX_NO_NEGATIVE}")
        if bool((labels < 0).any()) or bool((labels > self.null_label).any()):
            raise ValueError(f"labels must be in 0..{self.null_label} (prompts 0..{self.null_label - 1}, "
                             f"{self.null_label} the negative prompt)")
        # The network runs on its own device and dtype (e.g. a GPU in float16); fewstep's state stays where it is
        # (the CPU, float32/64): only the latents of each call travel, and gradients follow them.
        dev = next(self.net.parameters()).device
        self._labels = labels.long().to(dev)
        try:
            s = sigma.to(dev) if isinstance(sigma, torch.Tensor) else sigma
            return self.adapter(x.to(dev), s).to(x.device)
        finally:
            self._labels = None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) from final latents, with the pipeline's VAE (its scaling and shift)."""
        cfg = self.vae.config
        z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        vdtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            img = self.vae.decode(z.to(vdtype), return_dict=False)[0]
        return img.to(latents.dtype).clamp(-1, 1)


class PromptGuided(Guided):
    """Classifier-free guidance over a :class:`PromptModel`: ``D_w = D(neg) + w (D(prompt) - D(neg))`` in one call on
    the doubled batch. The prompt of each sample is drawn from its seed by :meth:`draw_for_seeds` (fewstep's seeded
    loops call it: :func:`fewstep.sampling.seeded_noise`), from ``pool`` (prompt indices; default all). A sampler
    trained through it records the guidance scale, not the prompts: it applies to any prompt of the same model.

    Flux: ``scale`` W is the transformer's guidance embedding (FLUX.1-dev is guidance-distilled, FluxPipeline's
    ``guidance_scale``): each evaluation is ONE call of the conditional model with the embedding set to W (no
    negative branch, no doubled batch), recorded as guidance W like a classifier-free scale. A transformer without
    a guidance embedding (FLUX.1-schnell) takes scale 1 only."""

    prompt_conditioned = True

    def __init__(self, model: PromptModel, scale: float, pool: Sequence[int] | None = None) -> None:
        if not isinstance(model, PromptModel):
            raise TypeError(f"model must be a PromptModel, got {type(model).__name__}")
        pool = list(range(model.null_label)) if pool is None else [int(i) for i in pool]
        if not pool or any(not 0 <= i < model.null_label for i in pool):
            raise ValueError(f"pool must be a non-empty list of prompt indices in 0..{model.null_label - 1}")
        super().__init__(model, pool[0], scale)
        self.pool = pool
        if model.kind == "flux" and not model.net.config.guidance_embeds and self.scale != 1:
            raise ValueError(f"guidance {scale!r}: this Flux transformer has no guidance embedding (FLUX.1-schnell "
                             "style) and no negative branch; sample it at guidance 1")

    @property
    def _cfg_scale(self) -> float:
        """Flux: 1 (the conditional model alone; the scale goes into the guidance embedding)."""
        return 1.0 if self.denoiser.kind == "flux" else self.scale

    @contextmanager
    def _embedded(self) -> Iterator[None]:
        """Flux: the model's guidance embedding at this scale for the duration of a call."""
        model = self.denoiser
        if model.kind != "flux" or not model.net.config.guidance_embeds:
            yield
            return
        before, model.distilled_guidance = model.distilled_guidance, self.scale
        try:
            yield
        finally:
            model.distilled_guidance = before

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        with self._embedded():
            return super().forward(x, sigma)

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._embedded():
            return super().denoise_with_features(x, sigma)

    @property
    def conditions_key(self) -> str:
        """The prompt embeddings' digest and the pool (what determines a seed's conditioning)."""
        h = hashlib.sha256(",".join(map(str, self.pool)).encode()).hexdigest()[:8]
        return f"{self.denoiser.conditions_key}:{h}"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The latents' shape (C, h, w)."""
        return self.denoiser.sample_shape

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The decoded images' shape (C, H, W)."""
        return self.denoiser.image_shape

    def _drawn(self, seeds: Iterable[int]) -> list[int]:
        """The prompt index each seed draws from the pool."""
        return [self.pool[prompt_for_seed(s, len(self.pool))] for s in seeds]

    def draw_for_seeds(self, seeds: Iterable[int]) -> None:
        """Condition the next calls on the prompts of these seeds (one per sample, in order)."""
        self.labels = torch.tensor(self._drawn(seeds), dtype=torch.long)

    def prompts_for_seeds(self, seeds: Iterable[int]) -> list[str]:
        """The prompt text each seed draws."""
        return [self.denoiser.prompts[i] for i in self._drawn(seeds)]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.denoiser.decode(latents)


def set_sampler(pipe: Any, predictor: Any, **kwargs: Any) -> Any:
    """``pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, predictor=predictor, **kwargs)``, after
    checking that ``predictor`` (a learned sampler or the path of its checkpoint) was trained for this pipeline's
    network (its recorded model id against the digest of the weights); returns the scheduler. With a guidance-aware
    sampler pass ``guidance_scale=`` (the scale the pipeline is called with)."""
    from ...learned import load
    from .scheduler import FewstepScheduler

    net = _backbone(pipe)
    if isinstance(predictor, (str, os.PathLike)):
        predictor = load(predictor, model_id=unet_model_id(net))
    if PIPELINE_KINDS.get(type(pipe).__name__) == "flux" and callable(getattr(predictor, "residual", None)):
        raise ValueError("a residual sampler's operator convolves (C, H, W) latents, but FluxPipeline hands its "
                         "scheduler packed (B, h*w/4, 4C) latents: run it with fewstep sample (PromptModel unpacks), "
                         "or train a table method without AFS (pas, or amed with features none) for "
                         "the pipeline")
    else:
        want = getattr(predictor, "config", {}).get("model_id")
        if isinstance(want, str) and want.startswith("diffusers:") and want != unet_model_id(net):
            raise ValueError(f"the predictor was trained for model {want!r}, but this pipeline's "
                             f"{type(net).__name__} is {unet_model_id(net)!r} (a digest of its weights)")
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, predictor=predictor, **kwargs)
    return pipe.scheduler
