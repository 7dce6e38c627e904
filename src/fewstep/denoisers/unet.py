"""A small EDM-preconditioned U-Net: the embedded neural test bed (and ``make demo``'s default model).

The network F is wrapped in the preconditioning of Karras et al. (2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),    c_noise = ln(sigma) / 4,      sd = sigma_data = 0.5,

so a :class:`SmallUNet` *is* a fewstep denoiser. With ``num_classes = K > 0`` it is class-conditional: a learned
embedding of the label (K classes plus the null class K, used for classifier-free guidance; Ho & Salimans, 2022)
is added to the noise embedding, and it is called as ``D(x, sigma, class_labels)`` (labels omitted = the null
class). An unconditional config (``num_classes = 0``) has exactly the keys, weights and file of earlier versions.
Weights live in one safetensors file whose metadata holds the
JSON config, the training recipe and a SHA-256 of the tensors; loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..io import SafetensorsFileError, read_safetensors, read_safetensors_header, tensor_digest, write_safetensors
from ..jsonio import MAX_CHANNELS, MAX_SAMPLE_SIZE
from .base import sigma_like

__all__ = ["UNetConfig", "SmallUNet", "save_unet", "load_unet", "read_unet_metadata", "default_unet", "digits_unet",
           "DEFAULT_ASSET", "DIGITS_ASSET", "FORMAT", "VERSION"]

FORMAT = "fewstep-small-unet"
VERSION = 1
DEFAULT_ASSET = "unet16.safetensors"
"""File name of the shipped weights inside the package's ``assets`` folder."""
DIGITS_ASSET = "digits16.safetensors"
"""File name of the shipped class-conditional digits model (scikit-learn's 8x8 digits at 16x16, 10 classes)."""


