"""Atomic file writes, for every file the project produces (checkpoints, reports, JSON, lists).

The content goes to a temporary file in the destination's folder (``.<name>.<pid>-<random>.part``),
is flushed to disk, and only then renamed over the destination (``os.replace``, atomic on one file
system). On any failure the temporary file is removed and the destination is untouched: never a
partial output file, never a clobbered previous result; a failing file system (read-only, full) is
an :class:`~cream_core.io.errors.OutputError` naming the file. The file gets the permissions
``open()`` would give it (``0666 & ~umask``). Text is UTF-8; file names that are not (Python's
``surrogateescape`` strings, as ``os.listdir`` returns them) are written back as their original
bytes. Several files that belong together: :func:`cream_core.io.outputs.commit_files`.
"""
from __future__ import annotations

import os
from typing import IO, Any, Callable

from cream_core.io.outputs import commit_files

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: "os.PathLike[str] | str", write: Callable[[IO[Any]], Any], mode: str = "wb"
                 ) -> None:
    """Call ``write(f)`` on a temporary file opened with ``mode`` (``"wb"`` or ``"w"``, text as
    UTF-8 without newline translation), then move it to ``path``; creates the folder if needed."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    commit_files({path: write}, mode=mode)


def atomic_write_text(path: "os.PathLike[str] | str", text: str) -> None:
    """Write ``text`` (UTF-8; undecodable file-name bytes kept) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text), mode="w")
