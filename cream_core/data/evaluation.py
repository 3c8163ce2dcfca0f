"""Framework-free evaluation loop and metrics: both frameworks run exactly this code around their forward.

``cream_torch_ref.evaluate`` and ``cream_paddle.evaluate`` only supply a function mapping the
normalised float32 NCHW batch to float32 logits; everything else — normalisation, top-k, loss,
timing, bookkeeping — is shared here, so a difference between the two reports can only come from
the models.

* top-k: the ``k`` largest logits, ties going to the lower class index (a stable sort), as a percent
  of the images evaluated (the official ``accuracy()`` used ``torch.topk``; exact float ties between
  distinct classes do not occur in practice);
* loss: mean cross-entropy over all images, computed in float64 from the float32 logits (the
  official validate() averaged per-batch ``CrossEntropyLoss`` weighted by batch size: the same mean),
  summed with ``math.fsum`` (exactly rounded, so independent of the order and grouping of the
  images: one process, shards, a resumed run and every data layout give the same bits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from cream_core.data.errors import BadItem
from cream_core.data.loader import Batch, EvalLoader
from cream_core.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, normalize

__all__ = ["TOPK", "ForwardFn", "EvalResult", "EvalAccumulator", "batch_totals", "topk_indices",
           "cross_entropy", "run_evaluation", "iterate_normalized", "progress_bar"]

#: The accuracies reported: top-1 and top-5.
TOPK = (1, 5)
#: What a framework supplies: normalised float32 NCHW batch -> float32 logits (N, num_classes).
ForwardFn = Callable[[np.ndarray], np.ndarray]


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices by decreasing logit; equal logits keep the lower index first."""
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")
    return order[:, :k]


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy (float64) of float32 logits against integer labels."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(z).sum(axis=1))
    return logsumexp - z[np.arange(z.shape[0]), labels]


@dataclass
class EvalResult:
    """Accuracy, loss and speed of one evaluation, with per-image details when kept."""

    framework: str
    top1: float  # percent
    top5: float  # percent
    loss: float  # mean cross-entropy
    images: int
    seconds: float  # wall time of the whole loop (decoding included)
    model_seconds: float  # time inside the framework's forward only (summed over processes)
    correct1: int
    correct5: int
    skipped: List[BadItem] = field(default_factory=list)
    paths: List[str] = field(default_factory=list)
    labels: Optional[np.ndarray] = None  # (N,)
    predictions: Optional[np.ndarray] = None  # (N, 5) top-5 class indices
    logits: Optional[np.ndarray] = None  # (N, C) float32, only when asked for
    timed_images: Optional[int] = None  # images evaluated in ``seconds`` (fewer after a resume)
    processes: int = 1  # processes that shared the evaluation
    cpu_seconds: Optional[float] = None  # CPU time of the loop, all processes and their workers

    @property
    def images_per_s(self) -> float:
        """End-to-end throughput (decode + preprocess + forward) of this session."""
        timed = self.images if self.timed_images is None else self.timed_images
        return timed / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_images_per_s(self) -> float:
        """Throughput of the forward pass alone."""
        return self.images / self.model_seconds if self.model_seconds > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """The JSON report: ``top1``, ``top5``, ``loss``, ``images``, ``images_per_s``, ``skipped``..."""
        return {
            "framework": self.framework,
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "images": self.images,
            "images_per_s": self.images_per_s,
            "model_images_per_s": self.model_images_per_s,
            "seconds": self.seconds,
            "correct1": self.correct1,
            "correct5": self.correct5,
            "skipped": [b.to_dict() for b in self.skipped],
            "processes": self.processes,
            "cpu_seconds": self.cpu_seconds,
        }


def iterate_normalized(loader: EvalLoader, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                       std: Sequence[float] = IMAGENET_DEFAULT_STD):
    """Yield ``(batch, float32 input)`` pairs: the loader's batches and their normalised images."""
    for batch in loader:
        yield batch, normalize(batch.images, mean, std)


