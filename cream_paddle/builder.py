"""Build Paddle blocks from the framework-free plan (:func:`cream_core.arch.plan_network`).

:func:`make_block` turns one :class:`~cream_core.arch.BlockPlan` into its layer; the child nets use it
through :func:`build_blocks`, and a supernet can call it for every candidate of a searchable slot.
Which block and which arguments is :mod:`cream_core.arch.assembly`'s decision, shared with
``cream_torch_ref.builder``; this module binds it to the Paddle classes of :mod:`cream_paddle.blocks`.
"""
from __future__ import annotations

import paddle.nn as nn

from cream_core.arch.assembly import bind_builders

from . import blocks

__all__ = ["make_block", "build_blocks"]

make_block, build_blocks = bind_builders(blocks, nn.Sequential)
