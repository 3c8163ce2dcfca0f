"""The supernet search's epoch loop, framework-free: both frameworks run exactly this code.

``cream-search`` (:mod:`cream_cli.search`) parses options and calls :func:`run_search` with the
framework's :class:`~cream_core.search.searcher.SearchFramework`; everything around the iteration
is here: data, the training batches (the official search augmentation), the log, checkpoints every
``checkpoint_interval`` iterations and at every epoch end (resumable exactly), the official
``validate`` of one random path after every epoch, and the answer (``best_arch.json`` with the
best child's weights, written as one set).
"""
from __future__ import annotations

import math
import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.backend import CHECKPOINT_SUFFIXES
from cream_core.io.atomic import atomic_write
from cream_core.io.cli_errors import UsageError
from cream_core.io.errors import CheckpointError
from cream_core.io.outputs import OutputError, commit_files, entry_per_line_json, os_problem
from cream_core.search.records import StepOutput
from cream_core.search.searcher import SearchFramework, Searcher, plain_config

__all__ = ["SearchOptions", "SearchOutcome", "run_search", "checkpoint_path", "BEST_ARCH",
           "LOG_NAME", "CHECKPOINT_NAME", "ARCH_TAG"]

BEST_ARCH = "best_arch.json"
LOG_NAME = "search.log"
CHECKPOINT_NAME = "checkpoint-last"
#: The ``arch`` entry of a search checkpoint.
ARCH_TAG = "cream-supernet"


def checkpoint_path(output: str, framework: str, name: str = CHECKPOINT_NAME) -> str:
    """Where a run of ``framework`` in ``output`` keeps checkpoint ``name``."""
    return os.path.join(output, name + CHECKPOINT_SUFFIXES[framework])


@dataclass(frozen=True)
class SearchOptions:
    """Everything a search run needs besides the config."""

    framework: str
    data: str
    output: str
    val_data: Optional[str] = None
    layout: str = "auto"
    resume: Optional[str] = None  # a checkpoint path, or "auto" (the output's last checkpoint)
    force: bool = False
    workers: Optional[int] = None
    progress: bool = True
    max_iters: Optional[int] = None  # stop after this many iterations in total (smoke runs)
    checkpoint_interval: Optional[int] = None  # iterations; default RECOVERY_INTERVAL or epochs only
    val_batches: Optional[int] = None  # evaluate at most this many batches per epoch
    threads: Optional[int] = None


@dataclass
class SearchOutcome:
    """What a run produced (rank 0's view)."""

    iterations: int
    epochs_done: int
    best_arch: Optional[List[List[int]]]
    best_source: str
    board: List[Dict[str, Any]]
    files: Dict[str, str]
    seconds: float
    rank: int = 0
    world_size: int = 1
    last_eval: Optional[Dict[str, float]] = None


class _Log:
    """Rank 0 prints and appends to ``search.log``; other ranks stay silent."""

    def __init__(self, path: Optional[str], enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%m/%d %I:%M:%S %p')} | {msg}"
        print(line, flush=True)
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(line + "\n")
            except OSError as e:
                raise OutputError(self.path, f"could not be written ({os_problem(e)})") from None


def _board_lines(board: Any) -> List[str]:
    return [f"No.{i} (prec1 {e.prec1:.4f}, flops {e.flops:.2f}, path {e.cand})"
            for i, e in enumerate(board.entries())]


@dataclass
class _Run:
    """One run's moving parts and running state (the loop's shared context)."""

    cfg: Any
    opts: SearchOptions
    fw: SearchFramework
    searcher: Searcher
    log: Callable[[str], None]
    ckpt: str
    epoch: int = 0
    start_step: int = 0
    best_seen: Dict[str, Any] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)
    last_eval: Optional[Dict[str, float]] = None

    @property
    def main_rank(self) -> bool:
        return self.searcher.rank == 0

    def save(self, epoch: int, next_step: int) -> None:
        """Checkpoint (rank 0), then wait for every process."""
        state = self.searcher.checkpoint_state(epoch, next_step, self.best_seen)
        if self.main_rank:
            writer = self.fw.checkpoint_writer(self.searcher.model_state(), state, epoch, ARCH_TAG,
                                               plain_config(self.cfg))
            atomic_write(self.ckpt, writer)  # an OS failure is an OutputError naming the file
            self.files["checkpoint"] = self.ckpt
        self.searcher.backend.barrier()


