"""Twice-differentiable formulations for Paddle's second-order path (the meta-matching step).

The meta-matching update differentiates a gradient (``paddle.grad(..., create_graph=True)``, then
``paddle.grad`` of the result), so every op between the path's parameters and the distillation loss
needs a double-grad kernel. Paddle 3.3 on CPU has none for these ops (the second ``paddle.grad``
fails with "doesn't have any grad op" or "kernel ... not registered"):

=========================  ==========================================================================
op                         formulation used here (same values; gradients exact up to rounding)
=========================  ==========================================================================
depthwise ``conv2d``       :func:`depthwise_conv2d`: the generic grouped ``conv2d`` kernel with
                           ``groups = channels`` (``F.conv2d`` routes that case to the separate
                           ``depthwise_conv2d`` kernel, which lacks double grad). The kernel reads the
                           layer's own weight tensor, so the 2020 in-place update semantics hold.
                           :class:`cream_paddle.compat.Conv2D` runs it for a depthwise layer set
                           to ``Formulation.TWICE_DIFFERENTIABLE``.
``hardsigmoid``/``relu6``  :func:`hard_sigmoid`: ``clip(x + 3, 0, 6) / 6`` (``clip`` has double grad).
``softmax``                :func:`softmax`: ``exp(x - max) / sum(exp(x - max))``, the max detached
                           (softmax is shift-invariant, so the gradient is unchanged).
``log_softmax`` /          :func:`log_softmax`: ``(x - max) - log(sum(exp(x - max)))``, max detached.
``logsumexp``
``cross_entropy`` (mean)   :func:`soft_target_cross_entropy`: explicit log-softmax, ``sum`` then divide
                           by the batch size (``mean`` over all elements has no double grad).
``batch_norm`` (train)     :func:`batch_norm_train`: batch mean and biased variance by ``mean`` over
                           N, H, W (channel-major), ``(x - mean) / sqrt(var + eps) * gamma + beta``. Paddle's
                           ``batch_norm_double_grad`` exists but fails ("Required tensor shall not be
                           nullptr") when only some of its outputs carry a cotangent, which is the
                           case here. ``gamma`` enters through a reshape *view* of the parameter, so
                           the 2020 in-place semantics hold. :func:`cream_paddle.compat.batch_norm`
                           runs it (and updates the running statistics, torch momentum, unbiased
                           variance, through ``set_value``) for ``Formulation.TWICE_DIFFERENTIABLE``.
``max``, ``flatten``,      not used: the supernet reshapes instead of flattening, and the max above is
strided slices             detached.
=========================  ==========================================================================

Everything is confined to the second-order path. Layers that have a twice-differentiable
alternative say so with an explicit option, a ``formulation`` attribute holding a
:class:`Formulation` (``KERNEL`` by default): ``BatchNormAct2d``, the hard-sigmoid gates
(:class:`cream_paddle.compat.Hardsigmoid` and the supernet's ``HardSigmoid``) and the convolutions
(:class:`cream_paddle.compat.Conv2D`, a ``paddle.nn.Conv2D`` the Paddle models build every conv
with; a depthwise one runs :func:`depthwise_conv2d` when switched).
:func:`second_order_mode` sets it to ``TWICE_DIFFERENTIABLE`` on every such layer of one model for
the duration of a ``with`` block and restores it afterwards (it never replaces a layer's
``forward``); the search code calls :func:`softmax` / :func:`soft_target_cross_entropy` only
inside the meta-matching step. ``tests/test_second_order.py`` checks each formulation's value,
gradient and second derivative against torch.
"""
from __future__ import annotations

import contextlib
import enum
from typing import Iterator, List, Tuple

import paddle
import paddle.nn as nn

__all__ = ["Formulation", "depthwise_conv2d", "hard_sigmoid", "softmax", "log_softmax",
           "soft_target_cross_entropy", "batch_norm_train", "second_order_mode", "is_depthwise"]


class Formulation(enum.Enum):
    """How a layer with a twice-differentiable alternative computes its training-mode output.

    ``KERNEL``: Paddle's own fused kernels (fast; first-order gradients only). ``TWICE_DIFFERENTIABLE``:
    the elementary-op formulations of this module (the meta-matching step differentiates a gradient).
    Set as a layer's ``formulation`` attribute; :func:`second_order_mode` switches it for a block.
    """

    KERNEL = "kernel"
    TWICE_DIFFERENTIABLE = "twice_differentiable"

    @classmethod
    def _missing_(cls, value: object) -> "Formulation":
        """``Formulation(value)`` of anything else: a ``ValueError`` naming the value and the choices."""
        raise ValueError(f"formulation {value!r} is not one of "
                         f"{', '.join(repr(f.value) for f in cls)} (or a Formulation member)")


