"""The one import of the optional ``diffusers`` package for this integration: its classes the scheduler builds on,
or :class:`DiffusersNotInstalledError` with the install hint when it is missing or broken."""

from __future__ import annotations

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
           "KarrasDiffusionSchedulers", "SchedulerMixin", "BaseOutput"]
