"""``cream-eval``: top-1/top-5, loss and images/s of a Cream child net, in PyTorch or Paddle,
with the official evaluation preprocessing (timm 0.1.x eval transform, crop 0.875, bicubic).

Data: an ImageNet val folder (``val/<wnid>/*.JPEG``, canonical ImageNet-1k labels, also for a
subset of the classes), a plain class-folder dataset (sorted folder names; see ``--num-classes``),
a PaddleClas-style list file (``relative/path label`` per line), or ImageNet val as downloaded:
the val tar itself (``ILSVRC2012_img_val.tar``, read in place) or the flat folder of its images,
with ``--labels`` the devkit archive (``ILSVRC2012_devkit_t12.tar.gz``) or Kaggle's
``LOC_val_solution.csv``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence

from cream_core.arch import child_spec
from cream_core.io.cli_errors import exit_help, int_at_least
from cream_core.io.digest import sha256_file
from cream_core.io.errors import CheckpointError
from cream_core.io.outputs import commit_files
from cream_core.data import (BadDataError, EvalLoader, EvalResult, ImageDataset, default_workers,
                             open_eval_data)
from cream_core.data.eval_journal import (PARTIAL_SUFFIX, RESUME_SUFFIX, PredictionJournal,
                                     ResumeError, run_fingerprint)
from cream_core.data.loader import DEFAULT_BATCH_SIZE, OMP_ENV
from cream_core.data.val_inputs import add_eval_data_arguments

from cream_cli.common import (FRAMEWORKS, UsageError, add_framework_and_model, guard_outputs,
                              run_cli)

__all__ = ["FRAMEWORKS", "TORCH_SUFFIXES", "PADDLE_SUFFIXES", "OMP_ENV", "MIN_IMG_SIZE",
           "MAX_IMG_SIZE", "build_parser", "load_model", "run_eval", "summary_table", "main"]

#: What each framework's weights look like (the official training wrote ``.pth.tar``).
TORCH_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")
PADDLE_SUFFIXES = (".pdparams",)
#: Skipped files listed on the terminal (all of them go to the JSON report).
MAX_SKIPPED_SHOWN = 20
#: ``--img-size`` bounds. Below 32 px the five stride-2 stages leave less than one pixel. Above
#: 1024 px (4.6x the largest official test resolution, 224) a crop only measures memory: the stem's
#: output alone is 16 x 512 x 512 float32 = 16 MiB per image, 1 GiB for a default batch of 64, and
#: 100000 px asked for a 279 GiB allocation.
MIN_IMG_SIZE, MAX_IMG_SIZE = 32, 1024


def _img_size(text: str) -> int:
    """argparse type of ``--img-size``: an integer in ``[MIN_IMG_SIZE, MAX_IMG_SIZE]``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not MIN_IMG_SIZE <= value <= MAX_IMG_SIZE:
        raise argparse.ArgumentTypeError(f"must be between {MIN_IMG_SIZE} and {MAX_IMG_SIZE} px "
                                         f"(five stride-2 stages; memory), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``cream-eval`` command line."""
    p = argparse.ArgumentParser(prog="cream-eval", description=__doc__, epilog=exit_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_framework_and_model(p, "runs", "released child net")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="official .pth.tar (torch) or converted .pdparams (paddle; see convert-ckpt)")
    add_eval_data_arguments(p)
    p.add_argument("--num-classes", type=int_at_least(1), default=None, metavar="N",
                   help="classifier width (default 1000, or the number of class folders)")
    p.add_argument("--img-size", type=_img_size, default=None, metavar="PX",
                   help="crop size (default: the model's official test resolution; "
                        f"{MIN_IMG_SIZE}..{MAX_IMG_SIZE})")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE, metavar="N")
    p.add_argument("--workers", type=int_at_least(0), default=None, metavar="N",
                   help=f"decoding processes (default: one per core, here {default_workers()}; 0 = none)")
    p.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                   help="CPU threads of the model (default: the framework's, one per core)")
    p.add_argument("--mode", default="auto", metavar="MODE",
                   help="forward mode: auto, eager (both), static, inference (paddle)")
    p.add_argument("--raw-weights", action="store_true",
                   help="use the raw weights of a .pth.tar instead of its EMA weights (the official test "
                        "evaluates the EMA)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images and bad entries, listing them in the summary and JSON")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--predictions", metavar="FILE",
                   help="per-image predictions as CSV, appended as the run goes (whole chunks; see "
                        "--resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run whose --predictions FILE is given (same "
                        "settings; any number of processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_weights(framework: str, weights: str) -> None:
    low = weights.lower()
    if not os.path.isfile(weights):
        raise CheckpointError(weights, "weights file does not exist" if not os.path.exists(weights)
                              else "not a file")
    if framework == "paddle" and low.endswith(TORCH_SUFFIXES):
        raise CheckpointError(weights, "is a PyTorch checkpoint; convert it first "
                                       f"(convert-ckpt {weights}) and pass the .pdparams")
    if framework == "torch" and low.endswith(PADDLE_SUFFIXES):
        raise CheckpointError(weights, "is a Paddle checkpoint; use --framework paddle")


