"""Parity of any torch model and any Paddle model: :func:`compare`, the engine behind
``parity run --torch MODULE:CALLABLE --paddle MODULE:CALLABLE`` and ``parity.compare(...)``.

The two trees are matched by :func:`converters.matching.match_models` (by name where the names
coincide after the framework rules, otherwise by execution order checked by kind and shapes). Then,
for float64 (semantics) and float32 (deployment):

* ``forward/eval/*`` — the output of every matched layer (hooks copy each tensor; torch's in-place
  activations are switched off for the pass) and the logits;
* ``forward/train/*`` — the same in train mode (batch statistics; dropout layers evaluated in
  inference mode on both sides, so no mask is drawn — their p and mode are compared as
  configuration), then ``bn_stats/*`` (running statistics after that pass, under Paddle's
  biased-variance convention), ``loss/*`` (cross-entropy on fixed labels) and ``backward/*`` (every
  parameter gradient, mapped through the matching, the input gradient and the gradient w.r.t. every
  matched layer output);
* ``optim/sgd/fp64`` — two steps of SGD with momentum 0.9 and weight decay, each framework's own
  optimizer on its own gradients (two, so the momentum buffer is used).

Before running, every matched layer pair's configuration is diffed (:mod:`parity.layer_config`): a
constant the port chose differently is a divergence even where float32 hides its effect, and the
first divergence names the layer on both sides with the configuration difference behind it.
Tolerances are the named constants of :mod:`parity.tolerances`; in float32 each bound is raised to
``NOISE_FACTOR`` x the torch reference's own measured noise where that is larger
(:mod:`parity.generic_noise`: perturbed torch fp32 runs, ``noise_members``), and every fp32 row
reports its error, noise and ratio. If an op has no float64 kernel in one framework, the float64
stages are skipped with a note and float32 still runs.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .capture import Capture, capture_paddle, capture_torch
from .engine import (CurvePoint, compare_out_grads, curve_point, grad_context, owner, paddle_at,
                     param_and_input_grads, stage_error, torch_at, with_threads)
from .tolerances import Comparison, compare_arrays, compare_named
from .generic_noise import GENERIC_NOISE_MEMBERS
from .noise import NOISE_FACTOR, max_abs_diff
from . import generic_noise as gn
from .layer_config import CONVENTIONS, ConfigDiff, diff_configs, fused_activation, class_key
from .runner import ParityConfig, ParityResult

__all__ = ["GenericResult", "compare", "SGD_LR", "SGD_MOMENTUM", "SGD_WEIGHT_DECAY", "SGD_STEPS",
           "TARGET_SEED", "no_fp64_kernel", "reference_problem"]

#: The optimizer compared: SGD with momentum (both frameworks' own implementations).
SGD_LR: float = 0.1
SGD_MOMENTUM: float = 0.9
SGD_WEIGHT_DECAY: float = 1e-4
#: Two steps, so the second one uses the momentum buffer the first one filled.
SGD_STEPS: int = 2
#: Seed of the fixed labels of the cross-entropy loss.
TARGET_SEED: int = 0

PaddleMutator = Callable[[Any], None]

#: Activations Paddle layers fuse into their output (legacy ``BatchNorm(act=...)``), for torch
#: models that apply them functionally: exact in float64 and float32 (max and comparisons only).
FUSED_ACTIVATIONS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda a: np.maximum(a, 0).astype(a.dtype),
    "relu6": lambda a: np.clip(a, 0, 6).astype(a.dtype),
}

#: Activation kinds whose derivative jumps, and where. In float32 an input within rounding of a kink
#: can land on different sides in the two frameworks (train-mode BN over a small batch amplifies
#: the rounding), and the gradient there then differs by the whole jump (hardswish at -3: 0 vs
#: -0.5 of the upstream gradient). Measured: mobilenet_v3_large, 2x3x64x64, one BN output at
#: -2.999996 in Paddle and <= -3 in torch -> 5 % of scale in every gradient upstream of it.
#: Such crossings are found at matched activation layers and judged by the noise model
#: (:mod:`parity.generic_noise`: explained by the measured noise -> the kink twin; otherwise
#: reported, nothing excused). float64 judges every gradient as before.
KINKS: Dict[str, Tuple[float, ...]] = {
    "relu": (0.0,), "relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0),
    "hardtanh": (-1.0, 1.0), "leakyrelu": (0.0,),
}


@dataclass
class GenericResult(ParityResult):
    """A generic run: the comparisons (as :class:`ParityResult`), the matching and the config diff."""

    matching: Any = None
    pairs: Dict[str, str] = field(default_factory=dict)  # torch path -> paddle path
    config_diffs: List[ConfigDiff] = field(default_factory=list)
    configs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons) \
            and not self.config_diffs

    @property
    def first_divergence(self) -> Optional[Dict[str, Any]]:
        """The first divergent layer on both sides, with its configuration difference (or None)."""
        return _first_divergence(self)

    def as_dict(self) -> Dict[str, Any]:
        data = super().as_dict()
        data["ok"] = self.ok
        data["first_divergence"] = self.first_divergence
        data["numeric_first_divergence"] = self.first.as_dict() if self.first else None
        data["config_diffs"] = [d.as_dict() for d in self.config_diffs]
        data["layer_configs"] = self.configs
        data["conventions"] = list(CONVENTIONS)
        data["notes"] = list(self.notes)
        data["matching"] = self.matching.to_json() if self.matching is not None else None
        return data

    def to_json(self) -> Dict[str, Any]:
        """Everything as plain JSON-able data (what ``--json`` writes)."""
        return self.as_dict()

    def table(self) -> str:
        """The terminal table by stage and category (:func:`parity.report.summary_rows`), with
        the largest error / measured fp32 noise of each group (float32 stages)."""
        from tabulate import tabulate

        from .report import summary_rows

        ratio: Dict[Tuple[str, str], float] = {}
        for c in self.comparisons:
            if math.isfinite(c.noise_ratio):
                k = (c.stage, c.category)
                ratio[k] = max(ratio.get(k, 0.0), c.noise_ratio)
        rows = summary_rows(self)
        for r in rows:
            v = ratio.get((r[0], r[1]))
            r.insert(8, f"{v:.3g}" if v is not None else "")
        headers = ["stage", "category", "n", "failed", "worst tensor", "max abs", "max rel",
                   "tolerance", "max error/noise", ""]
        return tabulate(rows, headers=headers, tablefmt="simple")

    def plot(self, path: str) -> None:
        """Write the error-along-depth PNG (:func:`parity.report.write_plot`)."""
        from .report import write_plot

        write_plot(self, path)

    def verdict(self) -> str:
        """One paragraph: PASS, or FAIL with the first divergence on both sides and why."""
        return format_verdict(self)


def _first_divergence(r: GenericResult) -> Optional[Dict[str, Any]]:
    num = r.first
    order = {tp: i for i, tp in enumerate(r.pairs)}
    if num is None and not r.config_diffs:
        return None
    cd = r.config_diffs[0] if r.config_diffs else None
    num_order = order.get(num.module, math.inf) if num is not None else math.inf
    if cd is not None and cd.order <= num_order:
        module, paddle_module = cd.module, cd.paddle_module
        evidence = next((c for c in sorted(r.comparisons, key=lambda c: (c.stage_rank, c.order))
                         if not c.ok and c.module == module), None)
    else:
        module, paddle_module = num.module, r.pairs.get(num.module, num.module)
        evidence = num
    diffs = [d for d in r.config_diffs if d.module == module]
    out: Dict[str, Any] = {"module": module, "paddle_module": paddle_module,
                           "config_diff": [d.as_dict() for d in diffs]}
    if diffs:
        out["reason"] = "configuration differs: " + "; ".join(d.describe() for d in diffs)
    else:
        out["reason"] = ("no configuration difference at this layer: its weights or its code "
                         "differ (or an unmatched step just before it)")
    if evidence is not None:
        out.update(stage=evidence.stage, category=evidence.category, name=evidence.name,
                   max_abs=evidence.as_dict()["max_abs"], max_rel=evidence.as_dict()["max_rel"],
                   tolerance=evidence.tolerance, note=evidence.note)
    else:
        out.update(stage="config", category="config", name=module, note="no numeric failure at "
                   "this layer within the tolerances (the difference is below them or unused here)")
    return out


def format_verdict(r: GenericResult) -> str:
    """PASS, or FAIL naming the first divergent layer on both sides and the reason."""
    n = len(r.comparisons)
    fd = r.first_divergence
    if fd is None:
        return f"PASS: all {n} comparisons within tolerance, no configuration difference."
    failed = sum(not c.ok for c in r.comparisons)
    head = (f"FAIL: {failed} of {n} comparisons beyond tolerance, "
            f"{len(r.config_diffs)} configuration difference(s).\n")
    where = f"torch {fd['module']}  <->  paddle {fd['paddle_module']}"
    what = f" [{fd.get('category')}, {fd.get('stage')}]"
    num = ""
    if fd.get("stage") != "config":
        num = (f": max abs {fd.get('max_abs')}, max rel {fd.get('max_rel')} "
               f"(bound {fd.get('tolerance')})")
    return head + f"First divergence: {where}{what}{num}\n  why: {fd['reason']}"


# ------------------------------------------------------------------------------------------------
# models per precision


def reference_problem(torch_model: Any, x: np.ndarray) -> Optional[str]:
    """Why the torch model alone cannot run a float32 train-mode forward and backward on ``x``
    (e.g. BatchNorm with one value per channel), or None; on a copy, so no statistics move."""
    import torch

    model = copy.deepcopy(torch_model).float().train()
    try:
        out = model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        (out if isinstance(out, torch.Tensor) else out[0]).sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure of the reference is the input's problem
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    return None


def no_fp64_kernel(exc: BaseException) -> bool:
    """Whether an exception says an op has no float64 kernel (torch or Paddle wording)."""
    msg = str(exc)
    return ("not implemented for 'Double'" in msg
            or ("kernel" in msg and "float64" in msg and "not registered" in msg)
            or ("kernel" in msg and "float64" in msg and "not found" in msg))


def _copies(torch_model: Any, paddle_model: Any, precision: str,
            mutate: Optional[PaddleMutator]) -> Tuple[Any, Any]:
    """Fresh copies of both models at ``precision`` (the port with ``mutate`` applied)."""
    pm = copy.deepcopy(paddle_model)
    if mutate is not None:
        mutate(pm)
    return torch_at(copy.deepcopy(torch_model), precision).eval(), paddle_at(pm, precision)


def _dropout_to_inference(model: Any) -> None:
    """Put every dropout layer of a model in train mode back to inference mode (no masks)."""
    for m in (model.modules() if hasattr(model, "modules") else model.sublayers()):
        if "dropout" in type(m).__name__.lower():
            m.eval()


# ------------------------------------------------------------------------------------------------
# comparisons


def _map_paddle(values: Mapping[str, np.ndarray], matching: Any, torch_keys: Sequence[str]
                ) -> Dict[str, np.ndarray]:
    """Paddle-named arrays under the torch names (and layout) of ``torch_keys``, via the matching."""
    out: Dict[str, np.ndarray] = {}
    for k in torch_keys:
        pk = matching.keys.get(k)
        if pk is not None and pk in values:
            v = values[pk]
            out[k] = v.T if k in matching.transposed else v
    return out


def _fused_targets(t: Capture, fused: Mapping[str, str], kinds: Mapping[str, str]
                   ) -> Dict[Tuple[str, int], Tuple[str, int]]:
    """``(torch layer, call) -> (torch activation module, call)`` for layers whose Paddle twin
    applies the activation itself (legacy ``BatchNorm(act='relu')``): the torch module of that kind
    that next receives the layer's output. The Paddle output is compared with *its* output."""
    out: Dict[Tuple[str, int], Tuple[str, int]] = {}
    for i, e in enumerate(t.events):
        if e.kind != "out" or e.module not in fused:
            continue
        for f in t.events[i + 1:]:
            if f.kind == "in" and f.slot == e.slot and kinds.get(f.module) == fused[e.module]:
                out[(e.module, e.call)] = (f.module, f.call)
                break
    return out


