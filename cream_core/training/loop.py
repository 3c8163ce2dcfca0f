"""The retraining loop, framework-free: both frameworks run exactly this code around their own step.

``cream_torch_ref.train.Trainer`` and ``cream_paddle.train.Trainer`` are the :class:`TrainerProtocol`
(forward, backward, optimizer step, EMA update, scheduler, evaluation, checkpoint I/O; the one
step is :func:`cream_core.training.step.train_step`); everything else —
data order, augmentation, drop masks, epochs, evaluation cadence, checkpoint names, the summary
table — is this module, so two runs can only differ in what the frameworks compute.

Loop (as ``Cream/tools/retrain.py`` + ``lib/core/retrain.py``): for each epoch, train on every full
global batch, then evaluate the model and its EMA (every ``eval_interval`` epochs and after the
last), step the LR schedule to ``epoch + 1`` and save ``last`` (and ``best`` by EMA top-1 when EMA is
on, else by the model's) checkpoint holding ``epoch``; resuming from a checkpoint of epoch ``e``
continues at ``e + 1`` with the schedule at ``e + 1``, and — because every random draw is a
function of ``(seed, epoch, step/index)`` — sees the batches an uninterrupted run would have.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from cream_core.backend import CHECKPOINT_SUFFIXES
from cream_core.io.outputs import commit_files, recover_commits

from cream_core.data.datasets import ImageDataset
from cream_core.data.evaluation import EvalResult, progress_bar
from cream_core.data.loader import EvalLoader
from cream_core.data.train_loader import TrainBatch, TrainLoader
from cream_core.training.masks import MaskSpec, StepMasks, step_masks
from cream_core.data.train_transforms import TrainTransform

__all__ = ["TrainerProtocol", "EpochRecord", "TrainResult", "run_training", "checkpoint_names",
           "SUMMARY_FIELDS"]

#: Columns of ``summary.csv`` (one row per epoch).
SUMMARY_FIELDS = ("epoch", "lr", "train_loss", "steps", "seconds", "top1", "top5", "eval_loss",
                  "ema_top1", "ema_top5", "ema_loss")


class TrainerProtocol(Protocol):
    """What a framework supplies to :func:`run_training`: its ``train.Trainer`` (the shared
    :class:`cream_core.training.trainer.Trainer` over the framework's ``train`` module)."""

    framework: str
    rank: int
    world_size: int
    has_ema: bool

    def mask_spec(self) -> MaskSpec: ...  # noqa: D102,E704

    def train_step(self, batch: TrainBatch, masks: StepMasks) -> float: ...  # noqa: D102,E704

    def lr(self) -> float: ...  # noqa: D102,E704

    def set_epoch(self, epoch: int) -> None: ...  # noqa: D102,E704

    def evaluate(self, loader: EvalLoader, ema: bool) -> EvalResult: ...  # noqa: D102,E704

    def checkpoint_writer(self, epoch: int) -> Callable[[Any], None]: ...  # noqa: D102,E704

    def load(self, path: str) -> int: ...  # noqa: D102,E704  (returns the saved epoch)

    def mean_over_ranks(self, value: float) -> float: ...  # noqa: D102,E704

    def barrier(self) -> None: ...  # noqa: D102,E704


@dataclass
class EpochRecord:
    """One row of ``summary.csv``."""

    epoch: int
    lr: float
    train_loss: float
    steps: int
    seconds: float
    top1: float = math.nan
    top5: float = math.nan
    eval_loss: float = math.nan
    ema_top1: float = math.nan
    ema_top5: float = math.nan
    ema_loss: float = math.nan


@dataclass
class TrainResult:
    """What a run did: per-epoch records, final evaluations and where the checkpoints are."""

    framework: str
    model: str
    epochs_run: List[int]
    history: List[EpochRecord] = field(default_factory=list)
    last_checkpoint: str = ""
    best_checkpoint: str = ""
    best_metric: float = math.nan
    best_epoch: int = -1
    final_eval: Optional[EvalResult] = None
    final_ema_eval: Optional[EvalResult] = None
    seconds: float = 0.0
    steps: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for JSON reports."""
        return {
            "framework": self.framework, "model": self.model, "epochs_run": self.epochs_run,
            "history": [asdict(r) for r in self.history], "last_checkpoint": self.last_checkpoint,
            "best_checkpoint": self.best_checkpoint, "best_metric": self.best_metric,
            "best_epoch": self.best_epoch, "seconds": self.seconds, "steps": self.steps,
            "final_eval": self.final_eval.to_dict() if self.final_eval else None,
            "final_ema_eval": self.final_ema_eval.to_dict() if self.final_ema_eval else None,
        }


def checkpoint_names(output_dir: str, suffix: str) -> Dict[str, str]:
    """Paths of the run's files: ``last``/``best`` checkpoints and ``summary.csv``."""
    return {"last": os.path.join(output_dir, "last" + suffix),
            "best": os.path.join(output_dir, "model_best" + suffix),
            "summary": os.path.join(output_dir, "summary.csv")}


def _summary_writer(rows: List[EpochRecord]) -> Callable[[Any], None]:
    rows = list(rows)

    def write(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(r).items()})

    return write


