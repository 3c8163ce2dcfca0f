"""Named tolerances and the framework-free comparison of tensors: metrics, bounds, verdicts.

(``parity.compare(...)``, the Python API of generic pairs, is :func:`parity.generic.compare`.)

Everything here works on numpy arrays, so the same rules judge a torch/Paddle pair, a torch/x2paddle
pair or any two runs saved to disk.

Metrics of a tensor ``got`` against its reference ``ref`` (both taken to float64 first):

* ``max_abs``  = max |got - ref|
* ``max_rel``  = max |got - ref| / max(|ref|, floor * scale)
* ``mean_abs`` = mean |got - ref|

``scale`` is the reference tensor's largest magnitude (or, for gradients, at least a fraction of the
largest gradient of the whole model, see :data:`GRAD_CONTEXT_FLOOR`). The relative error has a
*stated floor* per tolerance: an element is never divided by less than ``floor * scale``. Without
it an element that happens to be ~0 (a ReLU output, a gradient that cancels) turns a harmless 1e-9
difference into an "infinite" relative error. ``floor = 1`` makes the error relative to the tensor's
scale, which is how float rounding behaves: a sum of K terms is off by ~eps * sum|terms| whatever its
own value.

A comparison passes iff **every element** satisfies ``|got - ref| <= atol + rtol * max(|ref|,
floor * scale)``; a shape mismatch, a missing tensor or a NaN/Inf on one side only always fails.
Tolerances are named constants per category and precision (see :data:`TOLERANCES`), each with the
reason for its size; ``README`` lists them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

__all__ = [
    "Tolerance", "TOLERANCES", "CATEGORIES", "STAGE_ORDER", "GRAD_CONTEXT_FLOOR", "TINY",
    "FP32_ACCURACY_FACTOR",
    "LOGITS_FP32", "LAYER_FP32", "LAYER_TRAIN_FP32", "BN_STATS_FP32", "LOSS_FP32", "GRAD_FP32",
    "OPTIM_PARAMS_FP32", "LR_VALUES", "X2PADDLE_LOGITS_FP32", "STRICT_FP64", "GRAD_FP64",
    "OPTIM_PARAMS_FP64", "BN_STATS_FP64",
    "tolerance_for", "Metrics", "tensor_metrics", "Comparison", "compare_arrays",
    "compare_named", "tolerance_name", "tolerance_table_markdown", "STAGE_CATEGORIES",
    "first_divergence",
]

#: Absolute floor of the relative error's denominator, so an all-zero reference cannot divide by 0.
TINY: float = 1e-30

#: Gradients are compared on a scale of at least this fraction of the largest gradient in the model.
#: Some gradients are mathematically zero (a bias right before a train-mode BatchNorm, whose batch
#: mean removes any constant shift): both frameworks then return rounding noise (~1e-9 in fp32)
#: whose "relative" difference is 100 %. Measured against 1 % of the model's largest gradient it is
#: ~1e-6 (fp32), while genuine gradients are compared on their own scale.
GRAD_CONTEXT_FLOOR: float = 1e-2


@dataclass(frozen=True)
class Tolerance:
    """Elementwise bound ``|got - ref| <= atol + rtol * max(|ref|, floor * scale)`` and its reason.

    ``floor`` defaults to 1: relative to the tensor's scale.
    """

    atol: float
    rtol: float
    reason: str
    floor: float = 1.0

    def describe(self) -> str:
        parts = []
        if self.atol:
            parts.append(f"abs {self.atol:.0e}")
        if self.rtol:
            what = "of scale" if self.floor >= 1.0 else f"rel (floor {self.floor:g})"
            parts.append(f"{self.rtol:.0e} {what}")
        return " + ".join(parts) if parts else "exact"


# --- float32 on CPU: the precision models are deployed in ---------------------------------------
# The two frameworks reach fp32 results through different kernels (oneDNN vs. Eigen/im2col
# convolutions, other summation orders in reductions), so each op adds differences of a few ulp
# (fp32 ulp = 1.2e-7 relative) that accumulate with depth. Each comment gives the largest value a
# correct port showed on the six released child nets at their test resolution, batch 2, seeded
# calibrated weights ("measured"); every bound is above it, and far below what a real mistake
# produces (a wrong BN epsilon alone moves outputs by ~5e-4 of their scale). Where fp32 rounding is
# amplified beyond a bound (ill-conditioned inputs), FP32_ACCURACY_FACTOR applies.

#: Classifier outputs: the issue's 1e-5 absolute, plus 1e-5 of the logits' scale, because rounding
#: is relative: trained-like logits reach O(5-10), where one fp32 ulp is ~5e-7. Measured: 7.8e-6
#: of scale (the reference's own fp32 error is of the same size).
LOGITS_FP32 = Tolerance(1e-5, 1e-5, "1e-5 absolute plus 1e-5 of the logits' scale; measured up to "
                                    "7.8e-6 of scale")
#: Module outputs in eval mode, relative to each tensor's scale. Measured: 4.8e-6.
LAYER_FP32 = Tolerance(0.0, 1e-5, "a few fp32 ulp per op accumulated over ~20 blocks; measured up "
                                  "to 4.8e-6 of scale")
#: Module outputs in train mode: BatchNorm divides by the *batch* standard deviation, which over a
#: small batch (N*H*W = 8 in the last stages at 64 px, batch 2) can be far smaller than the running
#: one and amplifies upstream rounding. Measured: 1.2e-5.
LAYER_TRAIN_FP32 = Tolerance(0.0, 1e-4, "train-mode BN divides by the small-batch std, amplifying "
                                        "rounding; measured up to 1.2e-5 of scale")
#: BN running mean/var after one train-mode pass: fp32 reductions in another order, and Paddle's
#: float32 momentum attribute (0.9 -> 0.89999998). Measured: 6.1e-7.
BN_STATS_FP32 = Tolerance(0.0, 1e-5, "fp32 batch reductions in another order and Paddle's float32 "
                                     "momentum; measured up to 6.1e-7 of scale")
#: Scalar losses and their gradient w.r.t. the logits. Measured: 8.8e-7.
LOSS_FP32 = Tolerance(0.0, 1e-5, "log-softmax and batch means in fp32; measured up to 8.8e-7 of "
                                 "scale")
#: Parameter, input and module-output gradients: the issue's 1e-4, relative to the tensor's scale
#: (at least GRAD_CONTEXT_FLOOR of the model's largest gradient). Measured: 2.7e-5.
GRAD_FP32 = Tolerance(0.0, 1e-4, "backward doubles the op count and sums over batch and space; "
                                 "measured up to 2.7e-5 of scale")
#: Parameters after k *end-to-end* fp32 training steps (each framework its own forward, backward and
#: update), as ``parity train-step`` runs them. Each step moves a weight by up to lr * |grad|, at the
#: official learning rates comparable to the weight itself, so fp32 gradient differences (up to
#: GRAD_FP32) pass into the weights almost undamped and compound through the next steps' train-mode
#: BatchNorm. (``parity run`` compares optimizers in fp64 on identical gradients instead.)
OPTIM_PARAMS_FP32 = Tolerance(0.0, 1e-3, "k end-to-end fp32 steps at lr up to 1.0 carry gradient "
                                         "differences (<= 1e-4) into the weights and compound")
#: Learning-rate values: float64 scalar arithmetic on both sides.
LR_VALUES = Tolerance(0.0, 1e-12, "schedules are float64 scalar arithmetic; only the last bits "
                                       "may differ")
#: Logits of the x2paddle-traced program against torch: Paddle kernels in fp32, like the port.
#: Measured: 8.6e-6 of scale.
X2PADDLE_LOGITS_FP32 = Tolerance(1e-5, 1e-5, "x2paddle's program runs Paddle kernels in fp32, same "
                                             "bound as the port's logits; measured up to 8.6e-6")

#: fp32 results are also held to the reference's own accuracy: a tensor's bound is at least this
#: factor times max |reference fp32 - reference fp64| (the fp64 run of the same reference on the
#: same inputs is the exact answer to ~1e-12). Where the computation is ill-conditioned, e.g. a
#: train-mode BatchNorm over a small batch whose batch variance of a channel is ~1e-5 (an
#: almost-constant channel, typical of trained nets), both frameworks' rounding errors are
#: amplified alike, and what can be asked of the port is to be as accurate as the reference.
#: Two independent fp32 implementations land within a few times each other's error of the exact
#: value; 10x that is a port that loses accuracy.
FP32_ACCURACY_FACTOR: float = 10.0

# --- float64: the semantic check --------------------------------------------------------------
#: Parameters after k optimizer steps on identical gradients (the optimizer stages always run in
#: float64, both frameworks fed the reference's gradients, see ``parity.runner``). Paddle's
#: optimizers hold the learning rate in a float32 tensor and their momentum/decay attributes as
#: float32 (0.9 -> 0.89999998), which moves an update by ~3e-8 of itself; at lr 1.0 an update is as
#: large as a weight. Measured: 3.3e-8 of scale. A different update rule is off by far more: a
#: missing weight decay by 3e-4 after 3 steps, Paddle's own RMSProp (mean square from 0) by > 1e-2.
OPTIM_PARAMS_FP64 = Tolerance(0.0, 1e-6, "Paddle's optimizer attributes and LR tensor are float32: "
                                         "updates differ by ~3e-8 of themselves")
#: In float64 rounding noise is ~1e-16 per op and stays below ~1e-12 of a tensor's scale through
#: the whole network, in eval and in train mode, for BN statistics and losses (measured on all six
#: nets; the float64 reference uses Paddle's float32-rounded BN epsilon and momentum, see
#: ``parity.engine.align_bn_constants_to_paddle``). A difference above 1e-9 is a difference in *what
#: is computed*, not in how it is rounded: this is what catches a hard-sigmoid slope of 0.1666667
#: instead of 1/6 (~2e-8 of the gate's scale, which fp32 rounding would hide) and names the module.
STRICT_FP64 = Tolerance(0.0, 1e-9, "fp64 rounding leaves < 1e-12 of scale (measured 1e-13); more is "
                                   "a semantic difference")
#: Gradients in float64: torch's hardsigmoid backward multiplies by ``(float)1/6`` even for double
#: tensors (2.98e-8 relative), Paddle by the double 1/6. That reference quirk, not rounding, sets
#: the floor (measured up to ~6e-8 of scale); a real backward difference is orders of magnitude
#: larger.
GRAD_FP64 = Tolerance(0.0, 1e-6, "torch's fp64 hardsigmoid backward uses the float32 constant 1/6 "
                                 "(3e-8 relative); measured up to 6.8e-8 of scale")
#: BN statistics in float64 when the reference keeps torch's double BN momentum (runs that do not
#: use ``align_bn_constants_to_paddle``): Paddle's float32 momentum (0.89999998) moves the running
#: statistics by 2.4e-8 * |old - batch|, up to ~1e-6 of their scale. ``parity run`` aligns the
#: constants and holds BN statistics to STRICT_FP64 instead.
BN_STATS_FP64 = Tolerance(0.0, 1e-5, "Paddle's BN momentum attribute is float32 (0.9 -> "
                                     "0.89999998) even for fp64 tensors")


#: Comparison categories, in report order.
CATEGORIES: Tuple[str, ...] = ("logits", "layer", "layer_train", "bn_stats", "loss", "param_grad",
                               "input_grad", "out_grad", "optim_params", "lr", "x2paddle_logits")

#: ``(category, precision) -> Tolerance``; precision is ``"fp32"`` or ``"fp64"``.
TOLERANCES: Dict[Tuple[str, str], Tolerance] = {
    ("logits", "fp32"): LOGITS_FP32,
    ("layer", "fp32"): LAYER_FP32,
    ("layer_train", "fp32"): LAYER_TRAIN_FP32,
    ("bn_stats", "fp32"): BN_STATS_FP32,
    ("loss", "fp32"): LOSS_FP32,
    ("param_grad", "fp32"): GRAD_FP32,
    ("input_grad", "fp32"): GRAD_FP32,
    ("out_grad", "fp32"): GRAD_FP32,
    ("optim_params", "fp32"): OPTIM_PARAMS_FP32,
    ("lr", "fp32"): LR_VALUES,
    ("lr", "fp64"): LR_VALUES,
    ("x2paddle_logits", "fp32"): X2PADDLE_LOGITS_FP32,
    ("param_grad", "fp64"): GRAD_FP64,
    ("input_grad", "fp64"): GRAD_FP64,
    ("out_grad", "fp64"): GRAD_FP64,
    ("optim_params", "fp64"): OPTIM_PARAMS_FP64,
}
for _cat in CATEGORIES:
    TOLERANCES.setdefault((_cat, "fp64"), STRICT_FP64)

#: Stages in the order the harness runs them; "first divergence" follows this order, then the
#: execution order inside a stage.
STAGE_ORDER: Tuple[str, ...] = (
    "forward/eval/fp64", "forward/train/fp64", "bn_stats/fp64", "loss/fp64", "backward/fp64",
    "optim/sgd/fp64", "optim/rmsproptf/fp64",
    "forward/eval/fp32", "forward/train/fp32", "bn_stats/fp32", "loss/fp32", "backward/fp32",
    "loss/shared/fp32", "lr/schedules", "x2paddle/eval/fp32",
)


def tolerance_for(category: str, precision: str) -> Tolerance:
    """The named tolerance of ``category`` at ``precision`` ('fp32' or 'fp64')."""
    try:
        return TOLERANCES[(category, precision)]
    except KeyError:
        raise ValueError(f"no tolerance for category {category!r} at {precision!r}") from None


@dataclass(frozen=True)
class Metrics:
    """Error of one tensor against its reference."""

    max_abs: float
    max_rel: float  # with the tolerance's floor (relative to scale when floor >= 1)
    mean_abs: float
    ref_scale: float  # the scale the floor refers to
    worst_index: Tuple[int, ...]  # where |got - ref| / allowed is largest
    excess: float  # max over elements of |got - ref| / (atol + rtol * denom); <= 1 means within


def tensor_metrics(got: np.ndarray, ref: np.ndarray, tol: Tolerance,
                   scale: Optional[float] = None, min_allowed: float = 0.0) -> Metrics:
    """Max abs, max rel (with ``tol.floor``), mean abs and the worst element of ``got - ref``.

    ``scale`` defaults to max |ref|; a larger one may be given (gradients, see
    :data:`GRAD_CONTEXT_FLOOR`). ``min_allowed`` raises every element's bound to at least that
    absolute value (see :data:`FP32_ACCURACY_FACTOR`). ``excess`` is how far the worst element is
    over the bound (1.0 = exactly at it). Shapes must be equal; NaN/Inf where the other side
    differs counts as an infinite error.
    """
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, (), 0.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff = np.asarray(a - b)  # an ndarray even for 0-d inputs (a - b is then a numpy scalar)
        np.abs(diff, out=diff)
        worst = int(np.argmax(diff))  # argmax stops at a NaN, and an Inf is the maximum
        finite = bool(np.isfinite(diff.flat[worst]))
        if not finite:  # NaN/Inf somewhere: equal non-finite values agree, the rest is infinite
            same = ~np.isfinite(a) & ~np.isfinite(b) & ((a == b) | (np.isnan(a) & np.isnan(b)))
            diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
            absref = np.abs(np.where(np.isfinite(b), b, 0.0))
        else:
            absref = np.abs(b)
        own = float(absref.max())
        sc = max(own, float(scale)) if scale is not None else own
        floor = max(tol.floor * sc, TINY)
        if finite and tol.floor >= 1.0:  # the denominator is floor*scale everywhere: no array ops
            allowed = max(tol.atol + tol.rtol * floor, min_allowed)
            dmax = float(diff.flat[worst])
            rel_max = dmax / floor
            excess = dmax / allowed if allowed > 0 else (math.inf if dmax > 0 else 0.0)
        else:
            denom = np.maximum(absref, floor)
            allowed_arr = tol.atol + tol.rtol * denom
            if min_allowed > 0:
                np.maximum(allowed_arr, min_allowed, out=allowed_arr)
            ratio = np.atleast_1d(diff / allowed_arr)
            ratio[np.isnan(ratio)] = 0.0  # 0 / 0: no difference where nothing is allowed
            worst = int(np.argmax(ratio))
            excess = float(ratio.flat[worst])
            rel_max = float((diff / denom).max())
            dmax = float(diff.max())
    idx = tuple(int(i) for i in np.unravel_index(worst, a.shape)) if a.ndim else ()
    return Metrics(dmax, rel_max, float(diff.mean()), sc, idx, excess)


@dataclass
class Comparison:
    """One tensor compared: what it is, where in the run, its errors and the verdict."""

    category: str
    stage: str
    name: str
    order: float  # execution order inside the stage (forward order; backward arrival order)
    module: str = ""  # the module to blame if this is the first divergence
    shape: List[int] = field(default_factory=list)
    max_abs: float = math.nan
    max_rel: float = math.nan
    mean_abs: float = math.nan
    ref_scale: float = math.nan
    excess: float = math.nan
    ref_fp32_error: float = math.nan  # fp32 stages: max |reference fp32 - reference fp64|
    tolerance: str = ""  # the named constant
    ok: bool = False
    note: str = ""  # why it failed without numbers: "missing in the port", "shape mismatch ..."
    noise: float = math.nan  # measured fp32 noise of the reference (parity.noise), where measured
    noise_ratio: float = math.nan  # max_abs / noise

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        for k, v in d.items():  # JSON has no NaN/Inf: write them as strings
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        return d

    @property
    def stage_rank(self) -> int:
        return STAGE_ORDER.index(self.stage) if self.stage in STAGE_ORDER else len(STAGE_ORDER)

    @property
    def precision(self) -> str:
        return "fp64" if self.stage.endswith("fp64") else "fp32"


def tolerance_name(tol: Tolerance) -> str:
    """The constant's name of a tolerance defined in this module (for reports)."""
    for k, v in globals().items():
        if v is tol and k.isupper():
            return k
    return tol.describe()


