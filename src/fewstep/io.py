"""File helpers: atomic writes (no half-written output on failure), a content digest for tensors, and the one
safetensors reader/writer used for predictors, U-Net weights and training states (no pickle anywhere)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

__all__ = [
    "atomic_path", "write_text_atomic", "tensor_digest", "pyplot", "save_figure", "SafetensorsFileError",
    "read_safetensors", "read_safetensors_header", "write_safetensors", "read_json_file", "MAX_FILE_BYTES",
    "regular_file_size", "regular_file", "read_safetensors_config", "claim_output", "check_output", "OutputBusyError",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OutputBusyError(ValueError):
    """Another run holds the output's lock (``OUT.lock``)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _lock_owner_alive(text: str) -> bool:
    """Whether the process named in a lock file (``host pid``) may still run (True unless it is provably gone)."""
    import socket

    try:
        host, pid = text.split()
        pid_ = int(pid)
    except ValueError:
        return False  # an empty or torn lock: its writer died while creating it
    if host != socket.gethostname():
        return True  # another machine's process: we cannot tell
    try:
        os.kill(pid_, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent (a zombie) still answers kill(pid, 0)
        stat_ = Path(f"/proc/{pid_}/stat").read_text()
        return stat_[stat_.rindex(")") + 2:][:1] != "Z"
    except (OSError, ValueError):
        return True


def check_output(path: str | os.PathLike, *, overwrite: bool = False, sources: Any = (), what: str = "--out",
                 exists_ok: bool = False) -> None:
    """The checks of :func:`claim_output` without the lock: not an input, not existing unless allowed."""
    path = Path(path)
    for src in sources:
        if src is not None and _same_file(path, Path(src)):
            raise ValueError(f"{what} {path} is also an input of this command ({src}); writing it would destroy "
                             "the input: choose another output")
    if path.exists() and path.is_dir() != exists_ok:  # a file output where a folder is, or a folder where a file is
        raise ValueError(f"{what} {path} exists and is not {'a directory' if exists_ok else 'a file'}")
    if path.exists() and not (overwrite or exists_ok):
        raise ValueError(f"{what} {path} exists; pass --overwrite to replace it")


def _create_lock(lock: Path, holder: str) -> None:
    """Create ``lock`` holding ``holder``, or FileExistsError. The lock appears with its text already in it (a hard
    link to a written temporary file, atomic and exclusive), so a run that finds it never reads an empty lock and
    takes it for a dead one's; where hard links are not supported, ``O_EXCL`` and a write."""
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}.tmp")
    tmp.write_text(holder)
    try:
        os.link(tmp, lock)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(holder)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, *, overwrite: bool = False, sources: Any = (), what: str = "--out",
                 exists_ok: bool = False) -> Iterator[Path]:
    """Hold ``path`` as this run's output: refuse it when it is one of the ``sources`` the run reads (even with
    ``overwrite``), when it exists and neither ``overwrite`` nor ``exists_ok`` (a resumable folder) allows that,
    and when another run holds it. The hold is the file ``path.lock`` created exclusively (``O_EXCL``, holding
    ``host pid``) and removed when the block ends, so two runs started together on one output cannot both write it:
    the second fails here, before any work. A lock left by a killed process of this host is taken over."""
    import socket

    path = Path(path)
    check_output(path, overwrite=overwrite, sources=sources, what=what, exists_ok=exists_ok)
    where = f"to the output folder {path}" if exists_ok else f"{path} ({what})"
    lock = path.with_name(path.name + ".lock")
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_lock(lock, me)
        except FileExistsError:
            if not path.parent.is_dir():  # a file where a folder of the path should be
                raise OSError(errno.ENOTDIR, f"cannot write {where}: Not a directory") from None
            try:
                holder = lock.read_text()[:200]
            except OSError:
                holder = ""
            if _lock_owner_alive(holder):
                raise OutputBusyError(f"{what} {path} is being written by another run (lock {lock}: {holder.strip()}"
                                      "); wait for it, choose another output, or remove the lock if no run is alive")
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # a killed run's lock; the next O_EXCL decides if two runs race for it
            continue
        except OSError as e:
            raise OSError(e.errno, f"cannot write {where}: {e.strerror or e}") from None
        break
    else:
        raise OutputBusyError(f"{what} {path}: could not take the lock {lock}")
    try:
        if path.exists() and not (overwrite or exists_ok):  # created between the check above and the lock
            raise ValueError(f"{what} {path} exists; pass --overwrite to replace it")
        yield path
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text() == me:
                lock.unlink()