def _forward(t: Capture, p: Capture, pairs: Mapping[str, str], stage: str, precision: str,
             category: str, truth: Optional[Capture],
             alias: Optional[Mapping[Tuple[str, int], Tuple[str, int]]] = None,
             containers: Sequence[str] = (), boundaries: Optional[set] = None,
             fused: Mapping[str, str] = {}
             ) -> Tuple[List[Comparison], List[CurvePoint]]:
    """Outputs of every matched layer, paired by (torch path, paddle path, call), then logits.

    ``alias``: see :func:`_fused_targets`; a fused layer without a torch activation module after
    it (torch applies ``F.relu``) is compared with :data:`FUSED_ACTIVATIONS` applied to the torch
    output. ``containers`` (matched by structure) whose outputs have
    different shapes end at different points of the computation (torchvision's ``_DenseLayer``
    returns the new features, paddle.vision's the concatenation): they are added to
    ``boundaries`` and not compared; every layer inside them still is.
    """
    boundaries = boundaries if boundaries is not None else set()
    pev = {e.key: e for e in p.events}
    tru = {e.key: e for e in truth.events} if truth is not None else {}
    tev = {e.key: e for e in t.events}
    alias = alias or {}
    out: List[Comparison] = []
    curve: List[CurvePoint] = []
    for i, e in enumerate(t.events):
        if e.kind != "out" or e.module not in pairs:
            continue
        pe = pev.get(("out", pairs[e.module], e.call))
        ref = tev[("out",) + alias[(e.module, e.call)]] if (e.module, e.call) in alias else e
        act = FUSED_ACTIVATIONS.get(fused.get(e.module, "")) if ref is e else None
        te = tru.get(ref.key)
        got = p.array(pe) if pe is not None else None
        want = t.array(ref) if act is None else act(t.array(ref))
        if e.module in containers and got is not None and got.shape != want.shape:
            boundaries.add(f"{e.module} {list(want.shape)} / {pairs[e.module]} {list(got.shape)}")
            continue  # two containers that end at different points: not a comparable boundary
        tv = truth.array(te) if te is not None else None
        c = compare_arrays(got, want, category=category, stage=stage, name=e.module, order=i,
                           precision=precision, module=e.module,
                           truth=tv if tv is None or act is None else act(tv))
        out.append(c)
        curve.append(curve_point(e.module, c))
    out.append(compare_arrays(p.logits, t.logits, category="logits", stage=stage, name="logits",
                              order=len(t.events), precision=precision, module="logits",
                              truth=truth.logits if truth is not None else None))
    return out, curve


