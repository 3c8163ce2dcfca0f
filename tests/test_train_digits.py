"""The real-data demo in reduced form: train Cream-14 briefly on scikit-learn's handwritten digits,
convert the weights to the other framework, and evaluate both with the official eval pipeline.

The full demo (``cream_cli.train.run_digits_demo()``, 12 epochs, a few minutes on 2 cores) reaches
98.9 % top-1 with the EMA weights on the 355 held-out digits in both frameworks (trained in either);
here a few steps only show that the whole pipeline runs and that both frameworks predict alike.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch


pytestmark = [pytest.mark.paddle, pytest.mark.usefixtures("one_torch_thread")]


def test_digits_dataset_layout(tmp_path) -> None:
    from cream_cli.train import write_digits_dataset
    from cream_core.data import open_dataset

    train_dir, val_dir = write_digits_dataset(str(tmp_path))
    tr, va = open_dataset(train_dir, "folder"), open_dataset(val_dir, "folder")
    assert (len(tr), len(va), tr.num_classes, va.num_classes) == (1442, 355, 10, 10)
    assert not set(map(os.path.basename, tr.paths)) & set(map(os.path.basename, va.paths))
    assert np.bincount(va.labels).min() >= 34  # every class held out (a fifth of 174..183)
    again = write_digits_dataset(str(tmp_path))  # reused, not rewritten
    assert again == (train_dir, val_dir)


@pytest.mark.parametrize("framework", ["torch", pytest.param("paddle", marks=pytest.mark.slow)])
def test_reduced_demo_both_frameworks_agree(framework: str, tmp_path) -> None:
    from cream_cli.train import run_digits_demo

    r = run_digits_demo(framework, epochs=1, max_steps=4, out_dir=str(tmp_path), workers=0,
                        threads=1, eval_during_training=False, log=lambda s: None)
    assert r["trained_in"] == framework and r["steps"] == 4 and r["val_images"] == 355
    assert r["same_predictions"], "converted model predicts differently"
    assert r["torch"]["top1"] == r["paddle"]["top1"] and r["torch"]["top5"] == r["paddle"]["top5"]
    assert r["max_abs_logit_diff"] < 1e-4
    assert os.path.exists(r["checkpoint"]) and os.path.exists(r["converted"])
