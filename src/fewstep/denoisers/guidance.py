"""Classifier-free guidance (Ho & Salimans, 2022) as a denoiser: a conditional model becomes ``D_w(x, sigma)``.

    D_w(x, sigma) = D(x, sigma, null) + w (D(x, sigma, y) - D(x, sigma, null))

computed as one call of the conditional denoiser on the doubled batch [x; x] with labels [y; null]. The
sampler sees an ordinary denoiser, so every solver, AFS and the AMED trainers work on guided models unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import model_dtype
from .features import HookFeatures, find_bottleneck, provides_features

__all__ = ["Guided"]


class Guided(nn.Module):
    """The classifier-free-guided denoiser ``D_w(x, sigma)`` of a conditional ``denoiser(x, sigma, class_labels)``.

    ``labels``: an int (every sample) or an (L,) integer tensor, one label per sample; a batch of k * L samples
    takes the L labels k times in order (so ``torch.arange(10)`` gives every batch of 10, 20, ... samples all ten
    classes, e.g. for training a sampler on mixed labels under any batch size that is a multiple of 10).
    ``scale`` w: 1 is the conditional model, 0 the unconditional one, w > 1 guides. ``null_label``: the label of
    the null class (default: the denoiser's ``null_label``, e.g. 10 for :func:`fewstep.denoisers.digits_unet`).

    **Cost.** One evaluation of ``D_w`` is ONE call of ``denoiser`` on the doubled batch (2B samples: the
    conditional half, then the unconditional half); fewstep's NFE counts it once, as the guidance literature
    does (an NFE of ``D_w`` is twice the network work of an unguided NFE on the same batch). At w = 1 (w = 0)
    only the conditional (unconditional) half is evaluated, so ``Guided(d, y, 1.0)(x, s)`` is exactly
    ``d(x, s, y)``.

    **Features** (:meth:`denoise_with_features`, for learned samplers): those of the conditional half only, as in
    the AMED paper; from the denoiser's own ``denoise_with_features(x, sigma, class_labels)`` if it has one, else
    a forward hook on ``module`` of ``network`` (default: the denoiser's middle block). ``model_id`` is the
    denoiser's: guidance is a sampling setting of the same model, not another model.
    """

    def __init__(self, denoiser: Callable, labels: int | torch.Tensor, scale: float, *,
                 null_label: int | None = None, network: nn.Module | None = None, module: str | None = None) -> None:
        super().__init__()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable (x, sigma, class_labels) -> x0, got {type(denoiser).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not torch.isfinite(torch.tensor(scale)):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        null_label = getattr(denoiser, "null_label", None) if null_label is None else null_label
        if isinstance(null_label, bool) or not isinstance(null_label, int):
            raise ValueError("null_label: give the label of the null (unconditional) class; the denoiser has no "
                             f"integer null_label attribute (got {null_label!r})")
        self.labels = self._check_labels(labels)
        self.denoiser, self.scale, self.null_label = denoiser, float(scale), null_label
        self._network, self._module = network, module
        self._dtype = model_dtype(denoiser)
        self.accepts_any_dtype = self._dtype is None  # fewstep gives the wrapped model the dtype it wants

    @staticmethod
    def _check_labels(labels: Any) -> int | torch.Tensor:
        if isinstance(labels, bool):
            raise TypeError("labels must be an int or an integer tensor, got bool")
        if isinstance(labels, int):
            return labels
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
                or labels.dtype == torch.bool or labels.ndim > 1:
            raise TypeError(f"labels must be an int or a 1-D integer tensor, got {labels!r:.80}")
        return labels.long()

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype the wrapped model wants (None: any)."""
        return self._dtype

    @property
    def model_id(self) -> str | None:
        """The wrapped model's id (guidance is a sampling setting, not another model)."""
        return getattr(self.denoiser, "model_id", None)

    @property
    def sigma_min(self) -> float | None:
        """The wrapped model's smallest trained sigma (None: not stated)."""
        return getattr(self.denoiser, "sigma_min", None)

    @property
    def sigma_max(self) -> float | None:
        """The wrapped model's largest trained sigma (None: not stated)."""
        return getattr(self.denoiser, "sigma_max", None)

    @property
    def log_sigmas(self) -> torch.Tensor | None:
        """The wrapped discrete model's log sigma per training timestep (None: a continuous model)."""
        return getattr(self.denoiser, "log_sigmas", None)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, null_label={self.null_label}"

    def _batch_labels(self, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(self.labels, int):
            return torch.full((batch,), self.labels, dtype=torch.long, device=device)
        lab = self.labels.to(device)
        if lab.ndim == 0:
            return lab.expand(batch)
        if batch % lab.shape[0]:
            raise ValueError(f"Guided has {lab.shape[0]} labels but the batch has {batch} samples; give one label "
                             f"per sample, labels whose count divides the batch, or an int")
        return lab.repeat(batch // lab.shape[0])

    @property
    def _cfg_scale(self) -> float:
        """The scale of the classifier-free combination (a subclass whose guidance is an embedding returns 1)."""
        return self.scale

    def _inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, sigma (n,), labels) for the one call: the doubled batch, or one half at w = 1 or w = 0."""
        b = x.shape[0]
        y = self._batch_labels(b, x.device)
        null = torch.full_like(y, self.null_label)
        s = torch.as_tensor(sigma, device=x.device)
        s = (s if s.is_floating_point() else s.to(x.dtype)).reshape(-1)
        if s.numel() == 1:
            s = s.expand(b)
        elif s.shape != (b,):
            raise ValueError(f"sigma must be a scalar or have shape ({b},), got {tuple(s.shape)}")
        if self._cfg_scale == 1.0:
            return x, s, y
        if self._cfg_scale == 0.0:
            return x, s, null
        return torch.cat([x, x]), torch.cat([s, s]), torch.cat([y, null])

    def _combine(self, out: torch.Tensor, b: int) -> torch.Tensor:
        w = self._cfg_scale
        if w in (0.0, 1.0):
            return out
        cond, uncond = out[:b], out[b:]
        return uncond + w * (cond - uncond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """D_w(x, sigma): one call of the conditional denoiser on the doubled batch."""
        xx, ss, yy = self._inputs(x, sigma)
        return self._combine(self.denoiser(xx, ss, yy), x.shape[0])

    def denoise_with_features(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_w(x, sigma), features of the conditional half (B, F)), from the same single call."""
        b = x.shape[0]
        xx, ss, yy = self._inputs(x, sigma)
        if provides_features(self.denoiser):
            out, feats = self.denoiser.denoise_with_features(xx, ss, yy)
        else:
            network = self._network if self._network is not None else self.denoiser
            if not isinstance(network, nn.Module):
                raise TypeError("Guided.denoise_with_features needs the denoiser's network (network=...) to hook, "
                                "or a denoiser with denoise_with_features(x, sigma, class_labels)")
            hook = HookFeatures(lambda a, s: self.denoiser(a, s, yy), network,
                                self._module if self._module is not None else find_bottleneck(network))
            out, feats = hook.denoise_with_features(xx, ss)
        return self._combine(out, b), feats[:b]