def _expected_paddle_var(t: Capture, init: Mapping[str, np.ndarray], bn: str, key: str,
                         momentum: Optional[float]) -> Optional[np.ndarray]:
    """Torch's running variance after the pass, converted to Paddle's biased-update convention.

    torch: v' = (1-m) v + m * u with u the unbiased batch variance (n elements per channel);
    Paddle: v' = (1-m) v + m * u (n-1)/n, i.e. torch's v' minus (v' - (1-m) v) / n.
    """
    ev = next((e for e in t.events if e.key == ("in", bn, 0)), None)
    if ev is None or momentum is None:
        return None
    x = t.array(ev)
    n = x.size // x.shape[1]
    new = t.state[key]
    return new - (new - (1.0 - momentum) * init[key]) / n


def _bn_stats(t: Capture, p: Capture, tm: Any, pm: Any, matching: Any, pairs: Mapping[str, str],
              init: Dict[str, np.ndarray], stage: str, precision: str, truth: Optional[Capture]) -> List[Comparison]:
    import torch

    pmods = dict(pm.named_sublayers())
    ref: Dict[str, np.ndarray] = {}
    modules: Dict[str, str] = {}
    for name, m in tm.named_modules():
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or not m.track_running_stats:
            continue
        for leaf in ("running_mean", "running_var"):
            key = f"{name}.{leaf}"
            ref[key] = t.state[key]
            modules[key] = name
        pl = pmods.get(pairs.get(name, ""))
        if pl is not None and type(pl).__module__.startswith("paddle."):  # Paddle's native BN
            exp = _expected_paddle_var(t, init, name, f"{name}.running_var", m.momentum)
            if exp is not None:
                ref[f"{name}.running_var"] = exp
    got = _map_paddle(p.state, matching, list(ref))
    order = {k: i for i, k in enumerate(ref)}
    return compare_named(got, ref, category="bn_stats", stage=stage, precision=precision,
                         order=order, modules=modules,
                         truth=truth.state if truth is not None else None)


