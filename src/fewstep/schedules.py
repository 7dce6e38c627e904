"""Time schedules: descending float64 sigma tensors from sigma_max to sigma_min.

All schedules live in the EDM/Karras parameterisation (sigma = t). A schedule of
``num_steps`` sigmas has ``num_steps - 1`` intervals; the paper's Gamma = {t_N = T, ..., t_1 = eps}.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = [
    "same_sigmas",
    "vp_fit",
    "refine_schedule",
    "interpolate_schedule",
    "read_schedule_file",
    "SCHEDULES",
    "get_schedule",
    "validate_sigmas",
    "vp_sigma",
    "vp_sigma_inv",
    "ddpm_alphas_cumprod",
    "save_schedule",
    "load_schedule",
]

SCHEDULES = ("polynomial", "logsnr", "time_uniform", "discrete", "file")
SCHEDULE_FORMAT = "fewstep-schedule"

# Continuous VP schedule of Song et al. (2021), as used by EDM for its VP models.
VP_BETA_MIN = 0.1
VP_BETA_D = 19.9


def vp_sigma(t: torch.Tensor | float, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D) -> torch.Tensor:
    """EDM sigma of VP time t: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()


def vp_sigma_inv(sigma: torch.Tensor | float, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D) -> torch.Tensor:
    """Inverse of :func:`vp_sigma`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    L = torch.log1p(sigma**2)
    return 2 * L / ((beta_min**2 + 2 * beta_d * L).sqrt() + beta_min)  # no cancellation at small sigma


def vp_fit(sigma_min: float = 0.002, sigma_max: float = 80.0, eps: float = 1e-3) -> tuple[float, float]:
    """(beta_min, beta_d) of the VP schedule sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) with
    sigma(eps) = sigma_min and sigma(1) = sigma_max: the VP time in which the DEIS reference code (``edm2t`` of
    zju-pi/diff-sampler, defaults sigma_min 0.002, sigma_max 80) runs tAB, as opposed to the standard VP
    (0.1, 19.9) that :class:`DEIS` uses by default: ``b0, bd = vp_fit(0.002, 80)``, then
    ``get_solver("deis", vp_beta_min=b0, vp_beta_d=bd)``; ``get_schedule("time_uniform", ..., beta_min=b0,
    beta_d=bd)`` is then the reference code's time-uniform schedule. For (0.002, 80) beta_min is slightly
    negative (-0.0048), which the VP time map allows (sigma(t) increases on the schedule's range)."""
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"vp_fit: {name} must be a positive finite number, got {v!r}")
    if not sigma_min < sigma_max or not eps < 1:
        raise ValueError(f"vp_fit needs sigma_min < sigma_max and eps < 1, got {sigma_min!r}, {sigma_max!r}, {eps!r}")
    # log(1 + sigma^2) = beta_d t^2 / 2 + beta_min t at t = eps and t = 1, solved for (beta_min, beta_d).
    l_min, l_max = math.log1p(sigma_min**2), math.log1p(sigma_max**2)
    beta_d = 2 * (l_min / eps - l_max) / (eps - 1)
    beta_min = l_max - 0.5 * beta_d
    if not beta_d > 0 or not beta_d + beta_min > 0 or not beta_d * eps + beta_min > 0:
        raise ValueError(f"vp_fit: no increasing VP schedule passes through sigma({eps}) = {sigma_min} and "
                         f"sigma(1) = {sigma_max} (beta_min {beta_min}, beta_d {beta_d})")
    return beta_min, beta_d


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alphas_cumprod of the linear DDPM beta schedule (Ho et al., 2020), float64."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


MIN_RELATIVE_STEP = 1e-9  # consecutive sigmas must differ by at least this fraction (1 ulp is 2e-16)