def load_model(framework: str, model: str, weights: str, num_classes: int = 1000,
               use_ema: bool = True) -> Any:
    """Build ``model`` in ``framework`` with ``weights`` loaded strictly, in eval mode."""
    _check_weights(framework, weights)
    if framework == "torch":
        from cream_torch_ref import create_model
    else:
        from cream_paddle import create_model
    return create_model(model, num_classes=num_classes, checkpoint=weights, use_ema=use_ema)


def _evaluate_module(framework: str) -> Any:
    if framework == "torch":
        import cream_torch_ref.evaluate as module
    else:
        import cream_paddle.evaluate as module
    return module


def run_eval(framework: str, model: str, weights: str, data: str, *, layout: str = "auto",
             num_classes: Optional[int] = None, img_size: Optional[int] = None,
             batch_size: int = DEFAULT_BATCH_SIZE, workers: Optional[int] = None,
             mode: str = "auto", threads: Optional[int] = None, use_ema: bool = True,
             skip_bad: bool = False, labels: Optional[str] = None,
             predictions: Optional[str] = None, resume: bool = False,
             keep_logits: bool = False, progress: bool = False,
             outputs: Optional[Mapping[str, Optional[str]]] = None
             ) -> "tuple[Optional[EvalResult], ImageDataset]":
    """Index ``data``, check the ``outputs`` (option -> file, plus the predictions journal's files)
    against the weights, the labels, the data and every image folder
    (:func:`cream_core.io.outputs.prepare_outputs`), load the model and evaluate it; returns the
    result and the dataset.

    Under ``torchrun`` / ``paddle.distributed.launch`` each process evaluates its share and rank 0
    gets the merged result (the others ``None``). ``predictions``: the per-image CSV written as the
    run goes (rank 0); ``resume`` continues the interrupted run that wrote it.
    """
    if framework not in FRAMEWORKS:
        raise UsageError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    spec = child_spec(model)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes must be at least 1, got {num_classes}")
    if resume and predictions is None:
        raise UsageError("--resume needs the --predictions FILE of the interrupted run")
    module = _evaluate_module(framework)
    module.resolve_mode(mode, 0)  # unknown modes fail before any work
    dataset = open_eval_data(data, layout, labels, num_classes, skip_bad=skip_bad)
    _guard(outputs, predictions, [weights, labels, dataset.root, *_image_folders(dataset)])
    net = load_model(framework, model, weights, dataset.num_classes, use_ema=use_ema)
    loader = EvalLoader(dataset, img_size or spec.resolution, batch_size=batch_size,
                        workers=workers, skip_bad=skip_bad)
    comm = module.init_comm()
    journal = None
    if predictions is not None and comm.rank == 0:
        journal = PredictionJournal(predictions, dataset.class_names, run_fingerprint(
            dataset, framework=framework, model=model, weights_sha256=sha256_file(weights),
            ema=use_ema, mode=module.resolve_mode(mode, loader.num_images),
            img_size=loader.img_size, batch_size=batch_size,
            labels=os.path.abspath(labels) if labels else None))
    try:
        result = module.evaluate(
            net, loader, mode=mode, threads=threads, keep_logits=keep_logits, progress=progress,
            desc=f"{framework} {model}", comm=comm, journal=journal, resume=resume)
    except BadDataError as e:
        raise _with_resume_hint(e, journal) from None
    if result is None:  # not rank 0: its share went to rank 0
        return None, dataset
    if result.images == 0:
        if journal is not None:
            journal.discard()
        raise BadDataError(data, f"no image could be evaluated ({len(result.skipped)} skipped)")
    if journal is not None:
        journal.finish()
    return result, dataset


def _guard(outputs: Optional[Mapping[str, Optional[str]]], predictions: Optional[str],
           inputs: "list[Optional[str]]") -> None:
    """The output-path guard over ``outputs`` and the files the predictions journal writes."""
    named = dict(outputs or {})
    if predictions is not None:
        named.setdefault("--predictions", predictions)
        named["--predictions (while running)"] = predictions + PARTIAL_SUFFIX
        named["--predictions (resume state)"] = predictions + RESUME_SUFFIX
    if any(v is not None for v in named.values()):
        guard_outputs("cream-eval", named, [i for i in inputs if i is not None])


