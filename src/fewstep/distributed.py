"""Sampling many seeds across processes (``torchrun``), one file per seed, resumable after a kill.

Layout (EDM's ``generate.py``): ``OUT/000000/000123.png``, 1000 seeds per sub-folder, plus ``OUT/fewstep-sample.json``
(the settings that determine the pixels; a restart with other settings is refused).

Sharding: the sorted, de-duplicated seed list is cut into global batches of ``batch`` consecutive seeds; rank r of
K takes batches r, r+K, r+2K, ... A batch's content depends only on the seed list and ``batch``, never on the
number of processes, so every seed is computed in the very same model call whatever the world size and however
often the run was interrupted: outputs are bitwise identical across world sizes and across kill + restart.
(Changing ``batch`` changes the model calls' shapes; float32 conv/matmul kernels are not bitwise
batch-invariant, see README "Many GPUs / resume".)

Resume: every file is written to a temporary name and renamed (``fewstep.io.atomic_path``), so a file that exists
is complete. A restart skips batches whose files all exist, recomputes the others and writes the missing files;
temporary files left by a killed process are removed first (each rank removes only those of its own seeds).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .io import atomic_path, write_text_atomic

__all__ = [
    "DistInfo", "launched_by_torchrun", "init_distributed", "finish", "barrier", "all_sum",
    "global_batches", "rank_batches", "seed_path", "to_uint8", "write_seed_file", "check_manifest",
    "check_image_shape", "remove_stale_temporaries", "sample_seeds", "sample_seeds_to_dir", "SEEDS_PER_FOLDER",
    "MANIFEST", "FORMATS", "remove_stale_temporaries_of", "save_samples_npz",
]

SEEDS_PER_FOLDER = 1000
MANIFEST = "fewstep-sample.json"
MANIFEST_FORMAT = "fewstep-samples"
FORMATS = ("png", "npy")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; the default is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()


def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """True when RANK, WORLD_SIZE and LOCAL_RANK are set (torchrun / torch.distributed.run set all three)."""
    env = os.environ if env is None else env
    return all(k in env for k in _ENV)


def _env_int(env: dict[str, str], name: str) -> int:
    try:
        v = int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} must be an integer") from None
    if v < 0:
        raise ValueError(f"environment variable {name}={v} must be >= 0")
    return v


def init_distributed(device: str | torch.device | None = None, env: dict[str, str] | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA), else a single process.

    ``device=None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    env = dict(os.environ if env is None else env)
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {str(device)!r} ({e})") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {str(device)!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available in this PyTorch/machine")
    if not launched_by_torchrun(env):
        dev = device if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistInfo(device=dev)
    rank, world, local = (_env_int(env, k) for k in _ENV)
    if rank >= world:
        raise ValueError(f"RANK={rank} must be smaller than WORLD_SIZE={world}")
    if device is None:
        dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = device if device.type != "cuda" or device.index is not None else torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch.distributed.barrier()


def all_sum(info: DistInfo, values: Sequence[int]) -> list[int]:
    """Sum integers over all ranks (identity in a single process)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.int64, device=info.device)
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.cpu()]


def finish(info: DistInfo, barrier: bool = True) -> None:
    """Leave the process group, after a barrier so no rank exits while others still write (no barrier after an
    error: the other ranks may never arrive; torchrun then stops them)."""
    if info.distributed:
        if barrier:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def global_batches(seeds: Iterable[int], batch: int) -> list[list[int]]:
    """The sorted, de-duplicated seeds cut into consecutive batches of ``batch`` (the last may be shorter)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    s = sorted(set(seeds))
    if not s:
        raise ValueError("seeds must not be empty")
    return [s[i:i + batch] for i in range(0, len(s), batch)]


def rank_batches(batches: Sequence[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Batches rank, rank + world_size, ... (EDM's round-robin sharding)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    return list(batches[rank::world_size])


def seed_path(out: str | os.PathLike, seed: int, fmt: str = "png") -> Path:
    """``OUT/000000/000123.png``: 1000 seeds per sub-folder named after its first seed."""
    return Path(out) / f"{seed - seed % SEEDS_PER_FOLDER:06d}" / f"{seed:06d}.{fmt}"


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (B, C, H, W) -> uint8 (B, H, W, C) (EDM's x * 127.5 + 128, clipped)."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def check_image_shape(shape: Sequence[int], fmt: str) -> None:
    """PNG needs (C, H, W) with C = 1 (grey) or 3 (RGB); npy takes any shape."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "png" and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise ValueError(f"PNG output needs samples of shape (C, H, W) with C = 1 or 3, got {tuple(shape)}; "
                         "use --format npy or --out FILE.npz")


