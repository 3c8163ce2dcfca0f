"""The Paddle child nets after ``convert-ckpt`` give the reference's logits, for all six models.

From seeded checkpoints in the official format (legacy torch file, yacs args, raw and EMA weights,
calibrated so that the logits are O(1) and input-dependent), each model is converted with
:func:`converters.convert_checkpoint`, loaded with ``cream_paddle.create_model(checkpoint=...)`` and
compared with ``cream_torch_ref.create_model`` on the same input. Faults injected into the
conversion are shown to break the comparison.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle

import cream_paddle
import cream_torch_ref
from cream_core.arch import child_spec, seeded_input
from cream_torch_ref.models import seeded_official_checkpoint
from converters import convert_checkpoint

pytestmark = [pytest.mark.paddle, pytest.mark.usefixtures("one_torch_thread")]

#: Acceptance bound of the issue: max |logit difference| between Paddle and the reference in eval
#: mode. Checked in float64 (both models cast exactly from the converted float32 weights), where
#: rounding can neither hide nor fake a difference (measured 7e-13..1.2e-9 over the seeded weight
#: sets used so far; the residue is Paddle keeping BN epsilon as a float32 attribute, 1e-5 ->
#: 9.99999975e-06), and in float32, the models as shipped.
LOGIT_ATOL = 1e-5
#: float32 rounding differs between the frameworks. With logits of order 0.1-0.6 (the current
#: seeded weights) float32 stays far inside LOGIT_ATOL (measured 9e-8..1.3e-6). With logits of
#: order 10 (an earlier calibration of the seeded weights) the reference itself was 1e-5..5e-5 from
#: its own float64 logits, i.e. 1e-5 is below float32's noise floor there. So float32 passes when
#: within LOGIT_ATOL of the reference, or else when Paddle's float32 logits are at most
#: FLOAT32_ERROR_RATIO times as far from the float64 reference as torch's own float32 logits
#: (measured ratio 0.41..1.07 in that regime).
FLOAT32_ERROR_RATIO = 2.0
#: What float64 leaves between the two models (measured <= 1.2e-9, see LOGIT_ATOL), so that a
#: fault far below LOGIT_ATOL is still visible above it.
FLOAT64_RESIDUE = 1e-8
#: One image: exactness is per sample, and torch's float64 depthwise convolutions are slow on CPU
#: (~12 s of CPU per 224 x 224 image for cream-604).
BATCH = 1
#: Input size of the comparison: the test resolution, capped at 96. 96 = 3 x 32 puts the models
#: released at 160 (5 x 32) and 224 (7 x 32) through the same stride/padding geometry (even maps
#: down to the last stride-2 block, an odd final map), at a fifth of the float64 cost.
MAX_CHECK_RESOLUTION = 96
#: Checkpoint calibration (cream_core.arch.seeded) alone costs ~10 s of CPU for each 224-px model.
_SLOW = {"cream-287", "cream-481", "cream-604"}


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _paddle_logits(model: paddle.nn.Layer, x: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def _both64(tm: torch.nn.Module, pm: paddle.nn.Layer, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Float64 logits of both models (cast in place) on ``x``."""
    tm.double()
    pm.to(dtype="float64")
    x64 = x.astype(np.float64)
    t64, p64 = _torch_logits(tm, x64), _paddle_logits(pm, x64)
    assert t64.dtype == p64.dtype == np.float64
    return t64, p64


@pytest.fixture(scope="module")
def converted(module_tmp: Callable[[str], Path]) -> Dict[str, Tuple[Path, Path, Path]]:
    """Per model: (official .pth.tar, EMA .pdparams, raw .pdparams), made on first use."""

    class Lazy(dict):
        def __missing__(self, name: str) -> Tuple[Path, Path, Path]:
            d = module_tmp(name)
            src = Path(seeded_official_checkpoint(name, d / f"{name}.pth.tar"))
            ema = convert_checkpoint(src, d / "ema.pdparams", weights="ema")
            raw = convert_checkpoint(src, d / "raw.pdparams", weights="model")
            assert (ema.weights, raw.weights) == ("state_dict_ema", "state_dict")
            assert ema.model == raw.model == name  # recognised from the shapes
            self[name] = (src, Path(ema.dst), Path(raw.dst))
            return self[name]

    return Lazy()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n
                                  for n in cream_paddle.list_models()])
def test_logits_match_reference(name: str, converted) -> None:
    src, ema, raw = converted[name]
    x = seeded_input(BATCH, min(child_spec(name).resolution, MAX_CHECK_RESOLUTION), seed=3)
    tm, pm = cream_torch_ref.create_model(name), cream_paddle.create_model(name)
    refs = []
    for pdparams, use_ema in ((ema, True), (raw, False)):
        what = f"{name} ({'EMA' if use_ema else 'raw'})"
        cream_torch_ref.load_weights(tm.float(), src, use_ema=use_ema)
        pm.to(dtype="float32")
        cream_paddle.load_weights(pm, pdparams)
        t32, p32 = _torch_logits(tm, x), _paddle_logits(pm, x)
        t64, p64 = _both64(tm, pm, x)
        assert p64.shape == t64.shape == (BATCH, 1000)
        err = np.abs(p64 - t64).max()
        assert err <= LOGIT_ATOL, f"{what}: float64 max |diff| {err:.3g}"
        err32 = np.abs(p32 - t32).max()
        ref_err, our_err = np.abs(t32 - t64).max(), np.abs(p32 - t64).max()
        assert err32 <= LOGIT_ATOL or our_err <= FLOAT32_ERROR_RATIO * ref_err, (
            f"{what}: float32 max |diff| {err32:.3g}; Paddle is {our_err:.3g} from the float64 "
            f"reference, torch float32 only {ref_err:.3g}")
        assert np.abs(t64).max() > 1000 * LOGIT_ATOL  # logits far above the bound, not ~0
        refs.append(t64)
    # EMA and raw really are different weights, so both comparisons mean something
    assert np.abs(refs[0] - refs[1]).max() > 1000 * LOGIT_ATOL


