"""Drop-path and dropout masks drawn in numpy, so both frameworks (and every rank) drop the same units.

Stochastic depth (timm ``drop_path``) multiplies a residual branch by a per-sample mask
``bernoulli(keep) / keep``; dropout before the classifier multiplies each feature by
``bernoulli(1 - p) / (1 - p)``. The official training drew these from torch's RNG; here they are
drawn for the *global* batch of a step from ``(seed, epoch, step)`` and each data-parallel rank
takes its rows, so a torch run, a Paddle run and a 2-process run make identical random decisions.
The training loops inject them through a small hook (:mod:`cream_core.training.injector`, the
``MaskInjector`` of ``cream_torch_ref.train`` and ``cream_paddle.train``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["STREAM_MASKS", "MaskSpec", "StepMasks", "draw_keep_mask", "step_masks"]

#: Fourth seed word of the mask stream (image streams use 0 and 1, see ``train_transforms``).
STREAM_MASKS: int = 2


@dataclass(frozen=True)
class MaskSpec:
    """What a model drops: one probability per drop-path layer (model order) and the dropout rate."""

    drop_path: Tuple[float, ...]
    dropout: float
    features: int  # width of the classifier's input (where dropout applies)

    @property
    def empty(self) -> bool:
        return not any(p > 0 for p in self.drop_path) and not self.dropout > 0


@dataclass
class StepMasks:
    """Masks of one step: ``drop_path[i]`` is (N,) for drop-path layer ``i``; ``dropout`` is (N, F)."""

    drop_path: List[Optional[np.ndarray]]
    dropout: Optional[np.ndarray]

    def rows(self, start: int, stop: int) -> "StepMasks":
        """The masks of samples ``start:stop`` (a rank's or a shard's part of the global batch)."""
        return StepMasks([None if m is None else m[start:stop] for m in self.drop_path],
                         None if self.dropout is None else self.dropout[start:stop])

    @property
    def batch_size(self) -> int:
        for m in self.drop_path:
            if m is not None:
                return int(m.shape[0])
        return int(self.dropout.shape[0]) if self.dropout is not None else 0


def draw_keep_mask(rng: np.random.Generator, shape: Tuple[int, ...], drop: float) -> np.ndarray:
    """float32 ``bernoulli(1 - drop) / (1 - drop)`` (all zeros when ``drop == 1``)."""
    keep = 1.0 - float(drop)
    kept = rng.random(shape) < keep
    if keep <= 0.0:
        return np.zeros(shape, np.float32)
    return kept.astype(np.float32) / np.float32(keep)


def step_masks(spec: MaskSpec, seed: int, epoch: int, step: int, batch_size: int) -> StepMasks:
    """All masks of global step ``step`` of ``epoch`` for a global batch of ``batch_size``."""
    rng = np.random.default_rng([int(seed), int(epoch), int(step), STREAM_MASKS])
    dp = [draw_keep_mask(rng, (batch_size,), p) if p > 0 else None for p in spec.drop_path]
    do = draw_keep_mask(rng, (batch_size, spec.features), spec.dropout) if spec.dropout > 0 else None
    return StepMasks(dp, do)
