"""``parity run`` next to PaDiff on the same model, weights and input: wall time and what each checks.

    python -m bench.parity_bench [--model cream-14] [--rounds 3] [--json FILE] [--no-fault]

Both tools get the same official-format checkpoint (seeded, BN statistics calibrated) and the same
seeded batch of 2 at the model's test resolution:

* ``parity run --model NAME --ckpt CKPT`` in a fresh process: once *cold* (new report folder:
  checkpoint conversion and the x2paddle trace included), then ``--rounds`` times *warm* (the
  x2paddle export cached in the report folder, as on any later run).
* PaDiff (PyPI ``padiff``) in a fresh process: ``auto_diff(paddle_layer, torch_module, inputs,
  auto_weights=False, options={"compare_mode": "strict", "atol": A, "rtol": R}, loss_fn=...,
  optimizer=..., steps=K)`` in ONE call: forward, loss, backward, gradients and weights after each
  of K steps of the search's Nesterov SGD (lr 1.0), in train mode, the same label-smoothing loss.
  At parity's fp32 bounds (atol 1e-5, rtol 1e-4, K = 3) it stops at the first step (its flat
  ``allclose`` flags fp32 rounding of a gradient); 10x looser it passes one step (K = 1, the timing
  reference); with K = 3 it stops at the second step's loss, because each framework steps on its own
  gradients and lr 1.0 over a batch of 2 amplifies their rounding (why ``parity run`` feeds both
  optimizers the same gradients).
* With a fault (default; ``--no-fault`` skips it): both tools on a Paddle model whose SE gates use
  Paddle's default hard-sigmoid (slope 0.1666667 instead of 1/6): does the tool notice, and where?

Every tool runs in its own process (importing ``padiff`` patches torch and Paddle module-wide), the
warm runs round-robin so that load from other processes hits all alike; the medians are reported.
Wall time and CPU time are measured around the process, imports included. Not a test: run it by
hand; it needs ``padiff`` installed (``pip install padiff``; it depends on numpy only).
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

#: What each tool compares in the configuration benchmarked (PaDiff 0.2 as called above).
CHECKS = [
    ("module outputs, train mode (fp32)", True, True),
    ("module outputs, eval mode (running BN statistics)", True, False),
    ("float64 pass (catches constants fp32 rounding hides)", True, False),
    ("BN running statistics after a train step", True, False),
    ("loss value", True, True),
    ("loss twins on shared logits, with their gradients", True, False),
    ("gradients of module outputs", True, True),
    ("parameter gradients", True, True),
    ("gradient of the input", True, False),
    ("parameters after 3 optimizer steps", True, True),
    ("LR schedule values (search LambdaLR, retrain step/cosine)", True, False),
    ("second optimizer (RMSpropTF of the retraining)", True, False),
    ("third opinion: x2paddle-traced program", True, False),
    ("bounds per category, relative to each tensor's scale", True, False),
    ("names the module where the port first differs", True, True),
]


#: Longest a tool's run may take (seconds).
_TIMEOUT = 3600


def _parity(model: str, ckpt: str, report: str, fault: Optional[str] = None) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "parity.cli", "run", "--model", model, "--ckpt", ckpt, "--report",
           report, "--no-progress"]
    if fault:
        cmd += ["--inject-fault", fault]
    r = run_timed(cmd, ROOT, timeout=_TIMEOUT)
    out: Dict[str, Any] = {k: r[k] for k in ("wall_s", "cpu_s", "exit")}
    try:
        with open(os.path.join(report, "parity.json")) as f:
            data = json.load(f)
        out.update(ok=data["ok"], compared=data["compared"], failed=data["failed"],
                   stages_s=data["timings_s"],
                   first=(data["first_divergence"] or {}).get("module"))
    except (OSError, ValueError, KeyError):
        out["error"] = (r["stderr"] or r["stdout"]).strip().splitlines()[-1:]
    return out


def _padiff(model: str, ckpt: str, pdparams: str, atol: float, rtol: float, steps: int,
            fault: Optional[str], work: str, suite: bool = False) -> Dict[str, Any]:
    argv = ["--padiff-worker", "--model", model, "--ckpt", ckpt, "--pdparams", pdparams,
            "--atol", str(atol), "--rtol", str(rtol), "--steps", str(steps)]
    argv += ["--fault", fault] if fault else []
    argv += ["--suite"] if suite else []
    # PaDiff writes its diff_log into sys.path[0]: run the worker from the work folder, with this
    # checkout importable.
    return run_script_in(work, __file__, argv, "PADIFF_RESULT ", child_env(), _TIMEOUT)


#: PaDiff runs that together cover what PaDiff can of parity's scope (one process, imports paid
#: once): ``(label, mode, precision, optimizer, atol, rtol)``. Each bound is the tightest decade a
#: correct port passes in PaDiff's flat ``allclose``; in fp64 the reference gets the same
#: float32-rounded BN constants as in ``parity run`` (``align_bn_constants_to_paddle``).
SUITE = (
    ("train fp32, search SGD, 1 step", "train", "fp32", "sgd", 1e-4, 1e-3),
    ("train fp32, retrain RMSpropTF, 1 step", "train", "fp32", "rmsproptf", 1e-4, 1e-3),
    ("eval fp32, forward", "eval", "fp32", None, 1e-4, 1e-3),
    ("train fp64, search SGD, 1 step", "train", "fp64", "sgd", 1e-9, 1e-6),
    ("eval fp64, forward", "eval", "fp64", None, 1e-12, 1e-9),
)


def _build_pair(args: argparse.Namespace, x: Any, prec: str, mode: str) -> Tuple[Any, ...]:
    """Fresh reference and Paddle models on the benchmark's weights (the fault applied to the
    Paddle one), and the input for each, in ``prec`` and ``mode``: ``(tm, pm, xt, xp)``."""
    import paddle
    import torch

    import cream_paddle
    from cream_torch_ref import create_model

    tm = create_model(args.model, checkpoint=args.ckpt)
    pm = cream_paddle.create_model(args.model, checkpoint=args.pdparams)
    if args.fault:
        from parity.faults import FAULTS

        FAULTS[args.fault].apply(pm)
    xt, xp = torch.tensor(x), paddle.to_tensor(x)
    if prec == "fp64":
        from parity.engine import paddle_at, torch_at

        tm, pm, xt, xp = torch_at(tm, prec), paddle_at(pm, prec), xt.double(), xp.astype("float64")
    if mode == "train":
        tm.train()
        pm.train()
    else:
        tm.eval()
        pm.eval()
    return tm, pm, xt, xp


def _auto_diff_kwargs(tm: Any, pm: Any, y: Any, mode: str, opt: Optional[str], atol: float,
                      rtol: float, steps: int) -> Dict[str, Any]:
    """``auto_diff``'s keyword arguments: its options, and in train mode the label-smoothing loss
    of both frameworks, the optimizers (search SGD or retraining RMSpropTF) and the steps."""
    import paddle
    import torch

    import cream_paddle.losses as PL
    import cream_paddle.optim as PO
    import cream_torch_ref.losses as TL
    import cream_torch_ref.optim as TO

    def tloss(out: Any) -> Any:
        return TL.label_smoothing_cross_entropy(out, torch.tensor(y), 0.1)

    def ploss(out: Any) -> Any:
        return PL.label_smoothing_cross_entropy(out, paddle.to_tensor(y), 0.1)

    kw: Dict[str, Any] = {}
    options: Dict[str, Any] = {"atol": atol, "rtol": rtol, "compare_mode": "strict"}
    if mode == "train":
        kw["loss_fn"] = (ploss, tloss)
        if opt == "sgd":
            kw["optimizer"] = (PO.create_search_optimizer(pm), TO.create_search_optimizer(tm))
        elif opt == "rmsproptf":
            kw["optimizer"] = (PO.create_retrain_optimizer(pm), TO.create_retrain_optimizer(tm))
        kw["steps"] = steps
    else:
        options["diff_phase"] = "forward"
    kw["options"] = options
    return kw


def _auto_diff_once(args: argparse.Namespace, x: Any, y: Any, mode: str, prec: str,
                    opt: Optional[str], atol: float, rtol: float, steps: int) -> Dict[str, Any]:
    """One ``auto_diff`` call on fresh models: its verdict, build and call seconds."""
    from padiff import auto_diff

    t1 = time.perf_counter()
    tm, pm, xt, xp = _build_pair(args, x, prec, mode)
    kw = _auto_diff_kwargs(tm, pm, y, mode, opt, atol, rtol, steps)
    t_build = time.perf_counter() - t1
    t2 = time.perf_counter()
    ok = auto_diff(pm, tm, ({"x": xp}, {"x": xt}), auto_weights=False, **kw)
    return {"ok": bool(ok), "build_s": round(t_build, 2),
            "auto_diff_s": round(time.perf_counter() - t2, 2)}


def _suite(args: argparse.Namespace, x: Any, y: Any) -> Dict[str, Any]:
    """Every configuration of :data:`SUITE` in turn, one step each (an exception: a failed run)."""
    runs = []
    for label, mode, prec, opt, atol, rtol in SUITE:
        try:
            r = _auto_diff_once(args, x, y, mode, prec, opt, atol, rtol, 1)
        except Exception as e:  # noqa: BLE001 - report what PaDiff cannot do
            r = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:120]}"}
        runs.append({"config": label, **r})
    return {"ok": all(r["ok"] for r in runs), "runs": runs}


def _first_in_diff_log(folder: str) -> Optional[str]:
    """Where PaDiff's ``diff_log`` in ``folder`` first names a module of the net (file: module)."""
    log_dir = os.path.join(folder, "diff_log")
    if not os.path.isdir(log_dir):
        return None
    first = None
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name)) as f:
            for ln in f:
                if ln.strip().startswith("ChildNet."):
                    first = first or f"{name[:-4]}: {ln.strip()[len('ChildNet.'):]}"
                    break
    return first


