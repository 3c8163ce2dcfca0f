"""What the benchmarks share: timed child processes, memory readings, tables and the JSON result.

Every benchmark runs its measurements in fresh processes (so imports, peak RSS and module-wide
patches are each run's own) and reports a table and a JSON file; these helpers do that the same way
in each. Run the benchmarks as modules from the repository root (``python -m bench.NAME``), as
``bench/run_all.py`` does, so that this module and the checkout are importable.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from types import FrameType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from cream_core.io.atomic import atomic_write_text

__all__ = ["ROOT", "child_env", "run_timed", "run_json_worker", "run_script_in", "rss_now",
           "reset_peak_rss", "peak_rss", "github_table", "verdict", "median_of", "save_json",
           "write_results",
           "sigterm_raises", "work_folder", "STOP_GRACE_S", "call_to_the_end"]

#: The repository root: the working folder of every child process.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Longest a stopped benchmark may take to end (its workers stop, its work folder is removed: a
#: few seconds) before it is killed.
STOP_GRACE_S = 60


def child_env(**extra: str) -> Dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH`` and ``extra`` set, so a
    child imports this checkout whatever is installed."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_timed(cmd: Sequence[str], cwd: str, env: Optional[Mapping[str, str]] = None,
              timeout: int = 1800) -> Dict[str, Any]:
    """Run a process: wall seconds and the CPU seconds it (and its children) used, its exit status
    and output (keys ``wall_s``, ``cpu_s``, ``exit``, ``stdout``, ``stderr``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "exit": proc.returncode,
            "stdout": proc.stdout, "stderr": proc.stderr}


def run_json_worker(cmd: Sequence[str], what: str, env: Optional[Mapping[str, str]] = None
                    ) -> Dict[str, Any]:
    """Run a worker process from the repository root; its last stdout line is its JSON result.
    A failed worker raises ``RuntimeError`` naming ``what`` with the end of its stderr."""
    p = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{what} worker failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_script_in(folder: str, script: str, argv: Sequence[str], marker: str,
                  env: Optional[Mapping[str, str]] = None, timeout: int = 1800) -> Dict[str, Any]:
    """Run ``script`` as ``__main__`` with ``argv`` in a fresh process started in ``folder``, with
    ``sys.path[0]`` = ``folder`` (PaDiff writes its log there): ``wall_s``, ``cpu_s``, ``exit`` and
    the JSON object the script printed after ``marker`` on its last such line, else ``error`` (the
    end of its output)."""
    os.makedirs(folder, exist_ok=True)
    code = ("import runpy, sys; sys.argv = [%r] + %r; runpy.run_path(%r, run_name='__main__')"
            % (script, list(argv), os.path.abspath(script)))
    r = run_timed([sys.executable, "-c", code], folder, env, timeout)
    out = {k: r[k] for k in ("wall_s", "cpu_s", "exit")}
    lines = [ln for ln in r["stdout"].splitlines() if ln.startswith(marker)]
    if lines:
        out.update(json.loads(lines[-1][len(marker):]))
    else:
        out["error"] = (r["stderr"] or r["stdout"]).strip().splitlines()[-3:]
    return out


def rss_now() -> int:
    """Resident set size of this process in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: VmHWM), so that import-time transients, which
    exceed the RSS after the imports, do not count as the measured work's memory."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak RSS of this process in bytes since the last reset (VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def github_table(rows: List[List[Any]], headers: List[str]) -> str:
    """``rows`` as a GitHub-markdown table."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github")


def verdict(run: Mapping[str, Any]) -> str:
    """PASS/FAIL of a tool's run (its ``ok``), or the error that kept it from giving one."""
    if "ok" not in run:
        return f"error: {str(run.get('error'))[:80]}"
    return "PASS" if run["ok"] else "FAIL"


def median_of(runs: Sequence[Mapping[str, Any]], field: str) -> float:
    """The median of ``field`` over ``runs``, rounded to 0.1 (as the tables show seconds)."""
    return round(statistics.median(r[field] for r in runs), 1)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` as Ctrl-C raises ``KeyboardInterrupt``,
    so the clean-ups of ``with``/``finally`` run when a run is stopped (``kill``, a CI timeout); the
    previous handler comes back after. Outside the main thread (no handler can be set) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Optional[FrameType]) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def work_folder(prefix: str, keep: Optional[str] = None) -> Iterator[str]:
    """The folder a benchmark writes its checkpoints and reports to: ``keep`` (created if missing,
    left in place), else a new temporary folder named ``prefix...`` that is removed when the block
    ends, also on an error, Ctrl-C or SIGTERM (a benchmark's folder holds 60-100 MB)."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        yield keep
        return
    with sigterm_raises(), tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield tmp


def call_to_the_end(cmd: Sequence[str], cwd: str, grace_s: float = STOP_GRACE_S) -> int:
    """Run ``cmd`` (a benchmark) and return its exit status. If this process is stopped meanwhile,
    the child is stopped and waited for, not killed, so that its clean-ups run (subprocess.call
    would kill it 0.25 s after a Ctrl-C): a Ctrl-C reached it too (same process group); anything
    else (SIGTERM under :func:`sigterm_raises`) is passed on as SIGTERM."""
    with subprocess.Popen(list(cmd), cwd=cwd) as p:
        try:
            return p.wait()
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):
                p.terminate()
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
            raise


def save_json(path: str, results: Any) -> None:
    """Write ``results`` as JSON to ``path``, whole or not at all: an interrupted run leaves the
    previous file, never a truncated one (the benchmarks that save after every run rely on it)."""
    atomic_write_text(path, json.dumps(results, indent=1, default=str) + "\n")


def write_results(path: Optional[str], results: Any) -> None:
    """Write ``results`` as JSON to ``path`` (:func:`save_json`) and say so; no path, no file."""
    if not path:
        return
    save_json(path, results)
    print(f"\nJSON: {path}")
