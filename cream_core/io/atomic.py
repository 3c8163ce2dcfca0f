"""Atomic file writes, for every file the project produces (checkpoints, reports, JSON, lists).

The content goes to a temporary file in the destination's folder (``.<name>.<pid>-<random>.part``),
is flushed to disk, and only then renamed over the destination (``os.replace``, atomic on one file
system). On any failure the temporary file is removed and the destination is untouched: never a
partial output file, never a clobbered previous result; a failing file system (read-only, full) is
an :class:`~cream_core.io.errors.OutputError` naming the file. The file gets the permissions
``open()`` would give it (``0666 & ~umask``). Text is UTF-8; file names that are not (Python's
``surrogateescape`` strings, as ``os.listdir`` returns them) are written back as their original
bytes. Several files that belong together: :func:`cream_core.io.outputs.commit_files`. A whole
folder: :func:`replaced_folder`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Iterator

from cream_core.io.outputs import commit_files, usual_mode

__all__ = ["atomic_write", "atomic_write_text", "replaced_folder"]


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


@contextlib.contextmanager
def replaced_folder(dest: "os.PathLike[str] | str", prefix: str) -> Iterator[str]:
    """A new temporary folder (name starting with ``prefix``) beside ``dest`` to build a folder in;
    when the block succeeds it replaces ``dest`` (an old ``dest`` is removed first), when it raises
    it is removed and ``dest`` is left as it was. The folder ``dest`` goes in must exist; the new
    folder gets the mode ``mkdir`` would give it (``mkdtemp`` alone gives ``0700``)."""
    dest = os.fspath(dest)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=os.path.dirname(os.path.abspath(dest)))
    try:
        usual_mode(tmp)
        yield tmp
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
