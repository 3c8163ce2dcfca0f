"""Every place where PaddlePaddle and PyTorch differ for these models, in one documented module.

The Paddle blocks (:mod:`cream_paddle.blocks`) call only these helpers for the behaviours below, so a
difference is handled once and tested once (``tests/test_compat.py`` checks each against torch at the
op level).

==========================  ======================================  =========================================
difference                  PyTorch                                 what this module does in Paddle
==========================  ======================================  =========================================
BN momentum convention      ``running = (1-m)*running + m*batch``   :func:`paddle_bn_momentum`: Paddle's
                            (default ``m = 0.1``)                   ``momentum`` weighs the *old* value, so it
                                                                    is ``1 - m`` (0.9).
BN running variance         unbiased batch variance (``n/(n-1)``)   :func:`batch_norm` corrects Paddle's
                            goes into ``running_var``               biased update to torch's after each step.
BN running-stat update      outside autograd (buffers)              :func:`batch_norm` writes them back with
                                                                    ``set_value`` (no version bump; see
                                                                    the function).
BN / gate / depthwise-conv  native                                  ``formulation`` option of
double grad                                                         :func:`batch_norm`,
                                                                    :class:`Hardsigmoid` and
                                                                    :class:`Conv2D`
                                                                    (:mod:`cream_paddle.second_order`).
BN buffer names             ``running_mean``, ``running_var``,      ``_mean``, ``_variance``, no counter
                            ``num_batches_tracked`` (buffers)       (the converter's rules map them);
                                                                    they are *parameters* with
                                                                    ``stop_gradient`` set, so filter
                                                                    on it when listing trainables.
hard-sigmoid                ``relu6(x + 3) / 6`` (slope 1/6)        :class:`Hardsigmoid`: the same formula;
                                                                    ``paddle.nn.Hardsigmoid`` uses slope
                                                                    0.1666667 and differs by up to 2e-7.
padding                     timm ``pad_type=''``: symmetric         :func:`get_padding`: the same formula,
                            ``((s-1) + d*(k-1)) // 2``              passed to ``Conv2D(padding=...)``.
dropout                     scales kept units by ``1/(1-p)`` in     :func:`dropout` pins Paddle's
                            training, identity in eval              ``mode='upscale_in_train'``.
drop path                   timm ``drop_path``: per-sample          :func:`drop_path`: the same rule.
                            Bernoulli mask, divided by keep prob
Linear weight layout        ``[out_features, in_features]``         ``[in_features, out_features]``:
                                                                    transposed by the conversion rules
                                                                    (:mod:`cream_core.rules`).
global mean pooling         ``x.mean((2, 3))`` (SE, head pool)     :func:`spatial_mean`: the pooling kernel
                                                                    (``adaptive_avg_pool2d(x, 1)``): same
                                                                    value up to rounding; Paddle's ``mean``
                                                                    backward on CPU is ~12x slower, ~15 %
                                                                    of a training step.
initialisation              official "goog" init: conv              :func:`init_weights_goog`, same
                            N(0, sqrt(2/fan_out)), BN 1/0, Linear   distributions; Linear fan-out is
                            U(+-1/sqrt(out_features)), biases 0     ``weight.shape[1]`` in Paddle's layout.
==========================  ======================================  =========================================

Random draws (dropout masks, initial weights) cannot be equal across frameworks; their tests compare
the rule (which units are scaled by how much, which distribution) rather than values.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from . import second_order
from .second_order import Formulation

__all__ = [
    "paddle_bn_momentum",
    "Formulation",
    "batch_norm",
    "Hardsigmoid",
    "hard_sigmoid",
    "Conv2D",
    "get_padding",
    "dropout",
    "drop_path",
    "init_weights_goog",
    "spatial_mean",
    "TORCH_BN_MOMENTUM",
    "BN_EPS",
]

#: torch's (and the official training's) BatchNorm defaults, in torch's convention.
TORCH_BN_MOMENTUM: float = 0.1
BN_EPS: float = 1e-5


def paddle_bn_momentum(torch_momentum: float) -> float:
    """Paddle's ``momentum`` for a torch BatchNorm ``momentum``: Paddle weighs the running value, torch the batch."""
    if torch_momentum is None or not 0.0 <= float(torch_momentum) <= 1.0:
        raise ValueError(f"BatchNorm momentum must be a number in [0, 1] (torch convention), "
                         f"got {torch_momentum!r}; the cumulative average (None) is not supported")
    return 1.0 - float(torch_momentum)


