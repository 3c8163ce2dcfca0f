"""The RandAugment policy string (timm's ``rand-m9-mstd0.5``), parsed without images or frameworks.

It lives in the core because the retraining config (:mod:`cream_core.config.retrain`) validates the string
when the file is loaded, and the augmentation itself (:mod:`cream_core.data.train_transforms`) sits above
the core and builds its ops from the parsed values.
"""
from __future__ import annotations

import re
from typing import Any, Dict

__all__ = ["MAX_LEVEL", "parse_rand_augment"]

#: Top of the RandAugment magnitude scale (timm ``_MAX_LEVEL``).
MAX_LEVEL: float = 10.0


def parse_rand_augment(spec: str) -> Dict[str, Any]:
    """``'rand-m9-mstd0.5'`` -> ``{'magnitude': 9, 'num_layers': 2, 'magnitude_std': 0.5,
    'increasing': False}`` (timm's keys ``m``, ``n``, ``mstd``, ``inc``; others are refused)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"{spec!r} is not a RandAugment string (must start with 'rand')")
    out: Dict[str, Any] = {"magnitude": MAX_LEVEL, "num_layers": 2, "magnitude_std": 0.0,
                           "increasing": False}
    for part in parts[1:]:
        bits = re.split(r"(\d.*)", part)
        if len(bits) < 2:
            raise ValueError(f"cannot read section {part!r} of {spec!r}")
        key, val = bits[:2]
        try:
            if key == "m":
                out["magnitude"] = float(int(val))
            elif key == "n":
                out["num_layers"] = int(val)
            elif key == "mstd":
                out["magnitude_std"] = float(val)
            elif key == "inc":
                out["increasing"] = bool(int(val))
            else:
                raise ValueError(f"unsupported RandAugment section {part!r} in {spec!r} "
                                 "(supported: m, n, mstd, inc)")
        except ValueError as e:
            if "unsupported" in str(e):
                raise
            raise ValueError(f"bad value in section {part!r} of {spec!r}") from None
    return out
