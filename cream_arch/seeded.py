"""Deterministic, framework-free weights and inputs for tests and the embedded demo.

Real checkpoints are tens of MB, so the project ships none: tests and the demo regenerate
official-format checkpoints from a seed. The same numbers were fed to the official 2020 code to
make the golden files in ``tests/data/golden`` (see the README there), so a value here must never
change: every array depends only on ``(seed, key, shape)``, not on the order of the keys.

Distributions are chosen so that activations stay O(1) through 20+ blocks (He-normal convs by
fan-out as in the official init, BN affine near identity, positive running variances), which keeps
logits informative and float32 differences meaningful.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

__all__ = ["seeded_array", "seeded_state", "seeded_input"]


def _rng(seed: int, key: str) -> np.random.RandomState:
    return np.random.RandomState((zlib.crc32(key.encode("utf-8")) ^ (seed * 2654435761)) % (2**32))


def seeded_array(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The value of state-dict entry ``key`` with ``shape`` for ``seed`` (torch naming and layout)."""
    shape = tuple(int(s) for s in shape)
    rng = _rng(seed, key)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.array(rng.randint(1, 10000), dtype=np.int64)
    if leaf == "running_mean":
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) == 4:  # conv weight: He-normal over fan-out per group, as the official init
        fan_out = shape[0] * shape[2] * shape[3]
        if shape[1] == 1:  # depthwise
            fan_out = shape[2] * shape[3]
        return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_out)).astype(np.float32)
    if len(shape) == 2:  # linear weight
        bound = 1.0 / math.sqrt(shape[1])
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if leaf == "weight":  # BN gamma
        return rng.uniform(0.7, 1.3, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)  # biases, BN beta


def seeded_state(keys_shapes: Iterable[Tuple[str, Sequence[int]]], seed: int) -> Dict[str, np.ndarray]:
    """A whole state dict (torch names) as numpy arrays, one ``seeded_array`` per entry."""
    return {k: seeded_array(k, s, seed) for k, s in keys_shapes}


def seeded_input(batch: int, resolution: int, seed: int, channels: int = 3) -> np.ndarray:
    """A normalised-image-like NCHW float32 batch."""
    rng = np.random.RandomState(seed)
    return rng.standard_normal((batch, channels, resolution, resolution)).astype(np.float32)
