"""``parity eval``: the torch reference and the Paddle port on the same images, image for image.

Each batch is decoded once (official eval preprocessing, :mod:`cream_core.data`) and the very same
float32 array goes through both models, so any difference comes from the models alone. Reported:
each framework's top-1/top-5 and loss, per-image top-1 agreement, the largest logit difference, and
every image where the two top-1 predictions differ.

Verdict (exit status 1 when it fails):

* top-1 agreement must reach :data:`MIN_TOP1_AGREEMENT` percent (100: the goal is identical
  predictions; a converted model that flips any image is reported), and
* every logit must agree within :data:`EVAL_LOGITS`: the forward-parity bounds for classifier
  outputs (absolute, ``LOGITS_FP32``) and for any layer output (relative to the largest value,
  ``LAYER_FP32``), because real photos through arbitrary (e.g. seeded) weights can give logits far
  beyond the O(1-10) of a trained net, and fp32 rounding scales with them.

The Paddle weights are the official checkpoint converted with ``convert-ckpt``'s API into a
temporary folder, unless ``--paddle-weights`` names a converted ``.pdparams``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from cream_core.arch import child_spec, model_names
from cream_core.io.cli_errors import float_in, int_at_least
from cream_core.io.outputs import prepare_outputs
from cream_core.data import (BadDataError, BadItem, EvalAccumulator, EvalLoader, EvalResult,
                        iterate_normalized, open_eval_data, progress_bar,
                        write_json)
from cream_core.data.loader import DEFAULT_BATCH_SIZE, OMP_ENV
from cream_core.data.val_inputs import add_eval_data_arguments

from .subcommand import Subcommand
from .tolerances import LAYER_FP32, LOGITS_FP32, Tolerance

__all__ = ["EVAL_LOGITS", "MIN_TOP1_AGREEMENT", "MAX_DISAGREEMENTS_SHOWN", "Disagreement",
           "EvalParityResult", "eval_parity", "register", "main"]

#: Logit bound for the evaluation run: ``|paddle - torch| <= atol + rtol * max|torch logit|`` over
#: the whole run, atol from ``LOGITS_FP32`` (trained nets' O(1-10) logits), rtol from ``LAYER_FP32``.
EVAL_LOGITS: Tolerance = Tolerance(
    LOGITS_FP32.atol, LAYER_FP32.rtol,
    f"fp32 over ~20 blocks: {LOGITS_FP32.atol:.0e} absolute for O(1-10) logits (LOGITS_FP32) plus "
    f"{LAYER_FP32.rtol:.0e} of the run's largest |logit| (LAYER_FP32), as logits on real photos "
    "can be far larger")
#: Percent of images whose top-1 must agree. Goal: identical predictions, so 100.
MIN_TOP1_AGREEMENT: float = 100.0
#: Disagreeing images printed on the terminal (all of them go to the JSON report).
MAX_DISAGREEMENTS_SHOWN = 20


@dataclass
class Disagreement:
    """An image whose top-1 prediction differs between the frameworks."""

    path: str
    label: int
    torch_top1: int
    paddle_top1: int
    torch_margin: float  # torch's top-1 minus top-2 logit: how close the call was
    max_logit_diff: float


@dataclass
class EvalParityResult:
    """Both frameworks' results on the same images and how far they agree."""

    model: str
    torch: EvalResult
    paddle: EvalResult
    images: int
    top1_agree: int
    max_logit_diff: float
    worst_image: str
    logit_tolerance: Tolerance
    min_agreement: float
    disagreements: List[Disagreement] = field(default_factory=list)
    skipped: List[BadItem] = field(default_factory=list)
    paddle_weights: str = ""
    seconds: float = 0.0
    logit_scale: float = 0.0  # max |torch logit|, the scale a relative bound refers to

    @property
    def agreement(self) -> float:
        """Percent of images with the same top-1 in both frameworks."""
        return 100.0 * self.top1_agree / self.images if self.images else 0.0

    @property
    def logits_ok(self) -> bool:
        """Every logit within :attr:`logit_tolerance`."""
        tol = self.logit_tolerance
        return self.max_logit_diff <= tol.atol + tol.rtol * self.logit_scale

    @property
    def ok(self) -> bool:
        """Both criteria met."""
        return self.images > 0 and self.agreement >= self.min_agreement and self.logits_ok

    def to_dict(self) -> Dict[str, Any]:
        """JSON report."""
        return {
            "model": self.model,
            "images": self.images,
            "ok": self.ok,
            "top1_agreement": self.agreement,
            "top1_agree": self.top1_agree,
            "min_top1_agreement": self.min_agreement,
            "max_logit_diff": self.max_logit_diff,
            "logit_scale": self.logit_scale,
            "worst_image": self.worst_image,
            "logit_tolerance": {"atol": self.logit_tolerance.atol, "rtol": self.logit_tolerance.rtol,
                                "reason": self.logit_tolerance.reason},
            "torch": self.torch.to_dict(),
            "paddle": self.paddle.to_dict(),
            "disagreements": [d.__dict__ for d in self.disagreements],
            "skipped": [b.to_dict() for b in self.skipped],
            "paddle_weights": self.paddle_weights,
            "seconds": self.seconds,
        }