def batch_norm(x: paddle.Tensor, running_mean: paddle.Tensor, running_var: paddle.Tensor,
               weight: Optional[paddle.Tensor], bias: Optional[paddle.Tensor], training: bool,
               momentum: float = TORCH_BN_MOMENTUM, eps: float = BN_EPS,
               formulation: Union[Formulation, str] = Formulation.KERNEL) -> paddle.Tensor:
    """BatchNorm over NCHW with torch's semantics; ``momentum`` is in torch's convention.

    The one BatchNorm path of the Paddle models. In eval it normalises with the running statistics
    (Paddle's kernel, whatever the formulation). In training it normalises with the batch statistics
    and updates the running ones as torch does (unbiased batch variance), computed by
    ``formulation``: ``KERNEL``, Paddle's fused kernel (:func:`_batch_norm_kernel`), or
    ``TWICE_DIFFERENTIABLE``, elementary ops (:func:`_batch_norm_twice_differentiable`). Either way
    the layer's running statistics are only written with ``set_value`` (no inplace-version bump),
    never handed to a kernel that writes them in place, so a search iteration's several train-mode
    forwards through the same layers before one backward never modify a tensor autograd saved.
    (A plain in-place kernel update did not fail on a single layer in Paddle 3.3.1: the copies are
    the safe way, not a fix a test shows to be needed.)
    A ``formulation`` that is not a :class:`Formulation` raises ``ValueError``.
    """
    formulation = Formulation(formulation)
    pm = paddle_bn_momentum(momentum)
    if not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training=False,
                            momentum=pm, epsilon=eps)
    if formulation is Formulation.TWICE_DIFFERENTIABLE:
        return _batch_norm_twice_differentiable(x, running_mean, running_var, weight, bias,
                                                momentum, eps)
    return _batch_norm_kernel(x, running_mean, running_var, weight, bias, pm, eps)


def _values_per_channel(x: paddle.Tensor) -> int:
    """``n = N*H*W``, the count behind a channel's batch statistics."""
    return int(np.prod([x.shape[0]] + list(x.shape[2:])))


def _batch_norm_kernel(x: paddle.Tensor, running_mean: paddle.Tensor, running_var: paddle.Tensor,
                       weight: Optional[paddle.Tensor], bias: Optional[paddle.Tensor], pm: float,
                       eps: float) -> paddle.Tensor:
    """Training-mode BatchNorm by Paddle's kernel; ``pm`` is Paddle's momentum.

    Paddle puts the *biased* batch variance into ``running_var`` while torch puts the unbiased one
    (``n/(n-1)`` times larger); the update is corrected afterwards so that a model trained in Paddle
    keeps the running statistics torch would have kept.
    """
    n = _values_per_channel(x)
    # The kernel updates the statistics it is given in place; give it copies, so that the module's
    # buffers can be corrected afterwards without touching a tensor autograd saved for backward.
    new_mean, new_var = running_mean.detach().clone(), running_var.detach().clone()
    out = F.batch_norm(x, new_mean, new_var, weight, bias, training=True, momentum=pm,
                       epsilon=eps)
    with paddle.no_grad():
        old_var = running_var.detach()
        if n > 1:
            # new_var = pm*old + (1-pm)*biased  ->  pm*old + (1-pm)*biased*n/(n-1), with pm as the
            # kernel used it: Paddle keeps the momentum attribute in float32 (0.9 -> 0.89999998)
            pm32 = float(np.float32(pm))
            new_var = old_var * pm32 + (new_var - old_var * pm32) * (n / (n - 1.0))
        running_mean.set_value(new_mean)
        running_var.set_value(new_var)
    return out


