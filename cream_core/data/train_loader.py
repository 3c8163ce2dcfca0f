"""Training batches: a seeded shuffle, the official augmentation in worker processes, data-parallel slices.

Each epoch visits the dataset in the order ``default_rng([seed, epoch]).permutation(n)``; step ``j``
takes the global batch ``order[j*B:(j+1)*B]`` (``B`` = per-rank batch x world size, the last
incomplete batch dropped as the official ``drop_last=True``), and rank ``r`` takes rows
``r*b:(r+1)*b`` of it. Every image is augmented from its own random stream
(:func:`cream_core.data.train_transforms.sample_rng`), so a batch is bit-identical whatever the number of
workers, ranks or the framework consuming it — and a resumed run sees exactly the batches an
uninterrupted one would have. (The official ``DistributedSampler`` interleaved ranks instead; each
step's global batch is then a different but equally random set.)

Nothing here imports torch or Paddle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cream_core.data.datasets import ImageDataset
from cream_core.data.errors import BadDataError, BadItem
from cream_core.data.train_transforms import TrainTransform
from cream_core.data.transforms import open_image
from cream_core.data.workers import (DEFAULT_PREFETCH, default_workers, ordered_batches,
                                     split_for_workers)

__all__ = ["TrainBatch", "TrainLoader", "epoch_order"]


@dataclass
class TrainBatch:
    """One rank's part of a global training batch."""

    images: np.ndarray  # float32 (n, 3, S, S), normalised and erased
    labels: np.ndarray  # int64 (n,)
    indices: np.ndarray  # int64 (n,) dataset positions
    epoch: int
    step: int  # step within the epoch
    rows: Tuple[int, int] = (0, 0)  # this rank's rows in the global batch
    global_size: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of ``n`` images in ``epoch`` (a permutation, int64)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def _augment_chunk(transform: TrainTransform, seed: int, epoch: int,
                   items: Sequence[Tuple[int, str]]) -> Tuple[np.ndarray, Optional[BadItem]]:
    """Augment ``(index, path)`` pairs; a bad file is returned (errors do not cross processes)."""
    size = transform.img_size
    out = np.empty((len(items), 3, size, size), dtype=np.float32)
    for k, (index, path) in enumerate(items):
        try:
            out[k] = transform(open_image(path), seed, epoch, index)
        except BadDataError as e:
            return out[:k], e.item
    return out, None


def _collect(chunks: Sequence[Tuple[np.ndarray, Optional[BadItem]]]) -> np.ndarray:
    for _, bad in chunks:
        if bad is not None:
            raise BadDataError(bad.path, bad.problem)
    return np.concatenate([c for c, _ in chunks])


@dataclass
class TrainLoader:
    """Iterate one epoch of augmented training batches (call :meth:`epoch_batches` per epoch).

    Args:
        dataset: indexed training images (:mod:`cream_core.data.datasets`).
        transform: the per-image augmentation.
        batch_size: images per step *per rank* (the official ``BATCH_SIZE``).
        seed: run seed (shuffle, augmentation).
        rank, world_size: data-parallel position; the global batch is ``batch_size * world_size``.
        workers: augmentation processes (0: in this process), the pool of
            :mod:`cream_core.data.workers` (shared with the eval loader: same order, same clean-up).
        prefetch: batches prepared ahead.
        start_method: multiprocessing start method (default
            :func:`~cream_core.data.workers.default_start_method`).
    """

    dataset: ImageDataset
    transform: TrainTransform
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    workers: Optional[int] = None
    prefetch: int = DEFAULT_PREFETCH
    start_method: Optional[str] = None
    _paths: List[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.workers is None:
            self.workers = default_workers()
        self._paths = self.dataset.paths
        if self.global_batch > len(self.dataset):
            raise ValueError(f"{self.dataset.root}: {len(self.dataset)} training images are fewer "
                             f"than one global batch of {self.global_batch}")

    @property
    def global_batch(self) -> int:
        """Images per step over all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Steps per epoch (incomplete last batch dropped)."""
        return len(self.dataset) // self.global_batch

    def _rank_items(self, order: np.ndarray, step: int) -> List[Tuple[int, str]]:
        start = step * self.global_batch + self.rank * self.batch_size
        idx = order[start:start + self.batch_size]
        return [(int(i), self._paths[int(i)]) for i in idx]

    def _batch(self, epoch: int, step: int, items: List[Tuple[int, str]],
               images: np.ndarray) -> TrainBatch:
        samples = self.dataset.samples
        idx = np.array([i for i, _ in items], dtype=np.int64)
        labels = np.array([samples[i].label for i in idx], dtype=np.int64)
        start = self.rank * self.batch_size
        return TrainBatch(images, labels, idx, epoch, step, (start, start + len(idx)),
                          self.global_batch)

    def _jobs(self, order: np.ndarray, epoch: int, start_step: int) -> Iterator[tuple]:
        """``((step, items), chunks)`` of the steps from ``start_step`` on, for the worker pool."""
        for s in range(start_step, len(self)):
            items = self._rank_items(order, s)
            yield (s, items), [(self.transform, self.seed, epoch, c) for c in split_for_workers(items, self.workers)]

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[TrainBatch]:
        """This rank's batches of ``epoch``, from ``start_step`` on."""
        jobs = self._jobs(epoch_order(len(self.dataset), self.seed, epoch), epoch, start_step)
        for (s, items), chunks in ordered_batches(_augment_chunk, jobs, int(self.workers or 0),
                                                  self.prefetch, self.start_method):
            yield self._batch(epoch, s, items, _collect(chunks))