def write_seed_file(path: Path, image: torch.Tensor, fmt: str = "png") -> None:
    """One seed's image (C, H, W) in [-1, 1] as PNG (uint8) or .npy (float32, clipped to [-1, 1]), atomically.

    Both are byte-for-byte reproducible (no time stamps, unlike .npz), so runs can be compared file by file."""
    if fmt == "png":
        from PIL import Image

        arr = to_uint8(image[None])[0]
        pic = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        with atomic_path(path, suffix=".png") as tmp:
            pic.save(tmp, format="PNG")
    else:
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, image.float().clamp(-1, 1).cpu().numpy())


_TMP_PART = re.compile(r"[a-z0-9_]+")  # the random part of tempfile.mkstemp names (no dots)


def _is_temporary_of(entry_name: str, name: str, suffix: str) -> bool:
    """Whether ``entry_name`` is a temporary of ``fewstep.io.atomic_path`` for target ``name``:
    ``.{name}.{random}{suffix}``."""
    head, tail = f".{name}.", suffix
    if not (entry_name.startswith(head) and entry_name.endswith(tail) and len(entry_name) > len(head) + len(tail)):
        return False
    return bool(_TMP_PART.fullmatch(entry_name[len(head):len(entry_name) - len(tail)]))


def remove_stale_temporaries_of(path: str | os.PathLike, suffix: str, older_than: float | None = None) -> int:
    """Delete the temporaries ``.{name}.XXXX{suffix}`` that ``fewstep.io.atomic_path(path, suffix)`` left beside
    ``path`` in a killed run (only those; with ``older_than``, only those last modified before that time stamp, so
    a concurrent writer's temporary survives). Returns how many were removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(path.parent):
        if _is_temporary_of(entry.name, path.name, suffix) and entry.is_file(follow_symlinks=False):
            try:
                if older_than is not None and entry.stat(follow_symlinks=False).st_mtime >= older_than:
                    continue
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def save_samples_npz(out: str | os.PathLike, seeds: Sequence[int], images: torch.Tensor) -> Path:
    """``fewstep sample --out FILE.npz``: ``images`` (clipped to [-1, 1], float32) and ``seeds`` written atomically;
    after the write, temporaries of ``out`` left by an earlier killed run are removed. Write errors are OSErrors
    naming the file."""
    import time

    out = Path(out)
    t0 = time.time()
    try:
        with atomic_path(out, suffix=".npz") as tmp:
            np.savez(tmp, images=images.float().clamp(-1, 1).cpu().numpy(), seeds=np.array(list(seeds)))
    except OSError as e:
        raise OSError(e.errno, f"cannot write {out}: {e.strerror or e}") from None
    remove_stale_temporaries_of(out, ".npz", older_than=t0)
    return out


def remove_stale_temporaries(out: Path, seeds: Iterable[int], fmt: str) -> int:
    """Delete temporary files (``.000123.png.XXXX.png`` from atomic_path) of ``seeds`` left by a killed run; other
    files (another format's, other seeds', anything not named like an atomic_path temporary) are left alone."""
    mine: dict[Path, set[str]] = {}
    for s in seeds:
        p = seed_path(out, s, fmt)
        mine.setdefault(p.parent, set()).add(p.name)
    removed = 0
    for folder, names in mine.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            parts = entry.name.split(".")
            # '.000123.png.abc123.png' -> ['', '000123', 'png', 'abc123', 'png']
            if len(parts) == 5 and f"{parts[1]}.{parts[2]}" in names and \
                    _is_temporary_of(entry.name, f"{parts[1]}.{parts[2]}", f".{fmt}") and \
                    entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def _holds_other_files(out: Path) -> list[str]:
    """Names in ``out`` other than the manifest and its temporaries (what a run without a manifest cannot trust)."""
    if not out.is_dir():
        return []
    return sorted(e.name for e in os.scandir(out)
                  if e.name != MANIFEST and not _is_temporary_of(e.name, MANIFEST, ".tmp"))


def check_manifest(out: Path, settings: dict[str, Any]) -> bool:
    """Compare ``settings`` with ``OUT/fewstep-sample.json``; ValueError if they differ. True if it exists.

    Without a manifest, ``out`` must be empty (or not exist): files there cannot be checked as an earlier run of
    the same settings, so they are never taken as finished seeds."""
    from .io import read_json_file

    path = out / MANIFEST
    if not path.exists():
        other = _holds_other_files(out)
        if other:
            raise ValueError(f"--out {out} already holds files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})"
                             f" but no {MANIFEST}, so they cannot be checked as an earlier run of these settings; "
                             "choose an empty folder (or a new one)")
        return False
    try:
        doc = read_json_file(path, "fewstep sample manifest", 2**24)
        old = doc["settings"]
        if doc.get("format") != MANIFEST_FORMAT or not isinstance(old, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a fewstep sample manifest; choose another --out") from None
    new = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
        raise ValueError(f"{out} holds samples made with other settings ({detail}); "
                         "choose another --out or repeat the original command to resume")
    return True


def _progress(info: DistInfo, total: int, progress: bool):  # noqa: ANN202
    from tqdm.auto import tqdm

    desc = "sample" if info.world_size == 1 else f"sample (rank 0 of {info.world_size})"
    return tqdm(total=total, unit="seed", desc=desc, disable=not (progress and info.is_main))


def _checked(images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.shape[:1] != (len(seeds),):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"sample_batch must return a tensor with {len(seeds)} images for {len(seeds)} seeds, got {got}")
    return images


def sample_seeds(
    sample_batch: Callable[[list[int]], torch.Tensor],
    seeds: Sequence[int],
    *,
    batch: int,
    info: DistInfo | None = None,
    progress: bool = False,
) -> tuple[list[int], torch.Tensor | None]:
    """All seeds' images in one tensor on rank 0 (sorted seeds, images on the CPU); other ranks get None.

    Same sharding as :func:`sample_seeds_to_dir`, so the images equal those files bit for bit.
    """
    info = info or DistInfo()
    batches = global_batches(seeds, batch)
    mine = rank_batches(batches, info.rank, info.world_size)
    done: dict[int, torch.Tensor] = {}
    with _progress(info, sum(map(len, mine)), progress) as bar:
        for b in mine:
            images = _checked(sample_batch(b), b).cpu()
            done.update(zip(b, images))
            bar.update(len(b))
    if info.distributed:
        parts = [None] * info.world_size if info.is_main else None
        torch.distributed.gather_object(done, parts, dst=0)
        if not info.is_main:
            return [], None
        for part in parts:
            done.update(part)
    order = [s for b in batches for s in b]
    return order, torch.stack([done[s] for s in order])


def sample_seeds_to_dir(
    sample_batch: Callable[[list[int]], torch.Tensor],
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    batch: int,
    fmt: str = "png",
    settings: dict[str, Any] | None = None,
    info: DistInfo | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Write one file per seed under ``out`` (see the module docstring), sharded over the ranks of ``info``.

    ``sample_batch(seeds)`` returns the images (len(seeds), C, H, W) in [-1, 1] for a list of seeds. Batches whose
    files all exist are skipped. ``settings`` (JSON-serialisable; None: {}) go to ``OUT/fewstep-sample.json``; a restart with
    other settings is refused. Returns counts summed over all ranks: ``seeds``, ``written`` (new files),
    ``skipped`` (files that already existed). Only rank 0 shows progress; all ranks meet at a barrier at the end.
    A single-process run that fails before writing any image removes the folder it created.
    """
    info = info or DistInfo()
    out = Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    batches = global_batches(seeds, batch)
    created = not out.exists()
    written = 0
    t0 = time.time()
    try:
        # Every rank checks the manifest before anyone writes, so a mismatch stops all ranks alike.
        settings = {} if settings is None else settings
        if not check_manifest(out, settings) and info.is_main:
            doc = {"format": MANIFEST_FORMAT, "version": 1, "layout": f"{{seed // {SEEDS_PER_FOLDER} * "
                   f"{SEEDS_PER_FOLDER}:06d}}/{{seed:06d}}.{fmt}", "settings": settings}
            try:
                write_text_atomic(out / MANIFEST, json.dumps(doc, indent=1) + "\n")
            except OSError as e:
                raise OSError(e.errno, f"cannot write to the output folder {out}: {e.strerror}") from None
        if info.is_main:
            remove_stale_temporaries_of(out / MANIFEST, ".tmp", older_than=t0)
        barrier(info)
        mine = rank_batches(batches, info.rank, info.world_size)
        remove_stale_temporaries(out, (s for b in mine for s in b), fmt)
        todo = [{s for s in b if not seed_path(out, s, fmt).exists()} for b in mine]
        n_todo, n_mine = sum(map(len, todo)), sum(map(len, mine))
        with _progress(info, n_todo, progress) as bar:
            for b, missing in zip(mine, todo):
                if not missing:
                    continue
                # The whole batch is recomputed, so each seed sees the same model calls as in an uninterrupted run.
                images = _checked(sample_batch(b), b)
                for s, img in zip(b, images):
                    if s in missing:
                        write_seed_file(seed_path(out, s, fmt), img, fmt)
                        written += 1
                bar.update(len(missing))
    except BaseException:
        if created and written == 0 and info.world_size == 1:
            _remove_empty_output(out)
        raise
    total, new, skipped = all_sum(info, [n_mine, written, n_mine - n_todo])
    barrier(info)
    return {"seeds": total, "written": new, "skipped": skipped}


def _remove_empty_output(out: Path) -> None:
    """Remove a folder this run created if it holds nothing but the manifest and empty sub-folders."""
    if not out.is_dir():
        return
    for p in sorted(out.rglob("*"), reverse=True):  # children before their folders
        if p.is_file() and p.name != MANIFEST:
            return
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    (out / MANIFEST).unlink(missing_ok=True)
    if not any(out.iterdir()):
        out.rmdir()
