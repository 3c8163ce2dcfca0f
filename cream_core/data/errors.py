"""Errors for bad data: one line each, naming the file and the problem."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict

__all__ = ["BadDataError", "BadItem"]


@dataclass(frozen=True)
class BadItem:
    """A file or folder that could not be used, and why (kept when ``skip_bad`` is on)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def to_dict(self) -> Dict[str, str]:
        """Plain dict for JSON reports."""
        return asdict(self)


class BadDataError(ValueError):
    """Data that cannot be evaluated; ``str(err)`` is ``"<path>: <problem>"`` on one line.

    ``skippable`` marks a single bad item (an image, a folder, a list line) that ``skip_bad`` would
    have skipped, as opposed to a problem with the data set as a whole.
    """

    def __init__(self, path: "os.PathLike[str] | str", problem: str, skippable: bool = False) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())  # always one line
        self.skippable = skippable
        super().__init__(f"{self.path}: {self.problem}")

    @property
    def item(self) -> BadItem:
        """The same error as a :class:`BadItem`."""
        return BadItem(self.path, self.problem)
