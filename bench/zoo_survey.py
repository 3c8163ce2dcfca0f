"""Survey: the generic parity engine on every paddle.vision.models constructor with a torchvision twin.

Each pair runs in a fresh process (a crash or a large model cannot affect the next one) exactly as
``parity run --torch torchvision.models:NAME --paddle paddle.vision.models:NAME --input-shape
SHAPE`` does (seeded weights, BN statistics calibrated on the bundled photos, fp64 then fp32),
and the survey writes a table: pair, how the trees were matched, verdict, the first divergence on
both sides and the reason. Not a test: it takes a while (run it in the background).

    OMP_NUM_THREADS=1 python -m bench.zoo_survey [--shape 2,3,64,64] [--out out/zoo] [NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional

__all__ = ["twin_names", "survey_one", "main", "MIN_SIDE", "TORCH_KWARGS"]

#: Models that need a larger input than the survey's default: torchvision's Inception v3 needs at
#: least 75 px; paddle.vision's AlexNet has no adaptive pooling before its classifier, so only
#: 224 px gives the 256 x 6 x 6 features its first Linear expects.
MIN_SIDE: Dict[str, int] = {"inception_v3": 96, "alexnet": 224, "googlenet": 224}

#: Pairs whose torchvision default differs in *structure* from paddle.vision's: the survey builds
#: the torch twin with these constructor arguments instead (and says so in the table).
#: torchvision's Inception v3 has an auxiliary classifier by default, paddle.vision's has none.
TORCH_KWARGS: Dict[str, Dict[str, Any]] = {"inception_v3": {"aux_logits": False,
                                                            "init_weights": False}}


def twin_names() -> List[str]:
    """Constructors present in both ``paddle.vision.models`` and ``torchvision.models``."""
    import paddle.vision.models as pm
    import torchvision.models as tm

    return sorted(n for n in dir(pm) if not n.startswith("_") and n[0].islower()
                  and callable(getattr(pm, n)) and callable(getattr(tm, n, None)))


def _how(matching: Any) -> str:
    counts = Counter(lm.how for lm in matching.layers)
    return ", ".join(f"{k} {v}" for k, v in counts.most_common())


def survey_one(name: str, shape: List[int]) -> Dict[str, Any]:
    """One pair, in this process: the row of the table as a dict."""
    from parity.generic import compare
    from parity.generic_cli import build_pair

    side = max(shape[2], MIN_SIDE.get(name, 0))
    shape = [shape[0], shape[1], side, side]
    row: Dict[str, Any] = {"pair": name, "input": shape}
    t0 = time.perf_counter()
    if name in TORCH_KWARGS:
        row["torch_kwargs"] = TORCH_KWARGS[name]
    try:  # as `parity run --torch torchvision.models:NAME --torch-kwargs JSON --paddle ...`
        pair = build_pair(f"torchvision.models:{name}", f"paddle.vision.models:{name}",
                          tuple(shape), torch_kwargs=TORCH_KWARGS.get(name))
    except ValueError as e:  # PairError, or a constructor that cannot be built: one line
        row.update(verdict="NOT MATCHED", reason=str(e), seconds=round(time.perf_counter() - t0, 1))
        return row
    m = pair.matching
    row["matched"] = f"{len(m.layers)} layers ({_how(m)})"
    row["unmatched_param_free"] = [len(m.unmatched_torch), len(m.unmatched_paddle)]
    r = compare(pair.torch_model, pair.paddle_model, pair.inputs, matching=m, label=name)
    fd = r.first_divergence
    row.update(verdict="PASS" if r.ok else "FAIL", compared=len(r.comparisons),
               failed=sum(not c.ok for c in r.comparisons),
               config_diffs=[d.as_dict() for d in r.config_diffs], notes=r.notes,
               seconds=round(time.perf_counter() - t0, 1))
    if fd is not None:
        row.update(torch_module=fd["module"], paddle_module=fd["paddle_module"],
                   stage=fd.get("stage"), reason=fd["reason"], max_rel=fd.get("max_rel"))
    return row


def _markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| pair | input | matched | verdict | first divergence (torch / paddle) | reason |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        where = f"`{r['torch_module']}` / `{r['paddle_module']}` ({r.get('stage')})" \
            if r.get("torch_module") else "-"
        reason = r.get("reason", "") or ("; ".join(r.get("notes", [])) or "")
        shape = "x".join(str(v) for v in r.get("input", []))
        pair = r["pair"] + (f" (torch {r['torch_kwargs']})" if r.get("torch_kwargs") else "")
        lines.append(f"| {pair} | {shape} | {r.get('matched', '-')} | {r['verdict']} | "
                     f"{where} | {reason[:300]} |")
    return "\n".join(lines)


def _child(name: str, shape: List[int], timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", name, "--shape", ",".join(map(str, shape))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"pair": name, "verdict": "TIMEOUT", "reason": f"no result in {timeout:.0f} s"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"pair": name, "verdict": "ERROR", "reason": f"exit {out.returncode}: {tail[:300]}"}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="pairs to run (default: every twin)")
    ap.add_argument("--shape", default="2,3,64,64", help="input N,C,H,W (default 2,3,64,64)")
    ap.add_argument("--out", default=os.path.join("out", "zoo"), help="folder for the results")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per pair")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one pair, JSON on stdout
    args = ap.parse_args(argv)
    shape = [int(v) for v in args.shape.split(",")]
    if args.one:
        print(json.dumps(survey_one(args.one, shape), default=str))
        sys.stdout.flush()
        os._exit(0)  # skip the frameworks' slow teardown
    from cream_core.io.atomic import atomic_write

    names = args.names or twin_names()
    rows: List[Dict[str, Any]] = []
    os.makedirs(args.out, exist_ok=True)
    for name in names:
        row = _child(name, shape, args.timeout)
        rows.append(row)
        print(f"{name}: {row['verdict']} {row.get('torch_module', '')} "
              f"{row.get('reason', '')[:160]} ({row.get('seconds', '?')} s)", flush=True)
        atomic_write(os.path.join(args.out, "zoo_survey.json"),
                     lambda f: json.dump(rows, f, indent=1, default=str), mode="w")
    table = _markdown(rows)
    atomic_write(os.path.join(args.out, "zoo_survey.md"), lambda f: f.write(table + "\n"), mode="w")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