def compare_arrays(got: Optional[np.ndarray], ref: Optional[np.ndarray], *, category: str,
                   stage: str, name: str, order: float, precision: str, module: str = "",
                   tol: Optional[Tolerance] = None, scale: Optional[float] = None,
                   truth: Optional[np.ndarray] = None) -> Comparison:
    """Compare one tensor (``got`` = the port, ``ref`` = the reference) under its category's bound.

    ``truth``: the reference's float64 result for the same inputs. When given (fp32 stages), the
    bound is at least :data:`FP32_ACCURACY_FACTOR` times the reference's own fp32 error.
    """
    tol = tol or tolerance_for(category, precision)
    c = Comparison(category, stage, name, order, module=module or name,
                   tolerance=tolerance_name(tol))
    if ref is None or got is None:
        c.note = "missing in the reference" if ref is None else "missing in the port"
        c.max_abs = c.max_rel = c.excess = math.inf
        return c
    g = np.asarray(got)
    r = np.asarray(ref)
    c.shape = list(r.shape)
    if g.shape != r.shape:
        c.note = f"shape mismatch: port {list(g.shape)} vs reference {list(r.shape)}"
        c.max_abs = c.max_rel = c.excess = math.inf
        return c
    floor = 0.0
    if truth is not None and np.shape(truth) == r.shape:
        c.ref_fp32_error = float(np.abs(r.astype(np.float64) - np.asarray(truth, np.float64)).max())
        floor = FP32_ACCURACY_FACTOR * c.ref_fp32_error
    m = tensor_metrics(g, r, tol, scale, min_allowed=floor)
    c.max_abs, c.max_rel, c.mean_abs = m.max_abs, m.max_rel, m.mean_abs
    c.ref_scale, c.excess = m.ref_scale, m.excess
    c.ok = bool(m.excess <= 1.0)
    if not c.ok and m.worst_index:
        c.note = f"worst element at {list(m.worst_index)}"
    return c


