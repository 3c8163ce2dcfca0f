"""Run every benchmark of ``bench/`` in turn with its defaults (``make bench``); not a test.

Each benchmark measures Paddle and PyTorch side by side in one run and prints its own table; this
runs them one after the other (never in parallel: they would slow each other down) and writes each
one's JSON to ``--out`` (default ``out/bench``). The figures quoted in the README come from here.

    python -m bench.run_all [--out DIR] [--only search train ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from bench.common import ROOT, call_to_the_end, sigterm_raises

__all__ = ["BENCHES", "main"]

#: Benchmark name -> script in this folder (every one accepts ``--json PATH``); each runs as a module
#: from the repository root (``python -m bench.NAME``), so ``bench.common`` and this checkout import.
BENCHES = {
    "convert": "convert_bench.py",
    "parity": "parity_bench.py",
    "eval": "eval_bench.py",
    "train": "train_bench.py",
    "search": "search_bench.py",
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the selected benchmarks; exit status 1 if any of them failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("out", "bench"), help="folder for the JSON results")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run just these")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    failed = []
    with sigterm_raises():  # stopped, the running benchmark still removes its temporary files
        for name in args.only or list(BENCHES):
            module = "bench." + os.path.splitext(BENCHES[name])[0]
            dest = os.path.join(args.out, f"{name}.json")
            print(f"== {name}: python -m {module} --json {dest}", flush=True)
            t = time.perf_counter()
            rc = call_to_the_end([sys.executable, "-m", module, "--json", dest], ROOT)
            print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            if rc != 0:
                failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
