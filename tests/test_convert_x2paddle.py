"""The x2paddle third opinion: a traced Paddle inference model of the reference, for cream-14."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle  # noqa: F401

import cream_paddle
import cream_torch_ref
from cream_core.arch import seeded_input
from converters import convert_checkpoint
from converters.cli import main
from converters.x2paddle_engine import export_with_x2paddle, load_predictor, run_x2paddle

pytestmark = [pytest.mark.paddle, pytest.mark.usefixtures("one_torch_thread")]

#: as in tests/test_paddle_childnet.py: x2paddle runs float32 only, so a float32 program passes when
#: within LOGIT_ATOL of torch's float32 logits, or else when it is at most FLOAT32_ERROR_RATIO times
#: as far from torch's float64 logits as torch's own float32 logits are.
LOGIT_ATOL = 1e-5
FLOAT32_ERROR_RATIO = 2.0
NAME = "cream-14"


def _float32_agrees(model: torch.nn.Module, x: np.ndarray, other: np.ndarray) -> bool:
    """Whether float32 logits ``other`` agree with ``model``'s by the rule above."""
    import copy

    with torch.no_grad():
        t32 = model(torch.from_numpy(x)).numpy()
        t64 = copy.deepcopy(model).double()(torch.from_numpy(x.astype(np.float64))).numpy()
    return bool(np.abs(other - t32).max() <= LOGIT_ATOL or
                np.abs(other - t64).max() <= FLOAT32_ERROR_RATIO * np.abs(t32 - t64).max())


def test_three_opinions_agree(official_cream14: Path, tmp_path: Path) -> None:
    ref_model = cream_torch_ref.create_model(NAME, checkpoint=official_cream14)
    exp = export_with_x2paddle(ref_model, str(tmp_path / "x2p"), (1, 3, 64, 64))
    assert os.path.isfile(exp.model_file) and os.path.isfile(exp.params_file)
    x = seeded_input(2, 64, seed=11)  # another batch size than traced: the program is not fixed to 1
    pred = load_predictor(exp.save_dir)
    third = run_x2paddle(pred, x)
    converted = convert_checkpoint(official_cream14, tmp_path / "14.pdparams").dst
    ours = cream_paddle.create_model(NAME, checkpoint=converted)
    mine = ours(paddle.to_tensor(x)).numpy()
    assert third.shape == mine.shape == (2, 1000)
    assert _float32_agrees(ref_model, x, third)
    assert _float32_agrees(ref_model, x, mine)
    # the opinion is informative: other weights give other logits
    other = cream_torch_ref.create_model(NAME, checkpoint=official_cream14, use_ema=False)
    with torch.no_grad():
        assert np.abs(other(torch.from_numpy(x)).numpy() - third).max() > 1000 * LOGIT_ATOL


def test_cli_engine_x2paddle(official_cream14: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "third"
    assert main([str(official_cream14), "--engine", "x2paddle", "-o", str(out)]) == 0
    assert "x2paddle inference model of cream-14" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["third"]  # no temporary folder left behind
    x = seeded_input(1, 64, seed=12)
    ref_model = cream_torch_ref.create_model(NAME, checkpoint=official_cream14)
    assert _float32_agrees(ref_model, x, run_x2paddle(str(out), x))
    assert main([str(official_cream14), "--engine", "x2paddle", "-o", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("do not delete")
    assert main([str(official_cream14), "--engine", "x2paddle", "-o", str(keep), "--force"]) == 2
    assert "no x2paddle export" in capsys.readouterr().err
    assert (keep / "notes.txt").read_text() == "do not delete"
