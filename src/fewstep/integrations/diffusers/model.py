"""diffusers UNets as fewstep denoisers: :class:`DiffusersDenoiser` (EDM D(x, sigma) with classifier-free
guidance and mid-block features for AMED), :func:`load_denoiser` for a folder saved with ``save_pretrained``, and
:func:`unet_model_id`, the digest of a UNet's weights that learned samplers record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...io import regular_file, tensor_digest
from ...jsonio import MAX_CHANNELS, MAX_SAMPLE_SIZE, check_size, load_json
from .backend import diffusers, quiet_loading
from .noise import NOISE_KEYS, describe_noise, resolve_noise_config
from .spaces import make_adapter, model_sigma_range

__all__ = ["DiffusersDenoiser", "load_denoiser", "unet_model_id", "unet_output", "check_guidance"]


def unet_model_id(unet: torch.nn.Module) -> str:
    """``"diffusers:"`` + the first 16 hex digits of the SHA-256 over the UNet's state_dict (names, dtypes, shapes
    and bytes, sorted by name; :func:`fewstep.io.tensor_digest`): the same weights give the same id wherever the
    folder lies, other weights another id (about 0.1 s per 100 MB)."""
    return "diffusers:" + tensor_digest(unet.state_dict())[:16]


def unet_output(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """The UNet's raw output (eps / v / x0 / velocity) at network input ``x`` and time ``t`` (0-dim or (B,)), with
    classifier-free guidance out = u + guidance_scale (c - u) when ``uncond`` is given; in ``x``'s dtype."""
    dtype = getattr(unet, "dtype", x.dtype)
    B = x.shape[0]
    xin, tin = x.to(dtype), t.to(device=x.device, dtype=torch.float32).reshape(-1).expand(B)
    if cond is None:
        return unet(xin, tin).sample.to(x.dtype)
    cond = _expand(cond.to(dtype), B)
    if uncond is None or guidance_scale == 1.0:
        return unet(xin, tin, encoder_hidden_states=cond).sample.to(x.dtype)
    both = torch.cat([_expand(uncond.to(dtype), B), cond])
    u, c = unet(torch.cat([xin, xin]), torch.cat([tin, tin]), encoder_hidden_states=both).sample.chunk(2)
    return (u + guidance_scale * (c - u)).to(x.dtype)


def _expand(h: torch.Tensor, batch: int) -> torch.Tensor:
    if h.shape[0] == batch:
        return h
    if h.shape[0] == 1:
        return h.expand(batch, *h.shape[1:])
    raise ValueError(f"encoder_hidden_states has batch {h.shape[0]}; expected 1 or {batch}")


def check_guidance(encoder_hidden_states: Any, negative_encoder_hidden_states: Any, guidance_scale: Any) -> None:
    """Refuse negative embeddings without positive ones, and a guidance scale that is not a number."""
    if encoder_hidden_states is None and negative_encoder_hidden_states is not None:
        raise ValueError("negative_encoder_hidden_states needs encoder_hidden_states")
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool):
        raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")