def _convert(ckpt: str, model: str, use_ema: bool, folder: str) -> str:
    from converters.convert import convert_checkpoint

    dst = os.path.join(folder, os.path.basename(ckpt).split(".")[0] + ".pdparams")
    res = convert_checkpoint(ckpt, dst, model=model, weights="ema" if use_ema else "model")
    return res.dst


def eval_parity(model: str, ckpt: "os.PathLike[str] | str", data: "os.PathLike[str] | str", *,
                paddle_weights: "Optional[os.PathLike[str] | str]" = None, layout: str = "auto",
                num_classes: Optional[int] = None, img_size: Optional[int] = None,
                batch_size: int = DEFAULT_BATCH_SIZE, workers: Optional[int] = None,
                skip_bad: bool = False, use_ema: bool = True, paddle_mode: str = "auto",
                logit_tolerance: Tolerance = EVAL_LOGITS,
                min_agreement: float = MIN_TOP1_AGREEMENT, progress: bool = False,
                labels: "Optional[os.PathLike[str] | str]" = None) -> EvalParityResult:
    """Evaluate ``model`` from official checkpoint ``ckpt`` in torch and (converted) in Paddle on
    ``data``, feeding both the same preprocessed batches; see the module docstring for the verdict.
    """
    spec = child_spec(model)
    ckpt = os.fspath(ckpt)
    dataset = open_eval_data(data, layout, labels, num_classes, skip_bad=skip_bad)
    loader = EvalLoader(dataset, img_size or spec.resolution, batch_size=batch_size,
                        workers=workers, skip_bad=skip_bad)

    from cream_paddle import create_model as paddle_model
    from cream_paddle.evaluate import make_forward as paddle_forward
    from cream_paddle.evaluate import resolve_mode
    from cream_torch_ref import create_model as torch_model
    from cream_torch_ref.evaluate import make_forward as torch_forward

    t_net = torch_model(model, num_classes=dataset.num_classes, checkpoint=ckpt, use_ema=use_ema)
    with tempfile.TemporaryDirectory(prefix="cream_eval_parity_") as tmp:
        pd_file = os.fspath(paddle_weights) if paddle_weights is not None else \
            _convert(ckpt, model, use_ema, tmp)
        p_net = paddle_model(model, num_classes=dataset.num_classes, checkpoint=pd_file)
        if paddle_weights is None:
            pd_file = f"(converted from {ckpt})"
    t_fwd = torch_forward(t_net, "auto", loader.img_size)
    p_fwd = paddle_forward(p_net, resolve_mode(paddle_mode, loader.num_images), loader.img_size)

    t_acc = EvalAccumulator("torch", dataset.num_classes)
    p_acc = EvalAccumulator("paddle", dataset.num_classes)
    disagreements: List[Disagreement] = []
    agree = 0
    max_diff, worst, ref_scale = 0.0, "", 0.0
    bar = progress_bar(loader.num_images, f"parity {model}", progress)
    start = time.perf_counter()
    try:
        for batch, x in iterate_normalized(loader):
            t0 = time.perf_counter()
            tl = t_acc.update(batch, t_fwd(x), 0.0)
            t1 = time.perf_counter()
            pl = p_acc.update(batch, p_fwd(x), 0.0)
            t2 = time.perf_counter()
            t_acc.model_seconds += t1 - t0
            p_acc.model_seconds += t2 - t1
            diff = np.abs(pl.astype(np.float64) - tl.astype(np.float64)).max(axis=1)
            diff[~np.isfinite(diff)] = math.inf
            t_top, p_top = t_acc.preds[-1][:, 0], p_acc.preds[-1][:, 0]
            agree += int((t_top == p_top).sum())
            ref_scale = max(ref_scale, float(np.abs(tl).max()))
            i = int(np.argmax(diff))
            if diff[i] > max_diff or not worst:
                max_diff, worst = float(diff[i]), batch.paths[i]
            srt = np.sort(tl, axis=1)
            for j in np.nonzero(t_top != p_top)[0]:
                disagreements.append(Disagreement(
                    batch.paths[j], int(batch.labels[j]), int(t_top[j]), int(p_top[j]),
                    float(srt[j, -1] - srt[j, -2]), float(diff[j])))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    result = EvalParityResult(
        model=model, torch=t_acc.result(seconds, loader.skipped),
        paddle=p_acc.result(seconds, loader.skipped), images=len(t_acc.paths), top1_agree=agree,
        max_logit_diff=max_diff, worst_image=worst, logit_tolerance=logit_tolerance,
        min_agreement=min_agreement, disagreements=disagreements, skipped=list(loader.skipped),
        paddle_weights=pd_file, seconds=seconds, logit_scale=ref_scale)
    if result.images == 0:
        raise BadDataError(os.fspath(data), "no image could be evaluated")
    return result