def validate_sigmas(sigmas: torch.Tensor | Sequence[float], name: str = "sigmas") -> torch.Tensor:
    """Return ``sigmas`` as a 1-D float64 tensor, or raise ValueError if it is not a valid schedule.

    A valid schedule has at least 2 entries, all finite and positive, strictly decreasing by at least a relative
    :data:`MIN_RELATIVE_STEP` per step (closer sigmas are rounding noise, not a step).
    """
    if isinstance(sigmas, torch.Tensor):
        if sigmas.is_complex():
            raise TypeError(f"{name} must be real, got a {sigmas.dtype} tensor")
        if sigmas.device.type == "meta":
            raise ValueError(f"{name} is a meta tensor (it holds no values); pass real sigmas")
        s = sigmas.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            s = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a 1-D tensor or sequence of floats, got {type(sigmas).__name__}") from e
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(s.shape)}")
    if s.numel() < 2:
        raise ValueError(f"{name} needs at least 2 entries (one step), got {s.numel()}")
    if not torch.isfinite(s).all():
        bad = int((~torch.isfinite(s)).nonzero()[0])
        raise ValueError(f"{name} must be finite; entry {bad} is {s[bad].item()}")
    if not (s > 0).all():
        bad = int((s <= 0).nonzero()[0])
        raise ValueError(
            f"{name} must be positive; entry {bad} is {s[bad].item()} "
            "(end the schedule at sigma_min > 0 and use denoise_to_zero=True for a final jump to 0)"
        )
    diffs = s[1:] - s[:-1]
    if not (diffs < 0).all():
        bad = int((diffs >= 0).nonzero()[0])
        raise ValueError(
            f"{name} must be strictly decreasing; entry {bad + 1} ({s[bad + 1].item()}) "
            f">= entry {bad} ({s[bad].item()})"
        )
    ratio = s[1:] / s[:-1]
    if (ratio > 1 - MIN_RELATIVE_STEP).any():
        bad = int((ratio > 1 - MIN_RELATIVE_STEP).nonzero()[0])
        raise ValueError(
            f"{name}: entries {bad} ({s[bad].item()!r}) and {bad + 1} ({s[bad + 1].item()!r}) are closer than a "
            f"relative {MIN_RELATIVE_STEP:g}; such a step is only rounding noise and breaks multistep solvers"
        )
    return s


def _rho_ramp(a: float, b: float, n: int, rho: float) -> torch.Tensor:
    """n points from a to b, uniform in x^(1/rho) (EDM eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    try:
        ea, eb = float(a) ** (1 / rho), float(b) ** (1 / rho)
    except OverflowError:
        ea = eb = math.inf
    if not (math.isfinite(ea) and math.isfinite(eb)):
        raise ValueError(f"rho={rho:g} is too small for the range {b:g} .. {a:g}: sigma^(1/rho) overflows")
    return (ea + ramp * (eb - ea)) ** rho


def get_schedule(
    kind: str | torch.Tensor | Sequence[float],
    num_steps: int | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    alphas_cumprod: torch.Tensor | None = None,
    beta_min: float = VP_BETA_MIN,
    beta_d: float = VP_BETA_D,
    path: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Build a schedule of ``num_steps`` sigmas, descending from ``sigma_max`` to ``sigma_min``.

    kinds:
      * ``"polynomial"``: EDM (Karras et al., 2022, eq. 5), uniform in sigma^(1/rho).
      * ``"logsnr"``: uniform in log sigma (= uniform in the half log-SNR lambda; DPM-Solver).
      * ``"time_uniform"``: uniform in (VP time)^(1/rho) of the continuous VP schedule (beta_min, beta_d);
        rho=1 is the classic uniform-time schedule.
      * ``"discrete"``: timesteps of a discrete VP model with ``alphas_cumprod`` (default: linear DDPM,
        1000 steps), spaced uniformly in index^(1/rho) between the indices nearest sigma_max and
        sigma_min and rounded, so every sigma is one the model was trained on. Correct for every rho.
        (The index is shifted by one, (index + 1)^(1/rho), so rho > 1 stays well-defined at index 0.)
      * ``"file"``: a schedule saved by :func:`save_schedule` (e.g. by ``fewstep schedule search``) at ``path``.
      * a tensor/sequence: validated and returned as float64 (num_steps must be None or match).
    """
    if isinstance(kind, str) and kind == "file":
        if path is None:
            raise ValueError("get_schedule('file', ...) needs path=... (a JSON file from save_schedule)")
        kind = load_schedule(path)
    if not isinstance(kind, str):
        s = validate_sigmas(kind, "schedule")
        if num_steps is not None and num_steps != s.numel():
            raise ValueError(f"num_steps={num_steps} does not match the given schedule of {s.numel()} sigmas")
        return s
    if path is not None:
        raise ValueError(f"path= is only used with kind='file', not {kind!r}")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULES)} or pass a tensor")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (one step needs two sigmas), got {num_steps}")
    from .jsonio import MAX_SCHEDULE_STEPS

    if num_steps > MAX_SCHEDULE_STEPS:
        raise ValueError(f"num_steps must be at most {MAX_SCHEDULE_STEPS}, got {num_steps}")
    for pname, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{pname} must be a positive finite number, got {v!r}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be smaller than sigma_max ({sigma_max})")

    if kind == "polynomial":
        s = _rho_ramp(sigma_max, sigma_min, num_steps, rho)
    elif kind == "logsnr":
        s = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64).exp()
    elif kind == "time_uniform":
        t_max = float(vp_sigma_inv(sigma_max, beta_min, beta_d))
        t_min = float(vp_sigma_inv(sigma_min, beta_min, beta_d))
        s = vp_sigma(_rho_ramp(t_max, t_min, num_steps, rho), beta_min, beta_d)
    else:  # discrete
        ac = ddpm_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.ndim != 1 or ac.numel() < 2 or not ((ac > 0) & (ac < 1)).all():
            raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")
        model_sigmas = ((1 - ac) / ac).sqrt()  # increasing with the timestep index
        lo = int(torch.argmin((model_sigmas.log() - math.log(sigma_min)).abs()))
        hi = int(torch.argmin((model_sigmas.log() - math.log(sigma_max)).abs()))
        if hi - lo + 1 < num_steps:
            raise ValueError(
                f"num_steps={num_steps} exceeds the {hi - lo + 1} discrete timesteps between sigma_max and sigma_min"
            )
        # Uniform in index^(1/rho) on a shifted index (>= 1, so rho > 1 stays well-defined at index 0).
        idx = _rho_ramp(hi + 1.0, lo + 1.0, num_steps, rho).round().long() - 1
        if not (idx[1:] < idx[:-1]).all():
            raise ValueError(
                f"rho={rho} with num_steps={num_steps} maps two steps to the same discrete timestep; "
                "use fewer steps or a smaller rho"
            )
        s = model_sigmas[idx]
    if kind != "discrete":
        s[0], s[-1] = sigma_max, sigma_min  # exact endpoints, free of rounding in the formulas above
    return validate_sigmas(s, f"{kind} schedule")