def padiff_worker(args: argparse.Namespace) -> int:
    """In a fresh process: PaDiff's auto_diff on the same weights and input as ``parity run``.

    With ``--suite``, every configuration of :data:`SUITE` in turn, each on fresh model copies.
    """
    import warnings

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    import padiff  # noqa: F401 - patches torch/paddle APIs on import
    import numpy as np
    import paddle  # noqa: F401
    import torch

    t_import = time.perf_counter() - t0
    # the project's modules load here, outside the timed model builds
    import cream_paddle  # noqa: F401
    import cream_paddle.losses  # noqa: F401
    import cream_paddle.optim  # noqa: F401
    import cream_torch_ref.losses  # noqa: F401
    import cream_torch_ref.optim  # noqa: F401
    from cream_core.arch import child_spec, seeded_input
    from cream_torch_ref import create_model  # noqa: F401

    torch.set_num_threads(1)
    x = seeded_input(2, child_spec(args.model).resolution, 0)
    y = np.random.RandomState(0).randint(0, 1000, 2).astype(np.int64)
    if args.suite:
        result = _suite(args, x, y)
    else:
        result = _auto_diff_once(args, x, y, "train", "fp32", "sgd", args.atol, args.rtol,
                                 args.steps)
    result["import_s"] = round(t_import, 2)
    result["first"] = _first_in_diff_log(os.getcwd())
    print("PADIFF_RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip torch's and Paddle's slow teardown, as `parity` itself does


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line (``--padiff-worker`` and the hidden options: a PaDiff worker's)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cream-14")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--no-fault", action="store_true", help="skip the injected-fault comparison")
    p.add_argument("--rounds", type=int, default=3, help="warm runs of each tool (median)")
    p.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    p.add_argument("--padiff-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--pdparams", help=argparse.SUPPRESS)
    p.add_argument("--atol", type=float, default=1e-5, help=argparse.SUPPRESS)
    p.add_argument("--rtol", type=float, default=1e-4, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--fault", help=argparse.SUPPRESS)
    p.add_argument("--suite", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _weights(model: str, work: str) -> Tuple[str, str]:
    """The checkpoint both tools start from (seeded, official format) and its conversion."""
    from converters.convert import convert_checkpoint
    from parity.runner import make_seeded_checkpoint

    ckpt = os.path.join(work, f"{model}.pth.tar")
    make_seeded_checkpoint(model, ckpt, seed=1)
    pdparams = os.path.join(work, f"{model}.pdparams")
    convert_checkpoint(ckpt, pdparams, model=model, force=True)
    return ckpt, pdparams


def _measure_correct(args: argparse.Namespace, work: str, ckpt: str, pdparams: str,
                     results: Dict[str, Any]) -> None:
    """The correct port: ``parity run`` cold, then the warm runs and both PaDiff settings
    round-robin (load from other processes hits all alike), PaDiff 3 steps and the suite."""
    report = os.path.join(work, "report")
    print(f"parity run --model {args.model} (cold: new report folder)", flush=True)
    results["parity_cold"] = _parity(args.model, ckpt, report)
    runs: Dict[str, List[Dict[str, Any]]] = {"parity_warm": [], "padiff_strict": [],
                                             "padiff_loose": []}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: parity run (warm); PaDiff strict at parity's fp32 "
              "bounds, 3 steps; PaDiff 10x looser, 1 step", flush=True)
        runs["parity_warm"].append(_parity(args.model, ckpt, report))
        runs["padiff_strict"].append(_padiff(args.model, ckpt, pdparams, 1e-5, 1e-4, 3, None,
                                             os.path.join(work, f"padiff-a{r}")))
        runs["padiff_loose"].append(_padiff(args.model, ckpt, pdparams, 1e-4, 1e-3, 1, None,
                                            os.path.join(work, f"padiff-b{r}")))
    results.update(runs)
    print("PaDiff 10x looser, 3 steps (each framework steps on its own gradients)", flush=True)
    results["padiff_loose_3steps"] = _padiff(args.model, ckpt, pdparams, 1e-4, 1e-3, 3, None,
                                             os.path.join(work, "padiff-c"))
    print("PaDiff suite: train/eval x fp32/fp64 x both optimizers, one process", flush=True)
    results["padiff_suite"] = _padiff(args.model, ckpt, pdparams, 0, 0, 1, None,
                                      os.path.join(work, "padiff-suite"), suite=True)


def _measure_fault(args: argparse.Namespace, work: str, ckpt: str, pdparams: str,
                   results: Dict[str, Any]) -> None:
    """Both tools on the injected fault (PaDiff in the configurations a correct port passes)."""
    print("injected fault: Paddle's default hard-sigmoid in every SE gate", flush=True)
    results["fault_parity"] = _parity(args.model, ckpt, os.path.join(work, "report-fault"),
                                      fault="hardsigmoid-slope")
    results["fault_padiff"] = _padiff(args.model, ckpt, pdparams, 1e-4, 1e-3, 1,
                                      "hardsigmoid-slope", os.path.join(work, "padiff-f"))
    results["fault_padiff_suite"] = _padiff(args.model, ckpt, pdparams, 0, 0, 1,
                                            "hardsigmoid-slope", os.path.join(work, "padiff-fs"),
                                            suite=True)


def _measure(args: argparse.Namespace, work: str) -> Dict[str, Any]:
    """Every measurement of the benchmark, its files in ``work``."""
    import importlib.metadata as md

    ckpt, pdparams = _weights(args.model, work)
    results: Dict[str, Any] = {"model": args.model, "batch": 2, "rounds": args.rounds,
                               "load_average_at_start": os.getloadavg(),
                               "versions": {k: md.version(k) for k in
                                            ("torch", "paddlepaddle", "timm", "padiff")}}
    _measure_correct(args, work, ckpt, pdparams, results)
    if not args.no_fault:
        _measure_fault(args, work, ckpt, pdparams, results)
    return results


def _summary_rows(results: Dict[str, Any]) -> List[List[Any]]:
    """The correct-port table: each tool's median wall and CPU seconds, verdict, tensors."""
    cold = results["parity_cold"]
    rows = [["parity run (cold, once)", cold["wall_s"], cold["cpu_s"], verdict(cold),
             cold.get("compared", "")]]
    for key, label in (("parity_warm", "parity run (warm)"),
                       ("padiff_strict", "PaDiff strict, atol 1e-5 rtol 1e-4, 3 steps"),
                       ("padiff_loose", "PaDiff strict, atol 1e-4 rtol 1e-3, 1 step")):
        last = results[key][-1]
        rows.append([label, median_of(results[key], "wall_s"), median_of(results[key], "cpu_s"),
                     verdict(last), last.get("compared", "")])
    c3 = results["padiff_loose_3steps"]
    rows.append(["PaDiff strict, atol 1e-4 rtol 1e-3, 3 steps (once)", c3["wall_s"], c3["cpu_s"],
                 verdict(c3), ""])
    su = results["padiff_suite"]
    rows.append([f"PaDiff suite: {len(SUITE)} auto_diff calls, one process (once)", su["wall_s"],
                 su["cpu_s"], verdict(su), ""])
    return rows


def _print_tables(results: Dict[str, Any], rows: List[List[Any]]) -> None:
    """The correct-port table, what each tool checks, the fault (if run) and the PaDiff suite."""
    print()
    print(github_table(rows, ["tool", "wall s (median)", "CPU s (median)", "verdict",
                              "tensors compared"]))
    print()
    print(github_table([[c, "yes" if a else "-", "yes" if b else "-"] for c, a, b in CHECKS],
                       ["check", "parity run", "PaDiff"]))
    if "fault_parity" in results:
        fp, fd, fs = results["fault_parity"], results["fault_padiff"], results["fault_padiff_suite"]
        print()
        print(github_table(
            [["parity run", verdict(fp), fp.get("first")],
             ["PaDiff strict, atol 1e-4 rtol 1e-3, 1 step", verdict(fd), fd.get("first")],
             ["PaDiff suite", verdict(fs), fs.get("first")]],
            ["hard-sigmoid slope 0.1666667 injected", "verdict", "reported where"]))
    if results["padiff_suite"].get("runs"):
        print()
        print(github_table(
            [[r["config"], "PASS" if r["ok"] else "FAIL", r.get("auto_diff_s", ""),
              r.get("error", "")] for r in results["padiff_suite"]["runs"]],
            ["PaDiff suite (correct port)", "verdict", "auto_diff s", "error"]))


def main(argv: Optional[List[str]] = None) -> int:
    """Measure both tools in a work folder, print the tables and write the JSON (exit 2 without
    PaDiff); as a worker, one PaDiff run."""
    args = _parse(argv)
    if args.padiff_worker:
        return padiff_worker(args)
    try:
        import padiff  # noqa: F401
    except ImportError:
        print("parity_bench: padiff is not installed (pip install padiff)", file=sys.stderr)
        return 2
    with work_folder("parity-bench-", args.keep) as work:
        results = _measure(args, work)
    rows = _summary_rows(results)
    results["summary"] = [dict(zip(["tool", "wall_s_median", "cpu_s_median", "verdict",
                                    "tensors_compared"], r)) for r in rows]
    _print_tables(results, rows)
    results["checks"] = [{"check": c, "parity": a, "padiff": b} for c, a, b in CHECKS]
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
