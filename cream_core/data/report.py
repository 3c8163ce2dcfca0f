"""Writing evaluation reports: whole files or nothing, never over an input."""
from __future__ import annotations

import json
import os
from typing import Any

from cream_core.io.atomic import atomic_write_text

__all__ = ["atomic_write_text", "write_json"]


def write_json(path: "os.PathLike[str] | str", data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")