class EvalAccumulator:
    """Collects per-batch logits into an :class:`EvalResult` (used by :func:`run_evaluation` and by
    the two-framework parity run, which feeds one accumulator per framework)."""

    def __init__(self, framework: str, num_classes: int, keep_logits: bool = False) -> None:
        self.framework = framework
        self.num_classes = num_classes
        self.keep_logits = keep_logits
        self.paths: List[str] = []
        self.labels: List[np.ndarray] = []
        self.preds: List[np.ndarray] = []
        self.logits: List[np.ndarray] = []
        self.losses: List[np.ndarray] = []  # per-image cross-entropy, float64
        self.model_seconds = 0.0

    def update(self, batch: Batch, logits: np.ndarray, model_seconds: float = 0.0) -> np.ndarray:
        """Add one batch's float32 logits; returns them as a checked float32 array."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(batch):
            raise RuntimeError(f"{self.framework} forward returned shape {logits.shape} for a batch "
                               f"of {len(batch)}")
        if logits.shape[1] < self.num_classes:
            raise RuntimeError(f"the {self.framework} model has {logits.shape[1]} outputs but the "
                               f"data has {self.num_classes} classes")
        self.model_seconds += model_seconds
        self.losses.append(cross_entropy(logits, batch.labels))
        self.preds.append(topk_indices(logits, max(TOPK)))
        self.labels.append(batch.labels)
        self.paths.extend(batch.paths)
        if self.keep_logits:
            self.logits.append(logits)
        return logits

    def result(self, seconds: float, skipped: Sequence[BadItem] = ()) -> EvalResult:
        """The totals, with ``seconds`` of wall time for the whole loop."""
        return batch_totals(self.framework, self.paths, self.labels, self.preds, self.losses,
                            self.logits if self.keep_logits else None, seconds=seconds,
                            model_seconds=self.model_seconds, skipped=skipped)


def batch_totals(framework: str, paths: Sequence[str], labels: Sequence[np.ndarray],
                 predictions: Sequence[np.ndarray], losses: Sequence[np.ndarray],
                 logits: Optional[Sequence[Optional[np.ndarray]]], *, seconds: float,
                 model_seconds: float, skipped: Sequence[BadItem] = (),
                 timed_images: Optional[int] = None) -> EvalResult:
    """One :class:`EvalResult` from per-batch labels, top-5 predictions, losses and (if every batch
    kept them) logits, in dataset order: the one place top-1, top-5 and the mean loss are counted
    (for :class:`EvalAccumulator` and for the journal of a sharded run)."""
    n = len(paths)
    lab = np.concatenate(labels) if len(labels) else np.empty((0,), np.int64)
    pred = np.concatenate(predictions) if len(predictions) else np.empty((0, max(TOPK)), np.int64)
    correct1 = int((pred[:, 0] == lab).sum()) if n else 0
    correct5 = int((pred == lab[:, None]).any(axis=1).sum()) if n else 0
    kept = logits is not None and len(logits) > 0 and all(x is not None for x in logits)
    return EvalResult(
        framework=framework,
        top1=100.0 * correct1 / n if n else 0.0,
        top5=100.0 * correct5 / n if n else 0.0,
        loss=math.fsum(np.concatenate(losses).tolist()) / n if n else float("nan"),
        images=n,
        seconds=seconds,
        model_seconds=model_seconds,
        correct1=correct1,
        correct5=correct5,
        skipped=list(skipped),
        paths=list(paths),
        labels=lab,
        predictions=pred,
        logits=np.concatenate(logits) if kept else None,
        timed_images=timed_images,
    )


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "img", initial: int = 0) -> Any:
    """The project's tqdm bar (on stderr, gone when done): over images here, over steps in the
    training and search loops; ``None`` when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                dynamic_ncols=True)


def run_evaluation(forward: ForwardFn, loader: EvalLoader, framework: str, *,
                   keep_logits: bool = False, progress: bool = False, desc: Optional[str] = None,
                   mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                   std: Sequence[float] = IMAGENET_DEFAULT_STD, comm: Any = None,
                   journal: Any = None, resume: bool = False) -> Optional[EvalResult]:
    """Evaluate ``forward`` over ``loader``: top-1/top-5 (percent), mean loss, throughput.

    ``comm`` (:class:`cream_core.data.sharded_eval.Comm`) shares the work between processes (rank 0
    returns the merged result, the others ``None``); ``journal``
    (:class:`cream_core.data.eval_journal.PredictionJournal`) writes the predictions as they come and,
    with ``resume``, continues an interrupted run. See :mod:`cream_core.data.sharded_eval`.
    """
    from cream_core.data.sharded_eval import SINGLE_PROCESS, evaluate_sharded

    return evaluate_sharded(forward, loader, framework, comm=comm or SINGLE_PROCESS,
                            journal=journal, resume=resume, keep_logits=keep_logits,
                            progress=progress, desc=desc, mean=mean, std=std)
