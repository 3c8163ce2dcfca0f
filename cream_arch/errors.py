"""Errors shared by both frameworks' checkpoint code, kept free of any deep-learning import.

``cream_torch_ref.checkpoint`` (``.pth.tar``), ``cream_paddle.checkpoint`` (``.pdparams``) and
``converters`` all raise :class:`CheckpointError`, so a command-line tool catches one type and prints
one line, whichever framework's file was at fault.
"""
from __future__ import annotations

import os

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message is one line that names the file."""

    def __init__(self, path: "os.PathLike[str] | str", problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
