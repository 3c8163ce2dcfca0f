"""The pieces both ``parity run`` engines share (:mod:`parity.engine`), on hand-made captures."""
from __future__ import annotations

import numpy as np

from parity.capture import Capture
from parity.engine import compare_out_grads, grad_context, owner, param_and_input_grads, stage_error


def _capture(out_grads: list, param_grads: dict) -> Capture:
    cap = Capture("test", out_grads=out_grads, param_grads=param_grads)
    cap.input_grad = np.ones(2)
    return cap


def _ref() -> Capture:
    g = np.array([1.0, -2.0])
    return _capture([("head", g), ("body", g * 3), ("body", g * 5)], {"body.weight": g * 10})


def test_same_names_pair_every_call_in_backward_order() -> None:
    t = _ref()
    p = _capture(list(t.out_grads), dict(t.param_grads))
    p.out_grads[2] = ("body", p.out_grads[2][1] * (1 + 1e-3))  # the second call of body differs
    comps, curve, first_at = compare_out_grads(t, p, "backward/fp64", "fp64", None, grad_context(t))
    assert [(c.name, c.order, c.ok) for c in comps] == [
        ("d/d head", 0, True), ("d/d body", 1, True), ("d/d body", 2, False)]
    assert first_at == {"head": 0, "body": 1} and [m for m, *_ in curve] == ["head", "body", "body"]


def test_pairs_alias_and_skip() -> None:
    t = _ref()
    p = _capture([("p_body", g) for _, g in t.out_grads[1:]], {})
    # body's port twin is p_body; "head" unpaired: left out
    comps, _, _ = compare_out_grads(t, p, "backward/fp64", "fp64", None, 0.0,
                                    pairs={"body": "p_body"})
    assert [c.name for c in comps] == ["d/d body", "d/d body"] and all(c.ok for c in comps)
    comps, _, _ = compare_out_grads(t, p, "backward/fp64", "fp64", None, 0.0,
                                    pairs={"body": "p_body"}, skip=["body"])
    assert comps == []
    # head's gradient stands for body (a fused activation): body's first call is compared with
    # it (and differs); head ran once, so the second call keeps body's own gradient
    comps, _, _ = compare_out_grads(t, p, "backward/fp64", "fp64", None, 0.0,
                                    pairs={"body": "p_body"}, alias_of={"body": "head"})
    assert [c.ok for c in comps] == [False, True]


def test_parameter_gradients_follow_their_module_and_missing_ones_fail() -> None:
    t = _ref()
    comps = param_and_input_grads({}, np.ones(2), t, None, "backward/fp64", "fp64",
                                  {"body": 1}, None, "stem")
    assert [(c.name, c.order, c.ok) for c in comps] == [("body.weight", 1.5, False),
                                                       ("d/d input", 4, True)]
    assert comps[0].note == "missing in the port" and comps[1].module == "stem"
    assert owner("a.b.weight") == "a.b" and owner("bias") == "bias"


def test_a_stage_that_raised_is_a_failed_comparison_with_one_line() -> None:
    try:
        raise RuntimeError("first line\nsecond line")
    except RuntimeError as e:
        c = stage_error("forward/eval/fp64", "layer", "eval", e)
    assert not c.ok and c.note == "error: RuntimeError: first line" and c.order == -1