_UNET_LIMITS = {"img_resolution": MAX_SAMPLE_SIZE, "channels": MAX_CHANNELS, "base_channels": MAX_CHANNELS,
                "num_res_blocks": 64, "emb_dim": 16_384, "noise_features": 16_384, "norm_groups": MAX_CHANNELS}


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`SmallUNet` (everything needed to rebuild it from a weights file)."""

    img_resolution: int = 16
    channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level, 16 -> 8 -> 4 for the default
    num_res_blocks: int = 1  # residual blocks per encoder level (the decoder has one more, for the skips)
    emb_dim: int = 128  # width of the noise-level embedding
    noise_features: int = 32  # Fourier features of c_noise (cos and sin pairs, so even)
    noise_max_freq: float = 64.0  # frequencies log-spaced in [1, noise_max_freq] (radians per unit of c_noise)
    mid_attention: bool = True  # a self-attention layer inside the middle block
    norm_groups: int = 8
    dropout: float = 0.0
    sigma_data: float = 0.5
    num_classes: int = 0  # > 0: class-conditional, labels 0..num_classes-1 plus the null class num_classes

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        ints = ("img_resolution", "channels", "base_channels", "num_res_blocks", "emb_dim", "noise_features",
                "norm_groups")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive int, got {v!r}")
            if v > _UNET_LIMITS[name]:  # bounded before anything is allocated (fewstep.jsonio limits)
                raise ValueError(f"{name}: must be at most {_UNET_LIMITS[name]}, got {v}")
        if not self.channel_mult or len(self.channel_mult) > 8 or not all(
                isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 64 for m in self.channel_mult):
            raise ValueError(f"channel_mult: must be a non-empty tuple of positive ints, got {self.channel_mult!r}")
        if self.noise_features % 2:
            raise ValueError(f"noise_features: must be even, got {self.noise_features}")
        if self.img_resolution % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"img_resolution {self.img_resolution} is not divisible by 2^{len(self.channel_mult) - 1} "
                             f"({len(self.channel_mult)} levels)")
        for c in self.level_channels:
            if c % self.norm_groups:
                raise ValueError(f"norm_groups {self.norm_groups} does not divide the channel count {c}")
        for name in ("noise_max_freq", "dropout", "sigma_data"):  # finite numbers, not bools or strings
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: must be a finite number, got {v!r}")
        if not self.noise_max_freq >= 1.0:
            raise ValueError(f"noise_max_freq: must be >= 1, got {self.noise_max_freq!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data: must be > 0, got {self.sigma_data!r}")
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"mid_attention: must be a bool, got {self.mid_attention!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or \
                not 0 <= self.num_classes <= 100_000:
            raise ValueError(f"num_classes: must be an int in [0, 100000], got {self.num_classes!r}")
        if max(self.level_channels) > MAX_CHANNELS:
            raise ValueError(f"base_channels x channel_mult: at most {MAX_CHANNELS} channels, got "
                             f"{max(self.level_channels)}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def null_label(self) -> int | None:
        """The label of the null (unconditional) class, ``num_classes``; None for an unconditional model."""
        return self.num_classes if self.num_classes > 0 else None

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if not self.num_classes:  # unconditional: the JSON (and so the digest and model_id) of earlier versions
            del d["num_classes"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        if not isinstance(d, dict):
            raise ValueError(f"UNet config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = set(d) - names, names - set(d) - {"num_classes"}  # absent num_classes: unconditional
        if unknown or missing:
            raise ValueError(f"UNet config keys do not match: unknown {sorted(unknown)}, missing {sorted(missing)}")
        d = dict(d)
        if not isinstance(d["channel_mult"], list):
            raise ValueError(f"channel_mult: must be a list, got {d['channel_mult']!r}")
        d["channel_mult"] = tuple(d["channel_mult"])
        return cls(**d)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


# --------------------------------------------------------------------------------------------------- layers


class NoiseEmbedding(nn.Module):
    """Fourier features [cos(w_k c), sin(w_k c)] of c_noise with fixed log-spaced w_k, then a two-layer MLP."""

    def __init__(self, features: int, max_freq: float, emb_dim: int) -> None:
        super().__init__()
        freqs = torch.logspace(0.0, math.log10(max_freq), features // 2, dtype=torch.float64)
        self.register_buffer("freqs", freqs.to(torch.get_default_dtype()), persistent=False)  # rebuilt from config
        self.mlp = nn.Sequential(nn.Linear(features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise[:, None] * self.freqs.to(c_noise.dtype)[None, :]
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding as a per-channel scale and shift, residual connection."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (through its skip)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return (h + self.skip(x)) * math.sqrt(0.5)


class SelfAttention(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # each (B, C, HW)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, HW, HW)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        return (x + self.proj(out)) * math.sqrt(0.5)


class MidBlock(nn.Module):
    """The bottleneck: residual block, optional self-attention, residual block. AMED's features come from here."""

    def __init__(self, channels: int, emb_dim: int, groups: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim, groups, dropout)
        self.attn = SelfAttention(channels, groups) if attention else None
        self.res2 = ResBlock(channels, channels, emb_dim, groups, dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res1(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x, emb)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --------------------------------------------------------------------------------------------------- model


class SmallUNet(nn.Module):
    """EDM-preconditioned U-Net denoiser ``D(x, sigma) -> x0_hat`` for (B, channels, R, R) images.

    Encoder levels at R, R/2, ... with ``num_res_blocks`` residual blocks each; the middle block ``self.mid``
    (found by :class:`fewstep.amed.HookFeatures`); a decoder with ``num_res_blocks + 1`` blocks per level, each
    fed the matching encoder activation by concatenation. Inputs of any float dtype are cast to the parameters'
    dtype and the result back to the input's dtype.
    """

    accepts_any_dtype = True  # casts inputs to its parameters' dtype and the output back

    def __init__(self, config: UNetConfig | None = None, weights_name: str = "init") -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        if not isinstance(cfg, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.weights_name = weights_name
        g, e, p = cfg.norm_groups, cfg.emb_dim, cfg.dropout
        chans = cfg.level_channels

        self.embed = NoiseEmbedding(cfg.noise_features, cfg.noise_max_freq, e)
        # Class embedding (num_classes labels + the null class), added to the noise embedding. Absent (no
        # parameters at all) for an unconditional model, so its state dict is that of earlier versions.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, e) if cfg.num_classes else None
        self.stem = nn.Conv2d(cfg.channels, chans[0], 3, padding=1)

        self.down = nn.ModuleList()  # per level: res blocks, then a downsample (except at the last level)
        skip_chans = [chans[0]]
        c = chans[0]
        for lvl, cl in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, cl, e, g, p))
                c = cl
                skip_chans.append(c)
            level = nn.Module()
            level.blocks = blocks
            level.downsample = Downsample(c) if lvl < len(chans) - 1 else None
            if level.downsample is not None:
                skip_chans.append(c)
            self.down.append(level)

        self.mid = MidBlock(c, e, g, p, cfg.mid_attention)

        self.up = nn.ModuleList()  # per level (coarse to fine): res blocks taking a skip each, then an upsample
        for lvl, cl in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c + skip_chans.pop(), cl, e, g, p))
                c = cl
            level = nn.Module()
            level.blocks = blocks
            level.upsample = Upsample(c) if lvl > 0 else None
            self.up.append(level)
        assert not skip_chans

        self.out_norm = nn.GroupNorm(g, c)
        self.out_conv = nn.Conv2d(c, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @property
    def model_id(self) -> str:
        """Identifies architecture and weights, e.g. ``smallunet-1a2b3c4d-unet16-5e6f7a8b``."""
        return f"smallunet-{self.config.digest()[:8]}-{self.weights_name}"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def null_label(self) -> int | None:
        """The null-class label (``config.num_classes``) of a class-conditional model, else None."""
        return self.config.null_label

    def network(self, x: torch.Tensor, c_noise: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The raw network F(c_in x, c_noise[, labels]) (no preconditioning); x (B, C, H, W), c_noise (B,),
        class_labels (B,) long (a conditional model only; checked by :meth:`forward`)."""
        emb = self.embed(c_noise)
        if self.class_embed is not None:
            emb = emb + self.class_embed(class_labels)
        h = self.stem(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb)
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
                skips.append(h)
        h = self.mid(h, emb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.out_conv(F.silu(self.out_norm(h)))

    def _labels(self, class_labels: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        """Validated (B,) long labels: an int or (B,) / scalar integer tensor in 0..num_classes; None -> null."""
        k = self.config.num_classes
        if not k:
            if class_labels is not None:
                raise ValueError("this SmallUNet is unconditional (num_classes = 0); do not pass class_labels")
            return None
        if class_labels is None:
            return torch.full((batch,), k, dtype=torch.long, device=device)
        if isinstance(class_labels, bool) or not isinstance(class_labels, (int, torch.Tensor)):
            raise TypeError(f"class_labels must be an int or an integer tensor, got {type(class_labels).__name__}")
        lab = torch.as_tensor(class_labels, device=device)
        if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            raise TypeError(f"class_labels must be integers, got dtype {lab.dtype}")
        if lab.ndim == 0:
            lab = lab.expand(batch)
        if lab.shape != (batch,):
            raise ValueError(f"class_labels must be an int or have shape ({batch},), got {tuple(lab.shape)}")
        if batch and (int(lab.min()) < 0 or int(lab.max()) > k):
            raise ValueError(f"class_labels must be in 0..{k} ({k} = the null class), got "
                             f"{int(lab.min())}..{int(lab.max())}")
        return lab.long()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | int | None = None) -> torch.Tensor:
        """EDM-preconditioned denoiser output x0_hat (Karras et al., 2022, Table 1); D(x, 0) = x.

        ``class_labels`` (conditional models only): an int or (B,) integer tensor in 0..num_classes, where
        ``num_classes`` is the null class; None means the null class (the unconditional model)."""
        cfg = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor")
        levels = len(cfg.channel_mult)
        if (x.ndim != 4 or x.shape[1] != cfg.channels
                or x.shape[2] % 2 ** (levels - 1) or x.shape[3] % 2 ** (levels - 1)):
            raise ValueError(f"x must have shape (B, {cfg.channels}, H, W) with H and W divisible by "
                             f"{2 ** (levels - 1)}, got {tuple(x.shape)}")
        param = next(self.parameters())
        labels = self._labels(class_labels, x.shape[0], param.device)
        x_in = x.to(device=param.device, dtype=param.dtype)
        s = sigma_like(torch.as_tensor(sigma).to(device=param.device), x_in)  # (B, 1, 1, 1), checks the shape
        if (s < 0).any():
            raise ValueError("sigma must be non-negative")
        sd = cfg.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        # ln(sigma)/4; sigma = 0 is clamped so that F stays finite and c_out = 0 gives D(x, 0) = x exactly.
        c_noise = s.reshape(-1).clamp_min(torch.finfo(s.dtype).tiny).log() / 4
        out = c_skip * x_in + c_out * self.network(c_in * x_in, c_noise, labels)
        return out.to(device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------------------------------- files


def save_unet(model: SmallUNet, path: str | os.PathLike, recipe: dict[str, Any], name: str | None = None) -> Path:
    """Write ``model``'s weights, config and training ``recipe`` (JSON-serialisable) to one safetensors file.

    ``name`` (default: the file's stem) becomes part of the loaded model's ``model_id``. The file is written to a
    temporary file next to ``path`` and renamed, so a reader never sees a partial file.
    """
    if not isinstance(model, SmallUNet):
        raise TypeError(f"model must be a SmallUNet, got {type(model).__name__}")
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict, got {type(recipe).__name__}")
    path = Path(path)
    name = path.stem if name is None else name
    if not name or any(ch.isspace() for ch in name):
        raise ValueError(f"name must be a non-empty string without spaces, got {name!r}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "name": name,
        "config": model.config.to_json(),
        "recipe": json.dumps(recipe, sort_keys=True),
        "sha256": tensor_digest(tensors),
    }
    return write_safetensors(path, tensors, meta)


def _read(path: Path, tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if tensors:
        out, meta = read_safetensors(path, fmt=FORMAT, what="fewstep SmallUNet file", check_finite=True)
    else:
        out, (_, meta) = {}, read_safetensors_header(path, what="fewstep SmallUNet file")
        if meta.get("format") != FORMAT:
            raise SafetensorsFileError(f"{path} is not a fewstep SmallUNet file (format {meta.get('format')!r}, "
                                       f"expected {FORMAT!r})")
    if meta.get("version") != str(VERSION):
        raise ValueError(f"{path}: file version {meta.get('version')!r}, this fewstep reads version {VERSION}")
    for key in ("name", "config", "recipe", "sha256"):
        if key not in meta:
            raise ValueError(f"{path}: metadata lacks {key!r}")
    return meta, out


def read_unet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of a weights file: ``name``, ``config`` (:class:`UNetConfig`), ``recipe`` (dict)."""
    path = Path(path)
    meta, _ = _read(path, tensors=False)
    return _parse(path, meta)


def _parse(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    from ..jsonio import load_json

    try:
        cfg = load_json(meta["config"], what="config", expect=dict)
        recipe = load_json(meta["recipe"], what="recipe", expect=dict)
    except ValueError as e:
        raise ValueError(f"{path}: metadata is not valid: {e}") from None
    try:
        config = UNetConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid UNet config: {e}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: recipe must be a JSON object")
    return {"name": meta["name"], "config": config, "recipe": recipe, "sha256": meta["sha256"]}


def load_unet(path: str | os.PathLike) -> SmallUNet:
    """Load a :func:`save_unet` file (no pickle). Returns the model in eval mode with frozen parameters
    (``.requires_grad_(True).train()`` to fine-tune); ValueError on a file that is corrupted or not ours."""
    path = Path(path)
    info = _parse(path, _read(path, tensors=False)[0])
    with torch.device("meta"):  # the shapes the config implies, without allocating (a forged config may be huge)
        expect = {k: tuple(v.shape) for k, v in SmallUNet(info["config"]).state_dict().items()}
    tensors, _ = read_safetensors(path, fmt=FORMAT, what="fewstep SmallUNet file", check_finite=True, expect=expect)
    digest = tensor_digest(tensors)
    if digest != info["sha256"]:
        raise ValueError(f"{path} is corrupted: weights do not match their SHA-256")
    model = SmallUNet(info["config"], weights_name=f"{info['name']}-{digest[:8]}")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ValueError(f"{path}: weights must share one floating-point dtype, got {sorted(map(str, dtypes))}")
    model.to(next(iter(dtypes)))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the configured SmallUNet: {e}") from None
    model.recipe = info["recipe"]
    return model.eval().requires_grad_(False)


def _load_asset(asset: str, script: str) -> SmallUNet:
    from importlib import resources

    res = resources.files("fewstep").joinpath("assets").joinpath(asset)
    if not res.is_file():
        raise FileNotFoundError(
            f"the shipped U-Net weights fewstep/assets/{asset} are missing from this installation; "
            f"train them with `python scripts/{script} --out src/fewstep/assets/{asset}` "
            "or load another file with fewstep.denoisers.unet.load_unet(path)"
        )
    with resources.as_file(res) as p:
        return load_unet(p)


def default_unet() -> SmallUNet:
    """The shipped 16x16 RGB model (``fewstep/assets/unet16.safetensors``), trained by ``scripts/train_model.py``."""
    return _load_asset(DEFAULT_ASSET, "train_model.py")


def digits_unet() -> SmallUNet:
    """The shipped class-conditional 16x16 greyscale digits model (``fewstep/assets/digits16.safetensors``,
    10 classes plus the null class 10), trained by ``scripts/train_digits.py``. Call it as
    ``D(x, sigma, class_labels)``; guide it with :class:`fewstep.denoisers.Guided`."""
    return _load_asset(DIGITS_ASSET, "train_digits.py")
