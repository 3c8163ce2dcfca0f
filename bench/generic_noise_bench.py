"""False-alarm rate and cost of the generic engine's fp32 noise model (not a test; issue 12 item 4).

For each correct torchvision/paddle.vision pair (default: resnet18 and mobilenet_v2; also
mobilenet_v3_large, with its gates corrected by ``exact_hardsigmoid``) and each seed,
the torch model gets other seeded weights (BatchNorm statistics calibrated on the bundled photos)
and other seeded inputs; the pair is compared with :func:`parity.generic.compare` (fp64 + fp32,
``--members`` perturbed torch fp32 runs) and the verdict recorded. A FAIL is a false alarm (the
ports are equivalent). Also reported: the largest error/noise ratio of a correct port over all fp32
tensors (the margin below ``NOISE_FACTOR``), the kink crossings seen, how many gradients the kink
twin accepted, and the cost: wall time of the noise measurement next to the whole run, measured
in the same run.

    OMP_NUM_THREADS=1 python -m bench.generic_noise_bench [--pairs resnet18 mobilenet_v2]
        [--seeds 5] [--shape 2,3,64,64] [--members 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any, Dict, List

import numpy as np

from bench.common import save_json


def reseeded(pair: Any, seed: int, shape: List[int]) -> Any:
    """The pair with other seeded torch weights (calibrated BN) copied into Paddle, other inputs."""
    import copy

    import paddle
    import torch

    from converters import weights as W
    from converters.matching import torch_to_paddle_state

    tm = copy.deepcopy(pair.torch_model)
    pm = copy.deepcopy(pair.paddle_model)
    W.seed_and_calibrate(tm, seed, W.bundled_photos(shape[2], shape[3]))
    state = torch_to_paddle_state({k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()},
                                  pair.matching, pm)
    pm.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    x = np.random.RandomState(1000 + seed).standard_normal(shape).astype(np.float32)
    torch.manual_seed(seed)
    return tm, pm, x


def run_one(pair: Any, name: str, seed: int, shape: List[int], members: int) -> Dict[str, Any]:
    from parity.generic import compare

    tm, pm, x = reseeded(pair, seed, shape)
    t0 = time.perf_counter()
    fix = None
    if name == "mobilenet_v3_large":  # paddle.vision's gate slope corrected: an equivalent port
        from parity.generic_faults import exact_hardsigmoid as fix
    r = compare(tm, pm, x, matching=pair.matching, label=name, noise_members=members,
                mutate_paddle=fix)
    total = time.perf_counter() - t0
    fp32 = [c for c in r.comparisons if c.stage.endswith("fp32")]
    ratios = [c.noise_ratio for c in fp32 if math.isfinite(c.noise_ratio)]
    worst = max(fp32, key=lambda c: c.noise_ratio if math.isfinite(c.noise_ratio) else -1)
    noise = r.info.get("noise", {})
    return {"pair": name, "seed": seed, "ok": r.ok, "failed": sum(not c.ok for c in r.comparisons),
            "first": r.first_divergence, "fp32_compared": len(fp32),
            "max_ratio": max(ratios, default=0.0), "worst": f"{worst.stage} {worst.name}",
            "crossings": noise.get("crossings", []),
            "accepted_by_kink_twin": noise.get("accepted_by_kink_twin", 0),
            "noise_s": noise.get("seconds"), "fp32_s": r.timings.get("fp32"),
            "fp64_s": r.timings.get("fp64"), "total_s": round(total, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--shape", default="2,3,64,64")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from parity.generic_cli import build_pair
    from parity.generic_noise import GENERIC_NOISE_MEMBERS

    members = GENERIC_NOISE_MEMBERS if args.members is None else args.members
    shape = [int(v) for v in args.shape.split(",")]
    rows: List[Dict[str, Any]] = []
    for name in args.pairs:
        pair = build_pair(f"torchvision.models:{name}", f"paddle.vision.models:{name}",
                          tuple(shape))
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            row = run_one(pair, name, seed, shape, members)
            rows.append(row)
            print(f"{name} seed {seed}: {'PASS' if row['ok'] else 'FAIL'} failed {row['failed']}"
                  f" max error/noise {row['max_ratio']:.3g} ({row['worst']}), crossings "
                  f"{len(row['crossings'])}, twin accepted {row['accepted_by_kink_twin']}; "
                  f"noise {row['noise_s']} s of fp32 {row['fp32_s']} s (fp64 {row['fp64_s']} s, "
                  f"total {row['total_s']} s)", flush=True)
            if args.json:
                save_json(args.json, {"members": members, "shape": shape, "runs": rows})
    alarms = sum(not r["ok"] for r in rows)
    print(f"\nfalse alarms: {alarms} of {len(rows)} runs (members {members}, shape {shape}); "
          f"largest error/noise of a correct port: {max(r['max_ratio'] for r in rows):.3g}; "
          f"noise measurement {sum(r['noise_s'] for r in rows):.1f} s of "
          f"{sum(r['total_s'] for r in rows):.1f} s total")
    return 0 if alarms == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
