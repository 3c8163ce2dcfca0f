"""The EfficientNet/MobileNetV3 blocks of the Cream child nets, written for Paddle with timm's names.

There is no timm for Paddle, so these classes re-implement the timm 1.0 blocks the PyTorch reference
uses (``cream_torch_ref.blocks`` re-exports the originals under the same names). Each class has the
constructor arguments of its timm twin, in the same order and with the same defaults (framework
classes replaced by their Paddle counterparts), and the same sub-layer attribute names, so that a
state-dict key differs between the two only by framework convention (see ``cream_core.rules``).

Options the Cream networks never use and that would need more than a renaming to port (space-to-depth
stems, anti-aliasing layers, CondConv, dynamic 'same' padding, non-affine or untracked BatchNorm,
explicit device/dtype) raise ``ValueError`` instead of building something different.

Framework differences (BN momentum/variance, hard-sigmoid slope, padding, dropout, drop path) are
delegated to :mod:`cream_paddle.compat`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

import paddle
import paddle.nn as nn

from cream_core.arch.assembly import BLOCK_CLASS_NAMES
from cream_core.arch.plan import make_divisible

from . import compat

__all__ = list(BLOCK_CLASS_NAMES)  # the names cream_core.arch.assembly builds with

LayerType = Union[str, Callable, Type[nn.Layer]]

#: timm's activation names -> Paddle layers with torch's numerics (hard-sigmoid from compat).
_ACT_LAYERS: Dict[str, Type[nn.Layer]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.Silu,
    "swish": nn.Silu,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": compat.Hardsigmoid,
    "identity": nn.Identity,
}


def _refuse(cls: str, **options: Any) -> None:
    """Raise for options this port does not implement (Cream never sets them)."""
    for name, value in options.items():
        raise ValueError(f"{cls}: {name}={value!r} is not supported by cream_paddle "
                         "(the Cream networks do not use it)")


def get_act_layer(name: Optional[LayerType] = "relu") -> Optional[Callable[..., nn.Layer]]:
    """A layer factory for an activation given by timm name, Paddle layer class or factory."""
    if name is None:
        return None
    if isinstance(name, str):
        key = name.lower()
        if key == "":
            return None
        if key not in _ACT_LAYERS:
            raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACT_LAYERS))}")
        return _ACT_LAYERS[key]
    return name


def create_act_layer(name: Optional[LayerType], inplace: Optional[bool] = None,
                     **kwargs: Any) -> nn.Layer:
    """An activation layer (``Identity`` for ``None``); ``inplace`` is accepted for timm parity, unused."""
    layer = get_act_layer(name)
    if layer is None:
        return nn.Identity()
    return layer(**kwargs)


def create_conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  dilation: int = 1, groups: int = 1, padding: Union[int, str] = "",
                  bias: bool = False) -> compat.Conv2D:
    """:class:`compat.Conv2D` padded as timm's ``create_conv2d`` pads (``''``: symmetric, see
    :func:`compat.get_padding`); the factory of every block conv, depthwise ones included."""
    if isinstance(padding, str):
        p = padding.lower()
        if p == "":
            pad = compat.get_padding(kernel_size, stride, dilation)
        elif p == "valid":
            pad = 0
        elif p == "same" and stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0:
            pad = compat.get_padding(kernel_size, stride, dilation)
        else:
            raise ValueError(f"padding {padding!r} with kernel {kernel_size}, stride {stride} needs "
                             "dynamic padding, which cream_paddle does not implement")
    else:
        pad = int(padding)
    return compat.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=pad,
                         dilation=dilation, groups=groups, bias_attr=None if bias else False)


def _num_groups(group_size: Optional[int], channels: int) -> int:
    if not group_size:  # 0 or None: a normal convolution
        return 1
    if channels % group_size:
        raise ValueError(f"{channels} channels are not divisible by group_size {group_size}")
    return channels // group_size


def _norm_act_layer(norm_layer: LayerType, act_layer: Optional[LayerType]) -> Callable[..., nn.Layer]:
    """timm's ``get_norm_act_layer`` for BatchNorm: a :class:`BatchNormAct2d` factory with ``act_layer``."""
    if isinstance(norm_layer, partial) and norm_layer.func is BatchNormAct2d:
        return partial(norm_layer, act_layer=act_layer)
    if norm_layer in (nn.BatchNorm2D, BatchNormAct2d) or (
            isinstance(norm_layer, str) and norm_layer.lower() in ("batchnorm", "batchnorm2d")):
        return partial(BatchNormAct2d, act_layer=act_layer)
    raise ValueError(f"norm_layer {norm_layer!r} is not supported by cream_paddle (BatchNorm only)")