# --- before the loop -----------------------------------------------------------------------------
def _resolve_data(opts: SearchOptions, cfg: Any) -> Tuple[Any, Any]:
    from cream_core.data import BadDataError, open_train_val

    train_set, val_set = open_train_val(opts.data, opts.val_data, opts.layout, cfg.num_classes)
    if train_set.num_classes != cfg.num_classes:
        raise BadDataError(opts.data, f"has {train_set.num_classes} classes, the config "
                                      f"{cfg.num_classes} (set --num-classes)")
    return train_set, val_set


def _resume_file(opts: SearchOptions) -> Optional[str]:
    if opts.resume is None:
        return None
    path = checkpoint_path(opts.output, opts.framework) if opts.resume == "auto" else opts.resume
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such checkpoint file" if not os.path.exists(path)
                              else "not a file")
    return path


def _check_output(opts: SearchOptions) -> None:
    if opts.framework not in CHECKPOINT_SUFFIXES:
        raise UsageError(f"unknown framework {opts.framework!r}; choose one of "
                         f"{', '.join(CHECKPOINT_SUFFIXES)}")
    if os.path.exists(opts.output) and not os.path.isdir(opts.output):
        raise UsageError(f"--output {opts.output} exists and is not a folder")
    last = checkpoint_path(opts.output, opts.framework)
    if os.path.exists(last) and opts.resume is None and not opts.force:
        raise UsageError(f"{opts.output} already holds a search ({os.path.basename(last)}); use "
                         "--resume auto to continue it, --force to start afresh, or another --output")
    for p in (opts.data, opts.val_data):
        if p and os.path.realpath(p) == os.path.realpath(opts.output):
            raise UsageError(f"--output {opts.output} is the data folder; choose another")


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, (list, tuple)) or isinstance(vb, (list, tuple)):
            va, vb = list(va or []), list(vb or [])
        if va != vb:
            out.append(f"{k} {vb!r} -> {va!r}")
    return out