def _batch_norm_twice_differentiable(x: paddle.Tensor, running_mean: paddle.Tensor,
                                     running_var: paddle.Tensor, weight: paddle.Tensor,
                                     bias: paddle.Tensor, momentum: float, eps: float
                                     ) -> paddle.Tensor:
    """Training-mode BatchNorm by :func:`cream_paddle.second_order.batch_norm_train` (double-grad
    capable); running statistics ``(1-m)*running + m*batch`` with torch's ``momentum`` ``m``."""
    out, mean, var = second_order.batch_norm_train(x, weight, bias, eps)
    n = _values_per_channel(x)
    m = float(momentum)
    with paddle.no_grad():
        batch_var = var.reshape([-1]) * (n / (n - 1.0)) if n > 1 else var.reshape([-1])
        running_mean.set_value(running_mean * (1.0 - m) + mean.reshape([-1]) * m)
        running_var.set_value(running_var * (1.0 - m) + batch_var * m)
    return out


def hard_sigmoid(x: paddle.Tensor) -> paddle.Tensor:
    """``relu6(x + 3) / 6``, bit-identical to ``torch.nn.functional.hardsigmoid`` (slope exactly 1/6)."""
    return F.relu6(x + 3.0) / 6.0


class Hardsigmoid(nn.Layer):
    """Hard-sigmoid gate with torch's exact formula (``paddle.nn.Hardsigmoid`` uses slope 0.1666667).

    ``formulation`` (a :class:`Formulation`, ``KERNEL`` by default) picks :func:`hard_sigmoid` or
    the twice-differentiable :func:`cream_paddle.second_order.hard_sigmoid` (same values).
    """

    def __init__(self) -> None:
        super().__init__()
        self.formulation: Formulation = Formulation.KERNEL

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        if self.formulation is Formulation.KERNEL:
            return hard_sigmoid(x)
        if self.formulation is Formulation.TWICE_DIFFERENTIABLE:
            return second_order.hard_sigmoid(x)
        raise ValueError(f"{type(self).__name__}.formulation must be a Formulation, "
                         f"got {self.formulation!r}")


class Conv2D(nn.Conv2D):
    """``paddle.nn.Conv2D`` with a ``formulation`` option: the one conv class of the Paddle models.

    A subclass, under Paddle's own name (as :class:`Hardsigmoid`), so that ``isinstance`` checks,
    parameter names, state-dict keys and the layer tree the mirror test compares with torch's
    ``Conv2d`` are unchanged. ``formulation`` (a :class:`Formulation`, ``KERNEL`` by default):
    ``KERNEL`` runs Paddle's own forward; ``TWICE_DIFFERENTIABLE`` runs a depthwise conv (see
    :func:`cream_paddle.second_order.is_depthwise`) through
    :func:`cream_paddle.second_order.depthwise_conv2d` (Paddle's depthwise kernel has no double
    grad), any other conv through Paddle's forward (the ``conv2d`` kernel has double grad).
    Switching a depthwise conv to ``TWICE_DIFFERENTIABLE`` raises ``ValueError`` for a configuration
    that formulation does not compute (a padding mode other than zeros, ``'SAME'``/``'VALID'`` or
    asymmetric padding, NHWC): the check runs where the option is switched, not per forward.
    """

    _formulation: Formulation = Formulation.KERNEL

    @property
    def formulation(self) -> Formulation:
        """How the training- and eval-mode output is computed (see the class docstring)."""
        return self._formulation

    @formulation.setter
    def formulation(self, value: Formulation) -> None:
        if not isinstance(value, Formulation):  # as Hardsigmoid: a value's string is refused, not guessed
            raise ValueError(f"{type(self).__name__}.formulation must be a Formulation, got {value!r}")
        if value is Formulation.TWICE_DIFFERENTIABLE and second_order.is_depthwise(self):
            self._check_twice_differentiable()
        self._formulation = value

    def _check_twice_differentiable(self) -> None:
        """``ValueError`` unless :func:`second_order.depthwise_conv2d` computes this layer."""
        if (self._padding_mode != "zeros" or getattr(self, "_padding_algorithm", "") != "EXPLICIT"
                or len(list(getattr(self, "_updated_padding", []))) != 2
                or self._data_format != "NCHW"):
            raise ValueError(f"second-order depthwise conv: unsupported layer configuration {self!r}")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        if self._formulation is Formulation.TWICE_DIFFERENTIABLE and second_order.is_depthwise(self):
            out = second_order.depthwise_conv2d(x, self.weight, self._stride, self._updated_padding,
                                                self._dilation, self._groups)
            return out if self.bias is None else out + self.bias.reshape([1, -1, 1, 1])
        return super().forward(x)


