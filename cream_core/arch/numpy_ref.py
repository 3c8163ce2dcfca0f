"""A framework-free float64 forward pass of a Cream child net, with optional calibration.

Two uses: :func:`forward_child` is an independent third implementation of the network (numpy
only) that the torch reference and the Paddle port can be checked against, and
:func:`calibrate_child` measures, for seeded weights, the BatchNorm running statistics that match
the activations those weights actually produce, plus a power-of-two gain for each of the two head
layers (which have no BN: ``conv_head`` to unit output std, the classifier's weight and bias to
logits of std :data:`LOGITS_TARGET_STD`); :func:`cream_core.arch.seeded.seeded_child_state` applies them.

The network follows a :class:`~cream_core.arch.plan.NetPlan` and reads a state dict with the torch
names and layouts (``[out, in/groups, kh, kw]`` convs, ``[out, in]`` linear):

* stem: 3x3 stride-2 conv, BN, Swish (``x * sigmoid(x)``);
* ``ds`` block: depthwise conv, BN, Swish, SE, pointwise conv, BN (no activation), residual add
  when the plan says ``has_skip``;
* ``ir`` block: pointwise expansion, BN, Swish, depthwise conv, BN, Swish, SE, pointwise
  projection, BN, residual add when ``has_skip``;
* ``cn`` block: ``k x k`` conv, BN, Swish;
* SE: mean over H x W, 1x1 ``conv_reduce`` (bias), ReLU, 1x1 ``conv_expand`` (bias), hard-sigmoid
  gate ``relu6(x + 3) / 6``, multiply;
* head: global average pool, 1x1 ``conv_head`` (bias), Swish, ``classifier``.

Padding is timm's symmetric rule ``pad = ((s - 1) + (k - 1)) // 2``; BN eps is torch's 1e-5.
Inference only: dropout and drop-path are identities. Internally maps are NHWC (channels
contiguous): depthwise convs are sums of shifted slices scaled per channel and pointwise convs one
matrix product each, so a 224 x 224 batch of 4 through cream-604 takes a few seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.arch.plan import BlockPlan, NetPlan, plan_network
from cream_core.arch.space import child_arch_def

__all__ = ["BN_EPS", "LOGITS_TARGET_STD", "ChildCalibration", "child_keys_shapes", "forward_child",
           "calibrate_child"]

#: Std the calibration gives the logits. Their fp32 rounding error grows with their size (about
#: 5e-6 of the largest logit after ~25 normalised layers), so logits of order 0.1 keep two fp32
#: implementations of the same net within the 1e-5 absolute tolerance the project checks logits
#: with; the input-dependent part is still almost all of the logits (see tests/test_seeded.py).
LOGITS_TARGET_STD = 1.0 / 32

#: BatchNorm epsilon of the official model (torch's default).
BN_EPS = 1e-5
_STEM_KERNEL = 3
_STEM_STRIDE = 2
_IN_CHANS = 3


@dataclass(frozen=True)
class _Layer:
    """One layer of a block: ``kind`` is ``conv`` (dense ``k x k``), ``dw`` (depthwise), ``bn``,
    ``act`` (Swish) or ``se`` (whose ``out_chs`` is the reduced width); ``name`` is torch's."""

    kind: str
    name: str = ""
    in_chs: int = 0
    out_chs: int = 0
    kernel: int = 1
    stride: int = 1


def _block_layers(b: BlockPlan) -> List[_Layer]:
    """The layers of block ``b`` in module order, which is also their execution order.

    ``ds`` is ``ir`` without the expansion (its ``mid_chs`` is its input width), numbered from 1.
    """
    if b.block_type == "cn":
        return [_Layer("conv", "conv", b.in_chs, b.out_chs, b.kernel_size, b.stride),
                _Layer("bn", "bn1", b.out_chs, b.out_chs), _Layer("act")]
    if b.block_type not in ("ds", "ir"):
        raise ValueError(f"unsupported block type {b.block_type!r}")
    expand = b.block_type == "ir"
    layers = [_Layer("conv", "conv_pw", b.in_chs, b.mid_chs), _Layer("bn", "bn1", b.mid_chs, b.mid_chs),
              _Layer("act")] if expand else []
    n = 2 if expand else 1  # the depthwise conv's BN
    layers += [_Layer("dw", "conv_dw", b.mid_chs, b.mid_chs, b.kernel_size, b.stride),
               _Layer("bn", f"bn{n}", b.mid_chs, b.mid_chs), _Layer("act")]
    if b.se_chs:
        layers.append(_Layer("se", "se", b.mid_chs, b.se_chs))
    return layers + [_Layer("conv", "conv_pwl" if expand else "conv_pw", b.mid_chs, b.out_chs),
                     _Layer("bn", f"bn{n + 1}", b.out_chs, b.out_chs)]


