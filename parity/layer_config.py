"""What each matched layer is configured to compute, on both sides, and where the two differ.

Before anything runs, every matched pair of layers is described in one framework-free vocabulary
(kernel, stride, padding, dilation, groups, ceil_mode, eps, momentum *in torch's convention*,
dropout p and mode, activation constants, pooling count_include_pad, ...) and the descriptions are
diffed. A constant the port chose differently is a divergence however small its effect in float32;
a framework *convention* (Paddle's BN momentum is torch's 1 - m; Paddle's BN epsilon and momentum
are float32 attributes) is normalised away here and listed in :data:`CONVENTIONS`.

The table :data:`FIELDS` is data: per layer kind (the class name, lower-cased, so ``Conv2d`` and
``Conv2D`` are both ``conv2d``) the fields and how each side stores them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Field", "FIELDS", "CONVENTIONS", "ConfigDiff", "class_key", "layer_config",
           "fused_activation", "NOT_USED",
           "diff_configs", "TORCH_HARDSIGMOID", "PADDLE_HARDSIGMOID"]

#: torch's ``Hardsigmoid``: relu6(x + 3) / 6, i.e. slope 1/6, offset 0.5 (aten kernel).
TORCH_HARDSIGMOID: Tuple[float, float] = (1.0 / 6.0, 0.5)
#: Paddle's ``nn.Hardsigmoid`` / ``F.hardsigmoid`` defaults: slope 0.1666667, offset 0.5.
PADDLE_HARDSIGMOID: Tuple[float, float] = (0.1666667, 0.5)

#: Framework conventions the engine compares *under* (never reported as divergences).
CONVENTIONS: Tuple[str, ...] = (
    "BatchNorm momentum: Paddle's momentum m_p weights the old running value (torch's m weights "
    "the batch value); configurations compare torch's 1 - m with Paddle's m_p",
    "BatchNorm running variance: Paddle's native BatchNorm updates it with the biased batch "
    "variance, torch with the unbiased one; the torch statistics are converted to Paddle's "
    "convention before comparing (only for Paddle's own nn.BatchNorm layers)",
    "BatchNorm epsilon and momentum are float32 attributes in Paddle: constants are compared after "
    "rounding to float32, and the float64 torch reference uses the rounded values",
    "Linear weight is [out, in] in torch and [in, out] in Paddle (transposed when weights are "
    "copied and when gradients are compared)",
    "Dropout: in the train-mode pass both sides evaluate their dropout layers in inference mode "
    "(no masks drawn); the dropout mode (upscale_in_train vs downscale_in_infer) and p are compared "
    "as configuration",
)


def _f32(v: Any) -> Any:
    """A float constant as Paddle stores it (float32), for comparing attribute values."""
    return None if v is None else float(np.float32(v))


def _pair(v: Any) -> Any:
    if isinstance(v, str):
        return v.lower()
    if isinstance(v, (list, tuple)):
        return tuple(int(i) for i in v) if len(v) != 1 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


def _pad4(v: Any) -> Any:
    """Padding as (top, bottom, left, right), or 'same'/'valid'."""
    if isinstance(v, str):
        return v.lower()
    p = _pair(v) if not (isinstance(v, (list, tuple)) and len(v) == 4) else tuple(int(i) for i in v)
    return p if len(p) == 4 else (p[0], p[0], p[1], p[1])


def _paddle_conv_pad(layer: Any) -> Any:
    algo = getattr(layer, "_padding_algorithm", "EXPLICIT")
    return algo.lower() if algo != "EXPLICIT" else _pad4(layer._updated_padding)


#: The value of a field that cannot change the result (count_include_pad without padding, the
#: dropout mode at p = 0): equal on both sides whatever the stored flag.
NOT_USED = "n/a (no effect)"


def _if_padded(m: Any, value: Any) -> Any:
    pad = _pad4(m.padding)
    return value if isinstance(pad, str) or any(pad) else NOT_USED


def _torch_momentum(m: Any) -> Any:
    """torch's momentum m as the weight of the old running value, 1 - m, in float32 (Paddle's form)."""
    return "cumulative average" if m.momentum is None else _f32(1.0 - m.momentum)


def _paddle_momentum(layer: Any) -> Any:
    return _f32(layer._momentum)


@dataclass(frozen=True)
class Field:
    """One configuration field: how torch and Paddle store it (``getter(layer) -> value``)."""

    name: str
    torch: Callable[[Any], Any]
    paddle: Callable[[Any], Any]


_CONV = (
    Field("kernel", lambda m: _pair(m.kernel_size), lambda m: _pair(m._kernel_size)),
    Field("stride", lambda m: _pair(m.stride), lambda m: _pair(m._stride)),
    Field("padding", lambda m: _pad4(m.padding), _paddle_conv_pad),
    Field("dilation", lambda m: _pair(m.dilation), lambda m: _pair(m._dilation)),
    Field("groups", lambda m: int(m.groups), lambda m: int(m._groups)),
    Field("padding_mode", lambda m: m.padding_mode, lambda m: m._padding_mode),
    Field("bias", lambda m: m.bias is not None, lambda m: m.bias is not None),
)
_BN = (
    Field("eps", lambda m: _f32(m.eps), lambda m: _f32(m._epsilon)),
    Field("momentum as the old value's weight (torch 1 - m, Paddle m)", _torch_momentum,
          _paddle_momentum),
    Field("affine", lambda m: bool(m.affine), lambda m: m.weight is not None),
    Field("uses running statistics in eval", lambda m: bool(m.track_running_stats),
          # legacy paddle.nn.BatchNorm: use_global_stats=False still means running stats in eval
          lambda m: type(m).__name__ == "BatchNorm" or m._use_global_stats is not False),
)
_MAXPOOL = (
    Field("kernel", lambda m: _pair(m.kernel_size), lambda m: _pair(m.ksize)),
    Field("stride", lambda m: _pair(m.stride if m.stride is not None else m.kernel_size),
          lambda m: _pair(m.stride if m.stride is not None else m.ksize)),
    Field("padding", lambda m: _pad4(m.padding), lambda m: _pad4(m.padding)),
    Field("dilation", lambda m: _pair(m.dilation), lambda m: (1, 1)),
    Field("ceil_mode", lambda m: bool(m.ceil_mode), lambda m: bool(m.ceil_mode)),
)
_AVGPOOL = (
    _MAXPOOL[0], _MAXPOOL[1], _MAXPOOL[2], _MAXPOOL[4],
    Field("count_include_pad", lambda m: _if_padded(m, bool(m.count_include_pad)),
          lambda m: _if_padded(m, not bool(m.exclusive))),
    Field("divisor", lambda m: m.divisor_override, lambda m: m.divisor),
)
_ADAPTIVE = (Field("output_size", lambda m: _pair(m.output_size), lambda m: _pair(m._output_size)),)
_DROPOUT = (
    Field("p", lambda m: float(m.p), lambda m: float(m.p)),
    Field("mode", lambda m: "upscale_in_train" if m.p else NOT_USED,
          lambda m: str(m.mode) if m.p else NOT_USED),
)
_HARDSIGMOID = (
    Field("slope", lambda m: TORCH_HARDSIGMOID[0],
          lambda m: float(getattr(m, "slope", PADDLE_HARDSIGMOID[0]))),
    Field("offset", lambda m: TORCH_HARDSIGMOID[1],
          lambda m: float(getattr(m, "offset", PADDLE_HARDSIGMOID[1]))),
)

#: layer kind -> the fields compared. Kinds without an entry (ReLU, ReLU6, Hardswish, Identity,
#: containers) have no constant to choose; they are compared by their outputs only.
FIELDS: Mapping[str, Tuple[Field, ...]] = {
    "conv2d": _CONV,
    "batchnorm2d": _BN,
    "batchnorm1d": _BN,
    "maxpool2d": _MAXPOOL,
    "avgpool2d": _AVGPOOL,
    "adaptiveavgpool2d": _ADAPTIVE,
    "adaptivemaxpool2d": _ADAPTIVE,
    "dropout": _DROPOUT,
    "hardsigmoid": _HARDSIGMOID,
    "leakyrelu": (Field("negative_slope", lambda m: float(m.negative_slope),
                        lambda m: float(m._negative_slope)),),
    "flatten": (Field("start_dim", lambda m: int(m.start_dim), lambda m: int(m.start_axis)),
                Field("end_dim", lambda m: int(m.end_dim), lambda m: int(m.stop_axis))),
    "linear": (Field("bias", lambda m: m.bias is not None, lambda m: m.bias is not None),),
}


#: Paddle's legacy ``nn.BatchNorm`` (any rank, optionally with a fused activation ``act``) is
#: the BatchNorm of the rank it runs at; compared as the torch kind it is matched with.
_ALIASES: Mapping[str, Tuple[str, ...]] = {"batchnorm": ("batchnorm1d", "batchnorm2d")}


def class_key(layer: Any) -> str:
    """The key of a layer's configuration table: its class name lower-cased (``Conv2d`` and
    ``Conv2D`` are both ``conv2d``); not :func:`cream_core.rules.layer_kind`, the canonical kind
    the state-dict rules and the matching use."""
    return type(layer).__name__.lower()


def fused_activation(layer: Any) -> Any:
    """The activation a Paddle layer applies to its own output (legacy ``BatchNorm(act=...)``)."""
    act = getattr(layer, "_act", None)
    return act if isinstance(act, str) and act else None


def layer_config(layer: Any, side: str, kind: Optional[str] = None) -> Dict[str, Any]:
    """The configuration of one layer (``side``: 'torch' or 'paddle') in the shared vocabulary
    (``kind``: read it as this kind, default its own)."""
    out: Dict[str, Any] = {}
    for f in FIELDS.get(kind or class_key(layer), ()):
        try:
            out[f.name] = (f.torch if side == "torch" else f.paddle)(layer)
        except AttributeError as e:
            out[f.name] = f"(unreadable: {e})"
    return out


@dataclass(frozen=True)
class ConfigDiff:
    """One field of one matched layer pair whose value differs between torch and Paddle."""

    module: str  # torch path
    paddle_module: str
    kind: str
    field: str
    torch_value: Any
    paddle_value: Any
    order: int  # index of the layer pair in the matching (torch execution order)

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("torch_value", "paddle_value"):
            d[k] = repr(d[k]) if not isinstance(d[k], (int, float, str, bool, type(None))) else d[k]
        return d

    def describe(self) -> str:
        return f"{self.kind} {self.field}: torch {self.torch_value!r} vs paddle {self.paddle_value!r}"


def _modules(model: Any, side: str) -> Dict[str, Any]:
    items = model.named_modules() if side == "torch" else model.named_sublayers()
    return dict(items)


def diff_configs(torch_model: Any, paddle_model: Any, pairs: Sequence[Tuple[str, str]]
                 ) -> Tuple[List[ConfigDiff], Dict[str, Dict[str, Any]]]:
    """Diff the configuration of every matched ``(torch path, paddle path)`` pair, in pair order.

    Returns the differences and, per torch path, both sides' configurations (for the report).
    A pair whose two layers are of different kinds is a difference of the field ``kind``.
    """
    tmods, pmods = _modules(torch_model, "torch"), _modules(paddle_model, "paddle")
    diffs: List[ConfigDiff] = []
    configs: Dict[str, Dict[str, Any]] = {}
    for i, (tp, pp) in enumerate(pairs):
        tl, pl = tmods.get(tp), pmods.get(pp)
        if tl is None or pl is None:
            continue
        tk, pk = class_key(tl), class_key(pl)
        if tk in _ALIASES.get(pk, ()):
            pk = tk
        if tk != pk and (tk in FIELDS or pk in FIELDS):
            diffs.append(ConfigDiff(tp, pp, tk, "kind", type(tl).__name__, type(pl).__name__, i))
            continue
        tc, pc = layer_config(tl, "torch"), layer_config(pl, "paddle", pk)
        if tc:
            configs[tp] = {"paddle_module": pp, "kind": tk, "torch": tc, "paddle": pc}
        for name in tc:
            if tc[name] != pc.get(name):
                diffs.append(ConfigDiff(tp, pp, tk, name, tc[name], pc.get(name), i))
    return diffs, configs
