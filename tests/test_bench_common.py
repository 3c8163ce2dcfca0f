"""``bench.common.work_folder``: a benchmark's temporary folder is gone when its run ends, however
it ends (done, an error, Ctrl-C, SIGTERM); a ``--keep`` folder stays. The benchmarks themselves are
never run in the test suite."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Type

import pytest

from bench.common import ROOT, call_to_the_end, median_of, sigterm_raises, work_folder

#: The prefix the folders under test are made with.
PREFIX = "bench-common-test-"
#: Longest a child may take to start, reach the folder, or stop after a signal (seconds).
CHILD_TIMEOUT_S = 60
#: How long the fake benchmark takes to unwind before its folder goes (a real one stops its
#: workers first): longer than the 0.25 s subprocess.call gives a child after a Ctrl-C.
UNWIND_S = 1.0

#: A fake benchmark: makes its work folder, writes into it, prints its path, waits to be stopped.
_BENCH = f"""
import os, sys, time
from bench.common import work_folder
with work_folder({PREFIX!r}) as tmp:
    try:
        open(os.path.join(tmp, "ckpt.bin"), "wb").write(b"x" * 1000)
        print(tmp, flush=True)
        time.sleep({CHILD_TIMEOUT_S})
    finally:
        time.sleep({UNWIND_S})
"""
#: ``bench.run_all`` in small: runs the fake benchmark to its end.
_RUN_ALL = f"""
import sys
from bench.common import call_to_the_end, sigterm_raises
with sigterm_raises():
    sys.exit(call_to_the_end([sys.executable, "-c", {_BENCH!r}], "."))
"""
#: How each stop ends a Python process: Ctrl-C (KeyboardInterrupt) or SIGTERM (sigterm_raises).
EXIT_CODES = {signal.SIGINT: {-signal.SIGINT, 130}, signal.SIGTERM: {128 + signal.SIGTERM}}


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tempfile``'s folder redirected into this test's own, so nothing else's is looked at."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("error", [None, RuntimeError, KeyboardInterrupt, SystemExit])
def test_temporary_folder_removed_however_the_block_ends(temp_root: Path,
                                                         error: Optional[Type[BaseException]]
                                                         ) -> None:
    seen = []
    try:
        with work_folder(PREFIX) as tmp:
            seen.append(tmp)
            Path(tmp, "sub").mkdir()
            Path(tmp, "sub", "model.pdparams").write_bytes(b"w" * 1000)
            if error is not None:
                raise error()
    except BaseException as e:  # noqa: BLE001 - the one raised above, checked below
        assert error is not None and isinstance(e, error)
    assert Path(seen[0]).parent == temp_root and Path(seen[0]).name.startswith(PREFIX)
    assert list(temp_root.iterdir()) == []


def test_kept_folder_is_created_and_left(temp_root: Path) -> None:
    keep = temp_root / "keep" / "here"
    with work_folder(PREFIX, str(keep)) as folder:
        assert folder == str(keep) and keep.is_dir()
        (keep / "report.json").write_text("{}")
    assert (keep / "report.json").read_text() == "{}"
    assert [p.name for p in temp_root.iterdir()] == ["keep"]


def test_sigterm_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def _stop(script: str, tmp_path: Path, signum: int, group: bool) -> int:
    """Run ``script`` in its own session, wait for the work folder it prints, then send ``signum``
    to the whole group (a Ctrl-C in a terminal) or to the process alone (``kill``); its exit
    status once it and its children have ended."""
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        folder = Path(p.stdout.readline().strip())
        assert folder.parent == tmp_path and (folder / "ckpt.bin").is_file(), p.stderr.read()
        if group:
            os.killpg(p.pid, signum)
        else:
            p.send_signal(signum)
        p.communicate(timeout=CHILD_TIMEOUT_S)  # until every process holding the pipe has ended
    finally:
        if p.returncode is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    return p.returncode


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopped_run_removes_its_folder(tmp_path: Path, signum: int) -> None:
    assert _stop(_BENCH, tmp_path, signum, group=signum == signal.SIGINT) in EXIT_CODES[signum]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopped_run_all_lets_the_benchmark_clean_up(tmp_path: Path, signum: int) -> None:
    # Ctrl-C reaches both (one process group); a SIGTERM only run_all, which passes it on
    assert _stop(_RUN_ALL, tmp_path, signum, group=signum == signal.SIGINT) in EXIT_CODES[signum]
    assert list(tmp_path.iterdir()) == []


def test_call_to_the_end_returns_the_exit_status() -> None:
    assert call_to_the_end([sys.executable, "-c", "raise SystemExit(3)"], ROOT) == 3


def test_median_of_rounds_to_a_tenth() -> None:
    assert median_of([{"wall_s": 3.04}, {"wall_s": 1.0}, {"wall_s": 2.96}], "wall_s") == 3.0