def _read_checkpoint(fw: SearchFramework, path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(model state, search state)`` of a search checkpoint, as numpy arrays and plain values."""
    obj = fw.read_checkpoint(path)
    if not isinstance(obj, Mapping) or "search" not in obj or "state_dict" not in obj:
        raise CheckpointError(path, "is not a cream-search checkpoint (no 'search' entry)")
    to_numpy = fw.backend.tree_to_numpy
    return dict(to_numpy(obj["state_dict"])), dict(to_numpy(obj["search"]))


def _resume(run: _Run, path: str) -> None:
    """Continue the run from the checkpoint at ``path`` (same framework and settings only)."""
    model_state, state = _read_checkpoint(run.fw, path)
    framework = run.opts.framework
    if state.get("framework") != framework:
        raise CheckpointError(path, f"was written by a {state.get('framework')} search; "
                                    f"resume it with --framework {state.get('framework')}")
    diff = _differences(plain_config(run.cfg), state.get("config", {}))
    if diff:
        raise CheckpointError(path, "was made with other settings: " + "; ".join(diff[:4]))
    run.searcher.restore(model_state, state, path)
    run.epoch, run.start_step = int(state["epoch"]), int(state["next_step"])
    run.best_seen = dict(state.get("best_seen") or {})
    run.log(f"resumed from {path}: epoch {run.epoch}, step {run.start_step}, iteration "
            f"{run.searcher.iteration}, board of {run.searcher.board.board_size()}")


def _loaders(run: _Run, train_set: Any, val_set: Any) -> Tuple[Any, Any]:
    """The training batches (the official search augmentation) and, on rank 0, the eval batches."""
    from cream_core.data import EvalLoader
    from cream_core.data.train_loader import TrainLoader
    from cream_core.data.train_transforms import TrainTransform

    cfg, opts, s = run.cfg, run.opts, run.searcher
    transform = TrainTransform(cfg.image_size, interpolation="random", auto_augment=None,
                               color_jitter=cfg.color_jitter, re_prob=cfg.re_prob,
                               re_mode=cfg.re_mode)
    loader = TrainLoader(train_set, transform, cfg.batch_size, cfg.seed, s.rank, s.world_size,
                         opts.workers)
    eval_loader = EvalLoader(val_set, cfg.image_size, cfg.batch_size * cfg.val_batch_mul,
                             workers=opts.workers, interpolation=cfg.interpolation) \
        if (val_set is not None and run.main_rank) else None
    return loader, eval_loader


def _log_start(run: _Run, train_set: Any, steps: int) -> None:
    s, plan = run.searcher, run.searcher.model.plan
    n_params = sum(int(np.prod(v.shape)) for v in s.model_state().values())
    run.log(f"Supernet created ({run.opts.framework}), {n_params} state values; stage depths "
            f"{list(plan.sta_num)}, resolution {s.resolution}, choice number "
            f"{plan.choice_num}; {len(train_set)} training images, {steps} steps per epoch, "
            f"{s.world_size} process(es)")
    if run.cfg.ignored:
        run.log("config keys without effect here: " + ", ".join(run.cfg.ignored))


# --- the loop ------------------------------------------------------------------------------------
class _EpochStats:
    """Running sums of one epoch for the log's means (the KD loss over the steps that had one)."""

    def __init__(self) -> None:
        self.sums = {"loss": 0.0, "kd": 0.0, "prec1": 0.0}
        self.steps = {"all": 0, "kd": 0}

    def add(self, out: StepOutput) -> None:
        self.sums["loss"] += out.loss
        self.sums["prec1"] += out.prec1
        self.steps["all"] += 1
        if out.kd_loss is not None:
            self.sums["kd"] += out.kd_loss
            self.steps["kd"] += 1

    def mean(self, key: str) -> float:
        """The mean of ``key`` so far (``nan`` for a KD loss never computed; 0 before any step)."""
        n = self.steps["kd" if key == "kd" else "all"]
        if key == "kd" and n == 0:
            return float("nan")
        return self.sums[key] / max(n, 1)


def _train_line(run: _Run, out: StepOutput, stats: _EpochStats, step: int, steps: int) -> str:
    kd = out.kd_loss if out.kd_loss is not None else 0.0
    return (f"Train: {run.epoch} [{step:>4d}/{steps}]  Loss: {out.loss:>9.6f} "
            f"({stats.mean('loss'):>6.4f})  KD-Loss: {kd:>9.6f}  "
            f"Prec@1: {out.prec1:>7.4f} ({stats.mean('prec1'):>7.4f})  Prec@5: {out.prec5:>7.4f}  "
            f"LR: {run.searcher.current_lr():.3e}  FLOPs: {out.flops:.1f}  "
            f"board: {run.searcher.board.board_size()}"
            + ("  (meta-matching update)" if out.meta_ran else ""))


def _progress_bar(run: _Run, steps: int) -> Any:
    """The epoch's bar over steps (rank 0, unless --no-progress), from the resumed step."""
    from cream_core.data.evaluation import progress_bar

    return progress_bar(steps, f"{run.opts.framework} search epoch {run.epoch}/"
                        f"{run.cfg.epochs - 1}", run.opts.progress and run.main_rank, unit="step",
                        initial=run.start_step)


def _train_epoch(run: _Run, loader: Any, interval: Optional[int]) -> Tuple[_EpochStats, int, bool]:
    """One epoch from ``run.start_step``: ``(stats, last step, stopped by --max-iters)``."""
    steps, stats, s = len(loader), _EpochStats(), run.searcher
    bar = _progress_bar(run, steps)
    step, stop = run.start_step, False
    batches = loader.epoch_batches(run.epoch, run.start_step)
    try:
        for batch in batches:
            step = batch.step
            out = s.train_batch(batch.images, batch.labels, run.epoch, step)
            if not math.isfinite(out.loss):
                raise FloatingPointError(f"{run.opts.framework}: loss is {out.loss} at epoch "
                                         f"{run.epoch} step {step}; the search diverged")
            stats.add(out)
            if not run.best_seen or out.prec1 > run.best_seen["prec1"]:
                run.best_seen = {"prec1": out.prec1, "flops": out.flops, "cand": out.cand}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out.loss:.4f}", top1=f"{out.prec1:.1f}",
                                board=s.board.board_size(), meta="y" if out.meta_ran else "")
            if step == steps - 1 or step % run.cfg.log_interval == 0:
                run.log(_train_line(run, out, stats, step, steps))
            if run.opts.max_iters and s.iteration >= run.opts.max_iters:
                stop = True
                break
            if interval and (step + 1) % interval == 0 and step + 1 < steps:
                run.save(run.epoch, step + 1)
    finally:
        batches.close()  # a stop at --max-iters shuts the loader's workers down now, not at collection
        if bar is not None:
            bar.close()
    return stats, step, stop


