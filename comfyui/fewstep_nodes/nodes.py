"""ComfyUI nodes for fewstep (classic node API: INPUT_TYPES / RETURN_TYPES / FUNCTION / CATEGORY).

``comfy`` is imported only inside the node functions, so this module (and the tests) import without ComfyUI.
Every SAMPLER is ``comfy.samplers.KSAMPLER(fn, extra_options=...)``: ComfyUI calls
``fn(model_k, noise * sigmas[0], sigmas, extra_args=..., callback=..., disable=..., **extra_options)``, i.e. the
k-diffusion signature that :mod:`fewstep.k` implements, so ``fn`` is a ``fewstep.k.sample_*`` function itself.
"""

from __future__ import annotations

import os
from typing import Any

import torch

CATEGORY_SAMPLERS = "sampling/custom_sampling/samplers"
CATEGORY_SIGMAS = "sampling/custom_sampling/schedulers"

DEFAULT = "solver default"

# name shown in ComfyUI -> fewstep.k function. Which of the node's options each one takes (AFS, max_order, ...) is
# read from that function's signature (:func:`accepted`), never listed here: fewstep.k is the one authority.
SOLVERS: dict[str, str] = {
    "euler": "sample_euler",
    "heun": "sample_heun",
    "dpm_2": "sample_dpm_2",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_3m": "sample_dpmpp_3m",
    "unipc": "sample_unipc",
    "ipndm": "sample_ipndm",
    "ipndm_v": "sample_ipndm_v",
    "deis": "sample_deis",
    "amed": "sample_amed",
    "amed_plugin": "sample_amed_plugin",  # on iPNDM, r = 0.5, c = a = 1 (no predictor)
}
NODE_OPTIONS = ("afs", "max_order", "lower_order_final", "variant", "deis_mode")
# Options of fewstep.k functions that take **options (passed on to fewstep.sample's solver): the solver's fields.
_SOLVER_NAMES = {"sample_dpmpp_2m": "dpmpp", "sample_dpmpp_3m": "dpmpp", "sample_unipc": "unipc"}
FIXED = {"dpmpp_2m": ("max_order",), "dpmpp_3m": ("max_order",)}  # the order is the name


def accepted(solver: str) -> tuple[str, ...]:
    """The node options that ``fewstep.k.<SOLVERS[solver]>`` takes: its keyword parameters, or for a function that
    passes ``**options`` on, the fields of the solver it runs (from fewstep's solver registry) and ``afs``."""
    import dataclasses
    import inspect

    import fewstep

    params = inspect.signature(solver_function(solver)).parameters
    names = set(params)
    if SOLVERS[solver] in _SOLVER_NAMES and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        cls = fewstep.SOLVERS[_SOLVER_NAMES[SOLVERS[solver]]]
        names |= {f.name for f in dataclasses.fields(cls)} | {"afs"}
    return tuple(o for o in NODE_OPTIONS if o in names and o not in FIXED.get(solver, ()))


def _comfy_samplers():
    try:
        import comfy.samplers
    except ImportError as e:  # pragma: no cover - only outside ComfyUI
        raise ImportError("fewstep_nodes must run inside ComfyUI (comfy.samplers not importable)") from e
    return comfy.samplers


def solver_options(solver: str, afs: bool = False, max_order: int = 0, lower_order_final: str = DEFAULT,
                   variant: str = "bh2", deis_mode: str = "tab") -> dict[str, Any]:
    """The ``extra_options`` for ``fewstep.k.<SOLVERS[solver]>``: only the options that function takes; values
    left at their defaults (``max_order=0``, ``lower_order_final="solver default"``, ``afs=False``) are omitted so
    the fewstep.k default applies. AFS with a solver that cannot use it is refused."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown fewstep solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    accepts = accepted(solver)
    if afs and "afs" not in accepts:
        with_afs = ", ".join(n for n in SOLVERS if "afs" in accepted(n))
        raise ValueError(f"fewstep {solver} does not support AFS (analytical first step); use one of {with_afs}, "
                         "or set afs to false")
    opts: dict[str, Any] = {}
    if afs:
        opts["afs"] = True
    if "max_order" in accepts and max_order:
        opts["max_order"] = int(max_order)
    if "lower_order_final" in accepts and lower_order_final != DEFAULT:
        opts["lower_order_final"] = lower_order_final == "enable"
    if "variant" in accepts:
        opts["variant"] = variant
    if "deis_mode" in accepts:
        opts["deis_mode"] = deis_mode
    return opts


def solver_function(solver: str):
    from fewstep import k

    return getattr(k, SOLVERS[solver])


class FewstepSampler:
    """A fewstep ODE solver as a ComfyUI SAMPLER (wire it into SamplerCustom / SamplerCustomAdvanced)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "solver": (list(SOLVERS), {"default": "dpmpp_2m"}),
            "afs": ("BOOLEAN", {"default": False, "tooltip": "analytical first step (saves one model call); "
                                "dpmpp_2m, dpmpp_3m, unipc, amed, amed_plugin only"}),
            "max_order": ("INT", {"default": 0, "min": 0, "max": 4, "tooltip": "0: the solver's default"}),
            "lower_order_final": ([DEFAULT, "enable", "disable"], {"default": DEFAULT}),
            "unipc_variant": (["bh2", "bh1"], {"default": "bh2"}),
            "deis_mode": (["tab", "rhoab", "logrho"], {"default": "tab"}),
        }}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY_SAMPLERS
    DESCRIPTION = "fewstep deterministic few-step ODE solver (fewstep.k) as a SAMPLER."

    def get_sampler(self, solver, afs=False, max_order=0, lower_order_final=DEFAULT, unipc_variant="bh2",
                    deis_mode="tab"):
        opts = solver_options(solver, afs=afs, max_order=max_order, lower_order_final=lower_order_final,
                              variant=unipc_variant, deis_mode=deis_mode)
        return (_comfy_samplers().KSAMPLER(solver_function(solver), extra_options=opts),)


