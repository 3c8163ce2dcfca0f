"""Training-step parity: the Paddle retraining step is the torch one, step by step, over 10 steps.

Both frameworks run their own training code (``cream_*.train``) from the same weights on the same
augmented batches with the same drop-path/dropout masks; see :mod:`parity.train_step`. The fault
tests break one thing on the Paddle side each and require the harness to fail.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parity.train_step import (FAULTS, FREE_OUTLIER_FRACTION, MODES, TrainStepConfig,
                               run_train_step_parity)

pytestmark = [pytest.mark.paddle, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def ten_steps():
    cfg = TrainStepConfig(model="cream-14", steps=10, batch_size=4, img_size=64,
                          precisions=("fp32", "fp64"))
    return run_train_step_parity(cfg)


@pytest.mark.slow
def test_ten_steps_within_tolerance(ten_steps) -> None:
    r = ten_steps
    assert r.ok, r.first.as_dict() if r.first else None
    runs = {(s["mode"], s["precision"]) for s in r.steps}
    assert runs == {("synced", "fp32"), ("synced", "fp64"), ("free", "fp32")}
    for mode, prec in runs:
        assert [s["step"] for s in r.steps if (s["mode"], s["precision"]) == (mode, prec)] == \
            list(range(1, 11))
    cats = {c.category for c in r.comparisons}
    assert cats == {"lr", "loss", "param_grad", "optim_params", "optim_state", "bn_stats", "ema"}


@pytest.mark.slow
def test_the_steps_exercise_the_recipe(ten_steps) -> None:
    """Not a vacuous run: the LR walks through warm-up and decay, the model learns, masks drop."""
    r = ten_steps
    lrs = [s["lr_torch"] for s in r.steps if s["mode"] == "synced" and s["precision"] == "fp32"]
    assert lrs[0] == pytest.approx(1e-6) and max(lrs) == pytest.approx(0.064 * 0.973)
    assert len(set(np.round(lrs, 12))) >= 5
    losses = [s["loss_torch"] for s in r.steps if s["mode"] == "synced" and s["precision"] == "fp32"]
    assert losses[-1] < losses[0] - 0.5  # 10 steps at lr ~0.06 on 4 images
    assert r.info["drop_path_layers"] > 0 and r.info["dropout"] == 0.2
    # per step: every parameter, its gradient, 2 optimizer states, EMA entries and BN statistics
    step1 = [c for c in r.comparisons if c.stage == "train-step/synced/fp32/step01"]
    by = {cat: sum(c.category == cat for c in step1) for cat in
          ("param_grad", "optim_params", "optim_state", "ema", "bn_stats")}
    assert by["optim_state"] == 2 * by["optim_params"] and by["param_grad"] == by["optim_params"]
    assert by["ema"] == by["optim_params"] + by["bn_stats"]
    # fp64 synced steps agree far more closely than fp32 ones: they see semantics, not rounding
    worst = {p: max(s["worst_of_scale"]["param_grad"] for s in r.steps
                    if s["mode"] == "synced" and s["precision"] == p) for p in ("fp32", "fp64")}
    assert worst["fp64"] < worst["fp32"] / 20


#: (fault, precision that must reveal it). Weight decay 1e-5 on BN/bias and the EMA of the BN
#: statistics change results by ~1e-5 of a tensor: only the fp64 semantic check sees them.
FAULT_CASES = [("plain-rmsprop", "fp32"), ("smoothing-0.2", "fp32"), ("dropout-unscaled", "fp32"),
               ("lr-off-by-one", "fp32"), ("no-bias-filter", "fp64"), ("ema-params-only", "fp64")]


def test_fault_cases_cover_every_fault() -> None:
    assert {f for f, _ in FAULT_CASES} == set(FAULTS)


@pytest.mark.parametrize("fault, precision", FAULT_CASES)
def test_injected_fault_is_caught(fault: str, precision: str) -> None:
    cfg = TrainStepConfig(model="cream-14", steps=2, batch_size=4, img_size=64,
                          precisions=(precision,), modes=("synced",), fault=fault)
    r = run_train_step_parity(cfg)
    assert not r.ok, f"fault {fault!r} went unnoticed"
    assert r.first.excess > 1.0


def test_cli_exit_codes_and_json(tmp_path, capsys) -> None:
    from parity.cli import main

    out = tmp_path / "ts.json"
    assert main(["train-step", "--steps", "1", "--batch-size", "2", "--img-size", "64",
                 "--precision", "fp32", "--mode", "synced", "--no-progress",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] and data["compared"] > 100 and data["failed"] == 0
    assert main(["train-step", "--steps", "1", "--batch-size", "2", "--img-size", "64",
                 "--precision", "fp32", "--mode", "synced", "--no-progress",
                 "--inject-fault", "smoothing-0.2"]) == 1
    text = capsys.readouterr().out
    assert "first divergence" in text and "injected fault" in text
    assert main(["train-step", "--steps", "0"]) == 2
    assert main(["train-step", "--img-size", "16"]) == 2
    assert set(MODES) == {"synced", "free"}


FREE_FAULTS = [f for f, p in FAULT_CASES if p == "fp32"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FREE_FAULTS)
def test_faults_fail_the_free_run_beyond_its_outlier_allowance(fault: str) -> None:
    """The free run tolerates a few kink-crossing outliers per step (FREE_OUTLIER_FRACTION); a real
    fault moves far more tensors and still fails it."""
    cfg = TrainStepConfig(model="cream-14", steps=2, batch_size=4, img_size=64,
                          precisions=("fp32",), modes=("free",), fault=fault)
    r = run_train_step_parity(cfg)
    assert not r.ok, f"fault {fault!r} went unnoticed in the free run"
    worst = max(s["failed"] / (len(r.comparisons) / len(r.steps)) for s in r.steps)
    assert worst > 2 * FREE_OUTLIER_FRACTION


def test_free_outliers_rule() -> None:
    from parity.compare import Comparison
    from parity.train_step import _free_outliers

    def comps(n_bad: int, category: str = "param_grad") -> list:
        return [Comparison(category=category, stage="train-step/free/fp32/step01", name=f"t{i}",
                           order=float(i), ok=i >= n_bad) for i in range(100)]

    few = comps(3)
    assert _free_outliers(few) == ["t0", "t1", "t2"] and all(c.ok for c in few)
    assert "free-run outlier" in few[0].note
    many = comps(6)
    assert _free_outliers(many) == [] and sum(not c.ok for c in many) == 6
    loss = comps(1, category="loss")
    assert _free_outliers(loss) == [] and not loss[0].ok