def _commit_epoch(trainer: TrainerProtocol, names: Dict[str, str], epoch: int, improved: bool,
                  history: List[EpochRecord]) -> None:
    """``last``, ``model_best`` (when ``improved``) and ``summary.csv`` as one crash-consistent set
    (:func:`cream_core.io.outputs.commit_files`): after a kill at any point, the folder holds the
    previous epoch's three files or this epoch's, never a mix."""
    members = {names["last"]: trainer.checkpoint_writer(epoch)}
    if improved:
        members[names["best"]] = trainer.checkpoint_writer(epoch)
    members[names["summary"]] = _summary_writer(history)
    commit_files(members, modes={names["summary"]: "w"})


def _read_summary(path: str, before_epoch: int) -> List[EpochRecord]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rec = EpochRecord(**{k: (int(v) if k in ("epoch", "steps") else float(v))
                                     for k, v in r.items() if k in SUMMARY_FIELDS})
            except (TypeError, ValueError):
                continue
            if rec.epoch < before_epoch:
                rows.append(rec)
    return rows


@dataclass
class _Run:
    """What one call of :func:`run_training` carries from epoch to epoch."""

    cfg: Any
    trainer: TrainerProtocol
    loader: TrainLoader
    eval_loader: Optional[EvalLoader]
    spec: MaskSpec
    names: Dict[str, str]
    steps_per_epoch: int
    progress: bool
    log: Callable[[str], None]
    result: TrainResult
    history: List[EpochRecord] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = -1

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, writes and logs."""
        return self.trainer.rank == 0


def _metric(trainer: TrainerProtocol, rec: EpochRecord) -> float:
    """The epoch's figure of merit: EMA top-1 when the run keeps an EMA, else the model's."""
    return rec.ema_top1 if trainer.has_ema else rec.top1


def _resume(run: _Run, resume: str) -> int:
    """Load ``resume``, take back the summary rows and the best epoch before it; the next epoch."""
    start_epoch = run.trainer.load(resume) + 1
    if run.names:
        run.history = _read_summary(run.names["summary"], start_epoch)
        for r in run.history:
            m = _metric(run.trainer, r)
            if not math.isnan(m) and m > run.best_metric:
                run.best_metric, run.best_epoch = m, r.epoch
    if run.main:
        run.log(f"resumed from {resume}: continuing at epoch {start_epoch}")
    return start_epoch


def _train_epoch(run: _Run, epoch: int, lr: float) -> Tuple[float, int]:
    """Every step of ``epoch`` (at most ``steps_per_epoch``): the sum of the losses and the steps."""
    trainer, cfg, total = run.trainer, run.cfg, run.cfg.total_epochs
    bar = progress_bar(run.steps_per_epoch, f"{trainer.framework} epoch {epoch}/{total - 1}",
                       run.progress and run.main, unit="step")
    loss_sum, n = 0.0, 0
    batches = run.loader.epoch_batches(epoch)
    try:
        for batch in batches:
            if n >= run.steps_per_epoch:
                break
            masks = step_masks(run.spec, cfg.seed, epoch, batch.step, batch.global_size)
            loss = trainer.train_step(batch, masks.rows(*batch.rows))
            if not math.isfinite(loss):
                raise FloatingPointError(f"{trainer.framework}: loss is {loss} at epoch {epoch} "
                                         f"step {batch.step}; training diverged")
            loss_sum += loss
            n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
    finally:
        batches.close()  # an early stop shuts the loader's workers down now, not at collection
        if bar is not None:
            bar.close()
    return loss_sum, n


def _evaluate(run: _Run, rec: EpochRecord) -> None:
    """Evaluate the model (and its EMA) into ``rec`` and the result's final evaluations."""
    ev = run.trainer.evaluate(run.eval_loader, ema=False)
    rec.top1, rec.top5, rec.eval_loss = ev.top1, ev.top5, ev.loss
    run.result.final_eval = ev
    if run.trainer.has_ema:
        ee = run.trainer.evaluate(run.eval_loader, ema=True)
        rec.ema_top1, rec.ema_top5, rec.ema_loss = ee.top1, ee.top5, ee.loss
        run.result.final_ema_eval = ee


