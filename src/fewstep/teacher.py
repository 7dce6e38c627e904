"""The default teacher and how to run it: reference solutions, distillation targets and schedule search all use
the same accurate solver (DEIS with Lagrange extrapolation in log sigma, order 4; Zhang & Chen, 2023); and the disk
cache of teacher targets (:class:`TeacherCache`), so that a training run reuses what an earlier one computed."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .io import SafetensorsFileError, read_json_file, read_safetensors, write_safetensors, write_text_atomic
from .jsonio import load_json
from .sampling import Solution, solve
from .schedules import refine_schedule

__all__ = ["REFERENCE_SOLVER", "teacher_options", "run_teacher", "TeacherCache", "default_cache_dir", "model_key",
           "code_digest", "provenance", "MAX_CACHE_BYTES", "CACHE_FORMAT"]

REFERENCE_SOLVER = ("deis", {"max_order": 4, "deis_mode": "logrho"})  # reference and default AMED/GITS teacher


def teacher_options(teacher: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's solver options: ``options`` as given, or the reference DEIS-logrho order 4 for ``"deis"``."""
    if options is None and teacher == REFERENCE_SOLVER[0]:
        return dict(REFERENCE_SOLVER[1])
    return dict(options or {})


def run_teacher(denoiser: Callable, noise: torch.Tensor, sigmas: torch.Tensor, M: int, teacher: str = "deis",
                options: dict[str, Any] | None = None, *, trajectory: bool = False,
                **sample_kwargs: Any) -> Solution:
    """Run ``teacher`` from noise * sigmas[0] on ``sigmas`` with ``M`` log-uniform points inserted per interval
    (AMED's teacher, Zhou et al., 2024, Sec. 3.4). With ``trajectory`` the result's ``trajectory`` holds the
    teacher's states at the given (coarse) sigmas only."""
    fine = refine_schedule(sigmas, M)
    res = solve(denoiser, noise, fine, teacher, trajectory=trajectory, **sample_kwargs,
                **teacher_options(teacher, options))
    if trajectory:
        res.trajectory = res.trajectory[:: M + 1]
        res.sigmas = sigmas
    return res


# ------------------------------------------------------------------------------------------------- the disk cache
CACHE_FORMAT = "fewstep-teacher-cache"
MAX_CACHE_BYTES = 2**31  # one entry (one training run's targets, one process's shard) is at most 2 GiB
_SAID: set[str] = set()


def say_once(message: str) -> None:
    """A UserWarning the first time ``message`` comes up in this process, nothing after."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def default_cache_dir() -> Path | None:
    """Where teacher targets are cached by default: ``$FEWSTEP_CACHE/teachers`` (``FEWSTEP_CACHE`` empty: no disk
    cache), else ``$XDG_CACHE_HOME/fewstep/teachers`` or ``~/.cache/fewstep/teachers``."""
    from .data import cache_dir

    root = cache_dir()
    return None if root is None else root / "teachers"


# The code that decides what a teacher computes: any change to it invalidates every cache entry (between releases
# too, when the version number does not move).
_TARGET_CODE = ("sampling.py", "schedules.py", "seeds.py", "teacher.py", "solvers", "denoisers")


def code_digest(*extra: str) -> str:
    """SHA-256 (16 hex digits) of the source files of fewstep that compute teacher targets (and of ``extra`` files or
    folders of the package), so that a cache entry never outlives the code that made it."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in (*_TARGET_CODE, *extra):
        path = root / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def provenance(*extra: str) -> dict[str, str]:
    """The versions in every cache key: fewstep's, torch's and :func:`code_digest`'s (with ``extra`` code)."""
    import fewstep

    return {"fewstep": fewstep.__version__, "torch": torch.__version__, "code": code_digest(*extra)}


