"""Cream child nets on timm 1.0's MobileNetV3, equal in keys, shapes and logits to the official ones.

The official ``ChildNet`` (2020) is an EfficientNet-style trunk built with timm 0.1.20's blocks.
timm 1.0 still has those blocks and builder, so the reference is timm's ``MobileNetV3`` configured as
the official ``gen_childnet`` configures its model:

* stem 16, head 1280 with bias (``head_bias=True``), pooling before the head conv;
* Swish activations (``nn.SiLU``);
* squeeze-excite on the expanded width, reduced width rounded to a multiple of 8
  (``rd_round_fn=round_channels``), ReLU inside (``force_act_layer``) and a hard-sigmoid gate;
* BatchNorm with torch defaults (eps 1e-5, momentum 0.1).

The architecture itself comes from :func:`cream_core.arch.child_arch_def`, which reproduces the
official decoder's quirks.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence

import torch.nn as nn
from timm.models import MobileNetV3
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels

from cream_core.arch import NUM_FEATURES, STEM_SIZE, child_arch_def

__all__ = ["ChildNet", "cream_se_layer"]


#: Squeeze-excite as the official ``se_kwargs`` (ReLU, hard-sigmoid gate, reduce from the block's
#: expanded width, divisor 8).
cream_se_layer = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU,
                         rd_round_fn=round_channels)


class ChildNet(MobileNetV3):
    """A Cream child net given by its choice list (one index into ``cream_core.arch.CHOICES`` per block).

    Args:
        arch_list: stage-wise choice indices, e.g. ``[[0], [3], [3, 3], [3, 3], [3], [3], [0]]``.
        num_classes: classifier width.
        drop_rate: dropout before the classifier (retraining used 0.2).
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        global_pool: pooling type, ``'avg'`` as in every official config.
    """

    def __init__(self, arch_list: Sequence[Sequence[int]], num_classes: int = 1000,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "avg") -> None:
        self.arch_list: List[List[int]] = [list(s) for s in arch_list]
        super().__init__(
            decode_arch_def(child_arch_def(self.arch_list)),
            num_classes=num_classes,
            stem_size=STEM_SIZE,
            num_features=NUM_FEATURES,
            head_bias=True,
            act_layer=nn.SiLU,
            se_layer=cream_se_layer,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            global_pool=global_pool,
        )
