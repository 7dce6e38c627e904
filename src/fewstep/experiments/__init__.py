"""Experiments built on the core: the evaluation :class:`~fewstep.experiments.bed.Bed`, the demo, the AMED paper's
tables, studies and reports (:mod:`.paper`), and the analyses behind ``fewstep analyze``. Nothing in the core imports
this package."""

# Submodules load on first use (``fewstep.experiments.paper`` after ``import fewstep``).
_LAZY = ("bed", "demo", "paper", "analysis")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