def _backward(t: Capture, p: Capture, pairs: Mapping[str, str], matching: Any, stage: str,
              precision: str, truth: Optional[Capture],
              alias: Optional[Mapping[Tuple[str, int], Tuple[str, int]]] = None,
              fused: Mapping[str, str] = {}, containers: Sequence[str] = ()
              ) -> Tuple[List[Comparison], List[CurvePoint]]:
    """Gradients w.r.t. matched layer outputs (backward order), every parameter, the input.

    A layer whose Paddle twin has a fused activation (``alias``) is compared with the gradient
    w.r.t. the torch activation's output.
    """
    renamed = {n: a for (n, _), (a, _) in (alias or {}).items()}
    ctx = grad_context(t)
    # a fused activation torch applies functionally has no torch gradient to pair
    unpaired = [n for n in fused if n not in renamed]
    out, curve, first_at = compare_out_grads(t, p, stage, precision, truth, ctx, pairs=pairs,
                                             alias_of=renamed, skip=unpaired,
                                             containers=containers)
    got = _map_paddle(p.param_grads, matching, list(t.param_grads))
    out += param_and_input_grads(got, p.input_grad, t, truth, stage, precision, first_at, ctx,
                                 "input")
    return out, curve


@dataclass
class _Ported:
    """What the port's float32 backward comparison used (to re-run it against the kink twin)."""

    pairs: Mapping[str, str]
    matching: Any
    truth: Optional[Capture]
    alias: Mapping[Tuple[str, int], Tuple[str, int]]
    fused: Mapping[str, str]
    containers: Any


