"""Send what native (C/C++) code prints to a file of our choosing for the length of a block.

Paddle's C++ side (glog, oneDNN pass notes) and x2paddle write straight to file descriptors 1 and 2,
below Python's ``sys.stdout``/``sys.stderr``, so ``contextlib.redirect_stdout`` cannot catch them.
``cream_paddle.evaluate`` discards that output while compiling; ``converters.x2paddle_engine`` keeps
it for its error message. Framework-free: only ``os`` file descriptors.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import IO, Any, Iterator

__all__ = ["redirect_native_output"]


@contextlib.contextmanager
def redirect_native_output(sink: "IO[Any]") -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``sink`` (an open file) inside the block, then restore
    them, also when the block raises. Python's own buffers are flushed first, so text printed
    before the block still reaches the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
