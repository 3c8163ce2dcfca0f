"""The Cream supernet on timm 1.0 blocks, with the official module and parameter names.

The official ``SuperNet`` (``lib/models/structures/supernet.py``) holds every candidate block:
``blocks[stage][block][choice]``; a forward pass runs one path, ``architecture[stage][block]``
naming the choice (``-1`` skips a block). Its head is the child nets' head (pool, 1x1 conv to 1280
with bias, Swish, classifier), and it carries the *meta layer* of the meta-matching network, a
``Linear(num_classes * slice, 1)`` that scores how well a board entry suits a path.

Here each candidate is built by :func:`cream_torch_ref.builder.make_block` (timm's
``InvertedResidual`` / ``DepthwiseSeparableConv`` / ``ConvBnAct``) from the framework-free plan of
:func:`cream_core.arch.supernet.plan_supernet`; the same builder serves the child nets, and the Paddle
twin (:mod:`cream_paddle.supernet`) builds from the same plan. The squeeze-excite gate is the
official ``relu6(x + 3) / 6`` (:class:`HardSigmoid`), which torch can differentiate twice.
State-dict keys, shapes and order are
the official ones (checked against the official model in ``tests/test_supernet.py``).

:meth:`SuperNet.rand_parameters` yields parameters in the official order, which the second-order
meta step depends on: its simulated update ``students_weight[0]`` is the *first* parameter yielded
(``conv_stem.weight``).
"""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, SelectAdaptivePool2d
from timm.models._efficientnet_builder import efficientnet_init_weights

from cream_core.arch.supernet import (SupernetPaths, SupernetPlan, outside_path, path_blocks,
                                      plan_supernet, supernet_for_budget)

from .builder import make_block

__all__ = ["SuperNet", "HardSigmoid", "create_supernet"]


class HardSigmoid(nn.Module):
    """The official squeeze-excite gate, ``relu6(x + 3) / 6`` (timm 0.1.20's ``hard_sigmoid``).

    Same values as ``nn.Hardsigmoid`` (the child nets' gate), but written with ``relu6``, whose
    backward is itself differentiable: torch has no double backward for ``hardsigmoid_backward``,
    and the meta-matching step differentiates through the gate's backward.
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.relu6(x + 3.0) / 6.0


class SuperNet(SupernetPaths, nn.Module):
    """Every candidate path of the Cream search space in one module.

    Args:
        plan: the resolved supernet (:func:`cream_core.arch.supernet.plan_supernet`).
        num_classes: classifier width.
        slice: images per board entry; sets the meta layer's input width (``num_classes * slice``).
        drop_rate: dropout before the classifier (the official search uses 0).
        global_pool: pooling type (``'avg'``).
    """

    def __init__(self, plan: SupernetPlan, num_classes: int = 1000, slice: int = 4,
                 drop_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        self._hold_sizes(plan, num_classes, slice, drop_rate)
        self.conv_stem = nn.Conv2d(3, plan.stem_size, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(plan.stem_size, apply_act=False)
        self.act1 = nn.SiLU(inplace=True)
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.ModuleList(make_block(c, gate_layer=HardSigmoid) for c in candidates)
                          for candidates in stage)
            for stage in plan.stages)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(plan.out_chs, self.num_features, 1, bias=True)
        self.act2 = nn.SiLU(inplace=True)
        self.classifier = nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes)
        self.meta_layer = nn.Linear(num_classes * slice, 1)
        efficientnet_init_weights(self)

    def forward(self, x: torch.Tensor, architecture: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits of path ``architecture``."""
        x = self.forward_features(x, architecture).reshape(x.shape[0], -1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward_meta(self, features: torch.Tensor) -> torch.Tensor:
        """The meta layer on a board entry's flattened output difference (shape ``[1, 1]``)."""
        return self.meta_layer(features.reshape(1, -1))

    def rand_parameters(self, architecture: Sequence[Sequence[int]], meta: bool = False
                        ) -> Iterator[nn.Parameter]:
        """Parameters of a path in the official order, or only the meta layer's with ``meta=True``.

        Without ``meta``: every parameter outside ``blocks`` and the meta layer (stem, head,
        classifier) in registration order, then the path's blocks in path order.
        """
        yield from (p for name, p in self.named_parameters() if outside_path(name, meta))
        if not meta:
            for block in path_blocks(self.blocks, architecture):
                yield from block.parameters()


def create_supernet(flops_minimum: float = 0, flops_maximum: float = 600, num_classes: int = 1000,
                    slice: int = 4, drop_rate: float = 0.0, global_pool: str = "avg"
                    ) -> Tuple[SuperNet, Tuple[int, ...], int]:
    """The official ``gen_supernet``: ``(model, sta_num, resolution)`` for a FLOPs budget.

    Raises ``ValueError('Invalid FLOPs Settings ...')`` where the official code does.
    """
    found = supernet_for_budget(flops_minimum, flops_maximum)
    model = SuperNet(plan_supernet(found.sta_num), num_classes=num_classes, slice=slice,
                     drop_rate=drop_rate, global_pool=global_pool)
    return model, found.sta_num, found.resolution
