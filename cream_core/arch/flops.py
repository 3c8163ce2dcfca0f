"""Multiply-accumulate and parameter counts of a Cream child net, as the official code reports them.

The official scripts log a model's size with ``thop.profile`` (thop 0.0.31, batch 1). That tool only
counts leaf modules of a few known types, each by a fixed rule; everything else counts zero. This
module applies the same rules to a :class:`~cream_core.arch.plan.NetPlan`, so the numbers equal thop's
raw totals exactly without building a model in any framework. The rules, per module:

* ``Conv2d``: output elements x (input channels per group x kernel area + 1 if it has a bias).
  Depthwise convs therefore cost ``C x H_out x W_out x k^2``.
* ``BatchNorm2d`` (eval mode): 2 x input elements.
* ``AdaptiveAvgPool2d`` to 1x1 (the SE squeeze and the global pool): ``C x (H x W + 1)``.
* ``Linear``: input features x output elements (the bias is not counted as an op).
* ``ReLU`` (the SE's inner activation): 0. Swish, ``Identity``, the hard-sigmoid gate, the SE
  rescale, residual additions and flatten are not modules thop knows (or not modules at all): 0.
* Parameters: the parameters of every counted module, i.e. all trainable parameters (conv weights
  and biases, BN affine weight and bias, classifier); BN running statistics are buffers, not counted.

Two facts of the official network shape the totals: only the first block of a stage strides, and
the global pool runs *before* the 1x1 head conv, so the head conv (with bias) works on a 1x1 map.
Spatial sizes follow timm's symmetric padding: ``pad = ((s - 1) + (k - 1)) // 2`` and
``out = (in + 2 * pad - k) // s + 1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from cream_core.arch.plan import BlockPlan, NetPlan, plan_network
from cream_core.arch.space import child_arch_def, child_spec

__all__ = ["CountRules", "THOP", "PTFLOPS", "out_size", "conv_counts", "pool_ops", "block_counts",
           "count_flops_params", "model_flops_params"]

_STEM_KERNEL = 3
_STEM_STRIDE = 2
_IN_CHANS = 3


@dataclass(frozen=True)
class CountRules:
    """Where the two profilers the official code uses count differently (all else is the same)."""

    #: thop counts a divide per channel in a global average pool: ``C x (H x W + 1)``; ptflops ``C x H x W``
    pool_divides: bool
    #: ptflops counts the SE's inner ReLU (a module), one op per element; thop counts ReLU as 0
    counts_relu: bool


#: ``thop.profile`` (thop 0.0.31): the child nets' reported size (this module's totals).
THOP = CountRules(pool_divides=True, counts_relu=False)
#: ptflops 0.6.x: the supernet's official ``FlopsEst`` (:func:`cream_core.arch.supernet.flops_table`).
PTFLOPS = CountRules(pool_divides=False, counts_relu=True)


def out_size(size: int, kernel: int, stride: int) -> int:
    """Output side length of a conv with timm's symmetric ("same"-ish) padding."""
    pad = ((stride - 1) + (kernel - 1)) // 2
    return (size + 2 * pad - kernel) // stride + 1


def conv_counts(out_chs: int, in_per_group: int, kernel: int, out_hw: int, bias: bool
                ) -> Tuple[int, int]:
    """(MACs, params) of one conv: per output element, one MAC per weight (+1 for a bias)."""
    per_out = in_per_group * kernel * kernel + (1 if bias else 0)
    return out_chs * out_hw * out_hw * per_out, out_chs * per_out


def _bn(chs: int, hw: int) -> Tuple[int, int]:
    """(ops, params) of an eval-mode BatchNorm: two ops per element, weight and bias."""
    return 2 * chs * hw * hw, 2 * chs


def pool_ops(chs: int, hw: int, rules: CountRules) -> int:
    """Ops of a global average pool to 1x1: an add per input element (and a divide per channel)."""
    return chs * (hw * hw + (1 if rules.pool_divides else 0))


def _squeeze_excite(chs: int, se_chs: int, hw: int, rules: CountRules) -> Tuple[int, int]:
    """(MACs, params) of an SE module on a ``chs x hw x hw`` map (pool, reduce, ReLU, expand).

    The hard-sigmoid gate and the rescale are functions, which neither profiler sees.
    """
    reduce_macs, reduce_params = conv_counts(se_chs, chs, 1, 1, bias=True)
    expand_macs, expand_params = conv_counts(chs, se_chs, 1, 1, bias=True)
    relu = se_chs if rules.counts_relu else 0
    return (pool_ops(chs, hw, rules) + reduce_macs + relu + expand_macs,
            reduce_params + expand_params)


def block_counts(b: BlockPlan, hw: int, rules: CountRules) -> Tuple[int, int, int]:
    """(MACs, params, output side length) of one block entered with a ``hw x hw`` map (Swish is
    a function to both profilers: not counted)."""
    out_hw = out_size(hw, b.kernel_size, b.stride)
    parts: List[Tuple[int, int]] = []
    if b.block_type == "cn":
        parts += [conv_counts(b.out_chs, b.in_chs, b.kernel_size, out_hw, bias=False),
                  _bn(b.out_chs, out_hw)]
    elif b.block_type in ("ds", "ir"):
        if b.block_type == "ir":  # pointwise expansion at the input resolution
            parts += [conv_counts(b.mid_chs, b.in_chs, 1, hw, bias=False), _bn(b.mid_chs, hw)]
        parts += [conv_counts(b.mid_chs, 1, b.kernel_size, out_hw, bias=False),
                  _bn(b.mid_chs, out_hw)]
        if b.se_chs:
            parts.append(_squeeze_excite(b.mid_chs, b.se_chs, out_hw, rules))
        parts += [conv_counts(b.out_chs, b.mid_chs, 1, out_hw, bias=False), _bn(b.out_chs, out_hw)]
    else:
        raise ValueError(f"unsupported block type {b.block_type!r}")
    return sum(p[0] for p in parts), sum(p[1] for p in parts), out_hw


def count_flops_params(plan: NetPlan, resolution: int, num_classes: int = 1000) -> Tuple[int, int]:
    """(MACs, params) of the network ``plan`` on a ``1 x 3 x resolution x resolution`` input.

    Equal to the raw numbers ``thop.profile`` gives for the official model (see module docstring).
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    hw = out_size(resolution, _STEM_KERNEL, _STEM_STRIDE)
    macs, params = conv_counts(plan.stem_size, _IN_CHANS, _STEM_KERNEL, hw, bias=False)
    bn_ops, bn_params = _bn(plan.stem_size, hw)
    macs, params = macs + bn_ops, params + bn_params
    for stage in plan.stages:
        for b in stage:
            m, p, hw = block_counts(b, hw, THOP)
            macs, params = macs + m, params + p
    macs += pool_ops(plan.out_chs, hw, THOP)
    head_macs, head_params = conv_counts(plan.num_features, plan.out_chs, 1, 1, bias=True)
    macs, params = macs + head_macs, params + head_params
    macs += plan.num_features * num_classes
    params += plan.num_features * num_classes + num_classes
    return macs, params


def model_flops_params(name: str) -> Tuple[int, int]:
    """(MACs, params) of a released child net at its test resolution, e.g. ``"cream-14"``."""
    spec = child_spec(name)
    return count_flops_params(plan_network(child_arch_def(spec.arch_list)), spec.resolution)