def same_sigmas(given: torch.Tensor, trained: torch.Tensor) -> bool:
    """Whether ``given`` is the schedule ``trained`` (float64 tensors): equal to 1e-12, or equal after rounding both
    to float32 (a host's float32 copy of the trained sigmas)."""
    if given.shape != trained.shape:
        return False
    return bool(torch.allclose(given, trained, rtol=1e-12, atol=0)) or bool((given.float() == trained.float()).all())


def refine_schedule(sigmas: torch.Tensor, M: int) -> torch.Tensor:
    """Insert ``M`` points, uniform in log sigma, into every interval (a teacher's schedule around a student's)."""
    if isinstance(M, bool) or not isinstance(M, int) or M < 0:
        raise ValueError(f"M must be a non-negative int, got {M!r}")
    logs = sigmas.log()
    parts = [torch.lerp(logs[i], logs[i + 1], torch.arange(M + 1, dtype=logs.dtype) / (M + 1))
             for i in range(len(sigmas) - 1)]
    out = torch.cat(parts + [logs[-1:]]).exp()
    out[:: M + 1] = sigmas  # the student's sigmas exactly, free of exp/log rounding
    return out


def interpolate_schedule(sigmas: torch.Tensor | Sequence[float], num: int) -> torch.Tensor:
    """``sigmas`` resampled to ``num`` sigmas, log-linear in sigma over the normalised index (as Align Your Steps,
    Sabour et al., 2024, interpolates its schedules): point j of the new schedule sits at u = j / (num - 1) of the
    old index range [0, 1] and takes the linear interpolation of log sigma there. The ends are kept exactly, the
    result is strictly descending, and ``num == len(sigmas)`` returns the same values. A trailing 0 is refused
    (drop it: it is ``denoise_to_zero``, not part of the interpolated range)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an int >= 2, got {num!r}")
    s = validate_sigmas(sigmas, "sigmas").to(torch.float64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"cannot interpolate a schedule with NaN or inf sigmas: {s.tolist()}")
    n = len(s)
    if num == n:
        return s.clone()
    logs = s.log()
    pos = torch.arange(num, dtype=torch.float64) * ((n - 1) / (num - 1))  # new points on the old index
    lo = pos.floor().long().clamp(max=n - 2)
    frac = pos - lo.to(torch.float64)
    out = torch.lerp(logs[lo], logs[lo + 1], frac).exp()
    out[0], out[-1] = s[0], s[-1]
    return validate_sigmas(out, "interpolated schedule")


def save_schedule(path: str | os.PathLike, sigmas: torch.Tensor | Sequence[float], **info: Any) -> Path:
    """Write a schedule as JSON: ``{"format", "version", "sigmas", "info"}``, atomically. ``info`` holds how it was
    made (JSON-serialisable, finite numbers only: NaN / inf would make the file invalid JSON, so they are refused).
    Read it back with ``get_schedule("file", path=...)`` or :func:`load_schedule`."""
    from .io import write_text_atomic

    s = validate_sigmas(sigmas, "sigmas")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"cannot save a schedule with NaN or inf sigmas to {path}: {s.tolist()}")
    doc = {"format": SCHEDULE_FORMAT, "version": 1, "sigmas": [float(v) for v in s], "info": info}
    path = Path(path)
    try:
        text = json.dumps(doc, indent=1, allow_nan=False)
    except ValueError:
        bad = sorted(k for k, v in info.items() if not _finite_json(v))
        raise ValueError(f"cannot save the schedule to {path}: info {', '.join(bad) or ''} holds NaN or inf, which "
                         "JSON cannot represent") from None
    except TypeError as e:
        raise TypeError(f"cannot save the schedule to {path}: info is not JSON-serialisable ({e})") from None
    write_text_atomic(path, text + "\n")
    return path


def _finite_json(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (ValueError, TypeError):
        return False


MAX_SCHEDULE_BYTES = 2**20  # a schedule is a few dozen numbers; 1 MiB leaves room for any info


# the types of the info fields fewstep reads from a schedule file (others are kept as written): a JSON "false" is
# not false, 1 is not true, 3.0 is not an NFE
_INFO_FIELDS: dict[str, tuple[str, tuple[type, ...], bool]] = {
    "afs": ("true or false", (bool,), False), "denoise_to_zero": ("true or false", (bool,), False),
    "solver": ("a string", (str,), True), "method": ("a string", (str,), True), "model_id": ("a string", (str,), True),
    "schedule": ("a string", (str,), True), "format": ("a string", (str,), False),
    "solver_options": ("a JSON object", (dict,), True), "options": ("a JSON object", (dict,), True),
    "nfe": ("a positive integer", (int,), True), "grid": ("a positive integer", (int,), True),
    "guidance": ("a finite number", (int, float), True), "rmse": ("a finite number", (int, float), True),
}


def _check_info(info: Any, path: Path) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise ValueError(f"{path}: info must be a JSON object, got {type(info).__name__}")
    for k, (want, types, nullable) in _INFO_FIELDS.items():
        if k not in info or (info[k] is None and nullable):
            continue
        v = info[k]
        ok = isinstance(v, types) and (bool in types or not isinstance(v, bool))
        if ok and int in types and float not in types:
            ok = v >= 1
        if not ok:
            raise ValueError(f"{path}: info {k} must be {want}{' or null' if nullable else ''}, got "
                             f"{json.dumps(v)[:60]} ({type(v).__name__})")
    return info


def read_schedule_file(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """(sigmas, info) of a schedule file: a :func:`save_schedule` document, ``{"sigmas": [...]}`` or a plain JSON
    list of descending sigmas (a trailing 0, as in k-diffusion, is dropped: use ``denoise_to_zero`` for that jump).
    The one reader of schedule files (:func:`fewstep.jsonio.load_json`: a regular file of at most 1 MiB, bounded
    nesting, finite numbers); the info fields fewstep reads are type-checked (``"afs": "false"`` is refused). Every
    problem is a ValueError naming the file."""
    from .jsonio import JSONInputError, load_json

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a schedule file")
    try:
        doc = load_json(path, what="schedule file", max_bytes=MAX_SCHEDULE_BYTES, expect=(dict, list))
    except JSONInputError as e:
        if e.detail.startswith("is not a regular file") or e.detail.endswith((" are read", " bytes")):
            raise ValueError(f"{path} {e.detail}") from None  # not a regular file, too large
        raise ValueError(f"{path} is not a JSON schedule file: {e.detail.removeprefix('is not valid JSON: ')}") \
            from None
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"no schedule file at {path}") from None
        raise OSError(e.errno, f"cannot read schedule file {path}: {e.strerror or e}") from None
    info: dict[str, Any] = {}
    if isinstance(doc, dict):
        if doc.get("format", SCHEDULE_FORMAT) != SCHEDULE_FORMAT or doc.get("version", 1) != 1 or \
                isinstance(doc.get("version", 1), bool):
            raise ValueError(f"{path}: unsupported schedule format {doc.get('format')!r} version {doc.get('version')!r}")
        if "sigmas" not in doc:
            raise ValueError(f"{path}: schedule file has no 'sigmas' list")
        info = _check_info(doc.get("info", {}), path)
        doc = doc["sigmas"]
    if not isinstance(doc, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc):
        raise ValueError(f"{path}: 'sigmas' must be a list of numbers")
    from .jsonio import MAX_SCHEDULE_STEPS

    if len(doc) > MAX_SCHEDULE_STEPS + 1:
        raise ValueError(f"{path}: a schedule has at most {MAX_SCHEDULE_STEPS} sigmas, got {len(doc)}")
    if any(isinstance(v, int) and abs(v) > 2**53 for v in doc) or \
            not all(math.isfinite(float(v)) for v in doc):
        raise ValueError(f"{path}: 'sigmas' must be finite numbers of moderate size")
    if len(doc) > 2 and doc[-1] == 0:
        doc = doc[:-1]
    return validate_sigmas(doc, f"schedule in {path}"), info




def load_schedule(path: str | os.PathLike) -> torch.Tensor:
    """The sigmas of a schedule file (:func:`read_schedule_file`)."""
    return read_schedule_file(path)[0]
