"""Deterministic, framework-free weights and inputs for tests and the embedded demo.

Real checkpoints are tens of MB, so the project ships none: tests and the demo regenerate
official-format checkpoints from a seed. Two levels:

* :func:`seeded_state` / :func:`seeded_array`: every entry depends only on ``(seed, key, shape)``,
  not on the order of the keys or on the network (He-normal convs by fan-out as in the official
  init, BN affine near identity, arbitrary positive running variances). A value here must never
  change. On their own these weights make a poor test network: eval-mode BN with running
  statistics unrelated to the activations never renormalises, so the input-dependent part of the
  signal shrinks about 3x per stride-2 block and the logits hardly depend on the input.
* :func:`seeded_child_state`: the weights of a whole child net, which the golden files in
  ``cream_core/arch/golden`` were made from (see the README there). It starts from
  :func:`seeded_state` and *calibrates* it with a float64 numpy forward pass
  (:mod:`cream_core.arch.numpy_ref`) on a seeded batch: every BN's running mean and variance become
  the statistics of the input it actually sees, and the two head layers, which have no BN, get a
  power-of-two gain. Every BN output is then O(1) on seeded inputs (about unit variance on the
  calibration batch and within a small factor of it on others), and the logits have an O(1) std,
  most of it input-dependent.

Calibration computes in float64 and casts to float32 only at the end, so BLAS summation order
(a few float64 ulps) does not reach the stored float32 values: the result is the same on every
machine, short of a float64 value landing within an ulp of a float32 rounding boundary.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from cream_core.arch.numpy_ref import calibrate_child, child_keys_shapes
from cream_core.arch.plan import plan_network
from cream_core.arch.space import CHILD_NETS, child_arch_def

__all__ = ["keyed_rng", "CALIBRATION_BATCH", "seeded_array", "seeded_state", "seeded_input",
           "seeded_child_state"]

#: Images in the calibration batch of :func:`seeded_child_state`. Enough for every BN to see at
#: least 16 values per channel (cream-14's last blocks run at 2 x 2) while cream-604 at 224 x 224
#: still calibrates in about two seconds.
CALIBRATION_BATCH = 4


def keyed_rng(seed: int, key: str) -> np.random.RandomState:
    """A random stream of its own for each (``seed``, state-dict ``key``): values do not depend on
    the order entries are drawn in (also the official initialisation's, :mod:`official_init`)."""
    return np.random.RandomState((zlib.crc32(key.encode("utf-8")) ^ (seed * 2654435761)) % (2**32))


def seeded_array(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The value of state-dict entry ``key`` with ``shape`` for ``seed`` (torch naming and layout)."""
    shape = tuple(int(s) for s in shape)
    rng = keyed_rng(seed, key)
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


def _released_resolution(arch: Tuple[Tuple[int, ...], ...]) -> Optional[int]:
    for spec in CHILD_NETS.values():
        if spec.arch_list == arch:
            return spec.resolution
    return None


def seeded_child_state(arch_list: Sequence[Sequence[int]], seed: int, num_classes: int = 1000,
                       calib_seed: int = 0, resolution: Optional[int] = None,
                       calibration_images: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Calibrated seeded weights of the child net ``arch_list`` (torch names, layouts and order).

    Starts from :func:`seeded_state` of the net's keys and runs a float64 forward pass on
    ``seeded_input(CALIBRATION_BATCH, resolution, calib_seed)``: each BN's ``running_mean`` /
    ``running_var`` become the mean / unbiased variance of its input over ``(N, H, W)`` (what a
    train-mode pass with momentum 1 stores), later layers seeing inputs normalised with them; and
    ``conv_head.weight`` and ``classifier.weight`` are multiplied by the power of two that brings
    their outputs on that batch closest to unit std. Every other entry is the :func:`seeded_state`
    value. ``resolution`` defaults to the test resolution of a released net and must be given for
    any other ``arch_list``.

    ``calibration_images`` (a normalised NCHW batch) replaces the seeded batch: noise-calibrated
    weights see photographs as out of distribution, and in a deep net (cream-604) their logits
    then grow by four orders of magnitude, so benchmarks on photos calibrate on photos.
    """
    arch = tuple(tuple(int(c) for c in stage) for stage in arch_list)
    if resolution is None:
        resolution = _released_resolution(arch)
        if resolution is None:
            raise ValueError(f"arch_list {[list(s) for s in arch]} is not a released child net; "
                             "pass the calibration resolution")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    keys_shapes = child_keys_shapes(plan_network(child_arch_def(arch)), num_classes)
    state = seeded_state(keys_shapes, seed)
    images = (seeded_input(CALIBRATION_BATCH, resolution, calib_seed) if calibration_images is None
              else np.asarray(calibration_images, dtype=np.float32))
    cal = calibrate_child(state, arch, images)
    for name, (mean, var) in cal.bn_stats.items():
        state[name + ".running_mean"] = mean.astype(np.float32)
        state[name + ".running_var"] = var.astype(np.float32)
    for key, k in cal.head_log2_gains.items():
        # a power-of-two factor is exact in float32: the seeded mantissas are kept
        state[key] = (state[key].astype(np.float64) * 2.0 ** k).astype(np.float32)
    return state