def _evaluate(searcher: Searcher, loader: Any, cand: Sequence[Sequence[int]],
              max_batches: Optional[int], normalize: Callable[[np.ndarray], np.ndarray]
              ) -> Dict[str, float]:
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0
    with closing(iter(loader)) as batches:  # --val-batches: workers shut down at once
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            loss, p1, p5 = searcher.eval_batch(normalize(batch.images), batch.labels, cand)
            k = len(batch)
            loss_sum += loss * k
            c1 += p1 * k
            c5 += p5 * k
            n += k
    n = max(n, 1)
    return {"loss": loss_sum / n, "prec1": c1 / n, "prec5": c5 / n, "images": n}


def _end_epoch(run: _Run, stats: _EpochStats, seconds: float, eval_loader: Any) -> None:
    """Log the epoch and the board, then the official ``validate`` of one random path."""
    from cream_core.data import normalize

    s = run.searcher
    if run.main_rank:
        run.log(f"epoch {run.epoch}: {stats.steps['all']} steps in {seconds:.1f} s, mean loss "
                f"{stats.mean('loss'):.4f}, mean KD loss {stats.mean('kd'):.4f}, mean Prec@1 "
                f"{stats.mean('prec1'):.2f}")
        for line in _board_lines(s.board):
            run.log(line)
    cand = s.board.sample(s.rng, None)  # drawn on every rank, so the samplers stay in step
    if eval_loader is not None:
        run.last_eval = e = _evaluate(s, eval_loader, cand, run.opts.val_batches, normalize)
        run.log(f"Test: epoch {run.epoch} path {cand}: loss {e['loss']:.4f} Prec@1 "
                f"{e['prec1']:.4f} Prec@5 {e['prec5']:.4f} ({e['images']} images)")


def _epochs(run: _Run, loader: Any, eval_loader: Any) -> None:
    """Train epoch after epoch; checkpoint at every epoch end and where the run stops early."""
    cfg = run.cfg
    interval = run.opts.checkpoint_interval if run.opts.checkpoint_interval is not None \
        else cfg.recovery_interval
    while run.epoch < cfg.epochs:
        t_epoch = time.perf_counter()
        stats, step, stop = _train_epoch(run, loader, interval)
        if step + 1 < len(loader):  # stopped inside the epoch: keep the position for --resume
            run.save(run.epoch, step + 1)
            return
        _end_epoch(run, stats, time.perf_counter() - t_epoch, eval_loader)
        run.epoch += 1
        run.start_step = 0
        run.save(run.epoch, 0)
        if stop:
            return


