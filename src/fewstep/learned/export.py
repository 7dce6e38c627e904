"""Schedules and AMED tables as plain numbers for other tools (``fewstep schedule export``).

Every export carries what the schedule was made for (model id, sigma range, NFE and how that NFE was counted:
solver, AFS, denoise_to_zero) and what a host must do to pay exactly that NFE: the same sigmas cost a different
number of model calls in a host sampler of another family (1 or 2 evaluations per step), without AFS (k-diffusion,
ComfyUI and diffusers have none) or with a trailing 0 (one more evaluation)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["EXPORT_FORMATS", "EXPORT_FORMAT", "export_document", "export_schedule", "cost_line"]

EXPORT_FORMATS = ("json", "list", "k", "diffusers")
EXPORT_FORMAT = "fewstep-schedule-export"

# fewstep solver -> its fewstep.k function; the k-diffusion / ComfyUI samplers of the same family
_K_FUNCTION = {"euler": "sample_euler", "heun": "sample_heun", "dpm2": "sample_dpm_2", "dpmpp": "sample_dpmpp_2m",
               "unipc": "sample_unipc", "ipndm": "sample_ipndm", "ipndm_v": "sample_ipndm_v", "deis": "sample_deis",
               "amed": "sample_amed", "amed_plugin": "sample_amed_plugin"}
_FAMILIES = {1: "euler, dpmpp_2m, dpmpp_3m, ipndm, ipndm_v, deis, unipc (1 model call per step)",
             2: "heun, dpm_2 (2 model calls per step)"}


def _counting_model() -> tuple[Any, list[int]]:
    """A model (zero x0 prediction) that counts its calls: the numbers an export states are counted, not assumed."""
    import torch

    n = [0]

    def model(x: Any, sigma: Any, **_: Any) -> Any:
        n[0] += 1
        return torch.zeros_like(x)
    return model, n


def _count(run: Any) -> int:
    model, n = _counting_model()
    run(model)
    return n[0]


def _sampler_calls(sampler: Any) -> int:
    """Model calls of ``fewstep.k.sample_learned`` with this sampler, counted on a counting model (a feature
    predictor needs the real network's features: its NFE accounting then)."""
    import torch

    from ..k import sample_learned

    cfg = sampler.config
    shape = (cfg.get("training") or {}).get("shape") if isinstance(cfg.get("training"), dict) else None
    if getattr(sampler, "uses_features", False) or not isinstance(shape, list):
        return sampler.nfe()
    x = torch.zeros((1, *shape), dtype=torch.float64)
    guided = getattr(sampler, "guidance_aware", False)
    if guided:
        sampler.guidance_scale = sampler._scale_state.lo
    try:
        return _count(lambda m: sample_learned(m, x, None, predictor=sampler, disable=True))
    finally:
        if guided:
            sampler.guidance_scale = None


def _solver_cost(solver: Any, num_sigmas: int, afs: bool) -> int:
    from ..sampling import count_nfe

    return count_nfe(solver, num_sigmas, afs, denoise_to_zero=False)


def export_document(source: str | os.PathLike, nfe: int | None = None, *,
                    schedule_only: bool = False, sampler: Any = None) -> dict[str, Any]:
    """Everything :func:`export_schedule` can give, as one JSON-ready dict.

    ``source``: a schedule .json (:func:`fewstep.schedules.save_schedule`, ``{"sigmas": ...}`` or a plain list) or a
    learned sampler (.safetensors, any method). ``nfe``: resample the schedule
    (:func:`fewstep.schedules.interpolate_schedule`) to the number of sigmas at which its solver, with its AFS
    setting, makes ``nfe`` model calls; a file without a solver in its info is counted as one call per step without
    AFS. A learned sampler's per-step parameters belong to its trained steps, and only AMED's predictor-free tables
    have per-step numbers a host can apply (r, c, a; a feature predictor computes them per sample, DyWeight / EPD /
    PAS / GS act inside fewstep's own solvers): with another ``nfe``, or without such a table, the export is refused
    unless ``schedule_only`` (then only the sigmas are exported, and the document says that the host does not
    reproduce the trained sampler). ``sampler``: the checkpoint already loaded (:func:`fewstep.learned.load`).

    Keys: ``format``, ``model_id``, ``sigma_max``, ``sigma_min``, ``num_sigmas``, ``nfe`` and ``nfe_counting``
    (solver, options, afs, denoise_to_zero, evals_per_step, rule), ``source``, ``sigmas``, ``k_diffusion_sigmas``
    (ending in 0), ``diffusers_sigmas`` (no 0: diffusers appends its final sigma itself), ``host`` (how to pay
    ``nfe`` exactly and the model calls of each host family) and, for a learned sampler, ``afs``, ``method``,
    ``options``, ``base`` and (AMED tables) ``steps``."""
    from ..schedules import interpolate_schedule, read_schedule_file
    from ..solvers import get_solver
    from ..solvers.base import geometric_time
    from .checkpoint import load

    if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    source = Path(source)
    table = None
    notes: list[str] = []
    if sampler is not None or source.suffix == ".safetensors":  # a learned sampler, any method
        sampler = sampler if sampler is not None else load(source)
        cfg = sampler.config
        sig = [float(v) for v in cfg["sigmas"]]
        afs, model_id = bool(cfg["afs"]), cfg.get("model_id")
        solver, solver_name, options = sampler.solver(), cfg["method"], dict(cfg["options"])
        kind, method = "learned_sampler", cfg["method"]
        table = sampler.export_steps()
        if table is None and not schedule_only:
            if getattr(sampler, "uses_features", False):
                why = (f"{source} is a feature-based AMED predictor: its r, c, a are computed per sample from the "
                       "network's features while sampling, so there are no per-step values to export")
            elif getattr(sampler, "guidance_aware", False):
                why = (f"{source} is a guidance-aware {method} table: its per-step values depend on the guidance "
                       "scale chosen when sampling, so there is no one set of values to export")
            else:
                why = (f"{source} is a {method} sampler: its per-step parameters act inside fewstep's {method} "
                       "solver, which no host sampler has")
            raise ValueError(
                f"{why}. Sample it with fewstep.sample, fewstep.k.sample_learned or FewstepScheduler(predictor=path), "
                "or pass schedule_only (--schedule-only) to export its sigmas alone (a host sampler on them is not "
                "the trained sampler)")
        if table is None:
            notes.append(f"sigmas only: a host sampler on them does not apply the trained {method} parameters")
    else:
        sig_t, info = read_schedule_file(source)  # info fields type-checked there
        sig = sig_t.tolist()
        model_id = info.get("model_id")
        afs = info.get("afs", False)
        solver_name = info.get("solver")
        options = info.get("solver_options") or {}
        solver = get_solver(solver_name, **options) if solver_name else get_solver("euler")
        kind, method = "schedule", info.get("method")
    src_nfe = _solver_cost(solver, len(sig), afs)
    doc: dict[str, Any] = {"format": EXPORT_FORMAT, "version": 1}
    if nfe is not None and nfe != src_nfe:
        if kind != "schedule" and not schedule_only:
            raise ValueError(f"{source} holds parameters for each trained step (NFE {src_nfe}); they cannot be "
                             f"interpolated to NFE {nfe}. Pass schedule_only (--schedule-only) to export the "
                             "interpolated sigmas alone, or train a sampler at that NFE")
        from ..sampling import steps_for_nfe

        num = steps_for_nfe(solver, nfe, afs)
        new = interpolate_schedule(sig, num).tolist()
        doc["interpolated_from"] = {"sigmas": sig, "nfe": src_nfe, "method": "log-linear in sigma over the "
                                    "normalised index (Align Your Steps)"}
        sig, table = new, None
        notes.append(f"interpolated from NFE {src_nfe}; not searched or trained at NFE {nfe}")
    out_nfe = _solver_cost(solver, len(sig), afs)
    per_step = solver.nfe(3) - solver.nfe(2)
    host_kind = kind if "interpolated_from" not in doc else f"{kind}_interpolated"
    if host_kind == "learned_sampler":
        out_nfe = _sampler_calls(sampler)
    elif kind == "schedule":  # also interpolated: the solver named in the file, run on the exported sigmas
        out_nfe = _schedule_calls(solver, sig, afs)
    doc.update({
        "model_id": model_id,
        "sigma_max": sig[0],
        "sigma_min": sig[-1],
        "num_sigmas": len(sig),
        "nfe": out_nfe,
        "nfe_counting": {
            "solver": solver_name, "options": options, "afs": afs, "denoise_to_zero": False,
            "evals_per_step": per_step,
            "rule": (f"{per_step} x {len(sig) - 1} steps" + (" - 1 (AFS: the first evaluation is analytical)"
                                                              if afs else "") + "; no final evaluation at sigma 0"),
            **({} if solver_name else {"assumed": "the file names no solver: 1 model call per step, no AFS"}),
        },
        "source": {"path": str(source), "kind": kind, "method": method},
    })
    if kind == "learned_sampler":
        doc["afs"], doc["method"], doc["options"], doc["base"] = afs, method, options, cfg["base"]
        if table is not None:  # AMED tables: r, c, a per step
            steps = []
            for i, v in enumerate(table):
                s_n = geometric_time(sig[i], sig[i + 1], v["r"])  # AMED eq. 10
                steps.append({"t_cur": sig[i], "t_next": sig[i + 1], "r": v["r"], "s": s_n,
                              "eval_sigma": v["a"] * s_n, "c": v["c"]})
            doc["steps"] = steps
    doc["sigmas"] = sig
    doc["k_diffusion_sigmas"] = sig + [0.0]
    doc["diffusers_sigmas"] = list(sig)
    doc["host"] = _host(solver_name, host_kind, afs, sig, out_nfe, options)
    if notes:
        doc["notes"] = notes
    return doc


def _schedule_calls(solver: Any, sig: list[float], afs: bool) -> int:
    """Model calls of ``fewstep.sample`` with ``solver`` on ``sig``, counted."""
    import torch

    from ..sampling import sample

    x = torch.zeros((1, 1), dtype=torch.float64)
    return _count(lambda m: sample(m, x, torch.tensor(sig, dtype=torch.float64), solver=solver, afs=afs))


def _host_calls(sig: list[float], evals: int, afs: bool, zero: bool) -> int:
    """Model calls of a 1-call/step (Euler) or 2-call/step (Heun) host sampler on ``sig`` (with a trailing 0),
    counted with fewstep.k's samplers of that family."""
    import torch

    from ..k import sample_euler, sample_heun

    fn = sample_heun if evals == 2 else sample_euler
    s = torch.tensor(sig + [0.0] if zero else sig, dtype=torch.float64)
    x = torch.zeros((1, 1), dtype=torch.float64)
    return _count(lambda m: fn(m, x, s, disable=True, afs=afs))


def _host(solver_name: str | None, kind: str, afs: bool, sig: list[float], nfe: int,
          options: dict[str, Any]) -> dict[str, Any]:
    """How a host pays exactly ``nfe`` (counted) on these sigmas, and the model calls of each host family, each
    counted on a counting model (never derived from a per-step rule)."""
    name = solver_name or "euler"
    fn = _K_FUNCTION.get(name)
    if kind == "learned_sampler":
        exact = (f"fewstep.k.sample_learned(model, x, predictor=checkpoint) (the trained sampler, {nfe} model calls; "
                 "a host sampler on 'sigmas' is not it)")
    elif kind == "learned_sampler_interpolated":
        exact = (f"no sampler: the trained parameters belong to the trained steps; on these interpolated sigmas "
                 f"{solver_name} would make {nfe} model calls, and a host sampler makes the calls listed below")
    elif fn is not None and not options:
        exact = (f"fewstep.k.{fn}(model, x, sigmas, afs={afs}) with sigmas = 'sigmas' (no trailing 0): "
                 f"{nfe} model calls")
    else:
        exact = (f"fewstep.sample(denoiser, noise, sigmas, solver={name!r}, afs={afs}"
                 f"{''.join(f', {k}={v!r}' for k, v in options.items())}) with sigmas = 'sigmas': {nfe} model calls")
    calls = []
    counted: dict[tuple[int, bool, bool], int] = {}
    for e in (1, 2):
        for use_afs in (False, True):
            for zero in (False, True):
                counted[e, use_afs, zero] = n = _host_calls(sig, e, use_afs, zero)
                calls.append({"family": _FAMILIES[e], "evals_per_step": e, "afs": use_afs, "trailing_zero": zero,
                              "model_calls": n,
                              "where": "fewstep.k only (afs=True)" if use_afs else
                              "fewstep.k, k-diffusion, ComfyUI; diffusers = trailing_zero true"})
    fam = "; ".join(f"{e}-call/step samplers ({'heun, dpm_2' if e == 2 else 'euler, dpmpp_2m, ipndm, deis, unipc'}):"
                    f" {counted[e, False, False]} ({counted[e, True, False]} with fewstep.k afs=True), "
                    f"{counted[e, False, True]} with a trailing 0" for e in (1, 2))
    paying = [e for e in (1, 2) if counted[e, False, False] == nfe]
    if kind.startswith("learned_sampler"):
        elsewhere = (f"A host sampler on 'sigmas' does not apply the trained parameters, so no host pays NFE {nfe} "
                     f"as this sampler. Model calls on them: {fam}")
    elif not paying:
        elsewhere = (f"Hosts without AFS (k-diffusion, ComfyUI, diffusers) cannot pay NFE {nfe} on these sigmas. "
                     if afs else f"No k-diffusion / ComfyUI / diffusers sampler pays NFE {nfe} on these sigmas. ")
        elsewhere += f"Model calls on them: {fam}"
    else:
        elsewhere = (f"In k-diffusion / ComfyUI use a {paying[0]}-call/step sampler on 'sigmas' without a trailing 0 "
                     f"({nfe} calls). Model calls on them: {fam}")
    elsewhere += " (k_diffusion_sigmas ends in 0; diffusers always appends its 0)"
    return {
        "to_pay_nfe": exact,
        "elsewhere": elsewhere,
        "trailing_zero": "k_diffusion_sigmas ends in 0: one more model call (the final jump to x0, fewstep's "
                         "denoise_to_zero), not counted in nfe",
        "diffusers": "pass diffusers_sigmas (no 0) as sigmas=: the scheduler appends its final sigma (0 by default) "
                     "itself, which costs one more model call, like a trailing 0",
        "model_calls": calls,
    }


def cost_line(doc: dict[str, Any]) -> str:
    """One line for a person: what the schedule costs and what a host must do to pay exactly that."""
    c = doc["nfe_counting"]
    made = f"{c['solver'] or 'unknown solver'}{', AFS' if c['afs'] else ''}, no denoise_to_zero"
    return (f"NFE {doc['nfe']} ({made}; model {doc['model_id']}; sigma {doc['sigma_max']:.4g}..{doc['sigma_min']:.4g},"
            f" {doc['num_sigmas']} sigmas). To pay it: {doc['host']['to_pay_nfe']}. {doc['host']['elsewhere']}."
            + "".join(f" Note: {n}." for n in doc.get("notes", [])))


def export_schedule(source: str | os.PathLike, fmt: str = "json", nfe: int | None = None, *,
                    schedule_only: bool = False) -> dict[str, Any] | list[float]:
    """A schedule file (.json) or a learned sampler (.safetensors) as plain numbers.

    ``fmt="list"``: the sigmas; ``"k"``: the sigmas ending in 0, as k-diffusion / ComfyUI SIGMAS take them (the 0
    costs one more model call); ``"diffusers"``: the sigmas without 0 for diffusers' ``sigmas=`` (the scheduler
    appends its final sigma itself); ``"json"``: :func:`export_document` (the sigmas in every form, model id, sigma
    range, NFE and how it is counted, how a host pays it, and for a table checkpoint the per-step t_cur, t_next,
    r, the intermediate time s = t_next^r t_cur^(1-r) (AMED eq. 10), the sigma the model is evaluated at there
    (a * s) and c). ``nfe`` and ``schedule_only``: see :func:`export_document`."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    doc = export_document(source, nfe, schedule_only=schedule_only)
    if fmt == "list":
        return doc["sigmas"]
    if fmt == "k":
        return doc["k_diffusion_sigmas"]
    if fmt == "diffusers":
        return doc["diffusers_sigmas"]
    return doc
