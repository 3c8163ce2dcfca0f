"""Errors shared by both frameworks, kept free of any deep-learning import.

``cream_torch_ref.checkpoint`` (``.pth.tar``), ``cream_paddle.checkpoint`` (``.pdparams``) and
``converters`` all raise :class:`CheckpointError`, the retraining and search configs
:class:`ConfigError`, so a command-line tool catches one type and prints one line, whichever
framework's file was at fault.
"""
from __future__ import annotations

import os

__all__ = ["CheckpointError", "ConfigError", "OutputError", "RunAborted"]

# Exit codes of the tools for these errors (cream_core/io/cli_errors.py): 2 (bad input) for the
# ValueErrors, 1 for RunAborted.


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message is one line that names the file."""

    def __init__(self, path: "os.PathLike[str] | str", problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(ValueError):
    """A bad configuration file or value; the message is one line naming the file (or the setting)
    and the problem."""

    def __init__(self, where: "os.PathLike[str] | str", problem: str) -> None:
        self.where = self.path = str(where)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.where}: {self.problem}")


class OutputError(ValueError):
    """An output that must not or cannot be written (it would land on an input, its folder is
    read-only or full); one line naming the file. Nothing was written or replaced."""

    def __init__(self, path: "os.PathLike[str] | str", problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


class RunAborted(RuntimeError):
    """The work started but could not finish for a reason outside its input (a worker process was
    killed, e.g. out of memory); one line saying what stopped. Tools exit 1 with that line."""