def test_list_models_equal() -> None:
    assert cream_paddle.list_models() == cream_torch_ref.list_models()


def test_paddle_load_and_set_state_dict(converted) -> None:
    """The user's path: ``paddle.load`` + ``set_state_dict``, no project code for loading; the same
    model and logits (bit for bit) as ``cream_paddle.create_model(checkpoint=...)``."""
    _, ema, _ = converted["cream-14"]
    model = cream_paddle.ChildNet(child_spec("cream-14").arch_list)
    missing, unexpected = model.set_state_dict(paddle.load(str(ema)))
    assert not missing and not unexpected
    model.eval()
    ours = cream_paddle.create_model("cream-14", checkpoint=ema)
    for k, v in ours.state_dict().items():
        assert np.array_equal(model.state_dict()[k].numpy(), v.numpy()), k
    x = seeded_input(2, 64, seed=4)
    assert np.array_equal(_paddle_logits(model, x), _paddle_logits(ours, x))


def test_train_mode_batch_statistics_match(converted) -> None:
    """One training-mode step (float64): batch-stat logits, every gradient and the updated
    running statistics agree with torch."""
    src, ema, _ = converted["cream-14"]
    tm = cream_torch_ref.create_model("cream-14", checkpoint=src).double().train()
    pm = cream_paddle.create_model("cream-14", checkpoint=ema)
    pm.to(dtype="float64")
    pm.train()
    x = seeded_input(4, 64, seed=5).astype(np.float64)
    g = seeded_input(1, 1000, seed=6)[0, 0, :4].astype(np.float64)  # upstream gradient [4, 1000]
    ref = tm(torch.from_numpy(x))
    got = pm(paddle.to_tensor(x))
    assert np.abs(got.numpy() - ref.detach().numpy()).max() <= LOGIT_ATOL
    (ref * torch.from_numpy(g)).sum().backward()
    (got * paddle.to_tensor(g)).sum().backward()
    tp = dict(tm.named_parameters())
    pp = {k: v for k, v in pm.named_parameters() if not v.stop_gradient}  # Paddle's BN statistics
    assert tp.keys() == pp.keys()  # are parameters too, with stop_gradient set
    for k in tp:  # every gradient, so a training step in Paddle is torch's step
        want = tp[k].grad.numpy()
        have = pp[k].grad.numpy().T if k == "classifier.weight" else pp[k].grad.numpy()
        np.testing.assert_allclose(have, want, atol=LOGIT_ATOL, rtol=0, err_msg=k)
    tsd, psd = tm.state_dict(), pm.state_dict()
    bns = [k[: -len(".running_var")] for k in tsd if k.endswith(".running_var")]
    assert len(bns) == 25
    for k in bns:
        np.testing.assert_allclose(psd[f"{k}._mean"].numpy(), tsd[f"{k}.running_mean"].numpy(),
                                   atol=LOGIT_ATOL, rtol=0)
        np.testing.assert_allclose(psd[f"{k}._variance"].numpy(), tsd[f"{k}.running_var"].numpy(),
                                   atol=LOGIT_ATOL, rtol=0)


def test_harness_catches_a_missing_transpose(tmp_path: Path, monkeypatch) -> None:
    """Fault injection: drop the Linear-transpose rule. With 1280 classes the classifier is square,
    so shapes still fit and only the logits can tell; they must fail the tolerance."""
    import cream_core.rules as rules

    src = Path(seeded_official_checkpoint("cream-14", tmp_path / "sq.pth.tar", num_classes=1280,
                                          seed_ema=None))
    good = convert_checkpoint(src, tmp_path / "good.pdparams")
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r.action != "transpose"))
    bad = convert_checkpoint(src, tmp_path / "bad.pdparams")
    x = seeded_input(BATCH, 64, seed=6)
    tm = cream_torch_ref.create_model("cream-14", num_classes=1280, checkpoint=src)
    t64, ok = _both64(tm, cream_paddle.create_model("cream-14", 1280, checkpoint=good.dst), x)
    _, wrong = _both64(tm, cream_paddle.create_model("cream-14", 1280, checkpoint=bad.dst), x)
    assert np.abs(ok - t64).max() <= LOGIT_ATOL
    assert np.abs(wrong - t64).max() > 1000 * LOGIT_ATOL


def test_harness_catches_paddle_default_hardsigmoid(converted, monkeypatch) -> None:
    """Fault injection: Paddle's own hard-sigmoid (slope 0.1666667) in every SE gate reaches the
    logits, so the exact gate of ``compat`` is really in the path."""
    from cream_paddle import compat

    src, ema, _ = converted["cream-14"]
    x = seeded_input(BATCH, 64, seed=7)
    tm = cream_torch_ref.create_model("cream-14", checkpoint=src)
    t64, exact = _both64(tm, cream_paddle.create_model("cream-14", checkpoint=ema), x)
    monkeypatch.setattr(compat, "hard_sigmoid", paddle.nn.functional.hardsigmoid)
    _, naive = _both64(tm, cream_paddle.create_model("cream-14", checkpoint=ema), x)
    residue = np.abs(exact - t64).max()
    assert residue <= FLOAT64_RESIDUE
    assert np.abs(naive - t64).max() > 10 * residue