def _measure_noise(torch_model: Any, xs: np.ndarray, target: np.ndarray, t_eval: Capture,
                   t_train: Capture, kinds: Mapping[str, str], pairs: Mapping[str, str],
                   count: int) -> Tuple[Dict[Any, float], Dict[Tuple[str, int], float]]:
    """Run ``count`` perturbed torch fp32 members through the float32 stages; return the noise of
    every compared tensor (by :func:`parity.generic_noise.noise_keys`) and of every activation
    input (for the kink crossings)."""
    noise: Dict[Any, float] = {}
    in_noise: Dict[Tuple[str, int], float] = {}
    ident = {n: n for n in pairs}
    for pert in gn.members(count):
        restore = with_threads(pert.threads)
        try:
            tm = gn.perturbed_torch(torch_model, pert)
            xm = pert.perturb("input", xs)
            te = capture_torch(tm, xm, buffers_only=True)
            tt = capture_torch(tm, xm, train=True, grads=True, target=target, loss_fn=_torch_ce,
                               configure=_dropout_to_inference, buffers_only=True)
        finally:
            restore()
        gn.record(noise, _forward(t_eval, te, ident, "forward/eval/fp32", "fp32", "layer",
                                  None)[0])
        gn.record(noise, _forward(t_train, tt, ident, "forward/train/fp32", "fp32",
                                  "layer_train", None)[0])
        for key, ref in t_train.state.items():
            if key.endswith(("running_mean", "running_var")) and key in tt.state:
                k = ("bn_stats/fp32", "bn_stats", key, 0)
                noise[k] = max(noise.get(k, 0.0), max_abs_diff(tt.state[key], ref))
        k = ("loss/fp32", "loss", "cross_entropy", 0)
        noise[k] = max(noise.get(k, 0.0), abs(float(tt.loss) - float(t_train.loss)))
        gn.record(noise, _backward(t_train, tt, ident, gn.identity_matching(tm),
                                   "backward/fp32", "fp32", None)[0])
        gn.input_noise(t_train, tt, kinds, KINKS, in_noise)
    return noise, in_noise


