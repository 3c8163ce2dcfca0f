"""Access to the golden data produced by running the official 2020 Cream code (see golden/README.md).

Shipped inside the package so that both the tests and ``cream-demo`` can check the reference
against the official implementation on any install.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["GOLDEN_DIR", "golden_childnets", "golden_keys", "golden_logits"]

#: Folder of the golden files (childnets.json, logits.npz, README.md).
GOLDEN_DIR: Path = Path(__file__).resolve().parent / "golden"


@lru_cache(maxsize=1)
def golden_childnets() -> Dict[str, Any]:
    """The parsed ``childnets.json``: generator versions and, per model, keys/shapes and thop counts."""
    with open(GOLDEN_DIR / "childnets.json", encoding="utf-8") as f:
        return json.load(f)


def golden_keys(name: str) -> List[Tuple[str, Tuple[int, ...]]]:
    """The official model's state-dict keys and shapes, in order."""
    return [(k, tuple(s)) for k, s, _ in golden_childnets()["models"][name]["keys"]]


def golden_logits(name: str) -> Dict[str, np.ndarray]:
    """Official logits of ``name``: ``raw`` and ``ema`` ``[2, 1000]``, plus ``input_seed``/``resolution``."""
    with np.load(GOLDEN_DIR / "logits.npz") as z:
        return {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(name + "/")}
