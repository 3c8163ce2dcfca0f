"""The shared test fixtures of both test folders (tests/ and parity/), in one place."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

REPO = Path(__file__).resolve().parent
#: Two CPU processes on gloo, with model set-up, on a busy 2-core machine.
LAUNCH_TIMEOUT_S = 300


def _launch_two(framework: str, tool: str, args: List[str], cwd: Path, logs: Path) -> None:
    """Run ``cream_cli.<tool>`` as two data-parallel processes (torchrun / paddle launch); fail the
    test with the launcher's and workers' logs unless it exits 0 within LAUNCH_TIMEOUT_S."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if framework == "torch":
        # --log-dir: without it torchrun keeps its run files in a new temporary folder it never removes
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "--log-dir", str(logs), "-m", f"cream_cli.{tool}", *args]
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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): its
    second OpenMP thread spin-waits on a busy 2-core machine, 10-20x the CPU time of one thread
    for the small forwards and meta steps of these tests (measured with the suite running
    alongside); the previous count is restored after the module."""
    from parity.engine import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``module_tmp(name)``: a new folder for files a module's tests share, removed when the module
    ends unless one of its tests failed -- what ``tmp_path_retention_policy = "failed"``
    (pyproject.toml) does for ``tmp_path``. Kept to the end, a full run's folders add up to ~5 GB
    (six converted child nets, resnet18/vgg11 state dicts), which filled a CI machine's disk."""
    made: List[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def official_cream14(tmp_path_factory) -> Path:
    """cream-14 as the official training saved it: legacy format, yacs args, raw + EMA weights
    (:func:`cream_torch_ref.models.seeded_official_checkpoint` defaults), alone in its folder.
    One per session: tests read it and write their outputs elsewhere."""
    from cream_torch_ref.models import seeded_official_checkpoint

    root = tmp_path_factory.mktemp("official")
    return Path(seeded_official_checkpoint("cream-14", root / "14.pth.tar"))


@pytest.fixture(scope="session")
def cream14_weights(tmp_path_factory, official_cream14: Path) -> dict:
    """:func:`official_cream14` and its Paddle conversion:
    ``{"torch": .pth.tar, "paddle": .pdparams}`` (one per session; the eval tests share it)."""
    from converters.convert import convert_checkpoint

    pdparams = tmp_path_factory.mktemp("cream14") / "14.pdparams"
    convert_checkpoint(str(official_cream14), str(pdparams), model="cream-14")
    return {"torch": official_cream14, "paddle": pdparams}


@pytest.fixture(scope="session")
def synthetic_val(tmp_path_factory):
    """The same 12 seeded images as val tar, flat folder and val/<wnid>/, with a devkit archive
    and a LOC_val_solution.csv (:func:`cream_core.data.synthetic_val.write_synthetic_val`)."""
    from cream_core.data.synthetic_val import write_synthetic_val

    return write_synthetic_val(tmp_path_factory.mktemp("synthval"), n=12, seed=0)
