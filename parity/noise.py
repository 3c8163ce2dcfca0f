"""Measured float32 noise: how far *correct* fp32 runs of the reference land from each other.

A fixed tolerance guesses how much fp32 rounding a correct port may show; where the computation
amplifies rounding (small-batch BatchNorm, zero-started BN biases, a chaotic training trajectory)
the guess is wrong and a correct port fails. The noise model measures it instead, from the reference
framework itself:

* the **base run**: the reference in fp32, unperturbed (what the port is compared with);
* an **ensemble** of :data:`NOISE_MEMBERS` further fp32 runs of the same reference, each with every
  floating-point input and weight moved by one unit in the last place (a random sign per element,
  seeded: :meth:`Perturbation.perturb`), and with another thread count where the reference allows
  it (other reduction orders). Each member is a correct fp32 computation of the same thing, as
  the port is;
* the reference's **fp64 run** where there is one: its distance from the base run is the base
  run's own rounding error, counted like one more member;
* per compared tensor, the **noise** = the largest ``max |member - base|`` over the members.

The port is then held to a stated multiple of that spread: ``|port - base| <= NOISE_FACTOR *
noise`` (elementwise max), raised to the command's fixed named tolerance where that is larger (the
fixed tolerances were measured on well-conditioned cases and stay valid there) and capped by a
ceiling where one applies. Every report states per tensor the error, the noise and their ratio.
fp64 stays the semantic check: fp32 noise says nothing about *what* is computed.

Generic use (``parity run --torch/--paddle`` pairs as well as Cream's commands)::

    def run_reference(p: Perturbation) -> Dict[str, np.ndarray]:
        model = build(); load(model, p.perturb_all(weights)); return outputs(model, p.perturb("x", x))
    noise = measure_noise(run_reference)             # base + NOISE_MEMBERS perturbed runs
    noise.judge("logits", port_out, base_out)        # -> NoiseVerdict(error, noise, ratio, ok)

Stepwise harnesses (``parity train-step``'s free run) feed members as they go with
:class:`NoiseAccumulator`, so no member's whole trajectory is kept in memory. Framework-free.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["judge_with_noise", "NOISE_MEMBERS", "NOISE_FACTOR", "NOISE_THREADS", "Perturbation", "ensemble",
           "NoiseAccumulator", "NoiseModel", "NoiseVerdict", "measure_noise", "max_abs_diff"]

#: Perturbed fp32 runs per measurement (plus the fp64 run where there is one); each costs one
#: reference run. Three: with the fp64 run, four estimates of the spread per tensor, and the
#: measured false-alarm rate is 0 with it (bench/false_alarm_bench.py).
NOISE_MEMBERS: int = 3
#: A port is held to this multiple of the measured noise. An independent, correct fp32
#: implementation is not one more ensemble member: its kernels round differently at every op
#: (other reduction orders, another log-softmax, oneDNN vs Eigen convolutions), where a member only
#: moves the inputs by one ulp. Measured on the correct Paddle port (bench/false_alarm_bench.py,
#: README "Tolerances"): error / noise up to 20 (the losses of a search step from the official
#: initialisation, Paddle vs the official file), while the injected faults give 48 and more (weight
#: decay doubled) up to 1e6. 32 = a power of two between the two, 1.6x above the largest measured
#: ratio of a correct port.
NOISE_FACTOR: float = 32.0
#: Thread counts the members cycle through (reduction order differs with the thread count in
#: torch's CPU kernels). The base run and the port keep the harness's own setting.
NOISE_THREADS: Tuple[int, ...] = (1, 2)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` in float64 (0 for empty arrays, inf on a shape mismatch or a lone NaN)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return math.inf
    if x.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x - y)
    if np.isnan(d).any():
        both = np.isnan(x) & np.isnan(y)
        if (np.isnan(d) & ~both).any():
            return math.inf
        d = np.where(both, 0.0, d)
    return float(d.max())


@dataclass(frozen=True)
class Perturbation:
    """How one ensemble member differs from the base run (``member == 0``: not at all)."""

    member: int
    seed: int = 0
    threads: Optional[int] = None  # None: keep the caller's thread setting

    @property
    def is_base(self) -> bool:
        return self.member == 0

    def perturb(self, name: str, array: np.ndarray) -> np.ndarray:
        """``array`` with every floating-point element moved by one ulp of its own dtype, up or down
        at random (seeded by the member, the seed and ``name``); other dtypes and the base run
        unchanged. Zeros stay zero (a zero-started BN bias is exactly zero in every run)."""
        a = np.asarray(array)
        if self.is_base or a.dtype.kind != "f" or a.size == 0:
            return a
        key = zlib.crc32(f"{self.seed}/{self.member}/{name}".encode())
        up = np.random.RandomState(key).randint(0, 2, size=a.shape).astype(bool)
        out = np.where(up, np.nextafter(a, np.asarray(np.inf, a.dtype)),
                       np.nextafter(a, np.asarray(-np.inf, a.dtype))).astype(a.dtype)
        return np.where(a == 0, a, out)

    def perturb_all(self, arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Every entry of a state dict / input dict perturbed by :meth:`perturb`."""
        return {k: self.perturb(k, v) for k, v in arrays.items()}