def _judge_fp32_by_noise(result: GenericResult, grads: List[Comparison], torch_model: Any,
                         xs: np.ndarray, target: np.ndarray, t_eval: Capture, t: Capture,
                         p: Capture, kinds: Mapping[str, str], count: int, ported: _Ported
                         ) -> None:
    """Hold every float32 comparison to max(named bound, NOISE_FACTOR x measured noise), then
    accept a failing gradient where a kink crossing the noise explains accounts for it (its error
    against the kink twin is within the noise bound; :mod:`parity.generic_noise`)."""
    t0 = time.perf_counter()
    noise: Dict[Any, float] = {}
    in_noise: Dict[Tuple[str, int], float] = {}
    if count > 0:
        noise, in_noise = _measure_noise(torch_model, xs, target, t_eval, t, kinds,
                                         ported.pairs, count)
    if count > 0:  # 0: the named bounds alone
        gn.apply_noise([c for c in result.comparisons if c.stage.endswith("fp32")] + grads,
                       noise)
    crossings = gn.kink_crossings(t, p, kinds, ported.pairs, KINKS, in_noise)
    info: Dict[str, Any] = {"members": count, "factor": NOISE_FACTOR,
                            "crossings": [{"module": m, "call": c, "elements": int(mask.sum()),
                                           "explained_by_noise": ok}
                                          for m, c, mask, _, ok in crossings]}
    unexplained = [f"{m} ({int(mask.sum())})" for m, _, mask, _, ok in crossings if not ok]
    if unexplained:
        result.notes.append("float32 kink crossing(s) beyond the measured noise at "
                            + ", ".join(unexplained[:3]) + ": gradients upstream judged as usual")
    if any(ok for *_, ok in crossings) and any(not c.ok for c in grads):
        twin = gn.kink_twin(copy.deepcopy(torch_model).float().eval(), crossings, xs, target,
                            _torch_ce, _dropout_to_inference)
        again, _ = _backward(twin, p, ported.pairs, ported.matching, "backward/fp32", "fp32",
                             ported.truth, ported.alias, ported.fused, ported.containers)
        if count > 0:
            gn.apply_noise(again, noise)
        accepted = 0
        for c, tc in zip(grads, again):
            if not c.ok and tc.ok and (tc.category, tc.name) == (c.category, c.name):
                c.ok = True
                c.note = (f"the kink crossing: error vs the torch run with the port's kink "
                          f"decision {tc.max_abs:.3g} (noise {tc.noise:.3g})")
                accepted += 1
        info["accepted_by_kink_twin"] = accepted
        result.notes.append(f"float32 kink crossing(s) within the noise at "
                            + ", ".join(f"{m} ({int(mask.sum())})"
                                        for m, _, mask, _, ok in crossings if ok)[:300]
                            + f": {accepted} gradient(s) equal the torch run that makes the "
                            "port's kink decision (within the noise bound)")
    info["seconds"] = round(time.perf_counter() - t0, 3)
    result.info["noise"] = info


def _sgd_steps(tm: Any, pm: Any, matching: Any, stage: str, precision: str) -> List[Comparison]:
    """SGD_STEPS steps of each framework's SGD-with-momentum on the gradients its model holds."""
    import paddle
    import torch

    topt = torch.optim.SGD(tm.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM,
                           weight_decay=SGD_WEIGHT_DECAY)
    trainable = [q for q in pm.parameters() if not q.stop_gradient and q.grad is not None]
    popt = paddle.optimizer.Momentum(learning_rate=SGD_LR, momentum=SGD_MOMENTUM,
                                     parameters=trainable, weight_decay=SGD_WEIGHT_DECAY)
    for _ in range(SGD_STEPS):
        topt.step()
        popt.step()
    pparams = dict(pm.state_dict())
    out: List[Comparison] = []
    for i, (n, q) in enumerate(tm.named_parameters()):  # one tensor at a time: VGG-size models
        pk = matching.keys.get(n)
        got = pparams[pk].numpy() if pk in pparams else None
        if got is not None and n in matching.transposed:
            got = got.T
        out.append(compare_arrays(got, q.detach().numpy(), category="optim_params", stage=stage,
                                  name=n, order=i, precision=precision, module=owner(n)))
    return out


