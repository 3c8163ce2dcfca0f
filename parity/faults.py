"""Porting mistakes to inject into a Paddle model, to show that the harness catches and locates them.

Each :class:`Fault` edits a freshly built Paddle ``ChildNet`` in place (after its weights are loaded)
the way a plausible porting mistake would, and names the module that ``parity run`` must report as
the first divergence. The modules exist in every released child net. Used by
``parity/test_faults.py`` and by ``parity run --inject-fault NAME`` (a demonstration that the run
fails, and where).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict

__all__ = ["Fault", "FAULTS", "get_sublayer", "set_sublayer"]


def get_sublayer(model: Any, path: str) -> Any:
    """The sub-layer at dotted ``path`` (``blocks.1.0.conv_pw``)."""
    layer = model
    for part in path.split("."):
        layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
    return layer


def set_sublayer(model: Any, path: str, new: Any) -> None:
    """Put ``new`` at the dotted ``path`` of ``model`` (list indices as digits)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = get_sublayer(model, parent_path) if parent_path else model
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


def _paddle_default_hardsigmoid(model: Any) -> None:
    """Every SE gate becomes ``paddle.nn.Hardsigmoid()``: slope 0.1666667 instead of torch's 1/6."""
    import paddle

    for name, layer in list(model.named_sublayers()):
        if name.endswith(".se.gate"):
            set_sublayer(model, name, paddle.nn.Hardsigmoid())


def _bn_epsilon(model: Any) -> None:
    """One BatchNorm with TensorFlow's epsilon 1e-3 instead of torch's 1e-5."""
    get_sublayer(model, "blocks.2.0.bn2").eps = 1e-3


def _transposed_weight(model: Any) -> None:
    """A depthwise kernel with its two spatial axes swapped (k x k is square, so it still loads)."""
    import numpy as np

    layer = get_sublayer(model, "blocks.3.0.conv_dw")
    w = layer.weight.numpy()
    layer.weight.set_value(np.ascontiguousarray(w.transpose(0, 1, 3, 2)))


def _swapped_channels(model: Any) -> None:
    """Output channels 0 and 1 of a 1x1 convolution exchanged (a wrong channel permutation)."""
    layer = get_sublayer(model, "blocks.1.0.conv_pw")
    w = layer.weight.numpy().copy()
    w[[0, 1]] = w[[1, 0]]
    layer.weight.set_value(w)


def _bn_momentum(model: Any) -> None:
    """Paddle's momentum convention (0.9) given where torch's (0.1) is expected, in one BatchNorm.

    Normalisation is unchanged (train mode uses batch statistics, eval the running ones), so only
    the running statistics after a training pass reveal it.
    """
    get_sublayer(model, "blocks.1.0.bn1").momentum = 0.9


def _missing_activation(model: Any) -> None:
    """The Swish after one BatchNorm dropped (``Identity`` where the reference has SiLU)."""
    import paddle

    set_sublayer(model, "blocks.4.0.bn1.act", paddle.nn.Identity())


@dataclass(frozen=True)
class Fault:
    """A porting mistake, where the harness must locate it, and in which category."""

    name: str
    description: str
    module: str  # the first divergent module parity must report
    category: str
    apply: Callable[[Any], None]


#: The injected faults, by name.
FAULTS: Dict[str, Fault] = {f.name: f for f in (
    Fault("hardsigmoid-slope", "Paddle's default hard-sigmoid (slope 0.1666667) in every SE gate",
          "blocks.0.0.se.gate", "layer", _paddle_default_hardsigmoid),
    Fault("bn-epsilon", "BatchNorm epsilon 1e-3 instead of 1e-5 in blocks.2.0.bn2",
          "blocks.2.0.bn2", "layer", _bn_epsilon),
    Fault("transposed-weight", "depthwise kernel of blocks.3.0.conv_dw with H and W swapped",
          "blocks.3.0.conv_dw", "layer", _transposed_weight),
    Fault("swapped-channels", "output channels 0 and 1 of blocks.1.0.conv_pw exchanged",
          "blocks.1.0.conv_pw", "layer", _swapped_channels),
    Fault("missing-activation", "no Swish after blocks.4.0.bn1",
          "blocks.4.0.bn1.act", "layer", _missing_activation),
    Fault("bn-momentum", "BatchNorm momentum 0.9 (Paddle's convention) in blocks.1.0.bn1",
          "blocks.1.0.bn1", "bn_stats", _bn_momentum),
)}
