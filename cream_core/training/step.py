"""One retraining step, once, over a tiny per-framework ops object (as :mod:`cream_core.search.step`).

The official step is forward, loss, zero grad, backward, optimizer step, EMA update. With
``shards=W`` the batch is split in ``W`` equal parts, each normalised by BatchNorm on its own, the
loss averaged over parts and the BatchNorm running statistics kept from part 0: exactly what ``W``
data-parallel processes with per-process BatchNorm compute (DDP averages gradients and broadcasts
rank 0's buffers). What differs between the frameworks is behind :class:`TrainStepOps` (numpy to
tensor, clearing gradients, the BatchNorm state, an in-place copy); tensors of both
frameworks support the ``/``, ``.backward()``, ``.detach()`` and ``.clone()`` used here.
Framework-free: no torch, no Paddle import.
"""
from __future__ import annotations

from typing import Any, ContextManager, Dict, Optional, Protocol

import numpy as np

from cream_core.training.masks import StepMasks

__all__ = ["TrainStepOps", "shard_size", "train_step"]


class TrainStepOps(Protocol):
    """The framework half of :func:`train_step` (``cream_*.train.TrainStepOps``)."""

    @staticmethod
    def tensor(array: np.ndarray) -> Any: ...  # noqa: D102,E704  (a tensor of a contiguous array)

    @staticmethod
    def zero_grad(optimizer: Any) -> None: ...  # noqa: D102,E704

    @staticmethod
    def bn_buffers(model: Any) -> Dict[str, Any]: ...  # noqa: D102,E704  (BatchNorm state by name)

    @staticmethod
    def assign(target: Any, value: Any) -> None: ...  # noqa: D102,E704  (in place, untracked)

    @staticmethod
    def no_grad() -> ContextManager[Any]: ...  # noqa: D102,E704


def shard_size(n: int, shards: int) -> int:
    """The rows of each of ``shards`` equal parts of a batch of ``n``; ``ValueError`` if none."""
    if shards < 1 or n % shards:
        raise ValueError(f"batch of {n} cannot be split into {shards} equal shards")
    return n // shards


def train_step(ops: TrainStepOps, model: Any, optimizer: Any, loss_fn: Any, images: np.ndarray,
               labels: np.ndarray, *, injector: Any = None, masks: Optional[StepMasks] = None,
               ema: Any = None, shards: int = 1, forward_model: Any = None) -> float:
    """One optimisation step (see the module doc); returns the loss (mean over parts).

    ``forward_model`` is what to call (a data-parallel wrapper of ``model``); ``injector`` (a
    ``MaskInjector``) takes each part's rows of ``masks``. Gradients stay on the parameters.
    """
    net = forward_model if forward_model is not None else model
    model.train()
    per = shard_size(int(labels.shape[0]), shards)
    ops.zero_grad(optimizer)
    total = 0.0
    keep: Optional[Dict[str, Any]] = None
    for s in range(shards):
        lo, hi = s * per, (s + 1) * per
        if injector is not None:
            injector.set(masks.rows(lo, hi) if masks is not None else None)
        x = ops.tensor(np.ascontiguousarray(images[lo:hi]))
        y = ops.tensor(np.ascontiguousarray(labels[lo:hi]))
        loss = loss_fn(net(x), y)
        (loss / shards if shards > 1 else loss).backward()
        total += float(loss.detach())
        if shards > 1 and s == 0:
            keep = {k: v.detach().clone() for k, v in ops.bn_buffers(model).items()}
    if keep is not None:
        with ops.no_grad():
            for k, v in ops.bn_buffers(model).items():
                ops.assign(v, keep[k])
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return total / shards
