"""Build Paddle blocks from the framework-free plan (:func:`cream_core.arch.plan_network`).

:func:`make_block` turns one :class:`~cream_core.arch.BlockPlan` into its layer; the child nets use it
through :func:`build_blocks`, and a supernet can call it for every candidate of a searchable slot.
``cream_torch_ref.builder`` has the same functions, returning timm's blocks.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import paddle.nn as nn

from cream_core.arch.plan import BlockPlan, NetPlan

from .blocks import ConvBnAct, DepthwiseSeparableConv, InvertedResidual, SqueezeExcite

__all__ = ["make_block", "build_blocks"]


def make_block(plan: BlockPlan, act_layer: str = "silu", se_act_layer: str = "relu",
               gate_layer: str = "hard_sigmoid") -> nn.Layer:
    """The block ``plan`` describes, with Cream's activations (Swish; SE with ReLU and hard-sigmoid).

    The SE width is taken from the plan (``plan.se_chs``, 0 = no SE), the drop-path rate too.
    """
    se_layer: Optional[partial] = None
    if plan.se_chs:
        se_layer = partial(SqueezeExcite, rd_channels=plan.se_chs, gate_layer=gate_layer,
                           force_act_layer=se_act_layer)
    common = dict(stride=plan.stride, act_layer=act_layer, drop_path_rate=plan.drop_path_rate)
    if plan.block_type == "ds":
        block: nn.Layer = DepthwiseSeparableConv(
            plan.in_chs, plan.out_chs, dw_kernel_size=plan.kernel_size, noskip=not plan.has_skip,
            se_layer=se_layer, **common)
    elif plan.block_type == "ir":
        block = InvertedResidual(
            plan.in_chs, plan.out_chs, dw_kernel_size=plan.kernel_size, noskip=not plan.has_skip,
            exp_ratio=plan.exp_ratio, se_layer=se_layer, **common)
        if block.conv_pw.weight.shape[0] != plan.mid_chs:
            raise ValueError(f"planned expansion width {plan.mid_chs} differs from the block's "
                             f"{block.conv_pw.weight.shape[0]}")
    elif plan.block_type == "cn":
        block = ConvBnAct(plan.in_chs, plan.out_chs, kernel_size=plan.kernel_size,
                          skip=plan.has_skip, **common)
    else:
        raise ValueError(f"unknown block type {plan.block_type!r}")
    return block


def build_blocks(plan: NetPlan, act_layer: str = "silu", se_act_layer: str = "relu",
                 gate_layer: str = "hard_sigmoid") -> nn.Sequential:
    """The trunk: one ``Sequential`` per stage of ``plan``, each holding its blocks (timm's layout)."""
    return nn.Sequential(*[
        nn.Sequential(*[make_block(b, act_layer, se_act_layer, gate_layer) for b in stage])
        for stage in plan.stages])
