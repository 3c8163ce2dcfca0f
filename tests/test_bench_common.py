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

from bench.common import ROOT, median_of, sigterm_raises, work_folder

#: The prefix the folders under test are made with.
PREFIX = "bench-common-test-"
#: Longest a child may take to start, reach the folder, or stop after a signal (seconds).
CHILD_TIMEOUT_S = 60

#: A child that makes its work folder, writes into it, prints its path and waits to be stopped.
_CHILD = f"""
import os, sys, time
from bench.common import work_folder
with work_folder({PREFIX!r}) as tmp:
    open(os.path.join(tmp, "ckpt.bin"), "wb").write(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep({CHILD_TIMEOUT_S})
"""


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


@pytest.mark.parametrize("signum, exit_codes", [(signal.SIGINT, {-signal.SIGINT, 130}),
                                                (signal.SIGTERM, {128 + signal.SIGTERM})])
def test_stopped_run_removes_its_folder(tmp_path: Path, signum: int, exit_codes: set) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        folder = Path(p.stdout.readline().strip())
        assert folder.parent == tmp_path and (folder / "ckpt.bin").is_file(), p.stderr.read()
        p.send_signal(signum)
        p.wait(CHILD_TIMEOUT_S)
    finally:
        p.kill()
        p.communicate()
    assert p.returncode in exit_codes
    assert list(tmp_path.iterdir()) == []


def test_median_of_rounds_to_a_tenth() -> None:
    assert median_of([{"wall_s": 3.04}, {"wall_s": 1.0}, {"wall_s": 2.96}], "wall_s") == 3.0
