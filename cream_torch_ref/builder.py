"""Build timm blocks from the framework-free plan (:func:`cream_core.arch.plan_network`).

The child nets themselves are built by timm's own ``decode_arch_def`` / ``EfficientNetBuilder`` (see
:mod:`cream_torch_ref.childnet`); :func:`make_block` and :func:`build_blocks` build the same blocks
from a :class:`~cream_core.arch.BlockPlan` instead, for a supernet that instantiates every candidate
of a slot, and so that a test can check the plan against timm's builder. Which block and which
arguments is :mod:`cream_core.arch.assembly`'s decision, shared with ``cream_paddle.builder``; this
module binds it to timm's classes.
"""
from __future__ import annotations

import torch.nn as nn

from cream_core.arch.assembly import bind_builders

from . import blocks

__all__ = ["make_block", "build_blocks"]

make_block, build_blocks = bind_builders(blocks, nn.Sequential)
