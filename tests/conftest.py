"""Shared analytic test beds."""

from __future__ import annotations

import pytest
import torch

import fewstep

# The analytic beds are tiny: intra-op threading only adds synchronisation overhead (10x on 2 cores).
torch.set_num_threads(1)


def make_gmm(dim: int = 4, components: int = 3, seed: int = 0, spread: float = 0.4, floor: float = 0.05):
    """A small, well-conditioned full-covariance Gaussian mixture with unequal weights."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, dtype=torch.float64, generator=g)
    A = torch.randn(components, dim, dim, dtype=torch.float64, generator=g) * spread
    covs = A @ A.transpose(-1, -2) + floor * torch.eye(dim, dtype=torch.float64)
    w = torch.arange(components, 0, -1, dtype=torch.float64)
    return fewstep.denoisers.GaussianMixture(means, covs, w / w.sum())


@pytest.fixture(autouse=True)
def _teacher_cache_per_test(monkeypatch, tmp_path_factory, request):
    """``fewstep train`` caches teacher targets by default: in tests, in a folder of each test's own (never the
    user's cache), so no test sees another's targets."""
    import fewstep.teacher

    folder = tmp_path_factory.getbasetemp() / "teacher-cache" / request.node.name[:100]
    monkeypatch.setattr(fewstep.teacher, "default_cache_dir", lambda: folder)


@pytest.fixture(scope="session")
def gmm4():
    return make_gmm()


@pytest.fixture(scope="session")
def noise16():
    return fewstep.noise_for_seeds(range(16), (4,), dtype=torch.float64)


class CountingDenoiser:
    """Wraps a denoiser and counts its calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.inner(x, sigma)