def _image_folders(dataset: ImageDataset) -> "set[str]":
    """The real folders of every image (a list file may point anywhere; links are followed)."""
    return {os.path.dirname(os.path.realpath(p)) for p in dataset.paths}


def _with_resume_hint(error: BadDataError, journal: Optional[PredictionJournal]) -> BadDataError:
    """A bad item stopped the run: keep a finished part for ``--resume --skip-bad`` and say so;
    drop a run that had finished nothing."""
    if journal is None or isinstance(error, ResumeError):
        return error
    if journal.done_batches == 0:
        journal.discard()
        return error
    kept = BadDataError(error.path, f"{error.problem} (the {journal.done_batches} batches done are "
                                    f"kept in {journal.path}: --resume --skip-bad continues)",
                        skippable=error.skippable)
    return kept


def summary_table(result: EvalResult, model: str, data: str, layout: str) -> str:
    """The terminal summary: one row per quantity."""
    from tabulate import tabulate

    rows = [
        ("model", f"{model} ({result.framework})"),
        ("data", f"{data} [{layout}]"),
        ("images", result.images),
        ("skipped", len(result.skipped)),
        ("top-1 (%)", f"{result.top1:.3f}"),
        ("top-5 (%)", f"{result.top5:.3f}"),
        ("loss", f"{result.loss:.4f}"),
        ("images/s (end to end)", f"{result.images_per_s:.1f}"),
        ("images/s (model only)", f"{result.model_images_per_s:.1f}"),
    ]
    return tabulate(rows, tablefmt="simple_outline")


def _report(args: argparse.Namespace, result: EvalResult, dataset: ImageDataset) -> Dict[str, Any]:
    out = result.to_dict()
    out.update({
        "model": args.model, "weights": os.path.abspath(args.weights),
        "data": os.path.abspath(args.data), "layout": dataset.layout,
        "labels": os.path.abspath(args.labels) if args.labels else None,
        "num_classes": dataset.num_classes,
        "img_size": args.img_size or child_spec(args.model).resolution,
        "batch_size": args.batch_size, "threads": args.threads,
        "workers": args.workers if args.workers is not None else default_workers(),
        "mode": args.mode, "ema": not args.raw_weights,
        "official": {"top1": child_spec(args.model).top1, "top5": child_spec(args.model).top5},
    })
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``cream-eval``; returns the exit status (0 ok, 2 bad input, data, labels, usage or an
    output that must not or cannot be written; README "What happens when things go wrong")."""
    for key, value in OMP_ENV.items():  # only effective before the framework's first import
        os.environ.setdefault(key, value)
    return run_cli(build_parser(), argv, _run, hint=_skip_bad_hint)


def _skip_bad_hint(args: argparse.Namespace, error: Exception) -> Optional[str]:
    if isinstance(error, BadDataError) and error.skippable and not args.skip_bad:
        return "(use --skip-bad to skip bad files and continue)"
    return None


def _run(args: argparse.Namespace) -> int:
    """The work of ``cream-eval`` after parsing (errors are turned into one line by the caller)."""
    result, dataset = run_eval(
        args.framework, args.model, args.weights, args.data, layout=args.layout,
        num_classes=args.num_classes, img_size=args.img_size, batch_size=args.batch_size,
        workers=args.workers, mode=args.mode, threads=args.threads,
        use_ema=not args.raw_weights, labels=args.labels, predictions=args.predictions,
        resume=args.resume, skip_bad=args.skip_bad, progress=not args.no_progress,
        outputs={"--json": args.json, "--predictions": args.predictions})
    if result is None:  # another rank than 0: rank 0 reports and writes
        return 0
    print(summary_table(result, args.model, args.data, dataset.layout))
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad item(s):")
        for item in result.skipped[:MAX_SKIPPED_SHOWN]:
            print(f"  {item}")
        if len(result.skipped) > MAX_SKIPPED_SHOWN:
            print(f"  ... and {len(result.skipped) - MAX_SKIPPED_SHOWN} more"
                  + (f" (all in {args.json})" if args.json else " (use --json for all)"))
    _write_outputs(args, result, dataset)
    return 0


def _write_outputs(args: argparse.Namespace, result: EvalResult, dataset: ImageDataset) -> None:
    """``--json`` (atomically; names that are not UTF-8 are ``\\udcXX`` escapes in it, see README).
    ``--predictions`` was completed by its journal as the run ended: the CSV appears only whole,
    before the JSON that summarises it."""
    if args.json:
        text = json.dumps(_report(args, result, dataset), indent=1) + "\n"
        commit_files({args.json: (lambda f: f.write(text))}, mode="w")
        print(f"wrote {args.json}")
    if args.predictions:
        print(f"wrote {args.predictions}")


if __name__ == "__main__":
    sys.exit(main())