def _log_epoch(run: _Run, rec: EpochRecord) -> None:
    parts = [f"epoch {rec.epoch}: lr {rec.lr:.4g} loss {rec.train_loss:.4f} ({rec.steps} steps, "
             f"{rec.seconds:.1f} s)"]
    if not math.isnan(rec.top1):
        parts.append(f"top-1 {rec.top1:.2f} top-5 {rec.top5:.2f}")
    if not math.isnan(rec.ema_top1):
        parts.append(f"EMA top-1 {rec.ema_top1:.2f} top-5 {rec.ema_top5:.2f}")
    run.log("; ".join(parts))


def _run_epoch(run: _Run, epoch: int) -> None:
    """Train one epoch, evaluate when due, step the schedule, commit the epoch's files, log."""
    trainer, cfg = run.trainer, run.cfg
    t0 = time.perf_counter()
    lr = trainer.lr()
    loss_sum, n = _train_epoch(run, epoch, lr)
    run.result.steps += n
    rec = EpochRecord(epoch, lr, trainer.mean_over_ranks(loss_sum / max(n, 1)), n, 0.0)
    last = epoch == cfg.total_epochs - 1
    if run.eval_loader is not None and run.main and (
            last or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0)):
        _evaluate(run, rec)
    trainer.set_epoch(epoch + 1)
    rec.seconds = time.perf_counter() - t0
    run.history.append(rec)
    run.result.epochs_run.append(epoch)
    metric = _metric(trainer, rec)
    improved = not math.isnan(metric) and metric > run.best_metric
    if improved:
        run.best_metric, run.best_epoch = metric, epoch
    if run.names and run.main:
        _commit_epoch(trainer, run.names, epoch, improved, run.history)
        run.result.last_checkpoint = run.names["last"]
    trainer.barrier()
    if run.main:
        _log_epoch(run, rec)


def run_training(cfg: Any, trainer: TrainerProtocol, train_set: ImageDataset,
                 val_set: Optional[ImageDataset], output_dir: Optional[str], *,
                 resume: Optional[str] = None, workers: Optional[int] = None,
                 progress: bool = True, max_steps: Optional[int] = None,
                 log: Callable[[str], None] = print) -> TrainResult:
    """Train ``trainer``'s model with recipe ``cfg`` (:class:`cream_core.config.retrain.RetrainConfig`).

    ``output_dir`` receives ``last``/``model_best`` checkpoints and ``summary.csv`` (rank 0 only;
    ``None`` writes nothing). ``max_steps`` caps the steps per epoch (tests, benchmarks).
    """
    loader = TrainLoader(train_set, TrainTransform.from_config(cfg.img_size, cfg.augment),
                         cfg.batch_size, cfg.seed, trainer.rank, trainer.world_size, workers)
    eval_loader = EvalLoader(val_set, cfg.img_size, cfg.eval_batch_size, workers=workers) \
        if val_set is not None else None
    run = _Run(cfg, trainer, loader, eval_loader, trainer.mask_spec(),
               checkpoint_names(output_dir, CHECKPOINT_SUFFIXES[trainer.framework]) if output_dir else {},
               len(loader) if max_steps is None else min(len(loader), max_steps), progress, log,
               TrainResult(trainer.framework, cfg.model, []))
    if output_dir and run.main:
        recover_commits([output_dir])  # a run killed inside its last commit: finish it first
    trainer.barrier()
    start_epoch = _resume(run, resume) if resume else 0
    trainer.set_epoch(start_epoch)
    if output_dir and run.main:
        os.makedirs(output_dir, exist_ok=True)
    t_run = time.perf_counter()
    for epoch in range(start_epoch, cfg.total_epochs):
        _run_epoch(run, epoch)
    result = run.result
    result.history = run.history
    if run.names and run.best_epoch >= 0:
        result.best_checkpoint = run.names["best"]
    result.best_metric = run.best_metric if run.best_epoch >= 0 else math.nan
    result.best_epoch = run.best_epoch
    result.seconds = time.perf_counter() - t_run
    return result
