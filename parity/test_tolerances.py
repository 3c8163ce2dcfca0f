"""The framework-free verdict logic: metrics, floors, named tolerances, first divergence."""
from __future__ import annotations

import math

import numpy as np
import pytest

from parity import tolerances as C


def test_metrics_relative_to_scale_with_floor() -> None:
    ref = np.array([1.0, 1e-9, -2.0])
    got = ref + np.array([1e-6, 1e-6, 0.0])
    tol = C.Tolerance(0.0, 1e-5, "test")  # floor 1: relative to the tensor's scale (2.0)
    m = C.tensor_metrics(got, ref, tol)
    assert m.max_abs == pytest.approx(1e-6)
    assert m.max_rel == pytest.approx(1e-6 / 2.0)  # the ~0 element is measured on the scale
    assert m.excess == pytest.approx(1e-6 / (1e-5 * 2.0))
    tight = C.Tolerance(0.0, 1e-5, "elementwise", floor=1e-12)
    assert C.tensor_metrics(got, ref, tight).excess > 1.0  # without the floor it would fail


def test_scalars_compare() -> None:
    tol = C.Tolerance(0.0, 1e-5, "test")
    m = C.tensor_metrics(np.float32(2.0), np.float64(2.0 + 1e-4), tol)
    assert m.max_abs == pytest.approx(1e-4) and m.excess > 1.0 and m.worst_index == ()
    assert C.compare_arrays(np.array(3.0), np.array(3.0), category="loss", stage="loss/fp64",
                            name="l", order=0, precision="fp64").ok


def test_atol_bound_and_verdict() -> None:
    ref = np.zeros((2, 3), np.float32)
    c = C.compare_arrays(ref + 2e-5, ref, category="logits", stage="forward/eval/fp32", name="l",
                         order=0, precision="fp32")
    assert not c.ok and c.tolerance == "LOGITS_FP32" and c.note.startswith("worst element")
    c = C.compare_arrays(ref + 5e-6, ref, category="logits", stage="forward/eval/fp32", name="l",
                         order=0, precision="fp32")
    assert c.ok


def test_shape_mismatch_missing_and_nan_fail() -> None:
    kw = dict(category="layer", stage="forward/eval/fp64", name="x", order=0, precision="fp64")
    a = np.ones((2, 3))
    assert "shape mismatch" in C.compare_arrays(a.T, a, **kw).note
    assert C.compare_arrays(None, a, **kw).note == "missing in the port"
    assert not C.compare_arrays(np.full((2, 3), np.nan), a, **kw).ok
    both_nan = np.full((2, 3), np.nan)
    assert C.compare_arrays(both_nan, both_nan.copy(), **kw).ok  # same non-finite values agree


def test_reference_accuracy_raises_the_fp32_bound() -> None:
    ref = np.array([1.0, 2.0], np.float32)
    truth = np.array([1.0, 2.0 + 1e-3])  # the reference itself is 1e-3 off in fp32
    got = ref + np.array([0.0, 5e-3], np.float32)
    kw = dict(category="layer", stage="forward/eval/fp32", name="x", order=0, precision="fp32")
    assert not C.compare_arrays(got, ref, **kw).ok
    c = C.compare_arrays(got, ref, truth=truth, **kw)
    assert c.ok and c.ref_fp32_error == pytest.approx(1e-3, rel=1e-3)
    worse = ref + np.array([0.0, 2e-2], np.float32)  # 20x the reference's own error: fails
    assert not C.compare_arrays(worse, ref, truth=truth, **kw).ok


def test_first_divergence_follows_stage_then_execution_order() -> None:
    mk = lambda st, o, ok, n: C.Comparison("layer", st, n, o, ok=ok)  # noqa: E731
    cs = [mk("forward/eval/fp32", 0, False, "a"), mk("forward/eval/fp64", 5, False, "b"),
          mk("forward/eval/fp64", 3, True, "c"), mk("forward/eval/fp64", 7, False, "d")]
    assert C.first_divergence(cs).name == "b"
    assert C.first_divergence([c for c in cs if c.ok]) is None


def test_every_category_has_a_named_tolerance_with_a_reason() -> None:
    for cat in C.CATEGORIES:
        for prec in ("fp32", "fp64"):
            t = C.tolerance_for(cat, prec)
            assert t.reason and (t.atol > 0 or t.rtol > 0)
            assert C.tolerance_name(t).isupper()
    with pytest.raises(ValueError):
        C.tolerance_for("nonsense", "fp32")


def test_json_safe() -> None:
    c = C.Comparison("layer", "forward/eval/fp64", "x", 0, max_abs=math.inf)
    assert c.as_dict()["max_abs"] == "inf"


def test_readme_tolerance_table_is_generated_from_the_constants() -> None:
    from pathlib import Path

    text = (Path(__file__).parent / "README.md").read_text()
    begin, end = "<!-- tolerance table: begin -->\n", "\n<!-- tolerance table: end -->"
    table = text[text.index(begin) + len(begin):text.index(end)]
    assert table == C.tolerance_table_markdown()