def pyplot():  # noqa: ANN201
    """matplotlib.pyplot on the headless Agg backend (imported on first use: it is slow to import; the ``demo``
    extra installs it)."""
    from ._extras import require

    matplotlib = require("matplotlib", extra="demo", purpose="plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:  # noqa: ANN001
    """Save a matplotlib figure as PNG atomically and close it."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a dict of tensors (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- safetensors
# The format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, ...,
# "__metadata__": {str: str}}, then the raw little-endian tensor bytes. We write it ourselves (sorted keys, so
# identical content gives identical bytes) and check every header field before anything is allocated.

MAX_FILE_BYTES = 2**32  # fewstep's own files (predictors, U-Nets, training states) are far smaller
MAX_HEADER_BYTES = 2**24
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}


class SafetensorsFileError(ValueError):
    """A file is not a valid safetensors file (or not of the kind expected)."""


def regular_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> int:
    """The one check before any user path is opened: size of ``path`` if it is a regular file (of at most
    ``max_bytes``); FileNotFoundError if missing, ValueError naming the file for a FIFO, device, socket or folder
    (refused unread: opening a FIFO blocks forever) or a file too large."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except OSError as e:
        raise OSError(e.errno, f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a device or socket")
        raise SafetensorsFileError(f"{path} is not a regular file (it is {kind}; a {what} must be one)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise SafetensorsFileError(f"{path} is {st.st_size} bytes; a {what} is at most {max_bytes}")
    return st.st_size


def read_json_file(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = 2**24,
                   expect: type | tuple[type, ...] | None = None) -> Any:
    """Parse a JSON file that must be a regular file of bounded size (:func:`fewstep.jsonio.load_json`: depth,
    finite numbers, top-level type ``expect``); ValueError naming the file otherwise."""
    from .jsonio import load_json

    return load_json(Path(path), what=what, max_bytes=max_bytes, expect=expect)


def regular_file_size(path: str | os.PathLike, max_bytes: int, what: str) -> int:
    """Size of ``path`` if it is a regular file of at most ``max_bytes`` (:func:`regular_file`)."""
    return regular_file(path, what, max_bytes)


def read_safetensors_header(path: str | os.PathLike, *, max_bytes: int = MAX_FILE_BYTES,
                            what: str = "safetensors file") -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({name: {"dtype", "shape", "data_offsets"}}, metadata) of a safetensors file, every field checked against
    the file's size before any tensor is read. Refuses pickles / torch.save files with a clear message."""
    path = Path(path)
    size = regular_file_size(path, max_bytes, what)
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) >= 9 and head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
            raise SafetensorsFileError(f"{path} looks like a pickle / torch.save file; fewstep only loads safetensors "
                                       "files (unpickling can execute code)")
        if len(head) < 9:
            raise SafetensorsFileError(f"{path} is too short to be a safetensors file ({size} bytes)")
        n = int.from_bytes(head[:8], "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise SafetensorsFileError(f"{path} is not a readable safetensors file (header length {n}, file size {size})")
        f.seek(8)
        raw = f.read(n)
    from .jsonio import load_json

    try:
        header = load_json(raw, what="header", max_depth=8, max_bytes=MAX_HEADER_BYTES, expect=dict)
    except ValueError as e:
        raise SafetensorsFileError(f"{path} is not a readable safetensors file: bad {e}") from None
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SafetensorsFileError(f"{path}: metadata must map strings to strings")
    data = size - 8 - n
    for name, info in header.items():
        ok = isinstance(info, dict) and info.get("dtype") in _FROM_NAME and isinstance(info.get("shape"), list) \
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in info["shape"]) \
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 \
            and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"])
        if not ok:
            raise SafetensorsFileError(f"{path}: malformed entry for tensor {name!r}")
        lo, hi = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        itemsize = torch.empty((), dtype=_FROM_NAME[info["dtype"]]).element_size()
        if not 0 <= lo <= hi <= data or hi - lo != numel * itemsize:
            raise SafetensorsFileError(f"{path}: tensor {name!r} does not fit the file (corrupted or truncated)")
    return header, meta


def read_safetensors_config(path: str | os.PathLike, *, fmt: str, what: str, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The JSON ``config`` in the metadata of a safetensors file of format ``fmt``, read from the header only
    (no tensor is loaded); NaN/Infinity, nesting too deep and over-long numbers are refused. The caller checks
    the config's schema."""
    path = Path(path)
    meta = read_safetensors_header(path, max_bytes=max_bytes, what=what)[1]
    if meta.get("format") != fmt:
        raise SafetensorsFileError(f"{path} is not a {what} (format {meta.get('format')!r})")
    from .jsonio import load_json

    if not isinstance(meta.get("config"), str):
        raise SafetensorsFileError(f"{path} has no JSON config in its metadata")
    try:
        return load_json(meta["config"], what="config", expect=dict)
    except ValueError as e:
        raise SafetensorsFileError(f"{path} has no valid JSON config: {e}") from None


def read_safetensors(path: str | os.PathLike, *, fmt: str | None = None, max_bytes: int = MAX_FILE_BYTES,
                     check_finite: bool = False, what: str = "safetensors file",
                     expect: Mapping[str, tuple[int, ...]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, validated by :func:`read_safetensors_header` first. ``fmt``:
    the required metadata "format"; ``expect``: required {name: shape} (checked before reading any tensor);
    ``check_finite``: refuse NaN/inf values, naming the tensor."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    header, meta = read_safetensors_header(path, max_bytes=max_bytes, what=what)
    if fmt is not None and meta.get("format") != fmt:
        raise SafetensorsFileError(f"{path} is not a {what} (format {meta.get('format')!r}, expected {fmt!r})")
    if expect is not None:
        got = {k: tuple(v["shape"]) for k, v in header.items()}
        if got != {k: tuple(v) for k, v in expect.items()}:
            missing, extra = sorted(set(expect) - set(got)), sorted(set(got) - set(expect))
            wrong = sorted(k for k in set(got) & set(expect) if got[k] != tuple(expect[k]))
            raise SafetensorsFileError(f"{path}: tensors do not match the configuration (missing {missing}, "
                                       f"unexpected {extra}, wrong shape {wrong})")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SafetensorsFileError(f"{path} is not a readable safetensors file: {e}") from None
    if check_finite:
        for k, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise SafetensorsFileError(f"{path}: tensor {k!r} holds NaN or inf values; the file is unusable")
    return tensors, meta


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` and string ``metadata`` as safetensors, atomically (temporary file + rename). Keys are
    sorted, so the same content always gives the same bytes. Write errors are ``OSError``s naming the file."""
    path = Path(path)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map strings to strings")
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors files here do not hold")
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    full = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}, **header}
    text = json.dumps(full, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as safetensors does
    try:
        with atomic_path(path, suffix=".safetensors") as tmp:
            with open(tmp, "wb") as f:
                f.write(len(text).to_bytes(8, "little"))
                f.write(text)
                for b in blobs:
                    f.write(b)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    return path
