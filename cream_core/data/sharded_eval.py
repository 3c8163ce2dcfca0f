"""The evaluation loop for one process or many (``torchrun`` / ``paddle.distributed.launch``), with
the predictions file written as it goes and resumable (:mod:`cream_core.data.eval_journal`).

**Sharding.** The data set is cut into the same fixed batches (``batch_size`` consecutive images)
whatever the number of processes. Step ``s`` evaluates batches ``first + s*W ... first + s*W + W-1``
(``W`` processes): rank ``r`` takes batch ``first + s*W + r``. Every image is therefore in the same
batch, with the same batch-mates, as in a one-process run, so its float32 logits are bit for bit the
same (they may differ in the last bits with other batch-mates), and so are its top-5 and loss. After
each step the per-image results (not the logits) are gathered — ``all_gather_object`` of the
framework's process group (gloo on CPU) — and rank 0 appends them, in batch order, to the
predictions file: the merged result equals one process's to the last image, including the loss
(summed with ``math.fsum``). Bad items stop every rank at the same step (a rank that cannot decode
an image says so in its record), so no rank is left waiting.

**Resume.** Rank 0 reads how many batches the interrupted run finished and tells the others; the
loop starts at the next batch. Batch boundaries do not depend on the number of processes, so a run
may be resumed with another one.

The framework supplies only ``forward`` (normalised float32 NCHW -> float32 logits) and a
:class:`Comm` (its rank, world size and ``all_gather_object``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from cream_core.data.errors import BadDataError, BadItem
from cream_core.data.eval_journal import BatchRecord, PredictionJournal
from cream_core.data.evaluation import (TOPK, EvalResult, ForwardFn, batch_totals, cross_entropy,
                                        progress_bar, topk_indices)
from cream_core.data.loader import Batch, EvalLoader
from cream_core.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, normalize

__all__ = ["Comm", "SINGLE_PROCESS", "shard_steps", "evaluate_sharded", "merge_records"]


@dataclass(frozen=True)
class Comm:
    """This process's place in the group and how to gather one object from every rank."""

    rank: int = 0
    world_size: int = 1
    all_gather: Optional[Callable[[Any], List[Any]]] = None  # obj -> [obj of rank 0, 1, ...]

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        assert self.all_gather is not None, "a multi-process Comm needs all_gather"
        return self.all_gather(obj)


SINGLE_PROCESS = Comm()


def shard_steps(first: int, num_batches: int, world_size: int) -> List[List[int]]:
    """Batch ids of each step: step ``s`` holds ``first + s*W + r`` for the ranks ``r`` that have
    one (the last step may be short)."""
    ids = list(range(first, num_batches))
    return [ids[i:i + world_size] for i in range(0, len(ids), world_size)]


def _record(batch: Batch, logits: np.ndarray, seconds: float, num_classes: int,
            keep_logits: bool) -> BatchRecord:
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] != len(batch) or logits.shape[1] < num_classes:
        raise RuntimeError(f"the forward returned shape {logits.shape} for a batch of "
                           f"{len(batch)} images and {num_classes} classes")
    rec = BatchRecord(batch.batch_id, batch.indices, list(batch.paths), batch.labels,
                      topk_indices(logits, max(TOPK)), cross_entropy(logits, batch.labels),
                      list(batch.skipped), seconds)
    if keep_logits:
        rec.logits = logits
    return rec


def _empty(batch_id: int, batch: Optional[Batch], error: Optional[BadItem]) -> BatchRecord:
    return BatchRecord(batch_id, np.empty((0,), np.int64), [], np.empty((0,), np.int64),
                       np.empty((0, max(TOPK)), np.int64), np.empty((0,), np.float64),
                       list(batch.skipped) if batch is not None else [], 0.0, error)


def _start_batch(comm: Comm, journal: Optional[PredictionJournal], resume: bool
                 ) -> "tuple[int, List[BatchRecord]]":
    """Rank 0 opens the journal (fresh or resumed); every rank learns the first batch to run, or
    the error that stops them all."""
    done: List[BatchRecord] = []
    status: tuple = (0, None)  # (first batch, (error class, path, problem) or None)
    if comm.rank == 0 and journal is not None:
        try:
            if resume:
                done = journal.resume()
            else:
                journal.start()
            status = (journal.done_batches, None)
        except BadDataError as e:  # sent as plain values: exceptions with extra arguments
            status = (0, (type(e), e.path, e.problem))  # do not survive pickling
    first, error = comm.gather(status)[0]
    if error is not None:
        cls, path, problem = error
        raise cls(path, problem)
    return first, done


