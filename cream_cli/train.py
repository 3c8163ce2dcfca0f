"""``cream-train``: retrain a Cream child net in PyTorch or Paddle with the official recipe.

Defaults are the official retraining configs (``cream_core/config/retrain.yaml``: RMSpropTF lr 0.064
eps 1e-3, step decay 0.973 every 2.4 epochs after 3 warm-up epochs from 1e-6, weight decay 1e-5,
EMA 0.9999, dropout 0.2, label smoothing 0.1, RandAugment rand-m9-mstd0.5, random erasing 0.2
pixel, batch 128); ``--config FILE`` (same keys) and the options below override them.

Data: ``--data`` is the folder holding ``train/`` (and ``val/``, evaluated after every
``eval_interval`` epochs) as the official ``DATA_DIR``, or a training set itself (ImageNet
``<wnid>/`` folders, plain class folders or a list file; then ``--val-data`` gives the evaluation
set). Output (``--output``): ``last``/``model_best`` checkpoints (official ``.pth.tar`` layout for
torch, ``.pdparams`` for Paddle, EMA included) and ``summary.csv``. ``--resume`` continues a run.

Several processes: ``torchrun --nproc_per_node 2 -m cream_cli.train --framework torch ...`` or
``python -m paddle.distributed.launch --nproc_per_node 2 <path of cream_cli/train.py>
--framework paddle ...`` (CPU, gloo); ``--batch-size`` is per process, as in the official run.

``run_digits_demo`` trains on scikit-learn's bundled handwritten digits and checks that the trained
model, converted to the other framework, scores the same.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cream_core.backend import CHECKPOINT_SUFFIXES
from cream_core.io.cli_errors import exit_help, int_at_least
from cream_core.config.retrain import RetrainConfig, config_path, load_retrain_config
from cream_core.io.errors import CheckpointError
from cream_core.data import LAYOUTS, ImageDataset, open_dataset, open_train_val

from cream_cli.common import (FRAMEWORKS, UsageError, add_framework_and_model, add_run_options,
                              guard_outputs, run_cli, set_threads)

__all__ = ["FRAMEWORKS", "build_parser", "run_train", "write_digits_dataset",
           "run_digits_demo", "main"]

#: Digits demo: model, held-out share (every 5th image of each class) and upscaled image size.
DIGITS_MODEL = "cream-14"
DIGITS_VAL_EVERY = 5
DIGITS_SIZE = 64


def build_parser() -> argparse.ArgumentParser:
    """The ``cream-train`` command line."""
    p = argparse.ArgumentParser(prog="cream-train", description=__doc__,
                                epilog=exit_help("the loss became NaN or inf"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_framework_and_model(p, "trains", "child net")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="folder with train/ (and val/), or the training set itself")
    p.add_argument("--val-data", metavar="PATH", help="evaluation set (default: DATA/val if present)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="data layout (default: auto)")
    p.add_argument("--config", metavar="FILE", help="YAML overriding the official recipe")
    p.add_argument("--epochs", type=int_at_least(1), metavar="N")
    p.add_argument("--batch-size", type=int_at_least(1), metavar="N", help="images per step and process")
    p.add_argument("--lr", type=float, metavar="LR")
    p.add_argument("--num-classes", type=int_at_least(1), metavar="N",
                   help="classifier width (default 1000, or the number of class folders)")
    p.add_argument("--img-size", type=int_at_least(1), metavar="PX", help="default: the model's resolution")
    p.add_argument("--drop-path-rate", type=float, metavar="P")
    p.add_argument("--eval-interval", type=int, metavar="N", help="evaluate every N epochs (0: at the end)")
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--output", metavar="DIR", help="checkpoints and summary.csv "
                                                   "(default: output/<model>-<framework>)")
    p.add_argument("--resume", metavar="FILE", help="continue from a checkpoint of this tool")
    p.add_argument("--force", action="store_true", help="start afresh in an --output that has a run")
    p.add_argument("--max-steps", type=int_at_least(1), metavar="N", help="at most N steps per epoch (smoke runs)")
    add_run_options(p, "write the run's summary as JSON")
    return p


def _trainer(framework: str) -> Any:
    if framework == "torch":
        from cream_torch_ref import train as mod
    elif framework == "paddle":
        from cream_paddle import train as mod
    else:
        raise UsageError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    return mod


def _check_output(output: str, suffix: str, resume: Optional[str], force: bool) -> None:
    last = os.path.join(output, "last" + suffix)
    if os.path.exists(last) and not resume and not force:
        raise UsageError(f"{output} already holds a run ({os.path.basename(last)}); use --resume "
                         f"{last} to continue it, --force to start afresh, or another --output")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} exists and is not a folder")


def run_train(framework: str, cfg: RetrainConfig, train_set: ImageDataset,
              val_set: Optional[ImageDataset], output: Optional[str], *,
              resume: Optional[str] = None, workers: Optional[int] = None, progress: bool = True,
              max_steps: Optional[int] = None, shards: int = 1, log: Any = print) -> Any:
    """Train with ``framework``'s backend; returns the :class:`cream_core.training.loop.TrainResult`."""
    if resume is not None and not os.path.isfile(resume):
        raise CheckpointError(resume, "no such checkpoint file" if not os.path.exists(resume)
                              else "not a file")
    return _trainer(framework).train(cfg, train_set, val_set, output, resume=resume,
                                     workers=workers, progress=progress, max_steps=max_steps,
                                     shards=shards, log=log)