class BatchNormAct2d(nn.BatchNorm2D):
    """BatchNorm2d followed by dropout and activation (timm's ``BatchNormAct2d``).

    ``momentum`` and ``eps`` are in torch's convention (default 0.1, 1e-5); buffers are Paddle's
    ``_mean`` / ``_variance``. Statistics follow torch exactly, see :func:`compat.batch_norm`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, apply_act: bool = True,
                 act_layer: LayerType = nn.ReLU, act_kwargs: Optional[Dict[str, Any]] = None,
                 inplace: bool = True, drop_layer: Optional[Type[nn.Layer]] = None,
                 device: Any = None, dtype: Any = None) -> None:
        if not affine:
            _refuse(type(self).__name__, affine=affine)
        if not track_running_stats:
            _refuse(type(self).__name__, track_running_stats=track_running_stats)
        _check_common(type(self).__name__, None, device, dtype)
        super().__init__(num_features, momentum=compat.paddle_bn_momentum(momentum), epsilon=eps)
        self.eps = float(eps)
        self.momentum = float(momentum)  # torch convention, as timm's attribute
        self.formulation = compat.Formulation.KERNEL  # see compat.batch_norm
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = create_act_layer(act_layer, inplace=inplace, **(act_kwargs or {})) \
            if apply_act else nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        x = compat.batch_norm(x, self._mean, self._variance, self.weight, self.bias,
                              self.training, self.momentum, self.eps, self.formulation)
        return self.act(self.drop(x))


class SqueezeExcite(nn.Layer):
    """Squeeze-and-excitation of the EfficientNet family: mean-pool, reduce, act, expand, gate."""

    def __init__(self, in_chs: int, rd_ratio: float = 0.25, rd_channels: Optional[int] = None,
                 act_layer: LayerType = nn.ReLU, gate_layer: LayerType = nn.Sigmoid,
                 force_act_layer: Optional[LayerType] = None,
                 rd_round_fn: Optional[Callable] = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _check_common(type(self).__name__, None, device, dtype)
        if rd_channels is None:
            rd_channels = (rd_round_fn or round)(in_chs * rd_ratio)
        act_layer = force_act_layer or act_layer
        self.conv_reduce = compat.Conv2D(in_chs, rd_channels, 1)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.conv_expand = compat.Conv2D(rd_channels, in_chs, 1)
        self.gate = create_act_layer(gate_layer)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        x_se = compat.spatial_mean(x, keepdim=True)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class ConvBnAct(nn.Layer):
    """Convolution, BatchNorm + activation, optional skip (the head block ``cn`` of Cream)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, group_size: int = 0, pad_type: Union[int, str] = "",
                 skip: bool = False, act_layer: Optional[LayerType] = nn.ReLU,
                 norm_layer: LayerType = nn.BatchNorm2D, aa_layer: Optional[LayerType] = None,
                 drop_path_rate: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _check_common(type(self).__name__, aa_layer, device, dtype)
        norm_act_layer = _norm_act_layer(norm_layer, act_layer)
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation,
                                  groups=_num_groups(group_size, in_chs), padding=pad_type)
        self.bn1 = norm_act_layer(out_chs, inplace=True)
        self.aa = nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        return _add_skip(self, self.aa(self.bn1(self.conv(x))), x)


