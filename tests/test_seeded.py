"""Calibrated seeded weights (cream_core.arch.seeded_child_state) and the numpy float64 forward pass.

The seeded weights stand in for real checkpoints in every parity test, so they must make a network
whose logits depend on its input: otherwise a port that mishandles the input would still agree.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import torch

from cream_core.arch import (CALIBRATION_BATCH, child_arch_def, child_keys_shapes, child_spec,
                        forward_child, model_names, plan_network, seeded_child_state,
                        seeded_input, seeded_state)
from cream_core.arch.golden import GOLDEN_DIR
from cream_core.arch.numpy_ref import LOGITS_TARGET_STD, calibrate_child
from cream_torch_ref import ChildNet

GOLDEN = GOLDEN_DIR / "logits.npz"
FAST = ["cream-14", "cream-43"]
OTHERS = [m for m in model_names() if m not in FAST]

#: Logits std range of a usable test network: calibration scales the logits to std
#: LOGITS_TARGET_STD on its own batch (power-of-two steps, other inputs: within ~4x).
LOGITS_STD_RANGE = (LOGITS_TARGET_STD / 8, LOGITS_TARGET_STD * 8)
#: std(y(x) - y(zeros)) / std(y(x)) at least this: the logits are mostly input-dependent
#: (calibrated weights: 0.9-1.1; uncalibrated seeded_state weights: ~0.005).
MIN_INPUT_SHARE = 0.5
#: std(y[0] - y[1]) / std(y) at least this: two random images get clearly different logits
#: (calibrated: 0.5-0.95).
MIN_ROW_SHARE = 0.3
#: Distinct top-1 classes over 8 seeded images (calibrated: 4-8).
MIN_DISTINCT_ARGMAX = 3
#: Largest RMS of a BN input standardised by its running statistics, on a batch that is not the
#: calibration batch: statistics from 4 images fit others up to ~2.3x in the 2x2 last stage of
#: cream-14 at 64 px (exactly 1 on the calibration batch).
MAX_BN_DRIFT = 4.0
#: numpy float64 vs torch float64: the same arithmetic, only summation order differs (~1e-16
#: relative per op); observed <= 2e-13 on logits up to ~20.
F64_ATOL = 1e-9
#: numpy float64 vs torch float32: float32 rounding (eps 6e-8) accumulated through ~25 layers,
#: about 5e-6 of the largest logit (~0.6 here); observed ~1e-6 for cream-14. The project's logits
#: tolerance.
F32_ATOL = 1e-5


def _arch(name: str):
    return child_spec(name).arch_list


def _quality(state: Dict[str, np.ndarray], name: str) -> Dict[str, float]:
    spec = child_spec(name)
    x = seeded_input(8, spec.resolution, 123)
    y = forward_child(state, spec.arch_list, x)
    y0 = forward_child(state, spec.arch_list, np.zeros_like(x[:1]))  # the same for every row
    std = float(y.std())
    return {"std": std, "input_share": float((y - y0).std()) / std,
            "row_share": float((y[0] - y[1]).std()) / std,
            "distinct_argmax": float(len(set(y.argmax(axis=1).tolist())))}


def _good(q: Dict[str, float]) -> bool:
    return (LOGITS_STD_RANGE[0] <= q["std"] <= LOGITS_STD_RANGE[1]
            and q["input_share"] >= MIN_INPUT_SHARE and q["row_share"] >= MIN_ROW_SHARE
            and q["distinct_argmax"] >= MIN_DISTINCT_ARGMAX)


def _torch_model(name: str, state: Dict[str, np.ndarray]) -> ChildNet:
    model = ChildNet(_arch(name)).eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model


@pytest.fixture(scope="module")
def states() -> Dict[str, Dict[str, np.ndarray]]:
    return {}


def _state(states: Dict[str, Dict[str, np.ndarray]], name: str, seed: int = 1) -> Dict[str, np.ndarray]:
    key = f"{name}/{seed}"
    if key not in states:
        states[key] = seeded_child_state(_arch(name), seed)
    return states[key]


@pytest.mark.parametrize("name", model_names())
def test_keys_equal_torch_state_dict(name: str) -> None:
    model = ChildNet(_arch(name))
    expected = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert child_keys_shapes(plan_network(child_arch_def(_arch(name)))) == expected


@pytest.mark.parametrize("name", FAST)
def test_calibrated_weights_make_an_input_dependent_net(name: str, states) -> None:
    q = _quality(_state(states, name), name)
    assert _good(q), q


def test_uncalibrated_weights_fail_the_quality_check() -> None:
    """The check above can fail: raw seeded_state weights give input-blind logits."""
    keys = child_keys_shapes(plan_network(child_arch_def(_arch("cream-14"))))
    q = _quality(seeded_state(keys, 1), "cream-14")
    assert not _good(q), q
    assert q["input_share"] < 0.1 * MIN_INPUT_SHARE, q


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_calibrated_weights_quality_larger_nets(name: str, states) -> None:
    q = _quality(_state(states, name), name)
    assert _good(q), q


@pytest.mark.parametrize("name", FAST)
def test_bn_statistics_fit_activations(name: str, states) -> None:
    state = _state(states, name)
    res = child_spec(name).resolution
    # on the calibration batch every BN input is standardised exactly, up to the unbiased
    # variance's (n-1)/n (n >= 4 images x 2 x 2 in cream-14's last stage, so RMS >= sqrt(15/16))
    # and BN's eps (1e-5 against running variances >= 0.02: under 1e-3 relative)
    trace: Dict[str, float] = {}
    forward_child(state, _arch(name), seeded_input(CALIBRATION_BATCH, res, 0), bn_trace=trace)
    assert len(trace) == sum(1 for k in state if k.endswith(".running_var"))
    lowest = np.sqrt(1.0 - 1.0 / (CALIBRATION_BATCH * 2 * 2))
    assert all(lowest * (1 - 1e-3) <= v <= 1.0 + 1e-6 for v in trace.values()), trace
    # on other inputs they stay O(1)
    trace.clear()
    forward_child(state, _arch(name), seeded_input(8, res, 123), bn_trace=trace)
    assert all(1.0 / MAX_BN_DRIFT < v < MAX_BN_DRIFT for v in trace.values()), trace


def test_recalibration_is_idempotent(states) -> None:
    """Calibrating the calibrated weights again measures the stored statistics and unit head gains."""
    name = "cream-14"
    state = _state(states, name)
    cal = calibrate_child(state, _arch(name),
                          seeded_input(CALIBRATION_BATCH, child_spec(name).resolution, 0))
    for bn, (mean, var) in cal.bn_stats.items():
        np.testing.assert_allclose(mean, state[bn + ".running_mean"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(var, state[bn + ".running_var"], rtol=1e-6)
    assert cal.head_log2_gains == {"conv_head.weight": 0, "classifier.weight": 0,
                                   "classifier.bias": 0}


def test_only_bn_statistics_and_head_gains_change(states) -> None:
    name = "cream-14"
    state = _state(states, name)
    raw = seeded_state(child_keys_shapes(plan_network(child_arch_def(_arch(name)))), 1)
    assert list(state) == list(raw)
    for k, v in state.items():
        assert v.dtype == raw[k].dtype and v.shape == raw[k].shape, k
        if k.endswith((".running_mean", ".running_var")):
            assert not np.array_equal(v, raw[k]), k
        elif k in ("conv_head.weight", "classifier.weight", "classifier.bias"):
            ratio = v.astype(np.float64) / raw[k].astype(np.float64)
            gain = ratio.flat[0]
            assert np.all(ratio == gain) and np.log2(gain) == round(np.log2(gain)) and gain != 1, k
        else:
            assert np.array_equal(v, raw[k]), k


def test_deterministic_and_seed_dependent(states) -> None:
    name = "cream-14"
    a = _state(states, name)
    b = seeded_child_state(_arch(name), 1)
    assert list(a) == list(b)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    c = seeded_child_state(_arch(name), 1, calib_seed=1)
    assert not np.array_equal(a["bn1.running_var"], c["bn1.running_var"])
    assert np.array_equal(a["conv_stem.weight"], c["conv_stem.weight"])
    d = _state(states, name, seed=2)
    assert not np.array_equal(a["conv_stem.weight"], d["conv_stem.weight"])


def test_other_arch_needs_resolution() -> None:
    arch = [[0], [3], [3, 3], [3, 3], [3], [3, 1], [0]]  # not a released net
    with pytest.raises(ValueError, match="not a released child net"):
        seeded_child_state(arch, 1)
    state = seeded_child_state(arch, 1, resolution=32, num_classes=10)
    y = forward_child(state, arch, seeded_input(2, 32, 5))
    assert y.shape == (2, 10) and np.isfinite(y).all()


def test_numpy_forward_equals_torch_reference(states) -> None:
    name = "cream-14"
    state = _state(states, name)
    model = _torch_model(name, state)
    x = seeded_input(2, child_spec(name).resolution, 123)
    y = forward_child(state, _arch(name), x)
    with torch.no_grad():
        y32 = model(torch.from_numpy(x)).numpy().astype(np.float64)
        y64 = model.double()(torch.from_numpy(x).double()).numpy()
    assert float(np.abs(y - y64).max()) <= F64_ATOL
    assert float(np.abs(y - y32).max()) <= F32_ATOL
    # the comparison can fail: a 1 % change of one BN's variance moves the logits far beyond both
    bad = dict(state)
    bad["blocks.3.0.bn2.running_var"] = state["blocks.3.0.bn2.running_var"] * np.float32(1.01)
    assert float(np.abs(forward_child(bad, _arch(name), x) - y32).max()) > 10 * F32_ATOL


@pytest.mark.golden
@pytest.mark.parametrize("name", FAST)
def test_numpy_forward_equals_official_float64(name: str, states) -> None:
    """The official model run in float64 on the same weights (golden ``raw64``/``ema64``)."""
    with np.load(GOLDEN) as z:
        gold = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(name + "/")}
    x = seeded_input(2, int(gold["resolution"]), int(gold["input_seed"]))
    for key, seed in (("raw64", 1), ("ema64", 2)):
        y = forward_child(_state(states, name, seed), _arch(name), x)
        assert float(np.abs(y - gold[key]).max()) <= F64_ATOL, key
        # float32 official logits are the same function up to float32 rounding
        assert float(np.abs(y - gold[key[:3]]).max()) <= F32_ATOL, key