def _summary_table(result: Any) -> str:
    from tabulate import tabulate

    rows = []
    for r in result.history:
        rows.append([r.epoch, f"{r.lr:.4g}", f"{r.train_loss:.4f}", r.steps, f"{r.seconds:.1f}",
                     "" if np.isnan(r.top1) else f"{r.top1:.2f}",
                     "" if np.isnan(r.top5) else f"{r.top5:.2f}",
                     "" if np.isnan(r.ema_top1) else f"{r.ema_top1:.2f}",
                     "" if np.isnan(r.ema_top5) else f"{r.ema_top5:.2f}"])
    return tabulate(rows, headers=["epoch", "lr", "train loss", "steps", "s", "top-1", "top-5",
                                   "EMA top-1", "EMA top-5"], tablefmt="simple_outline")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``cream-train``; returns the exit status (0 ok, 1 the loss became NaN/inf, 2 bad input
    or usage: see :mod:`cream_core.io.cli_errors`)."""
    return run_cli(build_parser(), argv, _run)


def _run(args: argparse.Namespace) -> int:
    """The work of ``cream-train`` after parsing (errors become one line in :func:`run_cli`)."""
    train_set, val_set = open_train_val(args.data, args.val_data, args.layout, args.num_classes)
    cfg = load_retrain_config(
        args.model, args.config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        num_classes=train_set.num_classes, img_size=args.img_size,
        drop_path_rate=args.drop_path_rate, eval_interval=args.eval_interval, seed=args.seed)
    suffix = CHECKPOINT_SUFFIXES[args.framework]
    output = args.output or os.path.join("output", f"{args.model}-{args.framework}")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output} exists and is not a folder")
    from cream_core.training.loop import checkpoint_names
    guard_outputs("cream-train", {f"--output ({os.path.basename(p)})": p
                                  for p in checkpoint_names(output, suffix).values()}
                  | {"--json": args.json},
                  [train_set.root, val_set.root if val_set else None, args.config],
                  {"--output": output})
    _check_output(output, suffix, args.resume, args.force)
    if args.resume is not None and not os.path.isfile(args.resume):
        raise CheckpointError(args.resume, "no such checkpoint file"
                              if not os.path.exists(args.resume) else "not a file")
    set_threads(args.framework, args.threads)  # imports the framework: after cheap checks
    result = run_train(args.framework, cfg, train_set, val_set, output, resume=args.resume,
                       workers=args.workers, progress=not args.no_progress,
                       max_steps=args.max_steps)
    rank0 = int(os.environ.get("RANK", os.environ.get("PADDLE_TRAINER_ID", "0"))) == 0
    if rank0:
        print(_summary_table(result))
        print(f"checkpoints in {output} (last: {os.path.basename(result.last_checkpoint)})")
        if args.json:
            from cream_core.data import write_json
            write_json(args.json, {**result.to_dict(), "config": cfg.to_dict()})
            print(f"wrote {args.json}")
    return 0


# --- the real-data demo -----------------------------------------------------------------------

def write_digits_dataset(root: str, size: int = DIGITS_SIZE) -> Tuple[str, str]:
    """Write scikit-learn's 1 797 handwritten digits (8x8, 17 grey levels) as ``size`` px PNGs.

    Layout ``root/train/<digit>/NNNN.png`` and ``root/val/<digit>/NNNN.png``: every
    :data:`DIGITS_VAL_EVERY`-th image of each class is held out (355 images), the rest (1 442) train.
    Grey levels 0..16 map to 0..255; upscaling is bicubic. Existing complete folders are reused.
    """
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError("the digits demo needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    images, target = digits.images, digits.target
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return train_dir, val_dir
    seen: Dict[int, int] = {}
    for i, (img, label) in enumerate(zip(images, target)):
        label = int(label)
        k = seen.get(label, 0)
        seen[label] = k + 1
        split = val_dir if k % DIGITS_VAL_EVERY == DIGITS_VAL_EVERY - 1 else train_dir
        folder = os.path.join(split, str(label))
        os.makedirs(folder, exist_ok=True)
        grey = np.clip(np.rint(img * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(
            os.path.join(folder, f"{i:04d}.png"))
    with open(marker, "w") as f:
        f.write(f"{len(images)} images\n")
    return train_dir, val_dir


def _convert(framework: str, ckpt: str, dst: str) -> Any:
    from converters.convert import convert_checkpoint, pdparams_to_pth

    if framework == "torch":
        return convert_checkpoint(ckpt, dst, model=DIGITS_MODEL, weights="ema", force=True)
    return pdparams_to_pth(ckpt, dst, model=DIGITS_MODEL, force=True)


def run_digits_demo(framework: str = "torch", epochs: Optional[int] = None,
                    out_dir: Optional[str] = None, *, workers: Optional[int] = None,
                    max_steps: Optional[int] = None, threads: Optional[int] = None,
                    eval_during_training: bool = True, progress: bool = False,
                    log: Any = print) -> Dict[str, Any]:
    """Train Cream-14 on the digits in ``framework``, convert the EMA weights to the other
    framework, and evaluate both with the official eval pipeline on the 355 held-out digits.

    Recipe: ``retrain.yaml`` with ``digits.yaml`` on top (``epochs`` overrides it). Returns a dict
    with both frameworks' top-1/top-5, whether every prediction agrees, the largest logit
    difference, the training history and the files written (under ``out_dir``, default a new
    temporary folder). ``threads`` sets the framework's intra-op threads (1 is best on a busy
    machine); ``eval_during_training=False`` skips the periodic evaluation (the final one of both
    frameworks always runs).
    """
    from cream_cli.eval import run_eval

    set_threads(framework, threads)  # refuses an unknown framework
    out_dir = out_dir or tempfile.mkdtemp(prefix="cream-digits-")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    train_dir, val_dir = write_digits_dataset(os.path.join(out_dir, "data"))
    train_set = open_dataset(train_dir, "folder", 10)
    val_set = open_dataset(val_dir, "folder", 10)
    cfg = load_retrain_config(DIGITS_MODEL, config_path("digits.yaml"), epochs=epochs)
    run_dir = os.path.join(out_dir, f"train-{framework}")
    result = run_train(framework, cfg, train_set, val_set if eval_during_training else None,
                       run_dir, workers=workers, progress=progress, max_steps=max_steps, log=log)
    other = "paddle" if framework == "torch" else "torch"
    converted = os.path.join(out_dir, f"{DIGITS_MODEL}-digits-ema" + CHECKPOINT_SUFFIXES[other])
    conv = _convert(framework, result.last_checkpoint, converted)
    weights = {framework: result.last_checkpoint, other: converted}
    evals = {}
    for fw in FRAMEWORKS:
        ev, _ = run_eval(fw, DIGITS_MODEL, weights[fw], val_dir, layout="folder", num_classes=10,
                         workers=workers, keep_logits=True, use_ema=True)
        evals[fw] = ev
    t, p = evals["torch"], evals["paddle"]
    same = bool(np.array_equal(t.predictions, p.predictions))
    report = {
        "model": DIGITS_MODEL, "trained_in": framework, "converted_to": other,
        "epochs": cfg.epochs, "steps": result.steps, "train_images": len(train_set),
        "val_images": len(val_set), "chance_top1": 10.0,
        "torch": {"top1": t.top1, "top5": t.top5, "loss": t.loss},
        "paddle": {"top1": p.top1, "top5": p.top5, "loss": p.loss},
        "same_predictions": same,
        "max_abs_logit_diff": float(np.abs(t.logits - p.logits).max()),
        "train_seconds": result.seconds, "seconds": time.perf_counter() - t0,
        "history": [r.__dict__ for r in result.history],
        "checkpoint": result.last_checkpoint, "converted": conv.dst, "out_dir": out_dir,
    }
    log(f"digits demo: trained {DIGITS_MODEL} in {framework} for {cfg.epochs} epochs "
        f"({result.seconds:.0f} s); EMA weights on {len(val_set)} held-out digits: "
        f"torch top-1 {t.top1:.2f} top-5 {t.top5:.2f}, paddle top-1 {p.top1:.2f} "
        f"top-5 {p.top5:.2f}; predictions {'identical' if same else 'DIFFER'}")
    return report


if __name__ == "__main__":
    sys.exit(main())
