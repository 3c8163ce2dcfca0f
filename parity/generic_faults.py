"""Porting mistakes injected into paddle.vision models, to show the generic engine catches and
locates them on both sides (``parity/test_generic.py``, ``parity run --torch ... --paddle
... --inject-fault NAME``).

Each :class:`GenericFault` edits a Paddle model of one pair after its weights are loaded, and names
the layer the engine must report first: its torch path and its Paddle path (which differ where the
trees differ). ``config`` faults must also show in the configuration diff.

:func:`exact_hardsigmoid` is the *correction* of paddle.vision's MobileNetV3, whose squeeze-excite
gates use Paddle's default hard-sigmoid slope 0.1666667 where torchvision computes relu6(x + 3) / 6:
with it the pair is equivalent, which is the baseline the MobileNetV3 faults start from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Tuple

import numpy as np

from .faults import get_sublayer, set_sublayer

__all__ = ["GenericFault", "GENERIC_FAULTS", "exact_hardsigmoid", "make_exact_hardsigmoid"]


def make_exact_hardsigmoid() -> Any:
    """A Paddle layer computing torch's hard-sigmoid exactly: relu6(x + 3) / 6 (slope 1/6).

    (``F.hardsigmoid(x, slope=1/6)`` would store the slope as a float32 attribute, 3e-8 off in
    float64.) Its class is called ``Hardsigmoid`` so the configuration diff reads its ``slope``.
    """
    import paddle
    import paddle.nn.functional as F

    class Hardsigmoid(paddle.nn.Layer):
        slope = 1.0 / 6.0
        offset = 0.5

        def forward(self, x: Any) -> Any:
            return F.relu6(x + 3.0) / 6.0

    return Hardsigmoid()


def exact_hardsigmoid(model: Any) -> None:
    """Replace every ``paddle.nn.Hardsigmoid`` of ``model`` by :func:`make_exact_hardsigmoid`."""
    import paddle

    for name, layer in list(model.named_sublayers()):
        if type(layer) is paddle.nn.Hardsigmoid:
            set_sublayer(model, name, make_exact_hardsigmoid())


def _bn_epsilon(path: str, eps: float) -> Callable[[Any], None]:
    def apply(model: Any) -> None:
        get_sublayer(model, path)._epsilon = eps
    return apply


def _same_padding(path: str) -> Callable[[Any], None]:
    """TensorFlow-style 'SAME' padding on a stride-2 3x3 convolution: same output size, but the
    window is padded (0, 1) instead of (1, 1), so every output is shifted."""
    def apply(model: Any) -> None:
        conv = get_sublayer(model, path)
        conv._padding_algorithm = "SAME"
        conv._padding = "SAME"
        conv._updated_padding = [0, 0]
    return apply


def _bn_momentum(path: str, momentum: float) -> Callable[[Any], None]:
    """torch's momentum value given to Paddle, whose momentum weights the *old* running value."""
    def apply(model: Any) -> None:
        get_sublayer(model, path)._momentum = momentum
    return apply


def _dropout_mode(path: str, mode: str) -> Callable[[Any], None]:
    def apply(model: Any) -> None:
        get_sublayer(model, path).mode = mode
    return apply


def _transposed_kernel(path: str) -> Callable[[Any], None]:
    def apply(model: Any) -> None:
        conv = get_sublayer(model, path)
        conv.weight.set_value(np.ascontiguousarray(conv.weight.numpy().transpose(0, 1, 3, 2)))
    return apply


def _swapped_channels(path: str) -> Callable[[Any], None]:
    def apply(model: Any) -> None:
        conv = get_sublayer(model, path)
        w = conv.weight.numpy().copy()
        w[[0, 1]] = w[[1, 0]]
        conv.weight.set_value(w)
    return apply


def _default_hardsigmoid_at(path: str) -> Callable[[Any], None]:
    """The corrected MobileNetV3 with Paddle's default hard-sigmoid put back in one gate."""
    def apply(model: Any) -> None:
        import paddle

        exact_hardsigmoid(model)
        set_sublayer(model, path, paddle.nn.Hardsigmoid())
    return apply


def _on_exact(fault: Callable[[Any], None]) -> Callable[[Any], None]:
    def apply(model: Any) -> None:
        exact_hardsigmoid(model)
        fault(model)
    return apply


@dataclass(frozen=True)
class GenericFault:
    """A porting mistake in the Paddle model of one paddle.vision pair, and where it must show."""

    name: str
    pair: str  # the constructor name in torchvision.models and paddle.vision.models
    description: str
    torch_module: str
    paddle_module: str
    config: bool  # True: the configuration diff must show it too
    apply: Callable[[Any], None]
    stage: str = "forward/eval/fp64"  # where the numbers first show it


_MV3 = "mobilenet_v3_large"

#: The injected faults of the generic pairs.
GENERIC_FAULTS: Tuple[GenericFault, ...] = (
    GenericFault("bn-epsilon", "resnet18", "BatchNorm epsilon 1e-3 instead of 1e-5 in layer2.0.bn1",
                 "layer2.0.bn1", "layer2.0.bn1", True, _bn_epsilon("layer2.0.bn1", 1e-3)),
    GenericFault("same-padding", "resnet18", "'SAME' padding in the stride-2 layer2.0.conv1",
                 "layer2.0.conv1", "layer2.0.conv1", True, _same_padding("layer2.0.conv1")),
    GenericFault("transposed-weight", "resnet18", "kernel of layer3.0.conv2 with H and W swapped",
                 "layer3.0.conv2", "layer3.0.conv2", False, _transposed_kernel("layer3.0.conv2")),
    GenericFault("swapped-channels", "resnet18", "output channels 0 and 1 of layer1.1.conv1 "
                 "exchanged", "layer1.1.conv1", "layer1.1.conv1", False,
                 _swapped_channels("layer1.1.conv1")),
    GenericFault("bn-momentum", "resnet18", "BatchNorm momentum 0.1 in layer3.1.bn2: torch's "
                 "value where Paddle's convention needs 0.9", "layer3.1.bn2", "layer3.1.bn2", True,
                 _bn_momentum("layer3.1.bn2", 0.1), "bn_stats/fp64"),
    GenericFault("dropout-mode", "mobilenet_v2", "dropout before the classifier in "
                 "'downscale_in_infer' mode (eval output scaled by 1 - p)", "classifier.0",
                 "classifier.0", True, _dropout_mode("classifier.0", "downscale_in_infer")),
    GenericFault("hardsigmoid-slope", _MV3, "Paddle's default hard-sigmoid (slope 0.1666667) in "
                 "the squeeze-excite gate of blocks.5, exact 1/6 elsewhere",
                 "features.6.block.2.scale_activation", "blocks.5.mid_se.scale_activation", True,
                 _default_hardsigmoid_at("blocks.5.mid_se.scale_activation")),
    GenericFault("bn-epsilon", _MV3, "BatchNorm epsilon 1e-2 instead of 1e-3 in "
                 "blocks.7.expand_conv.1", "features.8.block.0.1", "blocks.7.expand_conv.1", True,
                 _on_exact(_bn_epsilon("blocks.7.expand_conv.1", 1e-2))),
    GenericFault("transposed-weight", _MV3, "depthwise kernel of blocks.2.bottleneck_conv.0 with "
                 "H and W swapped", "features.3.block.1.0", "blocks.2.bottleneck_conv.0", False,
                 _on_exact(_transposed_kernel("blocks.2.bottleneck_conv.0"))),
)
