"""Sharded and resumable evaluation (issue 14): two processes under torchrun / paddle launch give
exactly one process's numbers and per-image predictions; an evaluation killed mid-way and resumed
(in as many processes as you like) gives exactly an uninterrupted one's; only whole chunks are ever
committed, and the predictions file appears only when complete.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest

from cream_cli.eval import main as cream_eval
from cream_core.data.eval_journal import PARTIAL_SUFFIX, RESUME_SUFFIX, PredictionJournal
from cream_core.data.sharded_eval import shard_steps

REPO = Path(__file__).resolve().parents[1]

MODEL = "cream-14"
FRAMEWORKS = ["torch", pytest.param("paddle", marks=pytest.mark.paddle)]
#: 12 images in batches of 5: three batches, so two processes get unequal shares.
BATCH = 5
#: Keys of the JSON report that depend on timing, not on the predictions.
TIMING_KEYS = ("images_per_s", "model_images_per_s", "seconds", "cpu_seconds", "workers", "threads")
#: A real kill needs a run long enough to be caught in the middle: 224 px crops, batches of 1.
KILL_IMG_SIZE, KILL_BATCH = "224", "1"
KILL_TIMEOUT_S = 120


def _args(framework: str, weights, sv, out: Path, *extra: str) -> List[str]:
    return ["--framework", framework, "--model", MODEL, "--weights", str(weights[framework]),
            "--data", str(sv.tar), "--labels", str(sv.devkit), "--workers", "0", "--threads", "1",
            "--batch-size", str(BATCH), "--json", str(out / "r.json"), "--predictions",
            str(out / "p.csv"), "--no-progress", *extra]


def _outputs(out: Path, processes: int = 1) -> tuple:
    rep = json.loads((out / "r.json").read_text())
    assert rep.pop("processes") == processes
    for k in TIMING_KEYS:
        rep.pop(k, None)
    rep["weights"] = rep["data"] = None
    return rep, (out / "p.csv").read_bytes()


def _no_leftovers(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["p.csv", "r.json"]


@pytest.fixture(scope="module")
def uninterrupted(synthetic_val, cream14_weights, module_tmp: Callable[[str], Path]) -> dict:
    """One process, start to end, per framework: the reference outputs."""
    ref = {}
    for fw in ("torch", "paddle"):
        out = module_tmp(f"one_{fw}")
        assert cream_eval(_args(fw, cream14_weights, synthetic_val, out)) == 0
        ref[fw] = _outputs(out)
    return ref


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_steps_cover_every_batch_once(world):
    for first in (0, 2):
        steps = shard_steps(first, 7, world)
        flat = [b for s in steps for b in s]
        assert flat == list(range(first, 7)) and all(len(s) <= world for s in steps)


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_two_processes_equal_one(synthetic_val, cream14_weights, uninterrupted, tmp_path,
                                 launch_two, framework):
    out = tmp_path / "two"
    launch_two(framework, "eval", _args(framework, cream14_weights, synthetic_val, out),
               out, tmp_path / "logs")
    assert _outputs(out, processes=2) == uninterrupted[framework]
    _no_leftovers(out)


def _interrupt_after(monkeypatch, chunks: int) -> None:
    """Ctrl-C right after the ``chunks``-th chunk is committed."""
    real = PredictionJournal.append

    def append(self, records):
        real(self, records)
        if self.done_batches >= chunks:
            raise KeyboardInterrupt

    monkeypatch.setattr(PredictionJournal, "append", append)


def _tear(out: Path) -> None:
    """A chunk caught mid-write by the kill: bytes past the committed length."""
    with open(out / ("p.csv" + PARTIAL_SUFFIX), "ab") as f:
        f.write(b"/x/ILSVRC2012_val_00000099.JPEG,7,1")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_interrupted_then_resumed_equals_uninterrupted(synthetic_val, cream14_weights,
                                                       uninterrupted, tmp_path, monkeypatch,
                                                       framework):
    args = _args(framework, cream14_weights, synthetic_val, tmp_path)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert cream_eval(args) == 130
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r.json").exists()
    state = json.loads((tmp_path / ("p.csv" + RESUME_SUFFIX)).read_text())
    assert state["done_batches"] == 1
    _tear(tmp_path)
    assert cream_eval([*args, "--resume"]) == 0
    assert _outputs(tmp_path) == uninterrupted[framework]
    _no_leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_interrupted_then_resumed_in_two_processes(synthetic_val, cream14_weights, uninterrupted,
                                                   tmp_path, monkeypatch, launch_two, framework):
    """Batches do not depend on the number of processes: one process's run resumed by two."""
    out = tmp_path / "out"
    out.mkdir()
    args = _args(framework, cream14_weights, synthetic_val, out)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert cream_eval(args) == 130
    launch_two(framework, "eval", [*args, "--resume"], out, tmp_path / "logs")
    assert _outputs(out, processes=2) == uninterrupted[framework]
    _no_leftovers(out)


