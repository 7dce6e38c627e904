"""Optional dependencies: the one place that imports a package of an extra (``pip install 'fewstep[demo]'``) and,
when it is missing, says which extra to install instead of a bare ImportError traceback.

The core install (torch, numpy, safetensors, tqdm, pillow) samples, trains and reads / writes checkpoints; the
extras (``pyproject.toml``) add the photo and digits beds and plots (``demo``), the photo-patch references and the
digits judge of the evaluations (``eval``) and the diffusers integration (``diffusers``)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["MissingExtraError", "require", "check", "install_hint", "PACKAGES"]

# import name -> the name pip installs it under
PACKAGES = {
    "matplotlib": "matplotlib",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "threadpoolctl": "threadpoolctl",  # installed with scikit-learn
    "diffusers": "diffusers",
    "transformers": "transformers",
}

EXTRAS = ("demo", "eval", "diffusers", "text", "test")


class MissingExtraError(ModuleNotFoundError, ValueError):
    """A package of one of fewstep's extras is not installed. A ModuleNotFoundError, so ``except ImportError`` works;
    also a ValueError, the class fewstep's CLI reports as a one-line error (exit status 2)."""


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; fewstep's extras: {', '.join(EXTRAS)}")
    return f"pip install 'fewstep[{extra}]'"


def _missing(module: str, extra: str, purpose: str | None) -> MissingExtraError:
    top = module.split(".")[0]
    package = PACKAGES.get(top, top)
    what = purpose or "this"
    return MissingExtraError(f"{what} needs the '{package}' package, which is not installed: {install_hint(extra)}",
                             name=top)


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` naming ``extra`` if its package is not
    installed. ``purpose`` starts the message ("the natural-patch bed"). An installed package that fails to import
    for another reason keeps its own error: that is a broken install, not a missing extra."""
    install_hint(extra)  # an unknown extra is a bug at the call site, found on the first call
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and (e.name == top or e.name.startswith(top + ".")) and not _installed(top):
            raise _missing(module, extra, purpose) from None
        raise


def _installed(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # a module without a spec
        return False  # (sys.modules[top] = None, which blocks an import, gives None above: missing)


def check(*modules: str, extra: str, purpose: str | None = None) -> None:
    """Fail early, before any work, when a package a command will need is missing (without importing it: finding
    it is enough, and matplotlib or scikit-learn are slow to import)."""
    install_hint(extra)
    for module in modules:
        if not _installed(module.split(".")[0]):
            raise _missing(module, extra, purpose)
