"""Cream child nets in Paddle, layer for layer the PyTorch reference (timm's ``MobileNetV3``).

Same sub-layer names as :class:`cream_torch_ref.childnet.ChildNet` (``conv_stem``, ``bn1``,
``blocks``, ``global_pool``, ``conv_head``, ``norm_head``, ``act2``, ``flatten``, ``classifier``) and
the same configuration as the official ``gen_childnet``: stem 16, head 1280 with bias, pooling before
the head conv, Swish, squeeze-excite from the expanded width rounded to 8 with ReLU and hard-sigmoid,
BatchNorm eps 1e-5 / momentum 0.1 (torch convention), official "goog" initialisation.

The architecture comes from :func:`cream_core.arch.child_arch_def` through :func:`cream_core.arch.plan_network`.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence

import paddle
import paddle.nn as nn

from cream_core.arch import NUM_FEATURES, STEM_SIZE, child_arch_def, make_divisible, plan_network

from . import compat
from .blocks import BatchNormAct2d, SelectAdaptivePool2d, SqueezeExcite
from .builder import build_blocks

__all__ = ["ChildNet", "cream_se_layer"]

#: Squeeze-excite as the official ``se_kwargs`` (ReLU, hard-sigmoid gate, reduce from the block's
#: expanded width, divisor 8); the twin of ``cream_torch_ref.childnet.cream_se_layer``.
cream_se_layer = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU,
                         rd_round_fn=make_divisible)


class ChildNet(nn.Layer):
    """A Cream child net given by its choice list: the arguments of its twin
    :class:`cream_torch_ref.childnet.ChildNet` (the mirror test holds them equal), the same layers;
    ``num_classes=0`` builds no classifier (the pooled features are returned)."""

    def __init__(self, arch_list: Sequence[Sequence[int]], num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg") -> None:
        super().__init__()
        self.arch_list: List[List[int]] = [list(s) for s in arch_list]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        plan = plan_network(child_arch_def(self.arch_list), drop_path_rate=drop_path_rate,
                                 stem_size=STEM_SIZE, num_features=NUM_FEATURES)
        stem = plan.stem_size
        self.conv_stem = compat.Conv2D(3, stem, 3, stride=2, padding=compat.get_padding(3, 2),
                                       bias_attr=False)
        self.bn1 = BatchNormAct2d(stem, act_layer="silu")
        self.blocks = build_blocks(plan)
        self.num_features = self.head_hidden_size = plan.num_features
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = compat.Conv2D(plan.out_chs, self.num_features, 1)
        self.norm_head = nn.Identity()
        self.act2 = nn.Silu()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 \
            else nn.Identity()
        compat.init_weights_goog(self)

    def get_classifier(self) -> nn.Layer:
        """The final classifier layer."""
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """Replace the classifier (freshly initialised) and the pooling, as timm's ``reset_classifier``."""
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 \
            else nn.Identity()
        if num_classes > 0:
            compat.init_weights_goog(self.classifier)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """Stem and blocks: the last feature map before pooling."""
        return self.blocks(self.bn1(self.conv_stem(x)))

    def forward_head(self, x: paddle.Tensor, pre_logits: bool = False) -> paddle.Tensor:
        """Pool, head conv, activation, flatten, dropout, classifier (or the features before it)."""
        x = self.flatten(self.act2(self.norm_head(self.conv_head(self.global_pool(x)))))
        if self.drop_rate > 0.0:
            x = compat.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        return self.forward_head(self.forward_features(x))
