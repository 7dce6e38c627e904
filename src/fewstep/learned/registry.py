"""The learned methods by name, one line each. The CLI's choices and help, the training defaults, the checkpoint
checks, schedule export and the method-parametrised tests all read :data:`METHODS` (docs/adding-a-method.md)."""

from __future__ import annotations

from .amed import AMEDPluginSampler, AMEDSampler
from .dyweight import DyWeightSampler
from .epd import EPDSampler
from .gs import GSSampler
from .pas import PASSampler
from .residual import ResidualSampler
from .sampler import LearnedSampler

__all__ = ["METHODS", "method_class"]

METHODS: dict[str, type[LearnedSampler]] = {
    "amed": AMEDSampler,
    "plugin": AMEDPluginSampler,
    "dyweight": DyWeightSampler,
    "epd": EPDSampler,
    "pas": PASSampler,
    "gs": GSSampler,
    "residual": ResidualSampler,
}
assert all(cls.method == name for name, cls in METHODS.items()), "a method is registered under its own name"


def method_class(name: str) -> type[LearnedSampler]:
    """The class of learned method ``name``, or a ValueError listing the methods."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]
