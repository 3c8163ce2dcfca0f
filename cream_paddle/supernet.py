"""The Cream supernet in Paddle, twin of :mod:`cream_torch_ref.supernet` (same names and order).

Every candidate block is built by :func:`cream_paddle.builder.make_block` from the framework-free
plan of :func:`cream_core.arch.supernet.plan_supernet` -- the builder the child nets use -- so layer
paths, parameter names and registration order equal the torch twin's and the official model's;
state dicts differ only by the framework conventions of ``cream_core.rules`` (BN buffer names,
Linear weight layout, no ``num_batches_tracked``).

For the meta-matching step, wrap forward passes in :func:`cream_paddle.second_order.second_order_mode`,
which switches the ``formulation`` option of this model's convolutions (``compat.Conv2D``: the
depthwise ones change), hard-sigmoid gates and BatchNorm layers to twice-differentiable
formulations. The BatchNorm layers are the child nets' ``BatchNormAct2d``
(:func:`cream_paddle.compat.batch_norm`): it writes running statistics back outside autograd's
version tracking, so the several train-mode forwards of a search iteration before one backward work.
"""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import paddle
import paddle.nn as nn

from cream_core.arch.supernet import (SupernetPaths, SupernetPlan, outside_path, path_blocks,
                                      plan_supernet, supernet_for_budget)

from . import compat
from .blocks import BatchNormAct2d, SelectAdaptivePool2d
from .builder import make_block

__all__ = ["SuperNet", "HardSigmoid", "create_supernet"]


class HardSigmoid(compat.Hardsigmoid):
    """The official squeeze-excite gate ``relu6(x + 3) / 6`` (twin of the torch supernet's class).

    :class:`cream_paddle.compat.Hardsigmoid` under the torch twin's name; inside
    ``second_order_mode`` (its ``formulation`` option) it is computed with ``clip`` instead, which
    Paddle can differentiate twice.
    """


class SuperNet(SupernetPaths, nn.Layer):
    """Every candidate path of the Cream search space in one layer (see the torch twin)."""

    def __init__(self, plan: SupernetPlan, num_classes: int = 1000, slice: int = 4,
                 drop_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        self._hold_sizes(plan, num_classes, slice, drop_rate)
        self.conv_stem = compat.Conv2D(3, plan.stem_size, 3, stride=2,
                                       padding=compat.get_padding(3, 2), bias_attr=False)
        self.bn1 = BatchNormAct2d(plan.stem_size, apply_act=False)
        self.act1 = nn.Silu()
        self.blocks = nn.LayerList([
            nn.LayerList([nn.LayerList([make_block(c, gate_layer=HardSigmoid) for c in candidates])
                          for candidates in stage])
            for stage in plan.stages])
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = compat.Conv2D(plan.out_chs, self.num_features, 1)
        self.act2 = nn.Silu()
        self.classifier = nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes)
        self.meta_layer = nn.Linear(num_classes * slice, 1)
        compat.init_weights_goog(self)

    def forward(self, x: paddle.Tensor, architecture: Sequence[Sequence[int]]) -> paddle.Tensor:
        """Logits of path ``architecture``."""
        x = self.forward_features(x, architecture)
        x = x.reshape([x.shape[0], -1])
        if self.drop_rate > 0.0:
            x = compat.dropout(x, self.drop_rate, self.training)
        return self.classifier(x)

    def forward_meta(self, features: paddle.Tensor) -> paddle.Tensor:
        """The meta layer on a board entry's flattened output difference (shape ``[1, 1]``)."""
        return self.meta_layer(features.reshape([1, -1]))

    def rand_parameters(self, architecture: Sequence[Sequence[int]], meta: bool = False
                        ) -> Iterator[paddle.Tensor]:
        """Parameters of a path in the official order, or only the meta layer's with ``meta=True``.

        Only trainable parameters: Paddle keeps BatchNorm's running statistics as parameters with
        ``stop_gradient=True``, torch as buffers.
        """
        yield from (p for name, p in self.named_parameters()
                    if not p.stop_gradient and outside_path(name, meta))
        if not meta:
            for block in path_blocks(self.blocks, architecture):
                yield from (p for p in block.parameters() if not p.stop_gradient)


def create_supernet(flops_minimum: float = 0, flops_maximum: float = 600, num_classes: int = 1000,
                    slice: int = 4, drop_rate: float = 0.0, global_pool: str = "avg"
                    ) -> Tuple[SuperNet, Tuple[int, ...], int]:
    """The official ``gen_supernet``: ``(model, sta_num, resolution)`` for a FLOPs budget."""
    found = supernet_for_budget(flops_minimum, flops_maximum)
    model = SuperNet(plan_supernet(found.sta_num), num_classes=num_classes, slice=slice,
                     drop_rate=drop_rate, global_pool=global_pool)
    return model, found.sta_num, found.resolution