def _torch_ce(z: Any, y: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(z, y)


def _paddle_ce(z: Any, y: Any) -> Any:
    import paddle.nn.functional as F

    return F.cross_entropy(z, y)


def _run_precision(torch_model: Any, paddle_model: Any, x: np.ndarray, target: np.ndarray,
                   precision: str, result: GenericResult, truths: Dict[str, Capture],
                   mutate: Optional[PaddleMutator], optimizer: bool,
                   noise_members: int = GENERIC_NOISE_MEMBERS) -> None:
    """Every stage at one precision; ``truths`` carries the fp64 torch captures to the fp32 run."""
    tm, pm = _copies(torch_model, paddle_model, precision, mutate)
    pairs, matching = result.pairs, result.matching
    players = dict(pm.named_sublayers())
    fused = {lm.torch: fused_activation(players[lm.paddle]) for lm in matching.layers
             if lm.paddle in players and fused_activation(players[lm.paddle])}
    kinds = {n: class_key(m) for n, m in tm.named_modules()}
    xs = x.astype(np.float64 if precision == "fp64" else np.float32)
    fp32 = precision == "fp32"
    t = capture_torch(tm, xs, buffers_only=True)
    p = capture_paddle(pm, xs, buffers_only=True)
    stage = f"forward/eval/{precision}"
    containers = {lm.torch for lm in matching.layers if lm.how == "structure"}
    boundaries: set = set()
    comps, result.curves[stage] = _forward(t, p, pairs, stage, precision, "layer",
                                           truths.get("eval") if fp32 else None,
                                           _fused_targets(t, fused, kinds), containers, boundaries,
                                           fused)
    result.comparisons += comps
    t_eval = t
    if not fp32:
        truths["eval"] = t
    init = {k: v.detach().numpy().copy() for k, v in tm.named_buffers()
            if k.endswith("running_var")}  # the running variances, for Paddle's convention
    t = capture_torch(tm, xs, train=True, grads=True, target=target, loss_fn=_torch_ce,
                      configure=_dropout_to_inference, buffers_only=True)
    p = capture_paddle(pm, xs, train=True, grads=True, target=target, loss_fn=_paddle_ce,
                       configure=_dropout_to_inference, buffers_only=True)
    truth = truths.get("train") if fp32 else None
    if not fp32:
        truths["train"] = t
    stage = f"forward/train/{precision}"
    alias = _fused_targets(t, fused, kinds)
    comps, result.curves[stage] = _forward(t, p, pairs, stage, precision, "layer_train", truth,
                                           alias, containers, boundaries, fused)
    result.comparisons += comps
    result.comparisons += _bn_stats(t, p, tm, pm, matching, pairs, init, f"bn_stats/{precision}",
                                    precision, truth)
    result.comparisons.append(compare_arrays(
        np.asarray(p.loss), np.asarray(t.loss), category="loss", stage=f"loss/{precision}",
        name="cross_entropy", order=0, precision=precision, module="loss",
        truth=np.asarray(truth.loss) if truth is not None else None))
    stage = f"backward/{precision}"
    comps, result.curves[stage] = _backward(t, p, pairs, matching, stage, precision, truth,
                                            alias, fused, containers)
    if fp32:
        _judge_fp32_by_noise(result, comps, torch_model, xs, target, t_eval, t, p, kinds,
                             noise_members, _Ported(pairs, matching, truth, alias, fused,
                                                    containers))
    p.param_grads = {}  # compared; free them before the optimizer steps (memory of large models)
    if fp32:
        t.param_grads = {}
    result.comparisons += comps
    if boundaries and not fp32:
        result.notes.append(f"{len(boundaries)} container pair(s) end at different points of the "
                            "computation (output shapes differ) and are not compared as a "
                            "boundary (the layers inside them are): "
                            + "; ".join(sorted(boundaries)[:3])
                            + (" ..." if len(boundaries) > 3 else ""))
    if optimizer:
        result.comparisons += _sgd_steps(tm, pm, matching, f"optim/sgd/{precision}", precision)


def _default_target(torch_model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    from .capture import main_output

    dtype = next(torch_model.parameters()).dtype
    was_training = torch_model.training
    with torch.no_grad():
        n_classes = int(main_output(torch_model.eval()(torch.tensor(x[:1], dtype=dtype))).shape[1])
    torch_model.train(was_training)
    return np.random.RandomState(TARGET_SEED).randint(0, n_classes, x.shape[0]).astype(np.int64)


def compare(torch_model: Any, paddle_model: Any, inputs: np.ndarray, *,
            matching: Any = None, target: Optional[np.ndarray] = None,
            precisions: Sequence[str] = ("fp64", "fp32"), optimizer: bool = True,
            label: str = "", mutate_paddle: Optional[PaddleMutator] = None,
            noise_members: int = GENERIC_NOISE_MEMBERS) -> GenericResult:
    """Compare a torch model and a Paddle model that hold the same weights, on ``inputs`` (NCHW).

    ``noise_members``: perturbed torch fp32 runs measuring the float32 noise the fp32 stages are
    judged against (:mod:`parity.generic_noise`; 0: the named bounds alone).

    ``matching``: a :class:`converters.matching.Matching` (default: :func:`match_models`, which
    raises :class:`converters.matching.MatchError` when the trees cannot be matched). ``target``:
    labels of the cross-entropy (default: seeded). ``mutate_paddle``: applied to each Paddle copy
    (fault injection). The models themselves are not modified.
    """
    x = np.asarray(inputs)
    if noise_members < 0:
        raise ValueError(f"noise_members must be >= 0, got {noise_members}")
    t0 = time.perf_counter()
    if matching is None:
        from converters.matching import match_models

        matching = match_models(torch_model, paddle_model, x.astype(np.float32))
    cfg = ParityConfig(model=label or f"{type(torch_model).__name__} vs "
                                      f"{type(paddle_model).__name__}",
                       batch=int(x.shape[0]), precisions=tuple(precisions), progress=False)
    result = GenericResult(cfg, matching=matching)
    result.pairs = {lm.torch: lm.paddle for lm in matching.layers}
    probe = paddle_model
    if mutate_paddle is not None:  # configuration faults must show in the configuration diff
        probe = copy.deepcopy(paddle_model)
        mutate_paddle(probe)
    result.config_diffs, result.configs = diff_configs(torch_model, probe,
                                                       list(result.pairs.items()))
    result.notes += list(matching.notes)
    y = target if target is not None else _default_target(torch_model, x)
    result.info.update(input_shape=list(x.shape), target=y.tolist(),
                       matched_layers=len(matching.layers))
    truths: Dict[str, Capture] = {}
    for prec in ("fp64", "fp32"):
        if prec not in precisions:
            continue
        t1 = time.perf_counter()
        try:
            _run_precision(torch_model, paddle_model, x, y, prec, result, truths, mutate_paddle,
                           optimizer and (prec == "fp64" or "fp64" not in precisions
                                          or "no_fp64" in result.info), noise_members)
        except Exception as e:  # noqa: BLE001 - a missing fp64 kernel is reported, fp32 goes on
            if prec == "fp64" and no_fp64_kernel(e):
                result.comparisons = [c for c in result.comparisons if not c.stage.endswith("fp64")]
                result.info["no_fp64"] = str(e).strip().splitlines()[0][:300]
                result.notes.append(f"float64 stages skipped: an op has no float64 kernel "
                                    f"({result.info['no_fp64']}); compared in float32 only")
                truths.clear()
                continue
            problem = reference_problem(torch_model, x)
            if problem is not None:  # not the port: the reference itself cannot run on this input
                raise ValueError(f"input {list(x.shape)}: the torch model itself fails in train "
                                 f"mode ({problem}); give another --input-shape") from None
            result.comparisons.append(stage_error(f"forward/eval/{prec}", "layer", f"{prec} run", e))
        result.timings[prec] = round(time.perf_counter() - t1, 3)
    result.timings["total"] = round(time.perf_counter() - t0, 3)
    return result
