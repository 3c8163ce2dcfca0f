"""Atomic file writes, for every file the project produces (checkpoints, reports, JSON, lists).

The content goes to a temporary file in the destination's folder, is flushed to disk, and only then
renamed over the destination (``os.replace``, atomic on one file system). On any failure the
temporary file is removed and the destination is untouched: never a partial output file, never a
clobbered previous result. The file gets the permissions ``open()`` would give it (``0666 & ~umask``;
``mkstemp`` alone would leave ``0600``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: "os.PathLike[str] | str", write: Callable[[IO[Any]], Any], mode: str = "wb"
                 ) -> None:
    """Call ``write(f)`` on a temporary file opened with ``mode`` (``"wb"`` or ``"w"``, text as
    UTF-8 without newline translation), then move it to ``path``; creates the folder if needed."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    dest = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".part", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        text = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as f:
            fd = -1  # owned by f now
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: "os.PathLike[str] | str", text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text), mode="w")