def spatial_mean(x: paddle.Tensor, keepdim: bool = True) -> paddle.Tensor:
    """Mean over H and W of an NCHW tensor (torch's ``x.mean((2, 3), keepdim)``).

    Computed by the average-pooling kernel: Paddle's ``mean`` gives the same values but its CPU
    backward is an order of magnitude slower. Twice differentiable (the meta step needs it);
    ``reshape`` rather than ``flatten``, which has no double grad.
    """
    out = F.adaptive_avg_pool2d(x, 1)
    return out if keepdim else out.reshape([out.shape[0], out.shape[1]])


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Symmetric padding of timm's default ``pad_type=''`` (what the official child nets use)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def dropout(x: paddle.Tensor, p: float, training: bool) -> paddle.Tensor:
    """Dropout as torch does it: kept units scaled by ``1/(1-p)`` while training, identity in eval."""
    return F.dropout(x, p=p, training=training, mode="upscale_in_train")


def drop_path(x: paddle.Tensor, drop_prob: float = 0.0, training: bool = False,
              scale_by_keep: bool = True) -> paddle.Tensor:
    """Stochastic depth as timm's ``drop_path``: drop whole samples, rescale the kept ones by ``1/keep``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.bernoulli(paddle.full(shape, keep, dtype=x.dtype))
    if keep > 0.0 and scale_by_keep:
        mask = mask / keep
    return x * mask


def init_weights_goog(model: nn.Layer) -> None:
    """The official (TensorFlow-style) initialisation, as timm's ``_init_weight_goog``.

    Conv: N(0, sqrt(2 / fan_out)), ``fan_out = k*k*out_channels // groups``, bias 0. BatchNorm: weight
    1, bias 0. Linear: U(-r, r), ``r = 1/sqrt(out_features)``, bias 0 (``out_features`` is
    ``weight.shape[1]`` in Paddle's layout, ``weight.size(0)`` in torch's). Applied with Paddle
    initializers, so it also works on a model built under ``paddle.LazyGuard`` (then the values are
    drawn when the parameters are first materialised).
    """
    init = nn.initializer
    zero = init.Constant(0.0)
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Conv2D):
            k = layer._kernel_size
            fan_out = int(k[0]) * int(k[1]) * int(layer._out_channels) // int(layer._groups)
            init.Normal(0.0, math.sqrt(2.0 / fan_out))(layer.weight)
            if layer.bias is not None:
                zero(layer.bias)
        elif isinstance(layer, nn.BatchNorm2D):
            if layer.weight is not None:
                init.Constant(1.0)(layer.weight)
            if layer.bias is not None:
                zero(layer.bias)
        elif isinstance(layer, nn.Linear):
            r = 1.0 / math.sqrt(int(layer.weight.shape[1]))
            init.Uniform(-r, r)(layer.weight)
            if layer.bias is not None:
                zero(layer.bias)
