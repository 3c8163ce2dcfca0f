"""Benchmark of one Cream search iteration, Paddle vs PyTorch, side by side, in one run (not a test).

Both frameworks build the same supernet (``--flops-max``, default the official 600 MFLOPs: 4 blocks
per searchable stage, 6 candidates each), load the same seeded weights, get the same batch, board
entry and path, and run with the same thread count:

* a **meta iteration**: the second-order meta-matching update followed by the distillation step
  (what every ``UPDATE_ITER``-th iteration does), and
* a **plain iteration**: the distillation step alone (the other iterations).

Each framework runs in its own fresh worker process (this script with ``--worker``): one warm-up
iteration (first-call costs), then ``--repeats`` timed ones of each kind, of which the median is
reported; peak memory is the worker's peak RSS growth over
the process after the model is built. Goal (issue 5): Paddle <= 1.5x torch. Prints a table and
writes JSON (``--json``).

    python -m bench.search_bench [--flops-max 600] [--batch 8] [--resolution 128] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

from bench.common import ROOT, save_json

GOAL_RATIO = 1.5
PATH = [[0], [3, 1, 5, 2], [2, 3, 0, 4], [1, 5, 3, 2], [3, 3, 1, 0], [4, 2, 5, 1], [0]]
TEACHER = [[0], [3, 3, 5, 1], [2, 0, 0, 4], [1, 5, 1, 2], [3, 0, 1, 0], [4, 2, 3, 1], [0]]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(args: argparse.Namespace) -> Dict[str, Any]:
    """Time one meta and one plain iteration in ``args.framework`` (called in a fresh process)."""
    import numpy as np

    from cream_core.search.board import PrioritizedBoard
    from cream_core.config.search import SearchConfig
    from cream_core.arch.supernet import search_for_layer, plan_supernet, validate_cand
    from cream_core.arch.seeded import seeded_input, seeded_state

    found = search_for_layer(0, args.flops_max)
    plan = plan_supernet(found.sta_num)
    path = [s[:n] for s, n in zip(PATH, [1, *found.sta_num, 1])]
    teacher = [s[:n] for s, n in zip(TEACHER, [1, *found.sta_num, 1])]
    validate_cand(path, plan)
    cfg = SearchConfig(num_classes=args.num_classes, meta_sta_epoch=0, update_iter=1,
                       batch_size=args.batch)
    x = seeded_input(args.batch, args.resolution, 1)
    y = np.random.RandomState(2).randint(0, args.num_classes, args.batch).astype(np.int64)
    bx = seeded_input(cfg.slice, args.resolution, 3)
    feat = np.full((cfg.slice, args.num_classes), 1.0 / args.num_classes, np.float32)
    if args.framework == "torch":
        import torch

        from cream_torch_ref import search as S
        from cream_torch_ref.supernet import SuperNet

        torch.set_num_threads(args.threads)
        model = SuperNet(plan, num_classes=args.num_classes)
        ks = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        init = {k: torch.from_numpy(np.asarray(v).astype(np.int64 if "num_batches" in k else np.float32))
                for k, v in seeded_state(ks, 1).items()}
        model.load_state_dict(init)
        tensor = torch.from_numpy
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        import paddle

        from cream_core.rules import apply_rules, paddle_layout
        from cream_paddle import search as S
        from cream_paddle.supernet import SuperNet

        paddle.set_device("cpu")
        core = getattr(getattr(paddle, "base", None), "core", None)
        if core is not None and hasattr(core, "set_num_threads"):
            core.set_num_threads(args.threads)
        model = SuperNet(plan, num_classes=args.num_classes)
        ks = []
        from cream_torch_ref.supernet import SuperNet as TS  # keys/shapes in torch layout
        with __import__("torch").device("meta"):
            ks = [(k, tuple(v.shape)) for k, v in TS(plan, num_classes=args.num_classes).state_dict().items()]
        init = {k: np.asarray(v).astype(np.int64 if "num_batches" in k else np.float32)
                for k, v in seeded_state(ks, 1).items()}
        model.set_state_dict(apply_rules(init, paddle_layout(model), to="paddle").state_dict)
        tensor = paddle.to_tensor
    model.train()
    opt = S.LegacySGD(model, cfg.lr, cfg.meta_lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    loss_fn = S.make_loss_fn(cfg.smoothing)
    base_rss = _rss_mb()

    def iteration(batch_idx: int) -> float:
        board = PrioritizedBoard(plan.sta_num, meta_sta_epoch=0)
        board.add(50.0, 100.0, teacher, tensor(bx), tensor(feat))
        t = time.perf_counter()
        out = S.search_step(model, opt, board, tensor(x), tensor(y), path, 1, batch_idx, cfg, loss_fn,
                            update_board=False)
        seconds = time.perf_counter() - t
        assert out.meta_ran == (batch_idx > 0)
        return seconds

    iteration(1)  # warm-up (meta)
    metas = [iteration(1) for _ in range(args.repeats)]
    plains = [iteration(0) for _ in range(args.repeats)]
    return {"framework": args.framework, "meta_s": float(np.median(metas)),
            "plain_s": float(np.median(plains)), "meta_all_s": metas, "plain_all_s": plains,
            "peak_rss_mb": _rss_mb(), "added_rss_mb": _rss_mb() - base_rss,
            "sta_num": list(found.sta_num), "params": int(sum(np.prod(s) for _, s in ks))}


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flops-max", type=float, default=600.0, help="supernet budget (default 600)")
    p.add_argument("--batch", type=int, default=8, help="images per iteration (default 8, >= 8)")
    p.add_argument("--resolution", type=int, default=128, help="input size (default 128)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="threads per framework (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed iterations of each kind per framework; the median is reported (default 3)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--worker", choices=("torch", "paddle"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.batch < 8:
        p.error("--batch must be at least 8 (the meta step uses two slices of 4)")
    if args.worker:
        args.framework = args.worker
        print(json.dumps(_worker(args)))
        return 0
    results = {}
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(args.threads)}
    for fw in ("torch", "paddle"):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, "--flops-max", str(args.flops_max),
               "--batch", str(args.batch), "--resolution", str(args.resolution), "--num-classes",
               str(args.num_classes), "--threads", str(args.threads), "--repeats", str(args.repeats)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        results[fw] = json.loads(r.stdout.strip().splitlines()[-1])
    from tabulate import tabulate

    t, pd = results["torch"], results["paddle"]
    rows = [[fw, f"{r['meta_s']:.2f}", f"{r['plain_s']:.2f}", f"{r['added_rss_mb']:.0f}",
             f"{r['peak_rss_mb']:.0f}"] for fw, r in results.items()]
    rows.append(["paddle / torch", f"{pd['meta_s'] / t['meta_s']:.2f}x",
                 f"{pd['plain_s'] / t['plain_s']:.2f}x",
                 f"{pd['added_rss_mb'] / max(t['added_rss_mb'], 1e-9):.2f}x",
                 f"{pd['peak_rss_mb'] / t['peak_rss_mb']:.2f}x"])
    print(f"supernet: stage depths {t['sta_num']}, {t['params']} state values; batch {args.batch} at "
          f"{args.resolution} px, {args.num_classes} classes, {args.threads} thread(s); "
          f"{platform.processor() or platform.machine()}")
    print(tabulate(rows, headers=["", "meta iteration s (median)", "plain iteration s (median)", "step RSS growth MB",
                                  "peak RSS MB"], tablefmt="simple_outline"))
    ratio = pd["meta_s"] / t["meta_s"]
    print(f"goal Paddle <= {GOAL_RATIO}x torch on the meta iteration: "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT met'} ({ratio:.2f}x)")
    if args.json:
        save_json(args.json, {"settings": vars(args), "results": results, "goal_ratio": GOAL_RATIO})
    return 0


if __name__ == "__main__":
    sys.exit(main())
