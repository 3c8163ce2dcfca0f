"""``cream-demo``: the main job end to end — check the reference, convert, run parity, evaluate.

1. The six released nets: FLOPs/params counted as the official thop, and the PyTorch reference's
   logits against the official 2020 code's (golden data) on seeded weights.
2. A checkpoint: yours (``--ckpt 14.pth.tar``) or a seeded one in the official training's format.
3. ``convert-ckpt`` to ``.pdparams``.
4. ``parity run``: layer outputs, losses, gradients, optimizer steps; table, JSON and plot.
5. Evaluation of both frameworks on the embedded photographs, labelled with the reference's own
   predictions (so a faithful port scores exactly 100 / 100), and their per-image agreement.
6. With ``--train-demo``: retrain Cream-14 on scikit-learn's bundled digits, convert, and evaluate
   both frameworks (same accuracy expected).

Everything is written below ``--out`` (default ``out/demo``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from cream_core.io.cli_errors import exit_help, int_at_least, run_cli
from cream_core.io.errors import CheckpointError

__all__ = ["check_against_official", "run_demo", "build_parser", "main"]

#: fp32 CPU, same ops in a different torch/timm version (see tests/test_torch_reference.py).
GOLDEN_LOGITS_ATOL = 1e-5


def _say(msg: str) -> None:
    print(msg, flush=True)


def check_against_official() -> List[Dict[str, Any]]:
    """Per released net: our thop-rule counts and reference logits vs the official code's golden data."""
    import numpy as np
    import torch

    from cream_core.arch import child_spec, model_flops_params, seeded_child_state, seeded_input
    from cream_core.arch.golden import golden_childnets, golden_logits
    from cream_torch_ref import create_model, list_models

    gold = golden_childnets()["models"]
    rows = []
    for name in list_models():
        spec = child_spec(name)
        macs, params = model_flops_params(name)
        g = golden_logits(name)
        x = torch.from_numpy(seeded_input(2, int(g["resolution"]), int(g["input_seed"])))
        errs = []
        for key, seed in (("raw", 1), ("ema", 2)):
            model = create_model(name)
            state = seeded_child_state(spec.arch_list, seed)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            with torch.no_grad():
                errs.append(float(np.abs(model(x).numpy() - g[key]).max()))
        rows.append({"model": name, "px": spec.resolution,
                     "FLOPs (M)": f"{macs / 1e6:.3f}",
                     "official thop (M)": f"{gold[name]['thop_macs'] / 1e6:.3f}",
                     "params (M)": f"{params / 1e6:.3f}",
                     "logits vs official": f"{max(errs):.1e}",
                     "ok": macs == gold[name]["thop_macs"] and max(errs) <= GOLDEN_LOGITS_ATOL})
    return rows


def run_demo(ckpt: Optional[str] = None, model: str = "auto", out: str = "out/demo",
             batch: int = 2, x2paddle: bool = True, train_demo: bool = False,
             train_epochs: Optional[int] = None) -> int:
    """Run the whole main job; returns the process exit code (0 iff every check passed, 1 if one
    failed); a bad checkpoint raises :class:`~cream_core.io.errors.CheckpointError` (exit 2)."""
    from tabulate import tabulate

    from converters.convert import convert_checkpoint
    from cream_torch_ref.models import seeded_official_checkpoint

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts: Dict[str, bool] = {}
    t0 = time.time()

    _say("== 1. The six released nets against the official 2020 code ==")
    rows = check_against_official()
    print(tabulate(rows, headers="keys"))
    verdicts["reference = official"] = all(r["ok"] for r in rows)

    _say("\n== 2. Checkpoint ==")
    if ckpt is None:
        name = "cream-14" if model == "auto" else model
        ckpt = str(out_dir / f"{name}.pth.tar")
        seeded_official_checkpoint(name, ckpt, legacy=True)
        _say(f"no --ckpt given: wrote a seeded {name} checkpoint in the official format: {ckpt}")
    pdparams = str(out_dir / (Path(ckpt).name.split(".")[0] + ".pdparams"))

    _say("\n== 3. convert-ckpt ==")
    conv = convert_checkpoint(ckpt, pdparams, model=model, weights="ema", force=True)  # bad: exit 2
    name = conv.model if hasattr(conv, "model") else model
    _say(f"{ckpt} -> {pdparams} ({name})")

    _say(f"\n== 4. parity run --model {name} ==")
    from parity.report import format_first_divergence, format_table, write_json, write_plot
    from parity.runner import ParityConfig, run_parity

    rep = out_dir / "parity"
    rep.mkdir(exist_ok=True)
    stages = None if x2paddle else tuple(s for s in ParityConfig(model=name).stages if s != "x2paddle")
    pcfg = ParityConfig(model=name, ckpt=ckpt, batch=batch, report_dir=str(rep),
                        **({"stages": stages} if stages else {}))
    result = run_parity(pcfg)
    print(format_table(result))
    print(format_first_divergence(result))
    write_json(result, str(rep / "parity.json"))
    write_plot(result, str(rep / "parity.png"))
    _say(f"JSON: {rep / 'parity.json'}  plot: {rep / 'parity.png'}")
    verdicts["parity run"] = result.ok

    _say("\n== 5. Evaluation on the embedded photographs ==")
    ok_eval = _evaluate(name, ckpt, pdparams, out_dir)
    verdicts["evaluation"] = ok_eval

    if train_demo:
        _say("\n== 6. Retraining demo: Cream-14 on scikit-learn's digits, then both frameworks ==")
        from cream_cli.train import run_digits_demo

        rep = run_digits_demo("torch", epochs=train_epochs, out_dir=str(out_dir / "digits"))
        verdicts["retrain demo: same accuracy"] = bool(rep["same_predictions"]) and \
            rep["torch"]["top1"] == rep["paddle"]["top1"] and rep["torch"]["top1"] > 5 * 10.0

    _say("\n== Summary ==")
    print(tabulate([[k, "PASS" if v else "FAIL"] for k, v in verdicts.items()],
                   headers=["check", "result"]))
    _say(f"({time.time() - t0:.0f} s; outputs in {out_dir})")
    (out_dir / "summary.json").write_text(json.dumps({k: bool(v) for k, v in verdicts.items()},
                                                     indent=1))
    return 0 if all(verdicts.values()) else 1