def resolve_path(path: str, kind: str) -> str:
    """An absolute/relative file path; inside ComfyUI a bare name is also looked up in ``models/<kind>``."""
    path = os.path.expanduser(str(path).strip())
    if os.path.isfile(path):
        return path
    try:
        import folder_paths  # ComfyUI's

        cand = os.path.join(folder_paths.models_dir, kind, path)
        if os.path.isfile(cand):
            return cand
    except ImportError:
        pass
    return path  # fewstep's loader gives the error


def _sigmas_out(sigmas: Any, append_zero: bool) -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if append_zero and float(s[-1]) != 0.0:
        s = torch.cat([s, s.new_zeros(1)])
    return s.to(torch.float32)


class FewstepLearnedSampler:
    """A fewstep learned sampler (any method of ``fewstep.learned.METHODS`` whose predictor does not read network
    features: AMED / AMED-Plugin tables, DyWeight, EPD, PAS, GS; ``.safetensors``) as SAMPLER + SIGMAS, run by
    ``fewstep.k.sample_learned``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "fewstep/sampler.safetensors",
                                "tooltip": "file path, or a name under models/fewstep"}),
            "append_zero": ("BOOLEAN", {"default": False, "tooltip": "end SIGMAS with 0: one more model call "
                                        "returns x0 (k-diffusion's convention); off keeps the trained NFE"}),
            "model_id": ("STRING", {"default": "", "tooltip": "if set, refuse files trained for another model"}),
        }}

    RETURN_TYPES = ("SAMPLER", "SIGMAS")
    RETURN_NAMES = ("sampler", "sigmas")
    FUNCTION = "load"
    CATEGORY = CATEGORY_SAMPLERS
    DESCRIPTION = "Load a fewstep learned sampler; wire its SIGMAS (the trained schedule) into the same sampler node."

    def load(self, path, append_zero=False, model_id=""):
        import fewstep.learned
        from fewstep import k

        sampler = fewstep.learned.load(resolve_path(path, "fewstep"), model_id=model_id.strip() or None)
        if sampler.uses_features:
            raise ValueError(f"{path}: this learned sampler's predictor reads the network's features "
                             "(denoise_with_features / a feature hook), which ComfyUI's model wrapper does not "
                             "provide; only samplers without features (DyWeight, EPD, PAS, GS, or AMED / AMED-Plugin "
                             "trained with features='none') can run in ComfyUI")
        # fewstep.k.sample_learned has the k-diffusion signature and runs any learned sampler on its trained sigmas
        # (a trailing 0 adds one evaluation to x0), with the solver and AFS from the sampler's config.
        k_sampler = _comfy_samplers().KSAMPLER(k.sample_learned, extra_options={"predictor": sampler})
        return (k_sampler, _sigmas_out(sampler.config["sigmas"], append_zero))


class FewstepScheduleLoader:
    """A fewstep schedule ``.json`` (fewstep.save_schedule, ``{"sigmas": [...]}`` or a list) as SIGMAS."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "fewstep/schedule.json",
                                "tooltip": "file path, or a name under models/fewstep"}),
            "append_zero": ("BOOLEAN", {"default": True, "tooltip": "end with 0 as ComfyUI's schedulers do"}),
        }}

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "load"
    CATEGORY = CATEGORY_SIGMAS
    DESCRIPTION = "Load a fewstep schedule file as SIGMAS (float32, trailing 0 as ComfyUI's schedulers)."

    def load(self, path, append_zero=True):
        from fewstep.schedules import load_schedule

        return (_sigmas_out(load_schedule(resolve_path(path, "fewstep")), append_zero),)


NODE_CLASS_MAPPINGS = {
    "FewstepSampler": FewstepSampler,
    "FewstepLearnedSampler": FewstepLearnedSampler,
    "FewstepScheduleLoader": FewstepScheduleLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewstepSampler": "fewstep Sampler",
    "FewstepLearnedSampler": "fewstep Learned Sampler (load)",
    "FewstepScheduleLoader": "fewstep Schedule (load)",
}
