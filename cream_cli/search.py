"""``cream-search``: train a Cream supernet with the official search algorithm, in PyTorch or Paddle.

Defaults are the official search settings (``cream_core/config/search.yaml``: the official
``train.yaml`` over ``lib/config.py``: Nesterov SGD lr 1.0 with the per-iteration linear decay, meta
lr 1e-4, weight decay 1e-4, label smoothing 0.1, FLOPs 0..600, board of 10, meta pick, PRE_PROB
sampling, meta-matching every 200 iterations from epoch 21, batch 128 per process, 120 epochs).
``--config FILE`` takes the same keys (an official config file works) and the options below
override both.

Data: ``--data`` is the folder holding ``train/`` (and ``val/``, evaluated with a random path after
every epoch, as the official ``validate``) or a training set itself (ImageNet ``<wnid>/`` folders,
class folders or a list file; ``--val-data`` gives the evaluation set). Augmentation is the official
search loader's: random-resized crop with random interpolation, flip, colour jitter 0.4, random
erasing 0.2 (no auto-augment).

Output (``--output``, rank 0): ``search.log`` (the official log lines and, after every epoch, the
prioritized board), ``checkpoint-last`` (``.pth.tar`` in the official layout for torch,
``.pdparams`` for Paddle; every ``--checkpoint-interval`` iterations and at every epoch end; with
everything needed to resume exactly: weights, momentum, the live-gradient set, the board, the path
sampler's random state), and at the end ``best_arch.json`` (the board's best path as a child
architecture ``arch_list``, buildable with ``ChildNet(arch_list)`` in both packages) with
``best_child`` (that child's weights inherited from the supernet, a checkpoint ``convert-ckpt`` and
the evaluation tools accept). ``--resume auto`` continues the run in ``--output``; ``--resume FILE``
continues from a checkpoint elsewhere.

Several processes (CPU, gloo): ``torchrun --nproc_per_node 2 -m cream_cli.search --framework torch
...`` or ``python -m paddle.distributed.launch --nproc_per_node 2 <path of cream_cli/search.py>
--framework paddle ...``; ``--batch-size`` is per process, as in the official run. All processes
sample the same paths (same seed), gradients of the distillation step are averaged; the
meta-matching step is per process, as in the official code (``--sync-meta-step`` averages it too).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.io.cli_errors import exit_help, int_at_least
from cream_core.io.atomic import atomic_write
from cream_core.io.outputs import commit_files
from cream_core.io.errors import CheckpointError
from cream_core.config.search import SearchConfig, load_search_config

from cream_cli.common import FRAMEWORKS, UsageError, guard_outputs, run_cli, set_threads

__all__ = ["FRAMEWORKS", "SearchOptions", "SearchOutcome", "build_parser", "run_search", "main",
           "checkpoint_path", "BEST_ARCH", "LOG_NAME"]

BEST_ARCH = "best_arch.json"
LOG_NAME = "search.log"
_SUFFIX = {"torch": ".pth.tar", "paddle": ".pdparams"}
_ARCH_TAG = "cream-supernet"


def checkpoint_path(output: str, framework: str, name: str = "checkpoint-last") -> str:
    """Where a run in ``output`` keeps checkpoint ``name``."""
    return os.path.join(output, name + _SUFFIX[framework])


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


# --- framework backends ----------------------------------------------------------------------------
class _Backend:
    """The framework-specific half of a run: distributed setup, model, conversions and file I/O."""

    framework = ""

    def __init__(self, cfg: SearchConfig, threads: Optional[int]) -> None:
        self.cfg = cfg
        self.threads = threads

    # distributed
    rank = 0
    world_size = 1

    def barrier(self) -> None:  # noqa: D102
        pass


class _TorchBackend(_Backend):
    framework = "torch"

    def __init__(self, cfg: SearchConfig, threads: Optional[int]) -> None:
        super().__init__(cfg, threads)
        import torch

        set_threads("torch", threads)
        self.torch = torch
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def build(self) -> Any:
        from cream_core.arch.supernet import flops_table
        from cream_torch_ref import search as S
        from cream_torch_ref.supernet import create_supernet

        cfg = self.cfg
        self.torch.manual_seed(cfg.seed)
        model, sta_num, resolution = create_supernet(cfg.flops_minimum, cfg.flops_maximum,
                                                     cfg.num_classes, slice=cfg.slice,
                                                     drop_rate=cfg.dropout_rate, global_pool=cfg.gp)
        replicas = None
        if self.world_size > 1:
            import torch.distributed as dist

            with self.torch.no_grad():
                for t in list(model.state_dict().values()):
                    dist.broadcast(t, 0)
            replicas = S.Replicas(self.world_size, self.rank)
        self.resolution = resolution
        return S.Searcher(model, cfg, flops_table(model.plan), replicas)

    def barrier(self) -> None:
        if self.world_size > 1:
            self.torch.distributed.barrier()

    def save(self, path: str, searcher: Any, state: Dict[str, Any], epoch: int) -> None:
        torch = self.torch
        ck = {"epoch": epoch, "arch": _ARCH_TAG, "version": 2,
              "state_dict": {k: v.detach().clone() for k, v in searcher.model.state_dict().items()},
              "optimizer": {"state": {}, "param_groups": []},
              "args": _plain_config(self.cfg), "search": _to_torch(state)}
        _atomic(path, lambda f: torch.save(ck, f))

    def load(self, path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        from cream_torch_ref.checkpoint import read_checkpoint

        obj = read_checkpoint(path)
        if not isinstance(obj, Mapping) or "search" not in obj or "state_dict" not in obj:
            raise CheckpointError(path, "is not a cream-search checkpoint (no 'search' entry)")
        return {k: v.numpy() for k, v in obj["state_dict"].items()}, _to_numpy(obj["search"])

    def child_writer(self, state: Mapping[str, np.ndarray], label: str) -> Callable[[Any], None]:
        from cream_torch_ref.checkpoint import save_official_checkpoint

        sd = {k: self.torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
        return lambda f: save_official_checkpoint(f, sd, arch=label, args=None, legacy=True)

    def model_state(self, searcher: Any) -> Dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in searcher.model.state_dict().items()}


class _PaddleBackend(_Backend):
    framework = "paddle"

    def __init__(self, cfg: SearchConfig, threads: Optional[int]) -> None:
        super().__init__(cfg, threads)
        set_threads("paddle", threads)
        import paddle

        paddle.set_device("cpu")
        self.paddle = paddle
        world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
        if world > 1:
            import paddle.distributed as dist

            dist.init_parallel_env()
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def build(self) -> Any:
        from cream_core.arch.supernet import flops_table
        from cream_paddle import search as S
        from cream_paddle.supernet import create_supernet

        cfg = self.cfg
        self.paddle.seed(cfg.seed)
        model, sta_num, resolution = create_supernet(cfg.flops_minimum, cfg.flops_maximum,
                                                     cfg.num_classes, slice=cfg.slice,
                                                     drop_rate=cfg.dropout_rate, global_pool=cfg.gp)
        replicas = None
        if self.world_size > 1:
            import paddle.distributed as dist

            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
            replicas = S.Replicas(self.world_size, self.rank)
        self.resolution = resolution
        return S.Searcher(model, cfg, flops_table(model.plan), replicas)

    def barrier(self) -> None:
        if self.world_size > 1:
            self.paddle.distributed.barrier()

    def save(self, path: str, searcher: Any, state: Dict[str, Any], epoch: int) -> None:
        import pickle

        ck = {"epoch": epoch, "arch": _ARCH_TAG,
              "state_dict": {k: np.asarray(v.numpy()) for k, v in searcher.model.state_dict().items()},
              "args": _plain_config(self.cfg), "search": state}
        _atomic(path, lambda f: pickle.dump(ck, f, protocol=4))

    def load(self, path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        from cream_paddle.checkpoint import read_checkpoint

        obj = read_checkpoint(path)
        if not isinstance(obj, Mapping) or "search" not in obj or "state_dict" not in obj:
            raise CheckpointError(path, "is not a cream-search checkpoint (no 'search' entry)")
        return dict(obj["state_dict"]), dict(obj["search"])

    def child_writer(self, state: Mapping[str, np.ndarray], label: str) -> Callable[[Any], None]:
        from cream_paddle.checkpoint import save_checkpoint

        return lambda f: save_checkpoint(f, state)

    def model_state(self, searcher: Any) -> Dict[str, np.ndarray]:
        return {k: np.asarray(v.numpy()) for k, v in searcher.model.state_dict().items()}


def _atomic(path: str, write: Callable[[Any], None]) -> None:
    """:func:`atomic_write`; a failing write is a :class:`CheckpointError` naming ``path``."""
    try:
        atomic_write(path, write)
    except OSError as e:
        raise CheckpointError(path, f"could not be written ({e.strerror or e})") from None


def _plain_config(cfg: SearchConfig) -> Dict[str, Any]:
    d = asdict(cfg)
    d.pop("ignored", None)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _to_torch(obj: Any) -> Any:
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_torch(v) for v in obj]
    return obj


def _to_numpy(obj: Any) -> Any:
    if hasattr(obj, "numpy") and hasattr(obj, "dtype"):
        return obj.numpy()
    if isinstance(obj, Mapping):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_numpy(v) for v in obj]
    return obj


def _backend(framework: str, cfg: SearchConfig, threads: Optional[int]) -> _Backend:
    if framework == "torch":
        return _TorchBackend(cfg, threads)
    if framework == "paddle":
        return _PaddleBackend(cfg, threads)
    raise UsageError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")


# --- run state <-> plain data ------------------------------------------------------------------------
def _search_state(searcher: Any, framework: str, epoch: int, next_step: int,
                  best_seen: Dict[str, Any]) -> Dict[str, Any]:
    """The resumable state besides the weights, as numpy arrays and plain Python values."""
    sd = searcher.state_dict()
    name, keys, pos, has_gauss, cached = sd["rng"]
    return {"framework": framework, "config": _plain_config(searcher.cfg), "epoch": int(epoch),
            "next_step": int(next_step), "iteration": int(sd["iteration"]),
            "rng": [str(name), [int(k) for k in np.asarray(keys).ravel()], int(pos), int(has_gauss),
                    float(cached)],
            "live": list(sd["optimizer"]["live"]), "lr": [float(v) for v in sd["optimizer"]["lr"]],
            "momentum": dict(sd["optimizer"]["momentum_buffer"]),
            "board": [{"prec1": float(e["prec1"]), "flops": float(e["flops"]), "cand": e["cand"],
                       "data": np.asarray(e["data"]), "feat": np.asarray(e["feat"])}
                      for e in sd["board"]],
            "best_seen": dict(best_seen)}


def _restore(searcher: Any, model_state: Mapping[str, np.ndarray], state: Mapping[str, Any],
             path: str) -> None:
    name, keys, pos, has_gauss, cached = state["rng"]
    try:
        searcher.load_state_dict({
            "model": model_state,
            "optimizer": {"momentum_buffer": state["momentum"], "live": state["live"],
                          "lr": state["lr"]},
            "board": state["board"],
            "rng": (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
            "iteration": state["iteration"]})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(path, f"cannot resume from it ({e})") from None


# --- logging ------------------------------------------------------------------------------------------
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
                from cream_core.io.outputs import OutputError, os_problem
                raise OutputError(self.path, f"could not be written ({os_problem(e)})") from None


def _board_lines(board: Any) -> List[str]:
    return [f"No.{i} (prec1 {e.prec1:.4f}, flops {e.flops:.2f}, path {e.cand})"
            for i, e in enumerate(board.entries())]


# --- the loop ----------------------------------------------------------------------------------------
def _resolve_data(opts: SearchOptions, cfg: SearchConfig) -> Tuple[Any, Any]:
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


def run_search(cfg: SearchConfig, opts: SearchOptions, log: Optional[Callable[[str], None]] = None
               ) -> SearchOutcome:
    """Train the supernet with the official search and write the outputs (see the module docstring)."""
    from cream_core.data import EvalLoader, normalize
    from cream_core.data.train_loader import TrainLoader
    from cream_core.data.train_transforms import TrainTransform

    t_run = time.perf_counter()
    if opts.framework not in FRAMEWORKS:
        raise UsageError(f"unknown framework {opts.framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    _check_output(opts)
    resume_path = _resume_file(opts)
    train_set, val_set = _resolve_data(opts, cfg)
    backend = _backend(opts.framework, cfg, opts.threads)
    main_rank = backend.rank == 0
    if main_rank:
        os.makedirs(opts.output, exist_ok=True)
    logger = log or _Log(os.path.join(opts.output, LOG_NAME), main_rank)
    searcher = backend.build()
    plan = searcher.model.plan
    epoch, start_step = 0, 0
    best_seen: Dict[str, Any] = {}
    if resume_path:
        model_state, state = backend.load(resume_path)
        if state.get("framework") != opts.framework:
            raise CheckpointError(resume_path, f"was written by a {state.get('framework')} search; "
                                               f"resume it with --framework {state.get('framework')}")
        diff = _differences(_plain_config(cfg), state.get("config", {}))
        if diff:
            raise CheckpointError(resume_path, "was made with other settings: " + "; ".join(diff[:4]))
        _restore(searcher, model_state, state, resume_path)
        epoch, start_step = int(state["epoch"]), int(state["next_step"])
        best_seen = dict(state.get("best_seen") or {})
        logger(f"resumed from {resume_path}: epoch {epoch}, step {start_step}, iteration "
               f"{searcher.iteration}, board of {searcher.board.board_size()}")
    transform = TrainTransform(cfg.image_size, interpolation="random", auto_augment=None,
                               color_jitter=cfg.color_jitter, re_prob=cfg.re_prob,
                               re_mode=cfg.re_mode)
    loader = TrainLoader(train_set, transform, cfg.batch_size, cfg.seed, backend.rank,
                         backend.world_size, opts.workers)
    eval_loader = EvalLoader(val_set, cfg.image_size, cfg.batch_size * cfg.val_batch_mul,
                             workers=opts.workers, interpolation=cfg.interpolation) \
        if (val_set is not None and main_rank) else None
    if main_rank and not resume_path:
        n_params = sum(int(np.prod(v.shape)) for v in backend.model_state(searcher).values())
        logger(f"Supernet created ({opts.framework}), {n_params} state values; stage depths "
               f"{list(plan.sta_num)}, resolution {backend.resolution}, choice number "
               f"{plan.choice_num}; {len(train_set)} training images, {len(loader)} steps per epoch, "
               f"{backend.world_size} process(es)")
        if cfg.ignored:
            logger("config keys without effect here: " + ", ".join(cfg.ignored))
    interval = opts.checkpoint_interval if opts.checkpoint_interval is not None else cfg.recovery_interval
    files: Dict[str, str] = {}
    last_eval: Optional[Dict[str, float]] = None
    ckpt = checkpoint_path(opts.output, opts.framework)

    def save(ep: int, next_step: int) -> None:
        state = _search_state(searcher, opts.framework, ep, next_step, best_seen)
        if main_rank:
            backend.save(ckpt, searcher, state, ep)
            files["checkpoint"] = ckpt
        backend.barrier()

    stop = False
    while epoch < cfg.epochs and not stop:
        steps = len(loader)
        bar = None
        if opts.progress and main_rank:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=start_step, desc=f"{opts.framework} search epoch "
                       f"{epoch}/{cfg.epochs - 1}", unit="step", leave=False, dynamic_ncols=True)
        loss_sum, kd_sum, kd_n, p1_sum, n = 0.0, 0.0, 0, 0.0, 0
        t_epoch = time.perf_counter()
        step = start_step
        try:
            for batch in loader.epoch_batches(epoch, start_step):
                step = batch.step
                out = searcher.train_batch(batch.images, batch.labels, epoch, step)
                if not math.isfinite(out.loss):
                    raise FloatingPointError(f"{opts.framework}: loss is {out.loss} at epoch {epoch} "
                                             f"step {step}; the search diverged")
                loss_sum += out.loss
                p1_sum += out.prec1
                n += 1
                if out.kd_loss is not None:
                    kd_sum += out.kd_loss
                    kd_n += 1
                if not best_seen or out.prec1 > best_seen["prec1"]:
                    best_seen = {"prec1": out.prec1, "flops": out.flops, "cand": out.cand}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{out.loss:.4f}", top1=f"{out.prec1:.1f}",
                                    board=searcher.board.board_size(), meta="y" if out.meta_ran else "")
                if step == steps - 1 or step % cfg.log_interval == 0:
                    logger(f"Train: {epoch} [{step:>4d}/{steps}]  Loss: {out.loss:>9.6f} "
                           f"({loss_sum / n:>6.4f})  KD-Loss: "
                           f"{(out.kd_loss if out.kd_loss is not None else 0.0):>9.6f}  "
                           f"Prec@1: {out.prec1:>7.4f} ({p1_sum / n:>7.4f})  Prec@5: {out.prec5:>7.4f}  "
                           f"LR: {searcher.current_lr():.3e}  FLOPs: {out.flops:.1f}  "
                           f"board: {searcher.board.board_size()}"
                           + ("  (meta-matching update)" if out.meta_ran else ""))
                if opts.max_iters and searcher.iteration >= opts.max_iters:
                    stop = True
                    break
                if interval and (step + 1) % interval == 0 and step + 1 < steps:
                    save(epoch, step + 1)
        finally:
            if bar is not None:
                bar.close()
        if step + 1 < steps:  # stopped inside the epoch: keep the position for --resume
            save(epoch, step + 1)
            break
        if main_rank:
            logger(f"epoch {epoch}: {n} steps in {time.perf_counter() - t_epoch:.1f} s, mean loss "
                   f"{loss_sum / max(n, 1):.4f}, mean KD loss "
                   f"{(kd_sum / kd_n) if kd_n else float('nan'):.4f}, mean Prec@1 {p1_sum / max(n, 1):.2f}")
            for line in _board_lines(searcher.board):
                logger(line)
        # the official validate: one random path (drawn on every rank, so samplers stay in step)
        cand = searcher.board.sample(searcher.rng, None)
        if eval_loader is not None:
            last_eval = _evaluate(searcher, eval_loader, cand, opts.val_batches, normalize)
            logger(f"Test: epoch {epoch} path {cand}: loss {last_eval['loss']:.4f} Prec@1 "
                   f"{last_eval['prec1']:.4f} Prec@5 {last_eval['prec5']:.4f} "
                   f"({last_eval['images']} images)")
        epoch += 1
        start_step = 0
        save(epoch, 0)
    # --- the answer
    best: Optional[List[List[int]]] = None
    source = "board"
    if searcher.board.board_size() > 0:
        top = searcher.board.top1()
        best, best_info = top.cand, {"prec1": top.prec1, "flops": top.flops}
    elif best_seen:
        best, source = best_seen["cand"], "best sampled path (the board is empty: the search ended " \
                                          "before META_STA_EPOCH)"
        best_info = {"prec1": best_seen["prec1"], "flops": best_seen["flops"]}
    if main_rank and best is not None:
        from cream_core.arch.supernet import child_state_from_supernet, decoded_arch_list

        arch_file = os.path.join(opts.output, BEST_ARCH)
        child_file = os.path.join(opts.output, "best_child" + _SUFFIX[opts.framework])
        child = child_state_from_supernet(backend.model_state(searcher), best, plan)
        label = "cream-child[" + "|".join(".".join(str(c) for c in s) for s in best) + "]"
        writer = backend.child_writer(child, label)
        record = {"arch_list": best, "builds_as": decoded_arch_list(best), "source": source, **best_info,
                  "num_classes": cfg.num_classes, "resolution": backend.resolution,
                  "sta_num": list(plan.sta_num), "framework": opts.framework,
                  "iterations": searcher.iteration, "child_weights": os.path.basename(child_file),
                  "board": searcher.board.summary()}
        text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) \
            + "\n}\n"
        # one set: best_arch.json names best_child, so after any crash they belong together
        commit_files({child_file: writer, arch_file: lambda f: f.write(text)}, modes={arch_file: "w"})
        files["best_arch"], files["best_child"] = arch_file, child_file
        logger(f"best path ({source}): {best} -> {arch_file}, weights {child_file}")
    backend.barrier()
    return SearchOutcome(searcher.iteration, epoch, best, source, searcher.board.summary(), files,
                         time.perf_counter() - t_run, backend.rank, backend.world_size, last_eval)


def _evaluate(searcher: Any, loader: Any, cand: Sequence[Sequence[int]], max_batches: Optional[int],
              normalize: Callable[[np.ndarray], np.ndarray]) -> Dict[str, float]:
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0
    for i, batch in enumerate(loader):
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


# --- command line --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``cream-search`` command line."""
    from cream_core.data import LAYOUTS

    p = argparse.ArgumentParser(prog="cream-search", description=__doc__,
                                epilog=exit_help("the loss became NaN or inf"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", required=True, choices=FRAMEWORKS, help="which implementation searches")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="folder with train/ (and val/), or the training set itself")
    p.add_argument("--val-data", metavar="PATH", help="evaluation set (default: DATA/val if present)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="data layout (default: auto)")
    p.add_argument("--config", metavar="FILE", help="YAML in the official layout overriding the defaults")
    p.add_argument("--output", metavar="DIR", help="log, checkpoints and the answer "
                                                   "(default: output/search-<framework>)")
    p.add_argument("--epochs", type=int_at_least(1), metavar="N")
    p.add_argument("--batch-size", type=int_at_least(1), metavar="N", help="images per step and process")
    p.add_argument("--num-classes", type=int_at_least(1), metavar="N",
                   help="classifier width (default: the config's, 1000)")
    p.add_argument("--image-size", type=int_at_least(1), metavar="PX", help="training crop size (default 224)")
    p.add_argument("--flops-min", type=float, metavar="MFLOPS", help="SUPERNET.FLOPS_MINIMUM")
    p.add_argument("--flops-max", type=float, metavar="MFLOPS", help="SUPERNET.FLOPS_MAXIMUM")
    p.add_argument("--lr", type=float, metavar="LR")
    p.add_argument("--meta-lr", type=float, metavar="LR")
    p.add_argument("--meta-sta-epoch", type=int_at_least(-1), metavar="N", help="SUPERNET.META_STA_EPOCH")
    p.add_argument("--update-iter", type=int_at_least(1), metavar="N", help="SUPERNET.UPDATE_ITER")
    p.add_argument("--pick-method", choices=("meta", "top1"))
    p.add_argument("--how-to-prob", choices=("even", "pre_prob", "teacher"))
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--log-interval", type=int_at_least(1), metavar="N")
    p.add_argument("--fix-meta-value", action="store_true", default=None,
                   help="fix the official select_teacher bug (meta value of the picked entry)")
    p.add_argument("--sync-meta-step", action="store_true", default=None,
                   help="data-parallel: average the meta step's gradients over processes")
    p.add_argument("--resume", metavar="FILE|auto",
                   help="continue a search: 'auto' = the last checkpoint in --output")
    p.add_argument("--force", action="store_true", help="start afresh in an --output that has a search")
    p.add_argument("--checkpoint-interval", type=int_at_least(1), metavar="N",
                   help="also checkpoint every N iterations (default: RECOVERY_INTERVAL; every epoch "
                        "end always)")
    p.add_argument("--max-iters", type=int_at_least(1), metavar="N", help="stop after N iterations (smoke runs)")
    p.add_argument("--val-batches", type=int_at_least(1), metavar="N", help="evaluate at most N batches per epoch")
    p.add_argument("--workers", type=int_at_least(0), metavar="N", help="augmentation processes (0: none)")
    p.add_argument("--threads", type=int_at_least(1), metavar="N", help="intra-op threads of the framework")
    p.add_argument("--json", metavar="FILE", help="write the outcome as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_OVERRIDES = {"epochs": "epochs", "batch_size": "batch_size", "num_classes": "num_classes",
              "image_size": "image_size", "flops_min": "flops_minimum", "flops_max": "flops_maximum",
              "lr": "lr", "meta_lr": "meta_lr", "meta_sta_epoch": "meta_sta_epoch",
              "update_iter": "update_iter", "pick_method": "pick_method",
              "how_to_prob": "how_to_prob", "seed": "seed", "log_interval": "log_interval",
              "fix_meta_value": "fix_meta_value", "sync_meta_step": "sync_meta_step"}


def _data_roots(data: str) -> List[str]:
    """The data sets in ``--data``: its ``train/`` and ``val/`` (the official DATA_DIR), or itself."""
    roots = [os.path.join(data, s) for s in ("train", "val") if os.path.isdir(os.path.join(data, s))]
    return roots or [data]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``cream-search``; returns the exit status (0 ok, 1 the loss became NaN/inf, 2 bad input
    or usage: see :mod:`cream_core.io.cli_errors`)."""
    return run_cli(build_parser(), argv, _run)


def _run(args: argparse.Namespace) -> int:
    """The work of ``cream-search`` after parsing (errors become one line in :func:`run_cli`)."""
    cfg = load_search_config(args.config, **{field: getattr(args, opt)
                                             for opt, field in _OVERRIDES.items()})
    output = args.output or os.path.join("output", f"search-{args.framework}")
    opts = SearchOptions(args.framework, args.data, output, args.val_data, args.layout,
                         args.resume, args.force, args.workers, not args.no_progress,
                         args.max_iters, args.checkpoint_interval, args.val_batches, args.threads)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} exists and is not a folder")
    suffix = _SUFFIX[args.framework]
    members = [checkpoint_path(output, args.framework), os.path.join(output, BEST_ARCH),
               os.path.join(output, "best_child" + suffix), os.path.join(output, LOG_NAME)]
    guard_outputs("cream-search", {f"--output ({os.path.basename(m)})": m for m in members}
                  | {"--json": args.json}, [*_data_roots(args.data), args.val_data, args.config],
                  {"--output": output})
    outcome = run_search(cfg, opts)
    if outcome.rank == 0:
        from tabulate import tabulate

        rows = [[i, f"{e['prec1']:.2f}", f"{e['flops']:.2f}", e["cand"]] for i, e in enumerate(outcome.board)]
        if rows:
            print(tabulate(rows, headers=["#", "prec1", "MFLOPs", "path"], tablefmt="simple_outline"))
        print(f"{outcome.iterations} iterations in {outcome.seconds:.1f} s; best path: "
              f"{outcome.best_arch} ({outcome.best_source})")
        for k, v in outcome.files.items():
            print(f"{k}: {v}")
        if args.json:
            from cream_core.data import write_json
            write_json(args.json, asdict(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