def compare_named(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], *, category: str,
                  stage: str, precision: str, order: Optional[Mapping[str, float]] = None,
                  modules: Optional[Mapping[str, str]] = None, tol: Optional[Tolerance] = None,
                  scale: Optional[float] = None,
                  truth: Optional[Mapping[str, np.ndarray]] = None) -> List[Comparison]:
    """Compare two name -> tensor maps (names missing on either side fail), in reference order."""
    names = list(ref) + [n for n in got if n not in ref]
    order = order or {}
    modules = modules or {}
    truth = truth or {}
    return [compare_arrays(got.get(n), ref.get(n), category=category, stage=stage, name=n,
                           order=order.get(n, i), precision=precision,
                           module=modules.get(n, n), tol=tol, scale=scale, truth=truth.get(n))
            for i, n in enumerate(names)]


def first_divergence(comparisons: Iterable[Comparison]) -> Optional[Comparison]:
    """The failed comparison that comes first: by stage (:data:`STAGE_ORDER`), then execution order.

    Module outputs are recorded when a module *finishes*, so a sub-module precedes its parent and the
    first failure is the innermost module where the port stops agreeing.
    """
    failed = [c for c in comparisons if not c.ok]
    if not failed:
        return None
    return min(failed, key=lambda c: (c.stage_rank, c.order))


#: The categories each stage compares (for the README's table).
STAGE_CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "forward/eval": ("logits", "layer"), "forward/train": ("logits", "layer_train"),
    "bn_stats": ("bn_stats",), "loss": ("loss",), "backward": ("param_grad", "input_grad", "out_grad"),
    "optim": ("optim_params", "lr"), "lr": ("lr",), "x2paddle": ("x2paddle_logits",),
}


def tolerance_table_markdown() -> str:
    """The README's tolerance table: each bound ``parity run`` applies, its constant and reason."""
    rows = ["| compared | precision | constant | bound | why this size |", "|---|---|---|---|---|"]
    seen = set()
    for stage in STAGE_ORDER:
        prec = "fp64" if stage.endswith("fp64") else "fp32"
        group = next(g for g in STAGE_CATEGORIES if stage.startswith(g))
        for cat in STAGE_CATEGORIES[group]:
            if (cat, prec) in seen:
                continue
            seen.add((cat, prec))
            t = TOLERANCES[(cat, prec)]
            rows.append(f"| {cat} | {prec} | `{tolerance_name(t)}` | {t.describe()} | {t.reason} |")
    return "\n".join(rows)