def model_key(denoiser: Any, model_id: str | None = None) -> dict[str, Any] | None:
    """What identifies the model in a cache key: its id (``model_id``, else the denoiser's ``model_id``: a digest of
    architecture and weights for fewstep's own and diffusers models) and its conditioning (a
    :class:`fewstep.denoisers.Guided` model's labels, null label and scale). None without an id: nothing is cached."""
    mid = model_id if model_id is not None else getattr(denoiser, "model_id", None)
    if not isinstance(mid, str) or not mid:
        return None
    key: dict[str, Any] = {"model_id": mid}
    cond = getattr(denoiser, "conditions_key", None)  # conditions drawn per seed (prompts): their table, not the
    if isinstance(cond, str):  # current draw (the seeds or the noise, also in the key, determine it)
        key["conditions"] = cond
    for name in ("null_label", "scale") if isinstance(cond, str) else ("labels", "null_label", "scale"):
        v = getattr(denoiser, name, None)
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if v is not None:
            key[name] = v
    return key


class TeacherCache:
    """A directory of teacher targets, one safetensors file per key (the SHA-256 of the canonical JSON of every
    field that determines the targets: model id, shape, dtypes, teacher, M, sigmas, seeds, ...), with a JSON sidecar
    of those fields for people. Loading reads tensors only (safetensors: no code runs); a file that is damaged or
    whose fields differ from the key's is ignored with a warning (and rewritten by the run that recomputes it).
    Writes are atomic (temporary file + rename), so concurrent runs and kills leave no half-written entry. An entry
    larger than ``max_bytes`` (default 2 GiB) is neither written nor read."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.directory, self.max_bytes = Path(directory), int(max_bytes)

    def __repr__(self) -> str:
        return f"TeacherCache({str(self.directory)!r})"

    @staticmethod
    def key(fields: Mapping[str, Any]) -> str:
        """SHA-256 of the canonical JSON of ``fields`` (sorted keys, no spaces; TypeError if not JSON)."""
        text = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, fields: Mapping[str, Any]) -> Path:
        return self.directory / f"{self.key(fields)}.safetensors"

    def load(self, fields: Mapping[str, Any],
             expect: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``fields`` (names and shapes ``expect``), or None: not there, or unusable (a
        warning says why)."""
        path = self.path(fields)
        if not path.is_file():
            return None
        try:
            tensors, meta = read_safetensors(path, fmt=CACHE_FORMAT, max_bytes=self.max_bytes, check_finite=True,
                                             what="teacher cache entry", expect=expect)
            stored = load_json(meta.get("fields", "null"), what="teacher cache fields", expect=None)
            if stored != json.loads(json.dumps(dict(fields))) or meta.get("key") != self.key(fields):
                raise SafetensorsFileError(f"{path}: its fields are not those of its key")
        except (OSError, ValueError) as e:
            warnings.warn(f"teacher cache: ignoring {path} ({str(e)[:300]}); computing the teacher again",
                          UserWarning, stacklevel=2)
            return None
        return tensors

    def store(self, fields: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path | None:
        """Write ``tensors`` under ``fields`` (and the sidecar); None if they are too large or cannot be written."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.max_bytes:
            say_once(f"teacher cache: not caching {size / 2**20:.0f} MiB of teacher targets (more than "
                     f"{self.max_bytes / 2**20:.0f} MiB per entry)")
            return None
        path = self.path(fields)
        fields_json = json.dumps(dict(fields), sort_keys=True)
        try:
            write_safetensors(path, tensors, {"format": CACHE_FORMAT, "key": self.key(fields), "fields": fields_json})
            write_text_atomic(path.with_suffix(".json"), json.dumps(dict(fields), sort_keys=True, indent=1) + "\n")
        except OSError as e:
            say_once(f"teacher cache: cannot write to {self.directory} ({e}); the teacher is computed in every run")
            return None
        return path

    def tensor(self, fields: Mapping[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor stored under ``fields``, else ``compute()`` (then stored)."""
        found = self.load(fields)
        if found is not None and set(found) == {"x"}:
            return found["x"]
        x = compute()
        self.store(fields, {"x": x.detach()})
        return x

    def expected_bytes(self, count: int, shape: tuple[int, ...], dtype: torch.dtype, trajectory_len: int) -> int:
        """Bytes of ``count`` targets of ``shape`` (and their trajectories of ``trajectory_len`` points)."""
        per = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            per *= d
        return count * per * (1 + trajectory_len)


def log_cache(message: str) -> None:
    """One line about the cache on stderr (hits, misses), for the CLI's user."""
    print(message, file=sys.stderr, flush=True)
