"""The evaluation bed: a model, held-out noise seeds, its high-accuracy ODE solution and metrics. One class used by
the demo, the paper tables, the CLI and the benchmarks (there is no other place that builds one).

Two beds ship: :meth:`Bed.gmm`, a Gaussian mixture fitted to natural-image patches whose exact denoiser makes the
ODE solution exact up to the reference solver's tiny error (the model, :func:`fewstep.denoisers.gmm_denoiser`, is
re-exported here), and :meth:`Bed.unet`, the shipped U-Net with a high-NFE teacher solution and a Fréchet distance
to training patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..denoisers import GMM_MODEL_ID, gmm_denoiser
from ..evaluation import BASELINES, SolverSpec, reference_solution, rmse, solver_table
from ..sampling import noise_for_seeds
from ..seeds import report_seeds

__all__ = ["Bed", "gmm_denoiser", "GMM_MODEL_ID"]


@dataclass
class Bed:
    """A model with held-out noise, its high-accuracy ODE solution and optional extra metrics."""

    denoiser: Callable
    noise: torch.Tensor
    ref: torch.Tensor
    ref_error: float
    shape: tuple[int, ...]
    model_id: str | None
    dtype: torch.dtype
    description: str
    fd: Callable[[torch.Tensor], float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()  # the noise seeds of ``noise`` (empty when built by hand)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, denoiser: Callable, shape: Sequence[int], *, seeds: int | Sequence[int] = 1000,
              ref_steps: int = 256, model_id: str | None = None, dtype: torch.dtype = torch.float64,
              description: str = "", fd_reference: torch.Tensor | None = None, check: bool = True,
              progress: bool = False) -> "Bed":
        """Held-out noise for ``seeds`` (a count n means the held-out seeds :func:`fewstep.seeds.report_seeds`, never
        a training seed) and the reference solution (DEIS-4,
        ``ref_steps`` polynomial steps; ``ref_error`` is its change against half the steps when ``check``). With
        ``fd_reference`` (real images), ``bed.fd(x)`` is the Fréchet distance in a fixed 64-D random feature space
        (:class:`fewstep.metrics.RandomFeatures`)."""
        from .. import metrics

        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 2:
                raise ValueError(f"seeds must be an int >= 2, got {seeds!r}")
            seed_list = report_seeds(seeds)
        elif isinstance(seeds, (bool, str, bytes)):
            raise ValueError(f"seeds must be an int >= 2 or a sequence of seeds, got {seeds!r}")
        else:
            seed_list = list(seeds)
        noise = noise_for_seeds(seed_list, tuple(shape), dtype=dtype)
        ref, err = reference_solution(denoiser, noise, steps=ref_steps, check=check, progress=progress)
        fd = None
        if fd_reference is not None:
            feats = metrics.RandomFeatures(int(math.prod(shape)))
            mu_r, s_r = metrics.gaussian_stats(feats(fd_reference))

            def fd(x: torch.Tensor) -> float:
                mu, s = metrics.gaussian_stats(feats(x.clamp(-1, 1)))
                return metrics.frechet_distance(mu, s, mu_r, s_r)

        info = {"seeds": len(seed_list), "first_seed": seed_list[0], "ref_steps": ref_steps}
        return cls(denoiser, noise, ref, err, tuple(shape), model_id, dtype, description, fd, info,
                   tuple(seed_list))

    @classmethod
    def gmm(cls, *, seeds: int | Sequence[int] = 1000, ref_steps: int = 256, size: int = 8, components: int = 10,
            count: int = 20000, check: bool = True, progress: bool = False) -> "Bed":
        """The analytic natural-patch bed: exact denoiser of a ``components``-component Gaussian mixture fitted to
        size x size x 3 patches of the photos that ship with scikit-image / scikit-learn (float64)."""
        gmm = gmm_denoiser(size, components, count)
        desc = (f"Gaussian mixture fitted to {size}x{size}x3 natural-image patches ({components} components; "
                "exact denoiser)")
        return cls.build(gmm, (3, size, size), seeds=seeds, ref_steps=ref_steps, model_id=gmm.model_id,
                         dtype=torch.float64, description=desc, check=check, progress=progress)

    @classmethod
    def unet(cls, model: Any = None, *, seeds: int | Sequence[int] = 256, ref_steps: int = 128,
             fd_patches: int = 10000, dtype: torch.dtype = torch.float32, check: bool = True,
             progress: bool = False) -> "Bed":
        """The shipped U-Net (or ``model``, a SmallUNet): RMSE to a DEIS-4 teacher with ``ref_steps`` steps and a
        Fréchet distance to ``fd_patches`` training patches."""
        from .. import data
        from ..denoisers import default_unet

        model = default_unet() if model is None else model
        model.eval().requires_grad_(False)
        res = model.config.img_resolution
        shape = (model.config.channels, res, res)
        patches = data.image_patches(size=res, count=fd_patches, seed=12345) if shape[0] == 3 else None
        desc = f"model {model.model_id} (RMSE to a high-accuracy teacher solution, not to an exact one)"
        return cls.build(model, shape, seeds=seeds, ref_steps=ref_steps, model_id=model.model_id, dtype=dtype,
                         description=desc, fd_reference=patches, check=check, progress=progress)

    # ------------------------------------------------------------------ measuring
    def rmse(self, x: torch.Tensor) -> float:
        """Root-mean-square error of samples ``x`` (same seeds) to the reference solution."""
        return rmse(x, self.ref)

    def on_sample(self, row: dict[str, Any], nfe: int, x: torch.Tensor) -> None:
        """Add the secondary metric (FD) of a sample set to ``row["fd"][nfe]``."""
        if self.fd is not None:
            row.setdefault("fd", {})[nfe] = self.fd(x)

    def solver_table(self, nfes: Sequence[int] = (3, 5, 7, 9), specs: Sequence[SolverSpec] = BASELINES,
                     schedule: str = "polynomial", rho: float = 7.0, progress: bool = False,
                     on_sample: Callable[[dict[str, Any], int, torch.Tensor], None] | None = None) -> list[dict]:
        """:func:`fewstep.evaluation.solver_table` on this bed (FD added to each row when the bed has one)."""
        def both(row: dict[str, Any], nfe: int, x: torch.Tensor) -> None:
            self.on_sample(row, nfe, x)
            if on_sample is not None:
                on_sample(row, nfe, x)

        hook = both if (self.fd is not None or on_sample is not None) else None
        return solver_table(self.denoiser, self.noise, self.ref, nfes=nfes, specs=specs, schedule=schedule, rho=rho,
                            progress=progress, on_sample=hook)