def depthwise_conv2d(x: paddle.Tensor, weight: paddle.Tensor, stride: Tuple[int, int],
                     padding: Tuple[int, int], dilation: Tuple[int, int], groups: int
                     ) -> paddle.Tensor:
    """A depthwise convolution computed by the grouped ``conv2d`` kernel (double-grad capable)."""
    pad = [int(padding[0]), int(padding[1])]
    return paddle._C_ops.conv2d(x, weight, [int(s) for s in stride], pad, "EXPLICIT",
                                [int(d) for d in dilation], int(groups), "NCHW")


def hard_sigmoid(x: paddle.Tensor) -> paddle.Tensor:
    """``relu6(x + 3) / 6`` written with ``clip`` (the same values, twice differentiable)."""
    return paddle.clip(x + 3.0, 0.0, 6.0) / 6.0


def softmax(x: paddle.Tensor, axis: int = 1) -> paddle.Tensor:
    """Softmax by ``exp`` and ``sum`` with the (detached) row maximum subtracted."""
    shifted = x - x.detach().max(axis=axis, keepdim=True)
    e = paddle.exp(shifted)
    return e / e.sum(axis=axis, keepdim=True)


def log_softmax(x: paddle.Tensor, axis: int = 1) -> paddle.Tensor:
    """Log-softmax as ``(x - max) - log(sum(exp(x - max)))``, the maximum detached."""
    shifted = x - x.detach().max(axis=axis, keepdim=True)
    return shifted - paddle.log(paddle.exp(shifted).sum(axis=axis, keepdim=True))


def soft_target_cross_entropy(pred: paddle.Tensor, soft_target: paddle.Tensor) -> paddle.Tensor:
    """Cream's distillation loss, batch mean of ``sum(-soft * log_softmax(pred), 1)``, twice
    differentiable."""
    per_sample = paddle.sum(-soft_target * log_softmax(pred, axis=1), axis=1)
    return per_sample.sum() / float(pred.shape[0])


def batch_norm_train(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, eps: float
                     ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Training-mode BatchNorm from elementary ops: ``(out, batch_mean, biased_batch_var)``.

    Computed channel-major (``[C, N*H*W]``): Paddle's gradient of a mean over axes (0, 2, 3) is
    about twice as slow as over one contiguous axis. ``gamma`` multiplies as a reshape *view* of
    the parameter, directly, so the backward reads the parameter itself.
    """
    n, c, h, w = x.shape
    xt = x.transpose([1, 0, 2, 3]).reshape([c, -1])
    mean = xt.mean(axis=1, keepdim=True)
    centered = xt - mean
    var = (centered * centered).mean(axis=1, keepdim=True)
    out = centered / paddle.sqrt(var + eps) * weight.reshape([-1, 1]) + bias.reshape([-1, 1])
    return out.reshape([c, n, h, w]).transpose([1, 0, 2, 3]), mean, var


def is_depthwise(layer: nn.Layer) -> bool:
    """True for a ``Conv2D`` with one input channel per group and groups > 1 (what Paddle routes to
    its ``depthwise_conv2d`` kernel)."""
    if not isinstance(layer, nn.Conv2D):
        return False
    groups = int(layer._groups)
    return groups > 1 and int(layer._in_channels) == groups and int(layer._out_channels) % groups == 0


def _has_formulation(layer: nn.Layer) -> bool:
    """True for a layer that declares a :class:`Formulation` option (its ``formulation`` attribute
    or property); ``ValueError`` if the value it holds is not one."""
    if not hasattr(layer, "formulation"):
        return False
    Formulation(layer.formulation)
    return True


@contextlib.contextmanager
def second_order_mode(model: nn.Layer) -> Iterator[nn.Layer]:
    """Within the block, ``model``'s depthwise convs, hard-sigmoid gates and BatchNorms support
    double grad.

    Every layer with a ``formulation`` option is set to ``TWICE_DIFFERENTIABLE`` (nothing else is
    changed: no layer gets a ``forward`` of its own); the previous values come back on exit, also
    after an exception. A depthwise :class:`cream_paddle.compat.Conv2D` whose configuration the
    formulation does not compute raises ``ValueError`` when it is switched.
    """
    switched: List[Tuple[nn.Layer, Formulation]] = []
    try:
        for layer in model.sublayers(include_self=True):
            if _has_formulation(layer):
                switched.append((layer, layer.formulation))
                layer.formulation = Formulation.TWICE_DIFFERENTIABLE
        yield model
    finally:
        for layer, formulation in reversed(switched):
            layer.formulation = formulation