def test_killed_process_resumed_equals_uninterrupted(synthetic_val, cream14_weights, tmp_path):
    """A real SIGKILL in the middle of the run (torch), then --resume."""
    def args(out: Path) -> List[str]:
        a = _args("torch", cream14_weights, synthetic_val, out)
        a[a.index("--batch-size") + 1] = KILL_BATCH
        return [*a, "--img-size", KILL_IMG_SIZE]

    ref = tmp_path / "ref"
    ref.mkdir()
    assert cream_eval(args(ref)) == 0
    out = tmp_path / "killed"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cream_cli.eval", *args(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / ("p.csv" + RESUME_SUFFIX)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    done = 0
    while p.poll() is None and time.monotonic() < deadline:
        if state.exists():
            try:
                done = json.loads(state.read_text())["done_batches"]
            except (ValueError, OSError):  # replaced atomically, but be safe
                done = 0
            if done >= 2:
                p.send_signal(signal.SIGKILL)
                break
        time.sleep(0.002)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= json.loads(state.read_text())["done_batches"] < 12
    assert not (out / "p.csv").exists()
    assert cream_eval([*args(out), "--resume"]) == 0
    assert _outputs(out) == _outputs(ref)
    _no_leftovers(out)


@pytest.mark.parametrize("case", ["no_predictions", "nothing_to_resume", "other_batch_size",
                                  "other_weights"])
def test_resume_refuses(synthetic_val, cream14_weights, tmp_path, monkeypatch, capsys, case):
    args = _args("torch", cream14_weights, synthetic_val, tmp_path)
    if case == "no_predictions":
        i = args.index("--predictions")
        args = args[:i] + args[i + 2:]
    elif case != "nothing_to_resume":
        with monkeypatch.context() as m:
            _interrupt_after(m, 1)
            assert cream_eval(args) == 130
        if case == "other_batch_size":
            args[args.index("--batch-size") + 1] = "4"
        else:
            args.append("--raw-weights")
    capsys.readouterr()
    assert cream_eval([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("cream-eval: error:")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r.json").exists()
    if case.startswith("other"):
        assert ("batch_size" if case == "other_batch_size" else "ema") in err


def test_stopped_by_a_bad_image_then_resumed_skipping(synthetic_val, cream14_weights, tmp_path,
                                                      capsys):
    """A bad image in the second batch stops the run (exit 2, one line, no predictions file) but
    keeps the first batch; ``--resume --skip-bad`` then equals a fresh ``--skip-bad`` run."""
    import shutil

    flat = tmp_path / "flat"
    shutil.copytree(synthetic_val.flat, flat)
    (flat / "ILSVRC2012_val_00000007.JPEG").write_bytes(b"not a JPEG" * 50)

    def args(out: Path) -> List[str]:
        a = _args("torch", cream14_weights, synthetic_val, out)
        a[a.index("--data") + 1] = str(flat)
        return a

    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    out.mkdir()
    assert cream_eval([*args(ref), "--skip-bad"]) == 0
    capsys.readouterr()
    assert cream_eval(args(out)) == 2
    err = capsys.readouterr().err
    assert "ILSVRC2012_val_00000007.JPEG" in err and "--resume --skip-bad" in err
    assert not (out / "p.csv").exists() and not (out / "r.json").exists()
    assert cream_eval([*args(out), "--resume", "--skip-bad"]) == 0
    assert _outputs(out) == _outputs(ref)
    assert len(json.loads((out / "r.json").read_text())["skipped"]) == 1
    _no_leftovers(out)


def test_an_interrupted_run_is_not_replaced_without_resume(synthetic_val, cream14_weights, tmp_path,
                                                           monkeypatch, capsys):
    """Forgetting --resume must not throw the finished part away: refused, exit 2, state kept."""
    args = _args("torch", cream14_weights, synthetic_val, tmp_path)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        assert cream_eval(args) == 130
    state = tmp_path / ("p.csv" + RESUME_SUFFIX)
    before = (state.read_bytes(), (tmp_path / ("p.csv" + PARTIAL_SUFFIX)).read_bytes())
    capsys.readouterr()
    assert cream_eval(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and str(state) in err[0]
    assert (state.read_bytes(), (tmp_path / ("p.csv" + PARTIAL_SUFFIX)).read_bytes()) == before