def evaluate_sharded(forward: ForwardFn, loader: EvalLoader, framework: str, *,
                     comm: Comm = SINGLE_PROCESS, journal: Optional[PredictionJournal] = None,
                     resume: bool = False, keep_logits: bool = False, progress: bool = False,
                     desc: Optional[str] = None, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                     std: Sequence[float] = IMAGENET_DEFAULT_STD) -> Optional[EvalResult]:
    """Evaluate this rank's share of ``loader``; rank 0 returns the merged result, others ``None``."""
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    first, records = _start_batch(comm, journal, resume)
    steps = shard_steps(first, len(loader), comm.world_size)
    mine = [s[comm.rank] if comm.rank < len(s) else None for s in steps]
    ids = [i for i in mine if i is not None]
    batches = loader.batches(ids, keep_empty=True)
    bs, n = loader.batch_size, loader.num_images
    label = desc or framework
    if comm.world_size > 1:
        label += f" [rank {comm.rank}/{comm.world_size}]"
    bar = progress_bar(sum(min(bs, n - i * bs) for i in ids), label, progress)
    model_seconds = 0.0
    try:
        for batch_id in mine:  # one per step; None: this rank has no batch in the last step
            rec = None
            if batch_id is not None:
                rec = _run_batch(batches, batch_id, forward, loader, keep_logits, mean, std)
                model_seconds += rec.model_seconds
                if bar is not None:
                    bar.update(len(rec.paths) + len(rec.skipped))
            gathered = [r for r in comm.gather(rec) if r is not None]
            errors = [r.error for r in gathered if r.error is not None]
            if errors:
                raise BadDataError(errors[0].path, errors[0].problem, skippable=True)
            gathered.sort(key=lambda r: r.batch_id)
            if comm.rank == 0:
                records.extend(gathered)
                if journal is not None:
                    journal.append(gathered)
    finally:
        if bar is not None:
            bar.close()
        batches.close()  # stops the decoding workers on an error
    seconds = time.perf_counter() - start
    times = comm.gather((_cpu_seconds() - cpu0, model_seconds))  # workers joined by now
    if comm.rank != 0:
        return None
    skipped = list(loader.dataset.problems) + (journal.skipped if journal is not None else
                                               [b for r in records for b in r.skipped])
    timed = sum(len(r.paths) for r in records if r.batch_id >= first)
    result = merge_records(framework, records, skipped, seconds, sum(t[1] for t in times), timed)
    result.processes = comm.world_size
    result.cpu_seconds = sum(t[0] for t in times)
    return result


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _run_batch(batches: Any, batch_id: int, forward: ForwardFn, loader: EvalLoader,
               keep_logits: bool, mean: Sequence[float], std: Sequence[float]) -> BatchRecord:
    """Decode and evaluate this rank's batch ``batch_id``; a bad item becomes the record's error."""
    try:
        batch = next(batches)
    except BadDataError as e:
        return _empty(batch_id, None, e.item)
    assert batch.batch_id == batch_id, (batch.batch_id, batch_id)
    if len(batch) == 0:
        return _empty(batch_id, batch, None)
    t0 = time.perf_counter()
    logits = forward(normalize(batch.images, mean, std))
    return _record(batch, logits, time.perf_counter() - t0, loader.dataset.num_classes,
                   keep_logits)


def merge_records(framework: str, records: Sequence[BatchRecord], skipped: Sequence[BadItem],
                  seconds: float, model_seconds: float, timed_images: int) -> EvalResult:
    """One :class:`EvalResult` from the records of every batch (in dataset order)."""
    return batch_totals(framework, [p for r in records for p in r.paths],
                        [r.labels for r in records], [r.top5 for r in records],
                        [r.losses for r in records], [r.logits for r in records], seconds=seconds,
                        model_seconds=model_seconds, skipped=skipped, timed_images=timed_images)
