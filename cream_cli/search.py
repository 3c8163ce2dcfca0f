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
import os
import sys
from dataclasses import asdict
from functools import partial
from typing import Any, Callable, List, Optional, Sequence

from cream_core.io.cli_errors import exit_help, int_at_least
from cream_core.config.search import SearchConfig, load_search_config
from cream_core.search.loop import (BEST_ARCH, LOG_NAME, SearchOptions, SearchOutcome,
                                    checkpoint_path)
from cream_core.search import loop

from cream_cli.common import (FRAMEWORKS, UsageError, add_run_options, guard_outputs, run_cli,
                              set_threads)

__all__ = ["FRAMEWORKS", "SearchOptions", "SearchOutcome", "build_parser", "run_search", "main",
           "checkpoint_path", "BEST_ARCH", "LOG_NAME"]


def _search_ops(framework: str, threads: Optional[int]) -> Any:
    """The framework half of a search, imported only when the run starts (after the cheap checks);
    the thread count is set first, so that Paddle's first import already sees ``OMP_NUM_THREADS``."""
    set_threads(framework, threads)
    if framework == "torch":
        from cream_torch_ref.search import SearchOps
        return SearchOps
    from cream_paddle.search import SearchOps as PaddleSearchOps
    return PaddleSearchOps


def run_search(cfg: SearchConfig, opts: SearchOptions, log: Optional[Callable[[str], None]] = None
               ) -> SearchOutcome:
    """Train the supernet with the official search and write the outputs (see the module
    docstring): :func:`cream_core.search.loop.run_search` with the official LR schedule."""
    from cream_core.training.schedules import SupernetLinearSchedule, supernet_iters

    schedule = SupernetLinearSchedule(lr=cfg.lr, iters=supernet_iters(cfg.epochs, cfg.num_gpu,
                                                                      cfg.batch_size))
    return loop.run_search(cfg, opts, partial(_search_ops, opts.framework, opts.threads), schedule, log)


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
    add_run_options(p, "write the outcome as JSON")
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
    members = [checkpoint_path(output, args.framework), os.path.join(output, BEST_ARCH),
               checkpoint_path(output, args.framework, "best_child"), os.path.join(output, LOG_NAME)]
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
