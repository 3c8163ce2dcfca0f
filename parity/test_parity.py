"""``parity run`` on every released child net: the Paddle port computes what the reference computes.

Small inputs (batch 2, 64 px) keep the six nets within the time budget; the comparisons are the same
as at full resolution (all layers are convolutional, the pooling is global), and the bounds are the
named tolerances of :mod:`parity.tolerances`, unchanged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cream_core.arch import model_names
from parity.tolerances import CATEGORIES, STAGE_ORDER
from parity.runner import ParityConfig, run_parity

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.paddle


def _explain(result) -> str:  # noqa: ANN001
    from parity.report import format_first_divergence, format_table

    return format_table(result) + "\n" + format_first_divergence(result)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("cream-481", "cream-604") else n for n in model_names()])
def test_child_net_parity_forward_backward(name: str) -> None:
    """Every module output (eval and train, fp64 and fp32), BN statistics, losses, every gradient."""
    result = run_parity(ParityConfig(name, resolution=64, stages=("eval", "train", "losses"),
                                     progress=False))
    assert result.ok, _explain(result)
    seen = {(c.stage, c.category) for c in result.comparisons}
    for prec in ("fp64", "fp32"):
        for stage, cat in ((f"forward/eval/{prec}", "layer"), (f"forward/eval/{prec}", "logits"),
                           (f"forward/train/{prec}", "layer_train"), (f"bn_stats/{prec}", "bn_stats"),
                           (f"loss/{prec}", "loss"), (f"backward/{prec}", "param_grad"),
                           (f"backward/{prec}", "input_grad"), (f"backward/{prec}", "out_grad")):
            assert (stage, cat) in seen, (stage, cat)
    n_layers = sum(c.stage == "forward/eval/fp64" and c.category == "layer"
                   for c in result.comparisons)
    assert n_layers > 150  # every named module, not a sample


def test_full_run_cream14_with_optimizers_schedules_and_x2paddle(tmp_path: Path) -> None:
    result = run_parity(ParityConfig("cream-14", report_dir=str(tmp_path), progress=False))
    assert result.ok, _explain(result)
    stages = {c.stage for c in result.comparisons}
    assert stages == set(STAGE_ORDER)
    assert {c.category for c in result.comparisons} == set(CATEGORIES)
    lr = [c for c in result.comparisons if c.category == "lr"]
    assert len(lr) == 5 and all(c.ok for c in lr)
    # the x2paddle export is cached in the report folder and reused
    again = run_parity(ParityConfig("cream-14", report_dir=str(tmp_path), stages=("x2paddle",),
                                    progress=False))
    assert again.ok and again.info["x2paddle"]["cached"]


def _official_ckpt(name: str, path: Path) -> Path:
    from cream_torch_ref.models import seeded_official_checkpoint

    seeded_official_checkpoint(name, path, legacy=True, seed_raw=5, seed_ema=6, args="namespace")
    return path


@pytest.mark.cli
@pytest.mark.slow
def test_cli_run_cream43_with_checkpoint_writes_json_and_plot(tmp_path: Path) -> None:
    """The acceptance command, as a user runs it: a fresh process, an official-format checkpoint."""
    ckpt = _official_ckpt("cream-43", tmp_path / "c43.pth.tar")
    report = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "parity.cli", "run", "--model", "cream-43",
                           "--ckpt", str(ckpt), "--report", str(report), "--no-x2paddle",
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout and "forward/eval/fp64" in proc.stdout
    data = json.loads((report / "parity.json").read_text())
    assert data["ok"] and data["failed"] == 0 and data["compared"] == len(data["comparisons"])
    assert str(ckpt) in data["info"]["weights"]
    png = (report / "parity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_cli_bad_checkpoint_is_one_line_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    from parity.cli import main

    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint at all")
    code = main(["run", "--model", "cream-14", "--ckpt", str(bad), "--report",
                 str(tmp_path / "rep"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith("parity run: error:")
    assert not (tmp_path / "rep" / "parity.json").exists()
    assert bad.read_bytes() == b"not a checkpoint at all"
    for argv, words in ((["--stages", "eval,bogus"], "--stages: unknown bogus"),
                        (["--batch", "0"], "--batch: must be at least 1, got 0"),
                        (["--steps", "2"], "--steps: must be at least 3 (the comparison"),
                        (["--resolution", "16"], "--resolution: must be at least 32")):
        assert main(["run", "--model", "cream-14", *argv]) == 2  # argparse: before any work
        assert words in capsys.readouterr().err


def test_seeded_inputs_are_the_same_in_both_frameworks() -> None:
    """The harness feeds one numpy array to both; check it is not re-drawn per framework."""
    from cream_core.arch import seeded_input

    a, b = seeded_input(2, 64, 0), seeded_input(2, 64, 0)
    assert np.array_equal(a, b) and a.dtype == np.float32