def child_keys_shapes(plan: NetPlan, num_classes: int = 1000) -> List[Tuple[str, Tuple[int, ...]]]:
    """State-dict keys and shapes of the child net ``plan``, in the torch/official module order."""
    out: List[Tuple[str, Tuple[int, ...]]] = []

    def conv(name: str, o: int, i: int, k: int) -> None:
        out.append((name + ".weight", (o, i, k, k)))

    def bn(name: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"{name}.{leaf}", (c,)))
        out.append((name + ".num_batches_tracked", ()))

    def se(name: str, c: int, r: int) -> None:
        out.extend([(name + ".conv_reduce.weight", (r, c, 1, 1)), (name + ".conv_reduce.bias", (r,)),
                    (name + ".conv_expand.weight", (c, r, 1, 1)), (name + ".conv_expand.bias", (c,))])

    conv("conv_stem", plan.stem_size, _IN_CHANS, _STEM_KERNEL)
    bn("bn1", plan.stem_size)
    for i, stage in enumerate(plan.stages):
        for j, b in enumerate(stage):
            for layer in _block_layers(b):
                name = f"blocks.{i}.{j}.{layer.name}"
                if layer.kind in ("conv", "dw"):
                    conv(name, layer.out_chs, 1 if layer.kind == "dw" else layer.in_chs, layer.kernel)
                elif layer.kind == "bn":
                    bn(name, layer.out_chs)
                elif layer.kind == "se":
                    se(name, layer.in_chs, layer.out_chs)
    out.append(("conv_head.weight", (plan.num_features, plan.out_chs, 1, 1)))
    out.append(("conv_head.bias", (plan.num_features,)))
    out.append(("classifier.weight", (num_classes, plan.num_features)))
    out.append(("classifier.bias", (num_classes,)))
    return out


def _swish(x: np.ndarray) -> np.ndarray:
    # sigmoid(x) = (1 + tanh(x / 2)) / 2 never overflows, unlike 1 / (1 + exp(-x))
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _pad_amount(kernel: int, stride: int) -> int:
    return ((stride - 1) + (kernel - 1)) // 2


def _taps(x: np.ndarray, kernel: int, stride: int):
    """Yield ``(i, j, slice)``: the padded NHWC input seen by kernel tap ``(i, j)`` at every output."""
    n, h, w, c = x.shape
    pad = _pad_amount(kernel, stride)
    ho = (h + 2 * pad - kernel) // stride + 1
    wo = (w + 2 * pad - kernel) // stride + 1
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    for i in range(kernel):
        for j in range(kernel):
            yield i, j, xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]


