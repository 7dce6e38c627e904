"""The one import of the optional ``diffusers`` package for this integration: its classes the scheduler builds on,
or :class:`DiffusersNotInstalledError` with the install hint when it is missing or broken."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ..._extras import MissingExtraError, install_hint

INSTALL_HINT = f"the diffusers integration needs the 'diffusers' package: {install_hint('diffusers')}"


class DiffusersNotInstalledError(MissingExtraError):
    """``diffusers`` is not installed (or fails to import). A ModuleNotFoundError, so ``except ImportError`` works;
    also a ValueError, the class fewstep's CLI reports as a one-line error. (It cannot also be an OSError:
    Python refuses a class deriving from both ImportError and OSError.)"""


try:
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as _e:
    if _e.name == "diffusers":  # not installed (or blocked with sys.modules["diffusers"] = None)
        raise DiffusersNotInstalledError(INSTALL_HINT, name="diffusers") from None
    raise DiffusersNotInstalledError(
        f"the diffusers integration could not import the installed 'diffusers' package ({_e}); reinstall it: "
        "pip install --upgrade 'fewstep[diffusers]'", name="diffusers") from _e

__all__ = ["INSTALL_HINT", "DiffusersNotInstalledError", "diffusers", "ConfigMixin", "register_to_config",
           "KarrasDiffusionSchedulers", "SchedulerMixin", "BaseOutput", "quiet_loading"]


class _DropNotices(logging.Filter):
    """Drops the notices every offline CPU load prints and nobody can act on: diffusers' "Cannot initialize model
    with low cpu memory usage because `accelerate` was not found" and transformers' "... requires torchvision (not
    installed); falling back to ..." (image processors fewstep never uses). Every other message passes, so warnings
    about missing or unexpected weights still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (("accelerate" in msg and "low cpu memory" in msg) or "requires torchvision" in msg)


@contextlib.contextmanager
def quiet_loading(*classes: type) -> Iterator[None]:
    """While loading with ``cls.from_pretrained`` (and importing a pipeline class): the notices of
    :class:`_DropNotices` filtered on the loggers that print them, and diffusers' and transformers' loading progress
    bars off; all restored afterwards (no global verbosity changes)."""
    names = {"diffusers.models.modeling_utils", "transformers.utils.import_utils",
             *(getattr(c.from_pretrained, "__module__", None) or "diffusers" for c in classes)}
    loggers = [logging.getLogger(n) for n in names]
    f = _DropNotices()
    bars = [diffusers.utils.logging]
    try:
        from transformers.utils import logging as tlog

        bars.append(tlog)
    except ImportError:
        pass
    was = [b.is_progress_bar_enabled() for b in bars]
    for lg in loggers:
        lg.addFilter(f)
    for b in bars:
        b.disable_progress_bar()
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)
        for b, on in zip(bars, was):
            if on:
                b.enable_progress_bar()