class DiffusersDenoiser(torch.nn.Module):
    """EDM denoiser D(x, sigma) -> x0 from a diffusers UNet (UNet2DModel, or UNet2DConditionModel with
    ``encoder_hidden_states`` and classifier-free guidance: out = u + guidance_scale (c - u) with
    ``negative_encoder_hidden_states`` for u). Conversions are fewstep's VP / flow adapters.
    ``denoise_with_features`` returns the pooled output of the UNet's ``mid_block`` (both CFG halves
    concatenated), so AMED predictors can be trained with ``features="adapter"``.

    How the UNet was trained is never assumed: ``scheduler_config`` (the pipeline's ``scheduler.config``) and/or
    the keywords ``prediction_type``, ``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``,
    ``trained_betas`` (which override it) must give the prediction type and the noise schedule, else a
    ValueError names what is missing (:func:`resolve_noise_config`). ``scheduler_config_file``: the file
    ``scheduler_config`` was read from, recorded as the source.

    Attributes: ``noise_config`` (the settings used and their ``source``, "file" / "argument" /
    "file+argument"; :meth:`describe` in one line), ``sigma_min`` / ``sigma_max`` (EDM sigmas of the model's
    training range, :func:`model_sigma_range`), ``model_id`` (``model_id=`` or, computed on first use, a digest of
    the UNet's weights, :func:`unet_model_id`).
    """

    accepts_any_dtype = True  # casts to the UNet's dtype itself; the VP/flow conversions run in the state's dtype

    def __init__(self, unet: torch.nn.Module, scheduler_config: Any = None, *, prediction_type: str | None = None,
                 beta_schedule: str | None = None, beta_start: float | None = None, beta_end: float | None = None,
                 num_train_timesteps: int | None = None, trained_betas: Any = None,
                 encoder_hidden_states: torch.Tensor | None = None,
                 negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float = 1.0,
                 timestep_type: str = "interp", feature_module: str | None = None, model_id: str | None = None,
                 scheduler_config_file: str | os.PathLike | None = None) -> None:
        super().__init__()
        from ...denoisers.features import HookFeatures

        nc = resolve_noise_config(scheduler_config, file=scheduler_config_file, prediction_type=prediction_type,
                                  beta_schedule=beta_schedule, beta_start=beta_start, beta_end=beta_end,
                                  num_train_timesteps=num_train_timesteps, trained_betas=trained_betas)
        check_guidance(encoder_hidden_states, negative_encoder_hidden_states, guidance_scale)
        if model_id is not None and not isinstance(model_id, str):
            raise TypeError(f"model_id must be a str, got {type(model_id).__name__}")
        self.unet = unet
        self.noise_config = nc
        self.adapter = make_adapter(nc["prediction_type"], nc, timestep_type)
        self.adapter.model = self._network
        self.sigma_min, self.sigma_max = model_sigma_range(self.adapter, nc["num_train_timesteps"])
        self.cond, self.uncond = encoder_hidden_states, negative_encoder_hidden_states
        self.guidance_scale = guidance_scale
        self.model_id = model_id
        self._features = HookFeatures(self.adapter, unet, feature_module)

    @property
    def model_id(self) -> str:
        """``model_id=`` if given, else :func:`unet_model_id` of the UNet (computed once, on first use)."""
        if self._model_id is None:
            self._model_id = unet_model_id(self.unet)
        return self._model_id

    @model_id.setter
    def model_id(self, value: str | None) -> None:
        self._model_id = value

    def describe(self) -> str:
        """One line: model id, prediction type, noise schedule, sigma range and where the settings came from."""
        return f"{self.model_id}: {describe_noise(self.noise_config, self.sigma_min, self.sigma_max)}"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *size)

    def _network(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (eps / v / x0 / velocity) at network input x and time t, with CFG."""
        return unet_output(self.unet, x, t, self.cond, self.uncond, self.guidance_scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.adapter(x, sigma)

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, f = self._features.denoise_with_features(x, sigma)
        if f.shape[0] == 2 * x.shape[0]:  # CFG: [uncond; cond] rows -> one row per sample
            f = torch.cat(f.chunk(2), dim=1)
        return x0, f.to(x.dtype)


def check_unet_config(cfg: dict[str, Any], path: Path) -> None:
    """The sizes of a diffusers UNet config.json, bounded before diffusers allocates the model (limits in
    :mod:`fewstep.jsonio`)."""
    where = str(path)
    size = cfg.get("sample_size")
    if size is not None:
        for v in size if isinstance(size, list) else [size]:
            check_size("sample_size", v, MAX_SAMPLE_SIZE, where)
    for key in ("in_channels", "out_channels", "cross_attention_dim", "norm_num_groups", "attention_head_dim"):
        v = cfg.get(key)
        if v is not None and not isinstance(v, list):
            check_size(key, v, MAX_CHANNELS, where)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, list) or len(v) > 16):
            raise ValueError(f"{where}: {key} must be a list of at most 16 entries, got {str(v)[:60]}")
    for v in cfg.get("block_out_channels") or []:
        check_size("block_out_channels", v, MAX_CHANNELS, where)
    v = cfg.get("layers_per_block")
    if v is not None and not isinstance(v, list):
        check_size("layers_per_block", v, 64, where)
    v = cfg.get("num_class_embeds")
    if v is not None:
        check_size("num_class_embeds", v, 10**6, where)


def _present(path: Path) -> bool:
    """Whether ``path`` exists; a FIFO, device or folder there is refused unread (:func:`fewstep.io.regular_file`)."""
    if not os.path.lexists(path):
        return False
    regular_file(path, "diffusers config file")
    return True


def load_denoiser(path: str | os.PathLike, *, scheduler_config: Any = None, **kwargs: Any) -> DiffusersDenoiser:
    """A :class:`DiffusersDenoiser` from a local directory saved with ``save_pretrained``: a pipeline folder
    (model_index.json, unet/, scheduler/) or a UNet folder (config.json, optional scheduler_config.json).
    Offline and safetensors only (no pickled weights).

    The prediction type and noise schedule come from the folder's scheduler config; without one (a bare UNet
    folder) pass them: ``prediction_type=``, ``beta_schedule=`` (``beta_start=``, ``beta_end=``,
    ``num_train_timesteps=``, ``trained_betas=``) or ``scheduler_config=`` (a dict, used instead of the file);
    keywords override the file. Otherwise a ValueError says what is missing. ``model_id`` defaults to a digest of
    the UNet's weights (a copied folder keeps it, other weights in a same-named folder get another one). Other
    keywords go to :class:`DiffusersDenoiser`. ``den.describe()`` says which settings were used."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no diffusers model folder at {root}")
    if _present(root / "model_index.json"):
        unet_dir, sched_file = root / "unet", root / "scheduler" / "scheduler_config.json"
    elif _present(root / "config.json"):
        unet_dir, sched_file = root, root / "scheduler_config.json"
    else:
        raise ValueError(f"{root} has neither model_index.json (a pipeline) nor config.json (a UNet)")
    if _present(root / "model_index.json"):
        load_json(root / "model_index.json", what="diffusers model_index.json", expect=dict)
    unet_cfg = load_json(unet_dir / "config.json", what="diffusers UNet config", expect=dict)  # a list, deep nesting,
    check_unet_config(unet_cfg, unet_dir / "config.json")  # a FIFO, sizes: clear errors before any allocation
    cls_name = unet_cfg.get("_class_name")
    if cls_name not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ValueError(f"{unet_dir} holds a {cls_name}; fewstep loads UNet2DModel and UNet2DConditionModel")
    if cls_name == "UNet2DConditionModel" and "encoder_hidden_states" not in kwargs:
        raise ValueError(f"{unet_dir} is a conditional UNet: pass encoder_hidden_states (prompt embeddings) in "
                         "Python with fewstep.integrations.diffusers.DiffusersDenoiser")
    for weights in unet_dir.glob("*.safetensors"):  # from_pretrained would block on a FIFO
        regular_file(weights, "diffusers weights file")
    if scheduler_config is None and _present(sched_file):
        scheduler_config = load_json(sched_file, what="diffusers scheduler config", expect=dict)
        kwargs["scheduler_config_file"] = sched_file
    # Check the noise settings before the (slower) weight loading, so that a missing one fails at once.
    context = None if scheduler_config is not None else \
        f"{root} has no scheduler config ({sched_file.relative_to(root)}) and none was passed"
    resolve_noise_config(scheduler_config, file=kwargs.get("scheduler_config_file"), context=context,
                         **{k: kwargs[k] for k in NOISE_KEYS if k in kwargs})
    unet_cls = getattr(diffusers, cls_name)
    with quiet_loading(unet_cls):
        try:
            unet = unet_cls.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
        except (RuntimeError, ValueError, KeyError, OSError, EnvironmentError) as e:  # e.g. weights of another shape
            weights = sorted(p.name for p in unet_dir.glob("*.safetensors")) or ["(no .safetensors file)"]
            raise ValueError(f"{unet_dir}: cannot load the UNet from {', '.join(weights)} with its config.json: "
                             f"{' '.join(str(e).split())[:300]}") from None
    return DiffusersDenoiser(unet.eval(), scheduler_config, **kwargs)
