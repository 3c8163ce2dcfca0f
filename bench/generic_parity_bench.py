"""``parity run --torch/--paddle`` next to PaDiff on a generic pair (torchvision <-> paddle.vision).

    python -m bench.generic_parity_bench [--pair resnet18] [--input-shape 2,3,64,64] [--rounds 1]
                                         [--json FILE] [--no-fault] [--keep DIR]

Both tools get the same torchvision state dict (seeded, BatchNorm statistics calibrated on the
bundled photos: :func:`converters.weights.seed_and_calibrate`), the same seeded input
(``RandomState(parity.generic_cli.INPUT_SEED)``) and labels (``parity.generic.TARGET_SEED``), and the
same train step (cross-entropy, SGD momentum 0.9, lr 0.1, weight decay 1e-4, ``SGD_STEPS`` steps):

* ``parity run --torch torchvision.models:NAME --paddle paddle.vision.models:NAME --ckpt SD`` in a
  fresh process: layers matched automatically, eval and train mode, fp64 then fp32, BN statistics,
  loss, every gradient, the optimizer steps, the configuration diff.
* PaDiff 0.2 (PyPI ``padiff``) in a fresh process: ``auto_diff(paddle_model, torch_model, inputs,
  auto_weights=False, loss_fn=..., optimizer=..., steps=SGD_STEPS, options=...)`` -- train mode,
  fp32, the weights loaded through :mod:`converters.matching` (PaDiff's own weight copy needs
  identical trees). Several option sets: PaDiff's defaults (``compare_mode='mean'``: only the mean
  of each tensor, atol 0, rtol 1e-7), the mean at parity's fp32 bounds, and ``'strict'``
  (elementwise) at parity's fp32 bounds and 10x looser.
* With faults (default; ``--no-fault`` skips them): every injected fault ``parity`` defines for the
  pair (:data:`parity.generic_faults.GENERIC_FAULTS`), applied to the Paddle model after its weights
  are loaded, run through both tools: does the tool fail, and where does it say the fault is?

Every run is its own process (importing ``padiff`` patches torch and Paddle module-wide); wall and
CPU time are measured around the process, imports included; with ``--rounds`` > 1 the correct-port
runs repeat round-robin and medians are reported. Not a test: run it by hand; it needs ``padiff``
(the ``bench`` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from bench.common import (ROOT, child_env, github_table, median_of, run_script_in, run_timed,
                          verdict, work_folder, write_results)

#: PaDiff option sets: (label, options). parity's fp32 bounds are LAYER_FP32 / GRAD_FP32 (1e-5 /
#: 1e-4 of scale) with LOGITS_FP32's 1e-5 absolute; PaDiff has one atol/rtol for every tensor.
PADIFF_CONFIGS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("PaDiff defaults (mean, atol 0, rtol 1e-7)", {}),
    ("PaDiff mean, atol 1e-5 rtol 1e-4", {"compare_mode": "mean", "atol": 1e-5, "rtol": 1e-4}),
    ("PaDiff strict, atol 1e-5 rtol 1e-4", {"compare_mode": "strict", "atol": 1e-5, "rtol": 1e-4}),
    ("PaDiff strict, atol 1e-4 rtol 1e-3", {"compare_mode": "strict", "atol": 1e-4, "rtol": 1e-3}),
)

#: What each tool compares in the configurations benchmarked.
CHECKS = [
    ("layers paired across differently named trees", "yes (automatic, JSON map)",
     "by call order of layers and APIs (needs the same op sequence)"),
    ("module outputs, eval mode", "yes", "-"),
    ("module outputs, train mode (fp32)", "yes", "yes"),
    ("float64 pass (semantics; catches constants fp32 hides)", "yes", "-"),
    ("BN running statistics (under Paddle's variance convention)", "yes", "-"),
    ("loss", "yes", "yes"),
    ("gradients of module outputs", "yes", "yes"),
    ("parameter gradients", "yes", "yes"),
    ("parameters after the optimizer steps", "yes", "yes"),
    ("layer configuration diff (eps, padding, ...)", "yes", "-"),
    ("elementwise bounds relative to each tensor's scale", "yes", "strict mode only, one atol/rtol"),
    ("names the first divergent layer on both sides", "yes (paths)", "layer types + struct log"),
]


def _env() -> Dict[str, str]:
    return child_env(OMP_NUM_THREADS="1")


def _parity(pair: str, shape: str, sd: str, report: str, fault: Optional[str] = None
            ) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "parity.cli", "run", "--torch", f"torchvision.models:{pair}",
           "--paddle", f"paddle.vision.models:{pair}", "--input-shape", shape, "--ckpt", sd,
           "--report", report, "--no-progress"] + (["--inject-fault", fault] if fault else [])
    r = run_timed(cmd, ROOT, _env())
    out = {k: r[k] for k in ("wall_s", "cpu_s", "exit")}
    try:
        with open(os.path.join(report, "parity.json")) as f:
            data = json.load(f)
        first = data["first_divergence"] or {}
        out.update(ok=data["ok"], compared=data["compared"], failed=data["failed"],
                   where=(f"{first.get('module')} / {first.get('paddle_module')}"
                          if first else None),
                   config_diffs=len(data.get("config_diffs") or []))
    except (OSError, ValueError, KeyError):
        out["error"] = (r["stderr"] or r["stdout"]).strip().splitlines()[-1:]
    return out


def _padiff(pair: str, shape: str, sd: str, config: int, fault: Optional[str], work: str
            ) -> Dict[str, Any]:
    argv = ["--padiff-worker", "--pair", pair, "--input-shape", shape, "--sd", sd,
            "--config", str(config)] + (["--fault", fault] if fault else [])
    # PaDiff writes its diff_log next to sys.path[0]: run the worker from the work folder
    return run_script_in(work, __file__, argv, "PADIFF_RESULT ", _env())


def _where(stdout: str) -> Optional[str]:
    """PaDiff's own account of the divergence: the stage/step line and the layer types."""
    keep = [ln.split("]", 1)[-1].strip() for ln in stdout.splitlines()
            if "Diff found in" in ln or "Type of layer is" in ln]
    return "; ".join(keep[:2]) or None