def _pointwise(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """1x1 conv of an NHWC map, ``w`` of shape ``[out, in]``, as one matrix product."""
    n, h, wd, c = x.shape
    return (x.reshape(n * h * wd, c) @ w.T).reshape(n, h, wd, w.shape[0])


def _conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Dense conv of an NHWC map, ``w`` of shape ``[out, in, k, k]``: a matrix product per tap."""
    k = w.shape[-1]
    if k == 1 and stride == 1:
        return _pointwise(x, w[:, :, 0, 0])
    out = None
    for i, j, xs in _taps(x, k, stride):
        term = _pointwise(np.ascontiguousarray(xs), w[:, :, i, j])
        out = term if out is None else np.add(out, term, out=out)
    return out


def _depthwise(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Depthwise conv of an NHWC map, ``w`` of shape ``[C, 1, k, k]``: shifted, scaled slices."""
    k = w.shape[-1]
    out = tmp = None
    for i, j, xs in _taps(x, k, stride):
        if out is None:
            out = xs * w[:, 0, i, j]
            tmp = np.empty_like(out)
        else:
            np.multiply(xs, w[:, 0, i, j], out=tmp)
            out += tmp
    return out


class _Runner:
    """Runs the net on float64 copies of the weights; in calibration mode records BN statistics."""

    def __init__(self, state: Mapping[str, object], calibrate: bool,
                 bn_trace: Optional[Dict[str, float]] = None) -> None:
        self.state = state
        self.calibrate = calibrate
        self.bn_trace = bn_trace
        self.stats: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        self.head_log2_gains: Dict[str, int] = {}

    def p(self, key: str) -> np.ndarray:
        try:
            v = self.state[key]
        except KeyError:
            raise KeyError(f"state dict has no entry {key!r}") from None
        return np.asarray(v, dtype=np.float64)

    def bn(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.calibrate:
            # what a train-mode pass with momentum 1 stores: batch mean, unbiased batch variance
            n = x.shape[0] * x.shape[1] * x.shape[2]
            mean = x.mean(axis=(0, 1, 2))
            var = np.square(x - mean).sum(axis=(0, 1, 2)) / max(n - 1, 1)
            self.stats[name] = (mean, var)
        else:
            mean, var = self.p(name + ".running_mean"), self.p(name + ".running_var")
        if self.bn_trace is not None:
            z = (x - mean) / np.sqrt(var + BN_EPS)
            self.bn_trace[name] = float(np.sqrt(np.mean(np.square(z))))
        scale = self.p(name + ".weight") / np.sqrt(var + BN_EPS)
        shift = self.p(name + ".bias") - mean * scale
        return x * scale + shift

    def se(self, x: np.ndarray, name: str) -> np.ndarray:
        s = x.mean(axis=(1, 2))
        s = s @ self.p(name + ".conv_reduce.weight")[:, :, 0, 0].T + self.p(name + ".conv_reduce.bias")
        s = np.maximum(s, 0.0)
        s = s @ self.p(name + ".conv_expand.weight")[:, :, 0, 0].T + self.p(name + ".conv_expand.bias")
        return x * _hard_sigmoid(s)[:, None, None, :]

    def block(self, x: np.ndarray, b: BlockPlan, name: str) -> np.ndarray:
        shortcut = x
        for layer in _block_layers(b):
            key = f"{name}.{layer.name}"
            if layer.kind == "conv":  # a 1x1 stride-1 one is one matrix product (_pointwise)
                x = _conv(x, self.p(key + ".weight"), layer.stride)
            elif layer.kind == "dw":
                x = _depthwise(x, self.p(key + ".weight"), layer.stride)
            elif layer.kind == "bn":
                x = self.bn(x, key)
            elif layer.kind == "se":
                x = self.se(x, key)
            else:
                x = _swish(x)
        return x + shortcut if b.has_skip else x

    def run(self, plan: NetPlan, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 4 or x.shape[1] != _IN_CHANS:
            raise ValueError(f"input must be N x {_IN_CHANS} x H x W, got shape {x.shape}")
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC inside: channels are contiguous
        x = _swish(self.bn(_conv(x, self.p("conv_stem.weight"), _STEM_STRIDE), "bn1"))
        for i, stage in enumerate(plan.stages):
            for j, b in enumerate(stage):
                x = self.block(x, b, f"blocks.{i}.{j}")
        x = x.mean(axis=(1, 2))
        x = _swish(self.linear(x, "conv_head", self.p("conv_head.weight")[:, :, 0, 0]))
        return self.linear(x, "classifier", self.p("classifier.weight"))

    def linear(self, x: np.ndarray, name: str, w: np.ndarray) -> np.ndarray:
        y = x @ w.T
        if not self.calibrate:
            return y + self.p(name + ".bias")
        # no BN here: rescale by the power of two that brings the output closest to its target std
        if name == "classifier":  # weight and bias together: logits scale exactly, argmax unchanged
            y = y + self.p(name + ".bias")
            k = int(np.round(np.log2(LOGITS_TARGET_STD / max(float(y.std()), 1e-300))))
            self.head_log2_gains[name + ".weight"] = k
            self.head_log2_gains[name + ".bias"] = k
            return y * 2.0 ** k
        k = int(np.round(np.log2(1.0 / max(float(y.std()), 1e-300))))
        self.head_log2_gains[name + ".weight"] = k
        return y * 2.0 ** k + self.p(name + ".bias")


def _plan(arch_list: Sequence[Sequence[int]]) -> NetPlan:
    return plan_network(child_arch_def(arch_list))


def forward_child(state: Mapping[str, object], arch_list: Sequence[Sequence[int]],
                  x: np.ndarray, bn_trace: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Float64 logits ``[N, num_classes]`` of the child net ``arch_list`` in eval mode.

    ``state`` maps torch state-dict names to arrays (anything ``np.asarray`` accepts); ``x`` is an
    ``N x 3 x H x W`` batch. BN uses the stored running statistics, as the official test does.
    With ``bn_trace``, each BN's name is mapped to the RMS of its input standardised by its running
    statistics (1 when the statistics fit the input): a check that activations stay O(1).
    """
    return _Runner(state, calibrate=False, bn_trace=bn_trace).run(_plan(arch_list), x)


@dataclass
class ChildCalibration:
    """What one calibration pass measured (see :func:`calibrate_child`).

    ``bn_stats`` maps each BN's name (e.g. ``"blocks.1.0.bn2"``) to its float64 input mean and
    unbiased variance over ``(N, H, W)``; ``head_log2_gains`` maps ``"conv_head.weight"`` and
    ``"classifier.weight"``/``"classifier.bias"`` to the integer ``k`` such that multiplying them by
    ``2**k`` gives the output a std over the batch closest to its target (1 for ``conv_head``
    before its bias; :data:`LOGITS_TARGET_STD` for the logits); ``logits`` are those of the
    calibrated pass.
    """

    bn_stats: Dict[str, Tuple[np.ndarray, np.ndarray]]
    head_log2_gains: Dict[str, int]
    logits: np.ndarray


def calibrate_child(state: Mapping[str, object], arch_list: Sequence[Sequence[int]],
                    x: np.ndarray) -> ChildCalibration:
    """Float64 BN statistics and head gains of the child net ``arch_list`` on batch ``x``.

    Layer by layer in execution order, every BN's input mean and unbiased variance over
    ``(N, H, W)`` are recorded (what a train-mode pass with momentum 1 would store) and then used
    to normalise, with the BN's affine weight and bias, as eval mode would with those statistics.
    The head has no BN, so ``conv_head`` and ``classifier`` each get a power-of-two gain instead
    (exact in float32, so the scaled weights keep their seeded mantissas). ``state``'s own running
    statistics are ignored; ``state`` is not modified.
    """
    runner = _Runner(state, calibrate=True)
    logits = runner.run(_plan(arch_list), x)
    return ChildCalibration(runner.stats, runner.head_log2_gains, logits)