# --- the answer ----------------------------------------------------------------------------------
def _best(run: _Run) -> Tuple[Optional[List[List[int]]], str, Dict[str, float]]:
    """The board's best path, or the best path sampled when the board is empty."""
    board = run.searcher.board
    if board.board_size() > 0:
        top = board.top1()
        return top.cand, "board", {"prec1": top.prec1, "flops": top.flops}
    if run.best_seen:
        return run.best_seen["cand"], ("best sampled path (the board is empty: the search ended "
                                       "before META_STA_EPOCH)"), \
            {"prec1": run.best_seen["prec1"], "flops": run.best_seen["flops"]}
    return None, "board", {}


def _write_answer(run: _Run, best: List[List[int]], source: str, info: Dict[str, float]) -> None:
    """``best_arch.json`` and the best child's weights, committed as one set."""
    from cream_core.arch.supernet import child_state_from_supernet, decoded_arch_list

    s, opts, plan = run.searcher, run.opts, run.searcher.model.plan
    arch_file = os.path.join(opts.output, BEST_ARCH)
    child_file = checkpoint_path(opts.output, opts.framework, "best_child")
    child = child_state_from_supernet(s.model_state(), best, plan)
    label = "cream-child[" + "|".join(".".join(str(c) for c in st) for st in best) + "]"
    writer = run.fw.child_writer(child, label)
    record = {"arch_list": best, "builds_as": decoded_arch_list(best), "source": source, **info,
              "num_classes": run.cfg.num_classes, "resolution": s.resolution,
              "sta_num": list(plan.sta_num), "framework": opts.framework,
              "iterations": s.iteration, "child_weights": os.path.basename(child_file),
              "board": s.board.summary()}
    text = entry_per_line_json(record, indent=1)
    # one set: best_arch.json names best_child, so after any crash they belong together
    commit_files({child_file: writer, arch_file: lambda f: f.write(text)}, modes={arch_file: "w"})
    run.files["best_arch"], run.files["best_child"] = arch_file, child_file
    run.log(f"best path ({source}): {best} -> {arch_file}, weights {child_file}")


def run_search(cfg: Any, opts: SearchOptions, open_framework: Callable[[], SearchFramework],
               schedule: Any, log: Optional[Callable[[str], None]] = None) -> SearchOutcome:
    """Train the supernet with the official search and write the outputs (see the module docstring).

    ``open_framework()`` returns the framework half (imported only after the cheap checks of the
    options and the data); ``schedule`` is the per-iteration LR schedule (``factor(i)``).
    """
    t_run = time.perf_counter()
    _check_output(opts)
    resume_path = _resume_file(opts)
    train_set, val_set = _resolve_data(opts, cfg)
    fw = open_framework()
    searcher = Searcher(fw, cfg, schedule, opts.threads)
    if searcher.rank == 0:
        os.makedirs(opts.output, exist_ok=True)
    logger = log or _Log(os.path.join(opts.output, LOG_NAME), searcher.rank == 0)
    run = _Run(cfg, opts, fw, searcher, logger, checkpoint_path(opts.output, opts.framework))
    if resume_path:
        _resume(run, resume_path)
    loader, eval_loader = _loaders(run, train_set, val_set)
    if run.main_rank and not resume_path:
        _log_start(run, train_set, len(loader))
    _epochs(run, loader, eval_loader)
    best, source, info = _best(run)
    if run.main_rank and best is not None:
        _write_answer(run, best, source, info)
    searcher.backend.barrier()
    return SearchOutcome(searcher.iteration, run.epoch, best, source, searcher.board.summary(),
                         run.files, time.perf_counter() - t_run, searcher.rank,
                         searcher.world_size, run.last_eval)