def padiff_worker(args: argparse.Namespace) -> int:
    """In a fresh process: PaDiff's auto_diff on the same weights, input, loss and optimizer."""
    import contextlib
    import io
    import warnings

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    import padiff  # noqa: F401 - patches torch/paddle APIs on import
    from padiff import auto_diff
    import numpy as np
    import paddle
    import torch
    import torchvision.models as tvm
    import paddle.vision.models as pvm

    t_import = time.perf_counter() - t0
    from converters.matching import match_models, torch_to_paddle_state
    from cream_torch_ref.checkpoint import load_checkpoint
    from parity.generic import SGD_LR, SGD_MOMENTUM, SGD_STEPS, SGD_WEIGHT_DECAY, TARGET_SEED
    from parity.generic_cli import INPUT_SEED

    shape = tuple(int(v) for v in args.input_shape.split(","))
    x = np.random.RandomState(INPUT_SEED).standard_normal(shape).astype(np.float32)
    tm, pm = getattr(tvm, args.pair)(), getattr(pvm, args.pair)()
    tm.load_state_dict(load_checkpoint(args.sd, use_ema=False).state_dict)
    matching = match_models(tm, pm, x[:1])
    pm.set_state_dict(torch_to_paddle_state({k: v.numpy() for k, v in tm.state_dict().items()},
                                            matching, pm))
    if args.fault:
        from parity.generic_faults import GENERIC_FAULTS

        next(f for f in GENERIC_FAULTS if f.pair == args.pair and f.name == args.fault).apply(pm)
    with torch.no_grad():
        classes = int(tm.eval()(torch.from_numpy(x[:1])).shape[1])
    y = np.random.RandomState(TARGET_SEED).randint(0, classes, shape[0]).astype(np.int64)
    tm.train()
    pm.train()
    topt = torch.optim.SGD(tm.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM,
                           weight_decay=SGD_WEIGHT_DECAY)
    popt = paddle.optimizer.Momentum(learning_rate=SGD_LR, momentum=SGD_MOMENTUM,
                                     parameters=pm.parameters(), weight_decay=SGD_WEIGHT_DECAY)
    label, options = PADIFF_CONFIGS[args.config]
    losses = (lambda o: paddle.nn.functional.cross_entropy(o, paddle.to_tensor(y)),
              lambda o: torch.nn.functional.cross_entropy(o, torch.from_numpy(y)))
    buf = io.StringIO()
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        ok = auto_diff(pm, tm, ({"x": paddle.to_tensor(x)}, {"x": torch.from_numpy(x)}),
                       auto_weights=False, loss_fn=losses, optimizer=(popt, topt),
                       steps=SGD_STEPS, options=dict(options))
    result = {"ok": bool(ok), "config": label, "import_s": round(t_import, 2),
              "auto_diff_s": round(time.perf_counter() - t1, 2),
              "where": None if ok else _where(buf.getvalue())}
    print("PADIFF_RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip torch's and Paddle's slow teardown


def _weights(pair: str, shape: Tuple[int, ...], path: str) -> None:
    """The torchvision state dict both tools start from (seeded, BN calibrated on the photos)."""
    import torch
    import torchvision.models as tvm

    from converters.weights import bundled_photos, seed_and_calibrate
    from parity.generic_cli import WEIGHTS_SEED

    model = getattr(tvm, pair)()
    seed_and_calibrate(model, WEIGHTS_SEED, bundled_photos(shape[2], shape[3]))
    torch.save(model.state_dict(), path)


def _measure(args: argparse.Namespace, work: str, sd: str) -> Dict[str, Any]:
    from parity.generic_faults import GENERIC_FAULTS

    res: Dict[str, Any] = {"parity": [], "padiff": {i: [] for i in range(len(PADIFF_CONFIGS))}}
    for r in range(args.rounds):  # round-robin: load from other processes hits all alike
        print(f"round {r + 1}/{args.rounds}: parity run; PaDiff x {len(PADIFF_CONFIGS)}",
              flush=True)
        res["parity"].append(_parity(args.pair, args.input_shape, sd,
                                     os.path.join(work, f"parity-{r}")))
        for i in range(len(PADIFF_CONFIGS)):
            res["padiff"][i].append(_padiff(args.pair, args.input_shape, sd, i, None,
                                            os.path.join(work, f"padiff-{i}-{r}")))
    faults = [] if args.no_fault else [f for f in GENERIC_FAULTS if f.pair == args.pair]
    res["faults"] = []
    for f in faults:
        print(f"fault {f.name}: {f.description}", flush=True)
        row = {"fault": f.name, "description": f.description,
               "expected": f"{f.torch_module} / {f.paddle_module}",
               "parity": _parity(args.pair, args.input_shape, sd,
                                 os.path.join(work, f"parity-{f.name}"), fault=f.name),
               "padiff": [_padiff(args.pair, args.input_shape, sd, i, f.name,
                                  os.path.join(work, f"padiff-{i}-{f.name}"))
                          for i in range(len(PADIFF_CONFIGS))]}
        res["faults"].append(row)
    return res


def _print(res: Dict[str, Any]) -> None:
    p = res["parity"]
    rows = [["parity run --torch/--paddle", median_of(p, "wall_s"), median_of(p, "cpu_s"),
             verdict(p[-1]), p[-1].get("compared", "")]]
    for i, (label, _) in enumerate(PADIFF_CONFIGS):
        runs = res["padiff"][i]
        rows.append([label, median_of(runs, "wall_s"), median_of(runs, "cpu_s"), verdict(runs[-1]),
                     runs[-1].get("where") or ""])
    print()
    print(github_table(rows, ["correct port", "wall s", "CPU s", "verdict",
                              "tensors compared / PaDiff's complaint"]))
    print()
    print(github_table([list(c) for c in CHECKS], ["check", "parity run", "PaDiff"]))
    if res["faults"]:
        rows = []
        for f in res["faults"]:
            rows.append([f["fault"], "parity run", verdict(f["parity"]), f["parity"].get("where"),
                         f["expected"]])
            rows += [[f["fault"], PADIFF_CONFIGS[i][0], verdict(r), r.get("where") or "", ""]
                     for i, r in enumerate(f["padiff"])]
        print()
        print(github_table(rows, ["fault", "tool", "verdict", "reported where", "injected at"]))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="resnet18", help="torchvision/paddle.vision constructor")
    p.add_argument("--input-shape", default="2,3,64,64")
    p.add_argument("--rounds", type=int, default=1, help="correct-port runs of each tool (median)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--no-fault", action="store_true", help="skip the injected faults")
    p.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    p.add_argument("--padiff-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sd", help=argparse.SUPPRESS)
    p.add_argument("--config", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--fault", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.padiff_worker:
        return padiff_worker(args)
    try:
        import padiff  # noqa: F401
    except ImportError:
        print("generic_parity_bench: padiff is not installed (pip install '.[bench]')",
              file=sys.stderr)
        return 2
    import importlib.metadata as md

    with work_folder("generic-parity-bench-", args.keep) as work:
        sd = os.path.join(work, f"{args.pair}.pth")
        _weights(args.pair, tuple(int(v) for v in args.input_shape.split(",")), sd)
        res = _measure(args, work, sd)
    res.update(pair=args.pair, input_shape=args.input_shape, rounds=args.rounds,
               load_average_at_start=os.getloadavg(),
               versions={k: md.version(k) for k in ("torch", "torchvision", "paddlepaddle",
                                                      "padiff")})
    _print(res)
    write_results(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
