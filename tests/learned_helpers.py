"""Helpers shared by the learned-sampler tests (test_learned.py, test_learned_pas_gs.py)."""

from __future__ import annotations

import torch

import fewstep

SIG7 = fewstep.get_schedule("polynomial", 7, 0.002, 80.0)


def make_sampler(cls, sigmas=SIG7, afs=True, **kw):
    """An untrained (neutral) learned sampler of class ``cls`` on ``sigmas``."""
    options = kw.pop("options", None)
    return cls(cls.make_config(sigmas, afs=afs, options=options, **kw))


def perturb(sampler, seed=0, scale=0.05):
    """Move every parameter off its neutral value (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sampler.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return sampler
