"""Atomic training checkpoints for ``flowspec train``.

File layout: the 16-byte magic ``FLOWSPEC-CKPT-1\\n``, the payload's length (8 bytes, little endian),
its SHA-256 (32 bytes), then the payload, a ``torch.save`` of plain containers and tensors only, so
that it is read back with ``torch.load(weights_only=True)`` (no pickled code). A file whose magic,
length or digest does not match is refused as truncated or corrupted before anything is unpickled;
a file of another checkpoint format, or of another run identity (model preset, model options, data,
event shape, dtype), is refused with a message naming the difference.

Writing is atomic: the bytes go to a temporary file in the checkpoint's own directory, which is
flushed and ``fsync``-ed, then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows) and the directory is ``fsync``-ed. A crash at any point leaves either the previous files or
the complete new one. :func:`save` keeps the last ``keep`` checkpoints of a directory.

RNG states are stored as tensors and lists (:func:`rng_state` / :func:`set_rng_state`): torch's CPU
generator, every CUDA device's generator when CUDA is initialised, NumPy's legacy global generator
and Python's ``random``.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowspec.errors import ConfigError

MAGIC = b"FLOWSPEC-CKPT-1\n"
FORMAT = 1
"""The checkpoint format version; a file of another version is refused."""
PATTERN = "ckpt-*.pt"
_HEADER = len(MAGIC) + 8 + 32


def path_for(directory: str | os.PathLike, step: int) -> Path:
    """``directory/ckpt-<step, 8 digits>.pt``."""
    return Path(directory) / f"ckpt-{step:08d}.pt"


def _encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    payload = buffer.getvalue()
    return MAGIC + len(payload).to_bytes(8, "little") + hashlib.sha256(payload).digest() + payload


def _write_bytes(handle: Any, data: bytes) -> None:
    """Write ``data`` to an open file (a seam for the crash test)."""
    handle.write(data)


def write_atomic(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _encode(state)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_bytes(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoints of ``directory``, oldest first."""
    return sorted(Path(directory).glob(PATTERN))


def save(directory: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write the checkpoint of ``step`` atomically and delete all but the newest ``keep``."""
    if keep < 1:
        raise ConfigError(f"keep must be at least 1, got {keep}")
    path = write_atomic(path_for(directory, step), state)
    for old in checkpoints(directory)[:-keep]:
        old.unlink()
    return path


def latest(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else the newest checkpoint in the directory ``path`` or in
    its ``checkpoints`` folder (a run directory)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    found = checkpoints(path) if path.is_dir() else []
    if not found:
        raise ConfigError(f"no checkpoint to resume from: {path} is not a checkpoint file or a run directory "
                          f"holding {PATTERN}")
    return found[-1]


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The verified contents of a checkpoint file; :class:`ConfigError` if it is truncated, corrupted
    or of another format version (nothing is unpickled before the digest matches)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[: len(MAGIC)] != MAGIC:
        raise ConfigError(f"{path} is not a flowspec checkpoint (or one of another format): bad magic bytes")
    if len(raw) < _HEADER:
        raise ConfigError(f"{path} is truncated: {len(raw)} bytes, shorter than the header")
    length = int.from_bytes(raw[len(MAGIC): len(MAGIC) + 8], "little")
    payload = raw[_HEADER:]
    if len(payload) != length:
        raise ConfigError(f"{path} is truncated or padded: the header announces {length} payload bytes, "
                          f"the file holds {len(payload)}")
    if hashlib.sha256(payload).digest() != raw[len(MAGIC) + 8: _HEADER]:
        raise ConfigError(f"{path} is corrupted: its SHA-256 digest does not match its contents")
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ConfigError(f"{path} has checkpoint format {state.get('format')!r}; this flowspec reads format {FORMAT}")
    return state


def check_identity(path: str | os.PathLike, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint whose run identity differs from ``expected``, naming every difference."""
    diff = [f"{k}: checkpoint {saved.get(k)!r}, requested {expected[k]!r}" for k in expected if saved.get(k) != expected[k]]
    if diff:
        raise ConfigError(f"{path} belongs to another model or run; " + "; ".join(diff))


# ----------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """The global RNG states (module docstring), as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states written by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
