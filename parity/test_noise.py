"""The measured fp32 noise model (:mod:`parity.noise`), framework-free."""
from __future__ import annotations

import math

import numpy as np
import pytest

from parity.noise import (NOISE_FACTOR, NOISE_MEMBERS, NoiseAccumulator, NoiseModel, Perturbation,
                          ensemble, max_abs_diff, measure_noise)


def test_perturbation_moves_every_float_by_one_ulp() -> None:
    a = np.array([1.0, -2.5, 0.0, 3e-20, 7.0], np.float32)
    p = Perturbation(1, seed=4)
    b = p.perturb("w", a)
    assert b.dtype == np.float32 and b[2] == 0.0  # zeros stay exactly zero (zero-started BN)
    ulp = np.spacing(np.abs(a))
    moved = np.abs(b.astype(np.float64) - a)
    assert np.all((moved[a != 0] > 0) & (moved[a != 0] <= ulp[a != 0] * 1.0000001))
    assert np.array_equal(b, p.perturb("w", a))  # deterministic per member, seed and name
    assert not np.array_equal(b, Perturbation(2, seed=4).perturb("w", a))
    assert Perturbation(0).perturb("w", a) is not None and np.array_equal(Perturbation(0).perturb("w", a), a)
    ints = np.arange(4)
    assert np.array_equal(p.perturb("y", ints), ints)  # labels untouched
    f64 = np.array([1.0])
    assert 0 < abs(p.perturb("d", f64)[0] - 1.0) < 1e-15  # one ulp of its own dtype


def test_ensemble_cycles_threads() -> None:
    e = ensemble(3, seed=1, threads=(1, 2))
    assert [p.member for p in e] == [1, 2, 3] and [p.threads for p in e] == [1, 2, 1]
    assert len(ensemble()) == NOISE_MEMBERS


def test_max_abs_diff_edge_cases() -> None:
    assert max_abs_diff(np.zeros(3), np.zeros(3)) == 0.0
    assert max_abs_diff(np.zeros(3), np.zeros(4)) == math.inf
    assert max_abs_diff(np.array([np.nan, 1.0]), np.array([np.nan, 1.5])) == 0.5
    assert max_abs_diff(np.array([np.nan]), np.array([1.0])) == math.inf
    assert max_abs_diff(np.zeros(0), np.zeros(0)) == 0.0


def _toy_reference(x: np.ndarray, w: np.ndarray):
    """An ill-conditioned fp32 computation: a sum of large cancelling terms."""
    def run(p: Perturbation):
        xs, ws = p.perturb("x", x), p.perturb("w", w)
        y = (xs * ws).astype(np.float32)
        return {"sum": np.array([y.sum(dtype=np.float32)]), "prod": y}
    return run


def test_measure_noise_and_judge() -> None:
    rng = np.random.RandomState(0)
    x = (rng.standard_normal(1000) * 1e3).astype(np.float32)
    w = rng.standard_normal(1000).astype(np.float32)
    run = _toy_reference(x, w)
    model, base = measure_noise(run, members=3)
    assert model.members == 3 and set(model.noise) == {"sum", "prod"}
    assert 0 < model.of("sum") < 1e-1 and model.of("prod") > 0
    exact = {"sum": np.array([float((x.astype(np.float64) * w).sum())])}
    model2, _ = measure_noise(run, members=3, truth=exact)
    assert model2.of("sum") >= model.of("sum") and model2.members == 4
    # a correct independent computation (float64 then rounded) is within the bound ...
    port = np.array([np.float32((x.astype(np.float64) * w).sum())])
    v = model2.judge("sum", port, base["sum"])
    assert v.ok and v.ratio <= NOISE_FACTOR and v.error == max_abs_diff(port, base["sum"])
    # ... a wrong one (a term dropped) is far outside it
    wrong = np.array([base["sum"][0] - x[0] * w[0]])
    bad = model2.judge("sum", wrong, base["sum"])
    assert not bad.ok and bad.ratio > 100 * NOISE_FACTOR


def test_noise_model_floor_and_ceiling() -> None:
    m = NoiseModel({"t": 1e-6}, members=3, factor=32.0)
    assert m.allowed("t") == pytest.approx(3.2e-5)
    assert m.allowed("t", floor=1e-4) == pytest.approx(1e-4)
    assert m.allowed("t", ceiling=1e-5) == pytest.approx(1e-5)
    assert m.allowed("unmeasured", floor=2e-3) == 2e-3 and math.isnan(m.of("unmeasured"))
    v = m.judge("t", np.array([0.0]), np.array([0.0]))
    assert v.ok and v.ratio == 0.0


def test_accumulator_keeps_the_largest_spread() -> None:
    acc = NoiseAccumulator(factor=8.0)
    base = {"a": np.zeros(2), "b": np.ones(1)}
    acc.add(1, {"a": np.array([1e-7, 0.0]), "b": np.ones(1)}, base)
    acc.add(2, {"a": np.array([0.0, 3e-7])}, base)
    assert acc.model.members == 2 and acc.model.of("a") == pytest.approx(3e-7)
    assert acc.model.of("b") == 0.0 and acc.model.factor == 8.0


def test_measure_noise_switches_and_restores_threads() -> None:
    calls = []

    def set_threads(n):
        calls.append(n)
        return lambda: calls.append("restored")

    measure_noise(lambda p: {"v": np.array([1.0])}, members=2, set_threads=set_threads)
    assert calls == [1, "restored", 2, "restored"]
    with pytest.raises(ValueError):
        measure_noise(lambda p: {}, members=0)