def _evaluate(name: str, ckpt: str, pdparams: str, out_dir: Path) -> bool:
    """Label the photos with the reference's predictions, then cream-eval both and compare."""
    import numpy as np
    from tabulate import tabulate

    import cream_core.data as cd
    from cream_core.arch import child_spec
    from cream_cli.eval import run_eval
    from cream_torch_ref import create_model
    from cream_torch_ref.evaluate import forward_logits
    from parity.eval_parity import eval_parity, format_report

    res = child_spec(name).resolution
    t = cd.EvalTransform(res)
    photos = cd.sample_files()
    preds = forward_logits(create_model(name, checkpoint=ckpt),
                           cd.normalize(np.stack([t(p) for p in photos]))).argmax(1)
    labels = {p.name: int(c) for p, c in zip(photos, preds)}
    data = out_dir / "photos"
    inet = cd.make_imagenet_layout(data / "imagenet", labels)
    lst = cd.write_list_file(data / "list" / "val.txt", labels)
    _say(f"{len(photos)} photos labelled with the reference's own predictions: {inet}, {lst}")
    rows, ok = [], True
    for layout, path in (("ImageNet folder", inet), ("list file", lst)):
        for fw, weights in (("torch", ckpt), ("paddle", pdparams)):
            r, _ = run_eval(fw, name, str(weights), str(path))
            rows.append([layout, fw, f"{r.top1:.1f}", f"{r.top5:.1f}", f"{r.loss:.4f}",
                         f"{r.images_per_s:.0f}"])
            ok &= r.top1 == 100.0 and r.top5 == 100.0
    print(tabulate(rows, headers=["data", "framework", "top-1", "top-5", "loss", "images/s"]))
    agree = eval_parity(name, ckpt, str(inet), paddle_weights=pdparams)
    print(format_report(agree))
    return ok and agree.ok


def build_parser() -> argparse.ArgumentParser:
    """The ``cream-demo`` command line."""
    from cream_core.arch import model_names

    p = argparse.ArgumentParser(prog="cream-demo", description=__doc__,
                                epilog=exit_help("a check failed"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="an official-format .pth.tar (default: a seeded one)")
    p.add_argument("--model", default="auto", choices=["auto", *model_names()], metavar="NAME",
                   help="cream-N, or auto (recognised from the weights)")
    p.add_argument("--out", default=os.path.join("out", "demo"), help="output folder")
    p.add_argument("--batch", type=int_at_least(1), default=2, help="parity batch size")
    p.add_argument("--no-x2paddle", action="store_true", help="skip the x2paddle third opinion")
    p.add_argument("--train-demo", action="store_true",
                   help="also retrain Cream-14 on the bundled digits (minutes) and compare both "
                        "frameworks after conversion")
    p.add_argument("--train-epochs", type=int_at_least(1), default=None,
                   help="epochs for --train-demo")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Parse arguments and run :func:`run_demo` (exit codes: :mod:`cream_core.io.cli_errors`)."""
    return run_cli(build_parser(), argv, _run)


def _run(args: argparse.Namespace) -> int:
    if args.ckpt is not None and not os.path.isfile(args.ckpt):
        raise CheckpointError(args.ckpt, "no such file")
    return run_demo(args.ckpt, args.model, args.out, args.batch, not args.no_x2paddle,
                    args.train_demo, args.train_epochs)


if __name__ == "__main__":
    sys.exit(main())