def ensemble(members: int = NOISE_MEMBERS, seed: int = 0,
             threads: Iterable[int] = NOISE_THREADS) -> List[Perturbation]:
    """The perturbations of an ensemble: members ``1..members``, thread counts cycling."""
    ts = list(threads) or [None]  # type: ignore[list-item]
    return [Perturbation(i, seed, ts[(i - 1) % len(ts)]) for i in range(1, members + 1)]


@dataclass(frozen=True)
class NoiseVerdict:
    """One tensor judged against the noise: its error, the measured noise and their ratio."""

    error: float  # max |port - base|
    noise: float  # largest max |member - base|
    ratio: float  # error / noise (inf if noise is 0 and error is not; 0 if both are 0)
    allowed: float  # max(NOISE_FACTOR * noise, fixed floor), capped by the ceiling if any
    ok: bool


@dataclass
class NoiseModel:
    """Per-tensor measured fp32 noise (``max |member - base|`` over the ensemble)."""

    noise: Dict[str, float] = field(default_factory=dict)
    members: int = 0
    factor: float = NOISE_FACTOR

    def of(self, name: str) -> float:
        """The measured noise of ``name`` (NaN if it was not measured)."""
        return self.noise.get(name, math.nan)

    def allowed(self, name: str, floor: float = 0.0, ceiling: Optional[float] = None) -> float:
        """The bound of ``name``: ``factor * noise``, at least ``floor``, at most ``ceiling``."""
        n = self.of(name)
        bound = max(floor, self.factor * n) if math.isfinite(n) else floor
        return min(bound, ceiling) if ceiling is not None else bound

    def judge(self, name: str, got: np.ndarray, base: np.ndarray, floor: float = 0.0,
              ceiling: Optional[float] = None) -> NoiseVerdict:
        """``got`` (the port) against ``base`` (the reference's base run) under the noise bound."""
        err = max_abs_diff(got, base)
        n = self.of(name)
        ratio = err / n if n > 0 else (0.0 if err == 0 else math.inf)
        bound = self.allowed(name, floor, ceiling)
        return NoiseVerdict(err, n, ratio, bound, bool(err <= bound))

    def as_dict(self) -> Dict[str, object]:
        return {"members": self.members, "factor": self.factor, "noise": dict(self.noise)}


class NoiseAccumulator:
    """Builds a :class:`NoiseModel` member by member (or step by step for stepwise harnesses)."""

    def __init__(self, factor: float = NOISE_FACTOR) -> None:
        self.model = NoiseModel(factor=factor)
        self._seen: set = set()

    def add(self, member: int, outputs: Mapping[str, np.ndarray],
            base: Mapping[str, np.ndarray]) -> None:
        """Record ``member``'s distance from the base run for every tensor both have."""
        self._seen.add(member)
        self.model.members = len(self._seen)
        for name, ref in base.items():
            if name in outputs:
                d = max_abs_diff(outputs[name], ref)
                self.model.noise[name] = max(self.model.noise.get(name, 0.0), d)


def measure_noise(run_reference: Callable[[Perturbation], Mapping[str, np.ndarray]],
                  members: int = NOISE_MEMBERS, seed: int = 0,
                  base: Optional[Mapping[str, np.ndarray]] = None,
                  threads: Iterable[int] = NOISE_THREADS,
                  set_threads: Optional[Callable[[Optional[int]], Callable[[], None]]] = None,
                  factor: float = NOISE_FACTOR,
                  truth: Optional[Mapping[str, np.ndarray]] = None
                  ) -> Tuple[NoiseModel, Dict[str, np.ndarray]]:
    """Run the reference unperturbed (unless ``base`` is given) and under ``members``
    perturbations; return the noise model and the base run's tensors.

    ``run_reference(p)`` runs the reference in fp32 with its weights and inputs passed through
    ``p.perturb`` and returns named arrays. ``set_threads(n)`` (optional) switches the reference to
    ``n`` threads and returns a function restoring the previous setting. ``truth`` (optional): the
    reference's fp64 results, counted as one more member.
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    ref = dict(base) if base is not None else dict(run_reference(Perturbation(0, seed)))
    acc = NoiseAccumulator(factor)
    for p in ensemble(members, seed, threads):
        restore = set_threads(p.threads) if set_threads is not None else None
        try:
            out = run_reference(p)
        finally:
            if restore is not None:
                restore()
        acc.add(p.member, out, ref)
    if truth is not None:
        acc.add(-1, truth, ref)
    return acc.model, ref


def judge_with_noise(comparison: "object", noise: float, factor: float = NOISE_FACTOR) -> None:
    """Record ``noise`` and error/noise on a :class:`parity.tolerances.Comparison`; a failing one
    passes if it is within ``factor`` x its measured noise (its named bound stays a floor). The
    one rule of `parity train-step` and the generic engine."""
    c: Any = comparison
    if not math.isfinite(noise):
        return
    c.noise = noise
    c.noise_ratio = c.max_abs / noise if noise > 0 else (0.0 if c.max_abs == 0 else math.inf)
    if c.ok or not math.isfinite(c.max_abs) or c.note.startswith(("missing", "shape")):
        return
    fixed = c.max_abs / c.excess if c.excess > 0 and math.isfinite(c.excess) else 0.0
    bound = max(fixed, factor * noise)
    c.excess = c.max_abs / bound if bound > 0 else math.inf
    c.ok = bool(c.excess <= 1.0)
    if c.ok:
        c.note = f"within NOISE_FACTOR x measured noise (error/noise {c.noise_ratio:.3g})"
