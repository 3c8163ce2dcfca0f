"""Batches of official-eval crops (uint8 NCHW numpy) decoded by worker processes, in a fixed order.

Decoding and resizing JPEGs is most of the end-to-end cost at small resolutions, so each batch is
split into chunks handed to the worker pool of :mod:`cream_core.data.workers` (shared with the
training loader: same order, same clean-up); results are reassembled in dataset order, so the
output never depends on the number of workers. At most ``prefetch`` batches are decoded ahead,
which bounds memory on the 50 000 images of ImageNet val.

Normalisation is *not* done here: :func:`cream_core.data.transforms.normalize` turns the uint8 batch into
the float32 input both frameworks receive (the official prefetcher did it on the GPU, after
collation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cream_core.data.datasets import ImageDataset, Sample
from cream_core.data.errors import BadDataError, BadItem
from cream_core.data.transforms import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, EvalTransform
from cream_core.data.val_inputs import TarMember
from cream_core.data.workers import (DEFAULT_PREFETCH, default_start_method, default_workers,
                                     ordered_batches, split_for_workers)

__all__ = ["Batch", "EvalLoader", "default_workers", "DEFAULT_BATCH_SIZE", "DEFAULT_PREFETCH",
           "OMP_ENV"]

DEFAULT_BATCH_SIZE: int = 64
#: OpenMP settings the evaluation commands (``cream-eval``, ``parity eval``) apply, unless already
#: set, before torch or Paddle is imported. The model's threads share the cores with the decoding
#: processes; OpenMP threads that spin-wait between parallel regions (the default) then steal the
#: cores from each other and from the decoders: measured on 2 cores under load, torch with 2
#: threads went from 14 to 365 images/s with passive waiting (bench/eval_bench.py --omp-wait).
OMP_ENV: Dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
@dataclass
class Batch:
    """Preprocessed images with their labels, dataset positions and paths."""

    images: np.ndarray  # uint8, (N, 3, S, S)
    labels: np.ndarray  # int64, (N,)
    indices: np.ndarray  # int64, (N,) positions in the dataset
    paths: List[str] = field(default_factory=list)
    batch_id: int = -1  # position of the batch in the loader's fixed batch list
    skipped: List[BadItem] = field(default_factory=list)  # skipped while decoding this batch

    def __len__(self) -> int:
        return int(self.labels.shape[0])


_Chunk = Tuple[np.ndarray, List[int], List[BadItem]]


def _crop(transform: EvalTransform, sample: Sample) -> np.ndarray:
    """The eval crop of a file on disk, or of a member of the val tar (read in place)."""
    if isinstance(sample, TarMember):
        return transform.crop(sample.open_image())
    return transform(sample.path)


def _decode_chunk(transform: EvalTransform, items: Sequence[Tuple[int, Sample]],
                  skip_bad: bool) -> _Chunk:
    """Decode ``(index, sample)`` pairs; bad files are returned, not raised (stop at the first one
    unless skipping)."""
    size = transform.img_size
    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    good: List[int] = []
    bad: List[BadItem] = []
    for index, sample in items:
        try:
            out[len(good)] = _crop(transform, sample)
        except BadDataError as e:
            bad.append(e.item)
            if not skip_bad:
                break
            continue
        good.append(index)
    return out[:len(good)], good, bad


class EvalLoader:
    """Iterate a dataset in order as :class:`Batch` es of official-eval crops.

    Args:
        dataset: the indexed data (see :mod:`cream_core.data.datasets`).
        img_size: crop size (the model's resolution).
        batch_size: images per batch (the last batch, and batches with skipped files, are smaller).
        workers: decoding processes; 0 decodes in the calling process.
        crop_pct, interpolation: the eval transform (official defaults).
        skip_bad: skip unreadable images (recorded in :attr:`skipped`) instead of raising
            :class:`~cream_core.data.errors.BadDataError` on the first one.
        prefetch: batches decoded ahead.
        start_method: multiprocessing start method (default
            :func:`~cream_core.data.workers.default_start_method`).
    """

    def __init__(self, dataset: ImageDataset, img_size: int, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: Optional[int] = None, crop_pct: float = DEFAULT_CROP_PCT,
                 interpolation: str = DEFAULT_INTERPOLATION, skip_bad: bool = False,
                 prefetch: int = DEFAULT_PREFETCH, start_method: Optional[str] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.transform = EvalTransform(img_size, crop_pct, interpolation)
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self.skip_bad = skip_bad
        self.prefetch = max(1, prefetch)
        self.start_method = start_method or default_start_method()
        #: Files skipped while indexing (``dataset.problems``) and while decoding.
        self.skipped: List[BadItem] = list(dataset.problems)

    @property
    def img_size(self) -> int:
        """Side of the square crops."""
        return self.transform.img_size

    @property
    def num_images(self) -> int:
        """Images the dataset lists (before any decode-time skipping)."""
        return len(self.dataset)

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def _batches(self) -> List[List[Tuple[int, Sample]]]:
        items = list(enumerate(self.dataset.samples))
        return [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    def _assemble(self, chunks: Sequence[_Chunk], batch_id: int) -> Batch:
        skipped: List[BadItem] = []
        for _, _, bad in chunks:
            for item in bad:
                if not self.skip_bad:
                    raise BadDataError(item.path, item.problem, skippable=True)
                self.skipped.append(item)
                skipped.append(item)
        images = np.concatenate([c[0] for c in chunks]) if chunks else \
            np.empty((0, 3, self.img_size, self.img_size), np.uint8)
        indices = np.array([i for c in chunks for i in c[1]], dtype=np.int64)
        samples = self.dataset.samples
        labels = np.array([samples[i].label for i in indices], dtype=np.int64)
        return Batch(images, labels, indices, [samples[i].path for i in indices], batch_id, skipped)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, batch_ids: Optional[Sequence[int]] = None,
                keep_empty: bool = False) -> Iterator[Batch]:
        """The batches numbered ``batch_ids`` (default: all, in order) of the fixed batch list
        (``batch_size`` consecutive images each), decoded ahead; a batch whose every image was
        skipped is yielded only when ``keep_empty`` (a shard must account for every batch)."""
        self.skipped = list(self.dataset.problems)
        every = self._batches()
        ids = range(len(every)) if batch_ids is None else list(batch_ids)
        jobs = ((i, [(self.transform, c, self.skip_bad)
                     for c in split_for_workers(every[i], self.workers)])
                for i in ids)
        for batch_id, chunks in ordered_batches(_decode_chunk, jobs, self.workers, self.prefetch,
                                                self.start_method):
            out = self._assemble(chunks, batch_id)
            if len(out) or keep_empty:
                yield out