def format_report(res: EvalParityResult) -> str:
    """Terminal summary: one row per framework, then agreement and verdict."""
    from tabulate import tabulate

    rows = [[r.framework, f"{r.top1:.3f}", f"{r.top5:.3f}", f"{r.loss:.4f}",
             f"{r.model_images_per_s:.1f}"] for r in (res.torch, res.paddle)]
    lines = [tabulate(rows, headers=["framework", "top-1 (%)", "top-5 (%)", "loss", "model img/s"],
                      tablefmt="simple_outline", disable_numparse=True),
             f"images: {res.images}" + (f" ({len(res.skipped)} skipped)" if res.skipped else ""),
             f"top-1 agreement: {res.top1_agree}/{res.images} = {res.agreement:.3f} % "
             f"(need >= {res.min_agreement:g} %)",
             f"max |logit difference|: {res.max_logit_diff:.3g} (bound {res.logit_tolerance.describe()}: "
             f"{res.logit_tolerance.reason}) at {res.worst_image}"]
    if res.disagreements:
        lines.append(f"{len(res.disagreements)} image(s) with different top-1:")
        for d in res.disagreements[:MAX_DISAGREEMENTS_SHOWN]:
            lines.append(f"  {d.path}: label {d.label}, torch {d.torch_top1} (margin "
                         f"{d.torch_margin:.3g}), paddle {d.paddle_top1}, "
                         f"max diff {d.max_logit_diff:.3g}")
        if len(res.disagreements) > MAX_DISAGREEMENTS_SHOWN:
            more = len(res.disagreements) - MAX_DISAGREEMENTS_SHOWN
            lines.append(f"  ... and {more} more (see --json)")
    for item in res.skipped[:MAX_DISAGREEMENTS_SHOWN]:
        lines.append(f"  skipped {item}")
    lines.append("PASS: identical predictions within tolerance" if res.ok else
                 "FAIL: the frameworks disagree beyond tolerance")
    return "\n".join(lines)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=model_names(), metavar="NAME",
                   help=f"released child net: {', '.join(model_names())}")
    p.add_argument("--ckpt", required=True, metavar="FILE", help="official .pth.tar checkpoint")
    add_eval_data_arguments(p)  # --data, --labels, --layout, as cream-eval
    p.add_argument("--paddle-weights", metavar="FILE",
                   help="converted .pdparams to use (default: convert --ckpt into a temporary folder)")
    p.add_argument("--num-classes", type=int_at_least(1), default=None, metavar="N")
    p.add_argument("--img-size", type=int, default=None, metavar="PX")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE, metavar="N")
    p.add_argument("--workers", type=int_at_least(0), default=None, metavar="N")
    p.add_argument("--paddle-mode", default="auto", help="auto, eager, static or inference")
    p.add_argument("--raw-weights", action="store_true", help="raw instead of EMA weights")
    p.add_argument("--skip-bad", action="store_true", help="skip bad files, listing them")
    p.add_argument("--max-logit-diff", type=float, default=None, metavar="X",
                   help=f"absolute logit bound instead of the default EVAL_LOGITS "
                        f"({EVAL_LOGITS.describe()} of the largest |logit|)")
    p.add_argument("--min-agreement", type=float_in(0.0, 100.0, high_open=False),
                   default=MIN_TOP1_AGREEMENT, metavar="PCT",
                   help=f"required top-1 agreement in percent (default {MIN_TOP1_AGREEMENT:g})")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--no-progress", action="store_true")



def _run(args: argparse.Namespace) -> int:
    """The work of ``parity eval``; bad input (data, checkpoint, output) raises a ``ValueError``."""
    for key, value in OMP_ENV.items():  # two frameworks' thread pools in one process: never spin
        os.environ.setdefault(key, value)
    prepare_outputs({"--json": args.json}, [args.ckpt, args.data, args.paddle_weights, args.labels])
    tol = EVAL_LOGITS if args.max_logit_diff is None else Tolerance(
        args.max_logit_diff, 0.0, "set with --max-logit-diff")
    res = eval_parity(args.model, args.ckpt, args.data, paddle_weights=args.paddle_weights,
                      layout=args.layout, num_classes=args.num_classes, img_size=args.img_size,
                      batch_size=args.batch_size, workers=args.workers, skip_bad=args.skip_bad,
                      use_ema=not args.raw_weights, paddle_mode=args.paddle_mode,
                      logit_tolerance=tol, min_agreement=args.min_agreement,
                      progress=not args.no_progress, labels=args.labels)
    print(format_report(res))
    if args.json:
        write_json(args.json, res.to_dict())  # a full or failing disk after the work: exit 2
        print(f"wrote {args.json}")
    return 0 if res.ok else 1


#: ``parity eval`` (``register``: into ``parity``; ``main``: ``python -m parity.eval_parity``).
SUBCOMMAND = Subcommand("eval", __doc__, _add_arguments, _run,
                        help="top-1/top-5 of torch and Paddle on the same images")
register, main = SUBCOMMAND.register, SUBCOMMAND.main


if __name__ == "__main__":
    sys.exit(main())
