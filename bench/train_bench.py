"""Benchmark of one retraining step, Paddle vs torch, side by side (not a test).

For each case (default: cream-14 at 64 px, batch 32; cream-287 at 224 px, batch 16) and each
framework, a fresh worker process (this script with ``--worker``) builds the training setup of
``cream_*.train.Trainer`` (model with dropout 0.2 and drop path, RMSpropTF with the weight-decay
filter, the schedule, label smoothing, EMA, mask injection), runs ``--warmup`` steps, then times
``--steps`` steps of :func:`train_step` (forward, loss, backward, optimizer step, EMA update) on a
fixed batch with fixed masks. Reported: median and best step time, images/s, the process's peak RSS
and how much the steps added to the RSS after the setup. Both frameworks run with the same number of
intra-op threads (``--threads``, default: all cores). Goal (issue 7): Paddle step time <= 1.3x
torch. Prints a table and writes JSON (``--json``).

    python -m bench.train_bench [--cases cream-14:64:32 cream-287:224:16] [--steps 10]
                                [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, Tuple

from bench.common import child_env, peak_rss, rss_now, run_json_worker, write_results

GOAL_RATIO = 1.3
DEFAULT_CASES = ("cream-14:64:32", "cream-287:224:16")


def _worker(framework: str, model: str, px: int, batch: int, warmup: int, steps: int,
            threads: int) -> Dict[str, Any]:
    """Runs in a fresh process: set up the training step, time it, report times and memory."""
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np

    from cream_core.config.retrain import load_retrain_config
    from cream_core.training.masks import step_masks

    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        from cream_torch_ref import train as T
    else:
        import paddle
        paddle.base.core.set_num_threads(threads)
        from cream_paddle import train as T
    cfg = load_retrain_config(model, num_classes=1000, img_size=px, batch_size=batch,
                              drop_path_rate=0.2)
    backend = T.Trainer(cfg, distributed=False)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, px, px)).astype(np.float32)
    labels = rng.integers(0, 1000, batch).astype(np.int64)
    masks = step_masks(backend.mask_spec(), 0, 0, 0, batch)

    def step() -> float:
        t0 = time.perf_counter()
        T.train_step(backend.model, backend.optimizer, backend.loss_fn, images, labels,
                     injector=backend.injector, masks=masks, ema=backend.ema)
        return time.perf_counter() - t0

    rss_setup = rss_now()
    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    return {"framework": framework, "model": model, "px": px, "batch": batch, "threads": threads,
            "median_s": statistics.median(times), "best_s": min(times), "times_s": times,
            "images_per_s": batch / statistics.median(times),
            "peak_rss_mb": peak_rss() / 2**20,
            "added_rss_mb": max(0, peak_rss() - rss_setup) / 2**20}


def _run_worker(framework: str, model: str, px: int, batch: int, warmup: int, steps: int,
                threads: int) -> Dict[str, Any]:
    env = child_env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "bench.train_bench", "--worker", framework, model, str(px),
           str(batch), str(warmup), str(steps), str(threads)]
    return run_json_worker(cmd, f"{framework} {model}", env)


def _cases(specs: List[str]) -> List[Tuple[str, int, int]]:
    out = []
    for s in specs:
        try:
            model, px, batch = s.split(":")
            out.append((model, int(px), int(batch)))
        except ValueError:
            raise SystemExit(f"train_bench: bad case {s!r}; expected MODEL:PX:BATCH") from None
    return out


def main(argv: "List[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="MODEL:PX:BATCH")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="intra-op threads of both frameworks (default: all cores)")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    ap.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        fw, model, px, batch, warmup, steps, threads = a.worker
        print(json.dumps(_worker(fw, model, int(px), int(batch), int(warmup), int(steps),
                                 int(threads))))
        return 0
    from tabulate import tabulate

    rows, results = [], []
    for model, px, batch in _cases(a.cases):
        pair = {}
        for fw in ("torch", "paddle"):
            print(f"... {fw} {model} {px}px batch {batch}", file=sys.stderr, flush=True)
            pair[fw] = _run_worker(fw, model, px, batch, a.warmup, a.steps, a.threads)
        ratio = pair["paddle"]["median_s"] / pair["torch"]["median_s"]
        mem = pair["paddle"]["peak_rss_mb"] / pair["torch"]["peak_rss_mb"]
        for fw in ("torch", "paddle"):
            r = pair[fw]
            rows.append([f"{model} {px}px b{batch}", fw, f"{1000 * r['median_s']:.0f}",
                         f"{1000 * r['best_s']:.0f}", f"{r['images_per_s']:.1f}",
                         f"{r['peak_rss_mb']:.0f}", f"{r['added_rss_mb']:.0f}",
                         f"{ratio:.2f}x" if fw == "paddle" else "",
                         f"{mem:.2f}x" if fw == "paddle" else ""])
        results.append({"case": f"{model}:{px}:{batch}", "torch": pair["torch"],
                        "paddle": pair["paddle"], "time_ratio": ratio, "peak_rss_ratio": mem,
                        "goal_met": ratio <= GOAL_RATIO})
    print(tabulate(rows, headers=["case", "framework", "step ms (median)", "best ms", "img/s",
                                  "peak RSS MB", "added by steps MB", "paddle/torch time",
                                  "paddle/torch RSS"], tablefmt="simple"))
    met = all(r["goal_met"] for r in results)
    print(f"goal: Paddle step time <= {GOAL_RATIO}x torch: {'met' if met else 'NOT met'} "
          f"({a.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f})")
    write_results(a.json, {"results": results, "threads": a.threads, "steps": a.steps,
                           "warmup": a.warmup, "loadavg": os.getloadavg(),
                           "python": platform.python_version()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
