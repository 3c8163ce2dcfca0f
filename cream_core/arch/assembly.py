"""Blocks from a plan, in either framework: the block classes a framework package provides, and
how one :class:`~cream_core.arch.plan.BlockPlan` becomes one of them.

``cream_torch_ref.builder`` (timm's blocks) and ``cream_paddle.builder`` (their Paddle port) pass
their own ``blocks`` module and ``Sequential`` class to :func:`bind_builders`: the choice of class, the
arguments and the check of the expansion width are the same for both, so they are written once.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional, Tuple

from cream_core.arch.plan import BlockPlan, NetPlan

__all__ = ["BLOCK_CLASS_NAMES", "make_block", "build_blocks", "bind_builders"]

#: The timm block classes each framework's ``blocks`` module provides under these names (the
#: reference re-exports timm's, the port re-implements them); both modules' ``__all__``.
BLOCK_CLASS_NAMES = (
    "BatchNormAct2d",
    "SqueezeExcite",
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "SelectAdaptivePool2d",
    "FastAdaptiveAvgPool",
    "DropPath",
)


def make_block(plan: BlockPlan, blocks: Any, act_layer: str = "silu", se_act_layer: str = "relu",
               gate_layer: str = "hard_sigmoid") -> Any:
    """The block ``plan`` describes, built from ``blocks`` (a framework's blocks module), with
    Cream's activations (Swish; SE with ReLU and hard-sigmoid).

    The SE width is taken from the plan (``plan.se_chs``, 0 = no SE), the drop-path rate too.
    """
    se_layer: Optional[partial] = None
    if plan.se_chs:
        se_layer = partial(blocks.SqueezeExcite, rd_channels=plan.se_chs, gate_layer=gate_layer,
                           force_act_layer=se_act_layer)
    common = dict(stride=plan.stride, act_layer=act_layer, drop_path_rate=plan.drop_path_rate)
    if plan.block_type == "ds":
        return blocks.DepthwiseSeparableConv(
            plan.in_chs, plan.out_chs, dw_kernel_size=plan.kernel_size, noskip=not plan.has_skip,
            se_layer=se_layer, **common)
    if plan.block_type == "ir":
        block = blocks.InvertedResidual(
            plan.in_chs, plan.out_chs, dw_kernel_size=plan.kernel_size, noskip=not plan.has_skip,
            exp_ratio=plan.exp_ratio, se_layer=se_layer, **common)
        if block.conv_pw.weight.shape[0] != plan.mid_chs:
            raise ValueError(f"planned expansion width {plan.mid_chs} differs from the block's "
                             f"{block.conv_pw.weight.shape[0]}")
        return block
    if plan.block_type == "cn":
        return blocks.ConvBnAct(plan.in_chs, plan.out_chs, kernel_size=plan.kernel_size,
                                skip=plan.has_skip, **common)
    raise ValueError(f"unknown block type {plan.block_type!r}")


def build_blocks(plan: NetPlan, blocks: Any, sequential: Callable[..., Any],
                 act_layer: str = "silu", se_act_layer: str = "relu",
                 gate_layer: str = "hard_sigmoid") -> Any:
    """The trunk: one ``sequential`` per stage of ``plan``, each holding its blocks (timm's layout)."""
    return sequential(*[
        sequential(*[make_block(b, blocks, act_layer, se_act_layer, gate_layer) for b in stage])
        for stage in plan.stages])


def bind_builders(blocks: Any, sequential: Callable[..., Any]
                  ) -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """``(make_block, build_blocks)`` of one framework: the functions above with ``blocks`` and
    ``sequential`` fixed, under the signatures both ``builder`` modules share (the mirror test
    compares them)."""

    def make_block_(plan: BlockPlan, act_layer: str = "silu", se_act_layer: str = "relu",
                    gate_layer: str = "hard_sigmoid") -> Any:
        """The block ``plan`` describes, with Cream's activations (see
        :func:`cream_core.arch.assembly.make_block`)."""
        return make_block(plan, blocks, act_layer, se_act_layer, gate_layer)

    def build_blocks_(plan: NetPlan, act_layer: str = "silu", se_act_layer: str = "relu",
                      gate_layer: str = "hard_sigmoid") -> Any:
        """The trunk: one ``Sequential`` per stage of ``plan``, each holding its blocks."""
        return build_blocks(plan, blocks, sequential, act_layer, se_act_layer, gate_layer)

    make_block_.__name__ = make_block_.__qualname__ = "make_block"
    build_blocks_.__name__ = build_blocks_.__qualname__ = "build_blocks"
    return make_block_, build_blocks_