class DepthwiseSeparableConv(nn.Layer):
    """Depthwise conv, BN + act, SE, pointwise conv, BN (the stem block ``ds`` of Cream)."""

    def __init__(self, in_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, group_size: int = 1, pad_type: str = "", noskip: bool = False,
                 pw_kernel_size: int = 1, pw_act: bool = False, s2d: int = 0,
                 act_layer: LayerType = nn.ReLU, norm_layer: LayerType = nn.BatchNorm2D,
                 aa_layer: Optional[LayerType] = None, se_layer: Optional[Callable[..., nn.Layer]] = None,
                 drop_path_rate: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _check_common(type(self).__name__, aa_layer, device, dtype, s2d=s2d)
        norm_act_layer = _norm_act_layer(norm_layer, act_layer)
        self.has_skip = (stride == 1 and in_chs == out_chs) and not noskip
        self.has_pw_act = pw_act
        self.conv_s2d = None
        self.bn_s2d = None
        self.conv_dw = create_conv2d(in_chs, in_chs, dw_kernel_size, stride=stride, dilation=dilation,
                                     groups=_num_groups(group_size, in_chs), padding=pad_type)
        self.bn1 = norm_act_layer(in_chs, inplace=True)
        self.aa = nn.Identity()
        self.se = se_layer(in_chs, act_layer=act_layer) if se_layer else nn.Identity()
        self.conv_pw = create_conv2d(in_chs, out_chs, pw_kernel_size, padding=pad_type)
        self.bn2 = norm_act_layer(out_chs, inplace=True, apply_act=self.has_pw_act)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        y = self.aa(self.bn1(self.conv_dw(x)))
        return _add_skip(self, self.bn2(self.conv_pw(self.se(y))), x)


class InvertedResidual(nn.Layer):
    """MobileNetV2/V3 inverted residual: expand 1x1, depthwise kxk, SE, project 1x1 (Cream's ``ir``)."""

    def __init__(self, in_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, group_size: int = 1, pad_type: str = "", noskip: bool = False,
                 exp_ratio: float = 1.0, exp_kernel_size: int = 1, pw_kernel_size: int = 1,
                 s2d: int = 0, act_layer: LayerType = nn.ReLU, norm_layer: LayerType = nn.BatchNorm2D,
                 aa_layer: Optional[LayerType] = None, se_layer: Optional[Callable[..., nn.Layer]] = None,
                 conv_kwargs: Optional[Dict] = None, drop_path_rate: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _check_common(type(self).__name__, aa_layer, device, dtype, s2d=s2d,
                      conv_kwargs=conv_kwargs)
        norm_act_layer = _norm_act_layer(norm_layer, act_layer)
        mid_chs = make_divisible(in_chs * exp_ratio)
        self.has_skip = (in_chs == out_chs and stride == 1) and not noskip
        self.conv_s2d = None
        self.bn_s2d = None
        self.conv_pw = create_conv2d(in_chs, mid_chs, exp_kernel_size, padding=pad_type)
        self.bn1 = norm_act_layer(mid_chs, inplace=True)
        self.conv_dw = create_conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride,
                                     dilation=dilation, groups=_num_groups(group_size, mid_chs),
                                     padding=pad_type)
        self.bn2 = norm_act_layer(mid_chs, inplace=True)
        self.aa = nn.Identity()
        self.se = se_layer(mid_chs, act_layer=act_layer) if se_layer else nn.Identity()
        self.conv_pwl = create_conv2d(mid_chs, out_chs, pw_kernel_size, padding=pad_type)
        self.bn3 = norm_act_layer(out_chs, apply_act=False)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        return _add_skip(self, self.bn3(self.conv_pwl(self.se(self.aa(y)))), x)


def _add_skip(block: nn.Layer, x: paddle.Tensor, shortcut: paddle.Tensor) -> paddle.Tensor:
    """``block``'s output ``x`` plus its input through drop path when the block has a skip (timm)."""
    return block.drop_path(x) + shortcut if block.has_skip else x


def _check_common(cls: str, aa_layer: Any, device: Any, dtype: Any, **off: Any) -> None:
    """Refuse ``aa_layer``/``device``/``dtype`` unless None, and each option of ``off`` unless
    false (``s2d=0``, no ``conv_kwargs``): options Cream never sets (see :func:`_refuse`)."""
    for name, value in (("aa_layer", aa_layer), ("device", device), ("dtype", dtype)):
        if value is not None:
            _refuse(cls, **{name: value})
    for name, value in off.items():
        if value:
            _refuse(cls, **{name: value})


class DropPath(nn.Layer):
    """Stochastic depth per sample (timm's ``DropPath``), see :func:`compat.drop_path`."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        return compat.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class FastAdaptiveAvgPool(nn.Layer):
    """Global average pooling over H and W (timm's ``FastAdaptiveAvgPool``, NCHW; see
    :func:`compat.spatial_mean`)."""

    def __init__(self, flatten: bool = False, input_fmt: str = "NCHW") -> None:
        super().__init__()
        if input_fmt != "NCHW":
            _refuse(type(self).__name__, input_fmt=input_fmt)
        self.flatten = flatten

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        return compat.spatial_mean(x, keepdim=not self.flatten)


class SelectAdaptivePool2d(nn.Layer):
    """Global pooling chosen by name (``'avg'``, ``'max'``, ``'fast'`` or ``''`` for none), as timm's."""

    def __init__(self, output_size: Union[int, Tuple[int, int]] = 1, pool_type: str = "fast",
                 flatten: bool = False, input_fmt: str = "NCHW") -> None:
        super().__init__()
        if input_fmt != "NCHW":
            _refuse(type(self).__name__, input_fmt=input_fmt)
        self.pool_type = pool_type or ""
        kind = self.pool_type.lower()
        if not kind:
            self.pool = nn.Identity()
            self.flatten = nn.Flatten(1) if flatten else nn.Identity()
        elif kind.startswith("fast"):
            if kind != "fast" or output_size != 1:
                _refuse(type(self).__name__, pool_type=pool_type)
            self.pool = FastAdaptiveAvgPool(flatten)
            self.flatten = nn.Identity()
        elif kind in ("avg", "max"):
            self.pool = nn.AdaptiveAvgPool2D(output_size) if kind == "avg" else \
                nn.AdaptiveMaxPool2D(output_size)
            self.flatten = nn.Flatten(1) if flatten else nn.Identity()
        else:
            _refuse(type(self).__name__, pool_type=pool_type)

    def is_identity(self) -> bool:
        """True when no pooling happens."""
        return not self.pool_type

    def feat_mult(self) -> int:
        """Feature multiplier of the pooling (1 for every supported type)."""
        return 1

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:  # noqa: D102
        return self.flatten(self.pool(x))

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type}"
