"""Shared test fixtures."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Two CPU processes on gloo, with model set-up, on a busy 2-core machine.
LAUNCH_TIMEOUT_S = 300


def _launch_two(framework: str, tool: str, args: List[str], cwd: Path, logs: Path) -> None:
    """Run ``cream_cli.<tool>`` as two data-parallel processes (torchrun / paddle launch); fail the
    test with the launcher's and workers' logs unless it exits 0 within LAUNCH_TIMEOUT_S."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if framework == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", f"cream_cli.{tool}", *args]
    else:  # paddle's launcher runs a script, not a module
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
               "--log_dir", str(logs), str(REPO / "cream_cli" / f"{tool}.py"), *args]
    cwd.mkdir(parents=True, exist_ok=True)
    # own session: on a timeout the launcher *and* its worker processes are killed
    p = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"{framework} launch did not finish in {LAUNCH_TIMEOUT_S} s")
    detail = err[-3000:]
    if logs.exists():
        detail += "".join(f.read_text()[-2000:] for f in sorted(logs.glob("workerlog.*")))
    assert p.returncode == 0, detail


@pytest.fixture
def launch_two() -> Callable[[str, str, List[str], Path, Path], None]:
    """:func:`_launch_two`: ``launch_two(framework, tool, args, cwd, logs)``."""
    return _launch_two


@pytest.fixture(scope="session")
def cream14_weights(tmp_path_factory) -> dict:
    """A seeded official-format Cream-14 checkpoint and its Paddle conversion:
    ``{"torch": .pth.tar, "paddle": .pdparams}`` (one per session; the eval tests share it)."""
    from converters.convert import convert_checkpoint
    from cream_torch_ref.models import seeded_official_checkpoint

    root = tmp_path_factory.mktemp("cream14")
    ckpt = Path(seeded_official_checkpoint("cream-14", root / "14.pth.tar", legacy=True))
    pdparams = root / "14.pdparams"
    convert_checkpoint(str(ckpt), str(pdparams), model="cream-14")
    return {"torch": ckpt, "paddle": pdparams}


@pytest.fixture(scope="session")
def synthetic_val(tmp_path_factory):
    """The same 12 seeded images as val tar, flat folder and val/<wnid>/, with a devkit archive
    and a LOC_val_solution.csv (:func:`cream_data.synthetic_val.write_synthetic_val`)."""
    from cream_data.synthetic_val import write_synthetic_val

    return write_synthetic_val(tmp_path_factory.mktemp("synthval"), n=12, seed=0)
