"""timm's EfficientNet/MobileNetV3 blocks, under the names ``cream_paddle.blocks`` mirrors.

The reference uses timm's classes unchanged; this module only gathers them in one place so that the
two trees have the same files with the same class names (``tests/test_mirror.py`` checks it).
"""
from __future__ import annotations

# re-exported: __all__ is cream_core.arch.assembly.BLOCK_CLASS_NAMES
from timm.layers import BatchNormAct2d, DropPath, SelectAdaptivePool2d  # noqa: F401
from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool  # noqa: F401
from timm.models._efficientnet_blocks import (ConvBnAct, DepthwiseSeparableConv,  # noqa: F401
                                              InvertedResidual, SqueezeExcite)

from cream_core.arch.assembly import BLOCK_CLASS_NAMES

__all__ = list(BLOCK_CLASS_NAMES)  # the names cream_core.arch.assembly builds with
