"""The official initialisation of Cream's networks, as rules over state-dict entries (framework-free).

``gen_supernet`` (and the child nets) call timm 0.1.20's ``efficientnet_init_weights``, whose
``_init_weight_goog`` sets, module by module:

* Conv2d weight ~ N(0, sqrt(2 / fan_out)), ``fan_out = kh * kw * out_channels / groups``; bias 0;
* BatchNorm2d weight 1, bias 0 (running mean 0 and variance 1 are the BatchNorm defaults);
* Linear weight ~ U(-r, r), ``r = 1 / sqrt(out_features)``; bias 0.

:func:`official_init_state` applies the same rules to a list of ``(key, shape)`` with numpy draws
from a seed, so a golden file can state its initial weights as a seed (the compact form of
``tests/data/golden_search``) and still start where the official code starts: every BN bias and
running mean at exactly zero, which is the case that tolerances relative to a value's own size get
wrong. Only the random draws differ from torch's generator; their distributions are the official
ones. Groups are read from the shape: a conv weight ``(out, 1, kh, kw)`` is depthwise (``groups =
out``), which holds for every conv of Cream's networks (the stem has 3 input channels).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

from cream_core.arch.seeded import keyed_rng

__all__ = ["OFFICIAL_INIT", "official_init_array", "official_init_state"]

#: The value of ``init_scheme`` that names these rules in a golden file.
OFFICIAL_INIT: str = "official"


def official_init_array(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """One entry's initial value under the official rules (float32; int64 for the BN counter)."""
    shape = tuple(int(s) for s in shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf == "running_var":
        return np.ones(shape, np.float32)
    if leaf in ("running_mean", "bias"):
        return np.zeros(shape, np.float32)
    if len(shape) == 1 and leaf == "weight":  # BatchNorm weight
        return np.ones(shape, np.float32)
    rng = keyed_rng(seed, key)
    if len(shape) == 4:
        out, per_group, kh, kw = shape
        groups = out if per_group == 1 else 1
        std = math.sqrt(2.0 / (kh * kw * out // groups))
        return (rng.standard_normal(shape) * std).astype(np.float32)
    if len(shape) == 2:
        r = 1.0 / math.sqrt(shape[0])
        return rng.uniform(-r, r, shape).astype(np.float32)
    raise ValueError(f"{key}: no official initialisation rule for shape {list(shape)}")


def official_init_state(keys_shapes: Iterable[Tuple[str, Sequence[int]]], seed: int
                        ) -> Dict[str, np.ndarray]:
    """A whole state dict (torch names) initialised by the official rules, in the given order."""
    return {k: official_init_array(k, s, seed) for k, s in keys_shapes}
