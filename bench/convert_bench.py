"""Benchmark of ``convert-ckpt`` against x2paddle, in one run (not a test).

For cream-14 and cream-604 (seeded official checkpoints, legacy format, raw + EMA):

* **in-process** time of :func:`converters.convert_checkpoint` (imports done, first and best of
  ``--repeat`` runs) and the peak RSS it adds over the process after its imports;
* the same for x2paddle (:func:`converters.x2paddle_engine.convert_with_x2paddle`: checkpoint ->
  reference model -> ``pytorch2paddle`` trace -> inference model);
* **CLI** wall time of ``python -m converters.cli SRC -o DST --force`` next to the bare
  ``python -c "import torch, paddle"`` time (runs alternate; the minimum of ``--repeat`` is
  compared, the least disturbed by other load), and the CLI's peak RSS.

Each measurement runs in a fresh worker process (this script with ``--worker``), so peak RSS is
that process's own. Goals (issue 3): in-process conversion >= 5x faster than x2paddle; CLI wall
<= 1.3x the bare import; peak RSS added by the conversion < 3x the checkpoint size. Prints a
table and writes JSON (``--json``).

    python -m bench.convert_bench [--models cream-14 cream-604] [--repeat 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

from bench.common import (ROOT, peak_rss, reset_peak_rss, rss_now, run_json_worker, work_folder,
                          write_results)

GOAL_SPEEDUP = 5.0
GOAL_CLI_RATIO = 1.3
GOAL_RSS_RATIO = 3.0
#: Bytes -> MiB in the printed table.
_MIB = 1 / 2**20


def _worker(kind: str, src: str, out: str, repeat: int) -> Dict[str, Any]:
    """Run in a fresh process: import, convert ``repeat`` times, report times and RSS."""
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import paddle  # noqa: F401
    import torch  # noqa: F401

    import cream_paddle  # noqa: F401
    import cream_torch_ref.checkpoint  # noqa: F401
    from converters import convert_checkpoint
    from converters.x2paddle_engine import convert_with_x2paddle
    if kind == "x2paddle":
        import cream_torch_ref.childnet  # noqa: F401  (timm)
        import x2paddle.convert  # noqa: F401
    imports = time.perf_counter() - t0
    base = rss_now()
    reset = reset_peak_rss()
    times: List[float] = []
    peak_after_first = 0
    for i in range(repeat):
        t = time.perf_counter()
        if kind == "native":
            convert_checkpoint(src, out, force=True)
        else:
            convert_with_x2paddle(src, out, force=True)
        times.append(time.perf_counter() - t)
        if i == 0:
            peak_after_first = peak_rss()
    return {"imports_s": imports, "times_s": times, "rss_base": base, "peak_reset": reset,
            "rss_peak_first": peak_after_first, "rss_added_first": peak_after_first - base}


def _timed_peak(args: List[str], cwd: str) -> Tuple[float, int, str, int]:
    """Wall time and the child's own peak RSS via os.wait4 (the child is killed if this is
    interrupted, so that it writes nothing into a folder being removed)."""
    t = time.perf_counter()
    with subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as p:
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            raise
        wall = time.perf_counter() - t
        err = p.stderr.read().decode("utf-8", "replace") if p.stderr else ""
        p.returncode = os.waitstatus_to_exitcode(status)
    peak = ru.ru_maxrss if sys.platform == "darwin" else ru.ru_maxrss * 1024
    return wall, peak, err, p.returncode


def _run_worker(kind: str, src: str, out: str, repeat: int) -> Dict[str, Any]:
    # "-m" from the repository root: the worker imports this checkout whatever is installed
    return run_json_worker([sys.executable, "-m", "bench.convert_bench", "--worker", kind, src,
                            out, str(repeat)], kind)


def _parse(argv: "List[str] | None") -> argparse.Namespace:
    """The command line (``--worker``: this process is a measuring worker)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cream-14", "cream-604"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    ap.add_argument("--worker", nargs=4, metavar=("KIND", "SRC", "OUT", "REPEAT"),
                    help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _measure_models(models: List[str], repeat: int, tmp: str, bar: Any
                    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Per model: a seeded checkpoint in ``tmp``, then the native and the x2paddle worker on it.
    Returns the per-model results and the checkpoints' paths."""
    from cream_torch_ref.models import seeded_official_checkpoint

    out: Dict[str, Any] = {}
    srcs: Dict[str, str] = {}
    for m in models:
        src = srcs[m] = os.path.join(tmp, f"{m}.pth.tar")
        bar.set_postfix_str(f"{m} checkpoint")
        seeded_official_checkpoint(m, src)
        bar.update()
        bar.set_postfix_str(f"{m} native")
        native = _run_worker("native", src, os.path.join(tmp, f"{m}.pdparams"), repeat)
        bar.update()
        bar.set_postfix_str(f"{m} x2paddle")
        x2p = _run_worker("x2paddle", src, os.path.join(tmp, f"{m}.x2paddle"), repeat)
        bar.update()
        out[m] = {"checkpoint_bytes": os.path.getsize(src), "native": native, "x2paddle": x2p,
                  "cli": {"walls_s": [], "peak_rss": 0}}
    return out, srcs


def _measure_cli(results: Dict[str, Any], models: List[str], srcs: Dict[str, str], repeat: int,
                 tmp: str, bar: Any) -> None:
    """``repeat`` rounds of the bare ``import torch, paddle`` and each model's CLI conversion into
    ``results`` (``bare_import``, each model's ``cli``): they alternate, so that a change in
    machine load hits both alike."""
    bare: List[float] = []
    bare_peak = 0
    for i in range(repeat):
        bar.set_postfix_str(f"bare import + CLI, round {i + 1}")
        wall, peak, err, rc = _timed_peak([sys.executable, "-W", "ignore", "-c",
                                           "import torch, paddle"], ROOT)
        bare.append(wall)
        bare_peak = max(bare_peak, peak)
        for m in models:
            wall, peak, err, rc = _timed_peak(
                [sys.executable, "-m", "converters.cli", srcs[m], "-o",
                 os.path.join(tmp, f"{m}.cli.pdparams"), "--force"], ROOT)
            if rc != 0:
                raise RuntimeError(f"CLI failed: {err.strip()}")
            cli = results["models"][m]["cli"]
            cli["walls_s"].append(wall)
            cli["peak_rss"] = max(cli["peak_rss"], peak)
        bar.update()
    results["bare_import"] = {"walls_s": bare, "min_s": min(bare),
                              "median_s": statistics.median(bare), "peak_rss": bare_peak}
    for r in results["models"].values():
        r["cli"]["min_s"] = min(r["cli"]["walls_s"])
        r["cli"]["median_s"] = statistics.median(r["cli"]["walls_s"])


def _measure(models: List[str], repeat: int) -> Dict[str, Any]:
    """Every measurement, in a temporary folder removed at the end (also on an error or Ctrl-C)."""
    from tqdm import tqdm

    steps = [f"{m}: {s}" for m in models for s in ("checkpoint", "native", "x2paddle")] + \
        [f"bare import + CLI, round {i + 1}" for i in range(repeat)]
    results: Dict[str, Any] = {"machine": {"python": platform.python_version(),
                                           "platform": platform.platform(),
                                           "cpus": os.cpu_count(),
                                           "loadavg_start": os.getloadavg()},
                               "repeat": repeat}
    with work_folder("cream-convert-bench-") as tmp, \
            tqdm(total=len(steps), desc="convert bench", unit="step") as bar:
        results["models"], srcs = _measure_models(models, repeat, tmp, bar)
        _measure_cli(results, models, srcs, repeat, tmp, bar)
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def _summarize(name: str, r: Dict[str, Any], bare_s: float) -> List[str]:
    """Set ``r["summary"]`` (best times, ratios, goals met) and return the model's table row."""
    nat, x2 = min(r["native"]["times_s"]), min(r["x2paddle"]["times_s"])
    speedup = x2 / nat
    cli_ratio = r["cli"]["min_s"] / bare_s
    added = r["native"]["rss_added_first"]
    rss_ratio = added / r["checkpoint_bytes"]
    r["summary"] = {"native_best_s": nat, "native_first_s": r["native"]["times_s"][0],
                    "x2paddle_best_s": x2, "speedup": speedup, "cli_over_bare": cli_ratio,
                    "rss_added_over_checkpoint": rss_ratio,
                    "goals_met": {"speedup": speedup >= GOAL_SPEEDUP,
                                  "cli": cli_ratio <= GOAL_CLI_RATIO,
                                  "rss": rss_ratio < GOAL_RSS_RATIO}}
    return [name, f"{r['checkpoint_bytes'] * _MIB:.1f}",
            f"{r['native']['times_s'][0]:.3f} / {nat:.3f}",
            f"{r['x2paddle']['times_s'][0]:.2f} / {x2:.2f}",
            f"{speedup:.0f}x {'ok' if speedup >= GOAL_SPEEDUP else 'MISSED'}",
            f"{r['cli']['min_s']:.2f} ({cli_ratio:.2f}x "
            f"{'ok' if cli_ratio <= GOAL_CLI_RATIO else 'MISSED'})",
            f"{added * _MIB:.0f} ({rss_ratio:.2f}x "
            f"{'ok' if rss_ratio < GOAL_RSS_RATIO else 'MISSED'})",
            f"{r['cli']['peak_rss'] * _MIB:.0f}",
            f"{r['x2paddle']['rss_added_first'] * _MIB:.0f}"]


def _print(results: Dict[str, Any], rows: List[List[str]]) -> None:
    """The bare import's line and the table, one row per model."""
    from tabulate import tabulate

    bare = results["bare_import"]
    print(f"bare `python -c \"import torch, paddle\"`: {bare['min_s']:.2f} s (min of "
          f"{results['repeat']}; median {bare['median_s']:.2f} s), "
          f"peak RSS {bare['peak_rss'] * _MIB:.0f} MiB; "
          f"load average {results['machine']['loadavg_start'][0]:.1f} -> "
          f"{results['machine']['loadavg_end'][0]:.1f} on {os.cpu_count()} CPUs")
    print(tabulate(rows, headers=["model", "ckpt MiB", "native s (first/best)",
                                  "x2paddle s (first/best)", f"speedup (goal {GOAL_SPEEDUP:g}x)",
                                  f"CLI wall s, min (goal <= {GOAL_CLI_RATIO}x bare)",
                                  f"RSS added MiB (goal < {GOAL_RSS_RATIO:g}x ckpt)",
                                  "CLI peak RSS MiB", "x2paddle RSS added MiB"]))


def main(argv: "List[str] | None" = None) -> int:
    """Measure, summarize, print the table and write the JSON (or, as a worker, measure one)."""
    a = _parse(argv)
    if a.worker:
        kind, src, out, rep = a.worker
        print(json.dumps(_worker(kind, src, out, int(rep))))
        return 0
    results = _measure(a.models, a.repeat)
    bare_s = results["bare_import"]["min_s"]  # minimum: the least load-disturbed estimate
    rows = [_summarize(m, r, bare_s) for m, r in results["models"].items()]
    _print(results, rows)
    write_results(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
