"""The torch <-> Paddle state-dict rules as data, and the walk that applies them to a target model.

A state-dict key is ``<layer path>.<leaf>``. For Cream the two trees have the same layer paths
(``cream_paddle`` mirrors ``cream_torch_ref``), so only the leaf and the value's layout can differ; for
any other pair :mod:`converters.matching` pairs the layer paths first and applies the same rules. :data:`RULES` lists
every difference; a leaf no rule mentions is copied under the same name. Rules are applied by walking
the *target* model's keys (Paddle's for torch -> Paddle, torch's for the way back), so what comes
out is exactly what the target expects, and anything the target does not take is reported, in the *source's* names and layout (the file
the user has):

* a source key some target key needs but the source lacks is *missing*,
* a source key that no target key consumed (and that no ``drop`` rule covers) is *unexpected*,
* a source value whose shape differs from what the target needs (in the source's layout) is a
  *shape mismatch*,

and :func:`apply_rules` fails with all three listed in a :class:`~cream_core.io.statecheck.KeyReport`.

Layer kinds come from the class names of the layers (:data:`LAYER_KINDS`, one table for both
frameworks: torch.nn, paddle.nn and the timm classes the Cream models use), and a rule acts on a kind
*family* (:data:`RULE_FAMILIES`), so a rule like "transpose the weight of a Linear" never fires on a
2-D tensor of some other layer. Framework-free: no torch, no Paddle import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.io.statecheck import KeyReport

__all__ = [
    "Rule",
    "RULES",
    "LAYER_KINDS",
    "RULE_FAMILIES",
    "layer_kind",
    "rule_family",
    "kinds_compatible",
    "rule_for",
    "TargetKey",
    "RuleError",
    "Mapped",
    "apply_rules",
    "torch_layout",
    "paddle_layout",
    "paddle_to_torch_names",
    "torch_to_paddle_names",
]


@dataclass(frozen=True)
class Rule:
    """One framework difference of a state-dict entry.

    ``torch_leaf`` / ``paddle_leaf``: the entry's last name component on each side (``None``: the
    entry exists on that side only). ``layer``: the layer family it applies to (see
    :data:`RULE_FAMILIES`). ``action``: ``'copy'`` (rename only), ``'transpose'`` (2-D, swap axes) or
    ``'drop'`` (torch-only entry: dropped on the way to Paddle, refilled on the way back).
    """

    torch_leaf: str
    paddle_leaf: Optional[str]
    layer: str
    action: str
    why: str


#: Every difference between a torch and a Paddle state dict of these models.
RULES: Tuple[Rule, ...] = (
    Rule("running_mean", "_mean", "batchnorm", "copy",
         "BatchNorm running mean is the buffer '_mean' in Paddle"),
    Rule("running_var", "_variance", "batchnorm", "copy",
         "BatchNorm running variance is the buffer '_variance' in Paddle"),
    Rule("num_batches_tracked", None, "batchnorm", "drop",
         "Paddle's BatchNorm keeps no step counter (unused with a fixed momentum); the way back "
         "restores it from the sidecar JSON, else 0"),
    Rule("weight", "weight", "linear", "transpose",
         "Linear weight is [out, in] in torch and [in, out] in Paddle"),
)

#: Layer class name (either framework) -> canonical layer kind both frameworks share. torch.nn and
#: paddle.nn spell most classes alike but for the dimension suffix (``Conv2d`` / ``Conv2D``); the
#: entries are the standard layers torchvision, paddle.vision and timm (Cream) use.
LAYER_KINDS: Mapping[str, str] = {
    **{f"Conv{d}{s}": f"conv{d}d" for d in ("1", "2", "3") for s in ("d", "D")},
    "ConvTranspose2d": "convtranspose2d", "Conv2DTranspose": "convtranspose2d",
    **{f"BatchNorm{d}{s}": f"batchnorm{d}d" for d in ("1", "2", "3") for s in ("d", "D")},
    "BatchNormAct2d": "batchnorm2d",  # timm's BN with a fused activation (Cream)
    "BatchNorm": "batchnorm",  # paddle.nn.BatchNorm: legacy, any rank, optional fused act
    "SyncBatchNorm": "batchnorm",
    "LayerNorm": "layernorm", "GroupNorm": "groupnorm", "Embedding": "embedding",
    "Linear": "linear",
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leakyrelu", "GELU": "gelu",
    "Hardswish": "hardswish", "Hardsigmoid": "hardsigmoid", "SiLU": "silu", "Silu": "silu",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax",
    "Identity": "identity", "Flatten": "flatten",
    "Dropout": "dropout", "Dropout2d": "dropout2d", "Dropout2D": "dropout2d",
    **{f"{p}Pool2{s}": f"{p.lower()}pool2d" for p in ("Max", "Avg") for s in ("d", "D")},
    **{f"Adaptive{p}Pool2{s}": f"adaptive{p.lower()}pool2d" for p in ("Max", "Avg")
       for s in ("d", "D")},
    "Sequential": "sequential", "ModuleList": "layerlist", "LayerList": "layerlist",
}

#: Layer kind -> the family a :class:`Rule` names in :attr:`Rule.layer` (kinds not listed: no rule).
RULE_FAMILIES: Mapping[str, str] = {
    "batchnorm": "batchnorm", "batchnorm1d": "batchnorm", "batchnorm2d": "batchnorm",
    "batchnorm3d": "batchnorm", "linear": "linear",
}


def layer_kind(class_name: str) -> str:
    """The canonical kind of a layer class; unknown classes are ``'other:<class name, lower case>'``."""
    return LAYER_KINDS.get(class_name, f"other:{class_name.lower()}")


def rule_family(class_name: str) -> str:
    """The rule family of a layer class (what :attr:`Rule.layer` names), ``'other'`` if none."""
    return RULE_FAMILIES.get(LAYER_KINDS.get(class_name, ""), "other")


def kinds_compatible(a: str, b: str) -> bool:
    """Same kind, or one is a rank-agnostic kind (``'batchnorm'``) of the other's family."""
    if a == b:
        return True
    fam_a, fam_b = RULE_FAMILIES.get(a), RULE_FAMILIES.get(b)
    return fam_a is not None and fam_a == fam_b and fam_a in (a, b)

_ACTIONS = ("copy", "transpose", "drop")
assert all(r.action in _ACTIONS for r in RULES)


@dataclass(frozen=True)
class TargetKey:
    """One entry the target model expects: its shape, dtype name and the kind of layer holding it."""

    shape: Tuple[int, ...]
    dtype: str
    kind: str  # a rule family (RULE_FAMILIES value), or 'other'


class RuleError(ValueError):
    """The source does not fit the target; ``report`` lists every missing/unexpected/mismatched key."""

    def __init__(self, report: KeyReport, extra: Sequence[str] = ()) -> None:
        self.report = report
        self.extra = list(extra)
        parts = ([report.summary()] if not report.ok else []) + self.extra
        super().__init__("; ".join(parts))


@dataclass
class Mapped:
    """The result of applying the rules: the target's state dict and what was dropped."""

    state_dict: "Dict[str, np.ndarray]"
    dropped: Dict[str, np.ndarray] = field(default_factory=dict)  # source keys a 'drop' rule removed
    filled: List[str] = field(default_factory=list)  # target keys a 'drop' rule had to refill
    report: KeyReport = field(default_factory=KeyReport)


def _split(key: str) -> Tuple[str, str]:
    prefix, _, leaf = key.rpartition(".")
    return (prefix + ".") if prefix else "", leaf


def rule_for(side: str, leaf: str, family: str) -> Optional[Rule]:
    """The rule for entry ``leaf`` (named as on ``side``, 'torch' or 'paddle') of a ``family`` layer."""
    for r in RULES:
        if (r.torch_leaf if side == "torch" else r.paddle_leaf) == leaf and r.layer == family:
            return r
    return None


def apply_rules(source: Mapping[str, np.ndarray], target: Mapping[str, TargetKey], to: str,
                fill: Optional[Callable[[str, TargetKey], np.ndarray]] = None) -> Mapped:
    """Map ``source`` (the other framework's state dict, numpy arrays) onto ``target``'s keys.

    ``to`` is the target framework, ``'paddle'`` or ``'torch'``. ``fill(key, target_key)`` supplies
    the value of a target entry that a ``drop`` rule says the source cannot have (torch's
    ``num_batches_tracked`` on the way back). Raises :class:`RuleError` listing every missing,
    unexpected and mis-shaped key, and every dtype difference; nothing is cast.
    """
    if to not in ("paddle", "torch"):
        raise ValueError(f"to must be 'paddle' or 'torch', got {to!r}")
    src_side = "torch" if to == "paddle" else "paddle"
    out: Dict[str, np.ndarray] = {}
    used = set()
    rep = KeyReport()
    dtype_errors: List[str] = []
    filled: List[str] = []
    for key, tk in target.items():
        prefix, leaf = _split(key)
        rule = rule_for(to, leaf, tk.kind)
        if rule is not None and rule.action == "drop":  # target-only entry (torch counter)
            if fill is None:
                rep.missing.append(key)  # no source name: the entry exists in the target only
                continue
            out[key] = fill(key, tk)
            filled.append(key)
            rep.matched += 1
            continue
        src_leaf = (rule.paddle_leaf if src_side == "paddle" else rule.torch_leaf) if rule else leaf
        src_key = prefix + str(src_leaf)
        if src_key not in source:
            rep.missing.append(src_key)
            continue
        used.add(src_key)
        value = np.asarray(source[src_key])
        transpose = rule is not None and rule.action == "transpose"
        want = tk.shape[::-1] if transpose else tk.shape  # in the source's layout
        if tuple(value.shape) != want:
            rep.mismatched.append((src_key, want, tuple(value.shape)))
            continue
        if transpose:
            value = np.ascontiguousarray(value.T)
        if value.dtype.name != tk.dtype:
            dtype_errors.append(f"{src_key} is {value.dtype.name}, {key} expects {tk.dtype}")
            continue
        out[key] = value
        rep.matched += 1
    dropped: Dict[str, np.ndarray] = {}
    target_kinds = {_split(k)[0]: t.kind for k, t in target.items()}
    for key in source:
        if key in used:
            continue
        prefix, leaf = _split(key)
        rule = rule_for(src_side, leaf, target_kinds.get(prefix, "other"))
        if rule is not None and rule.action == "drop":
            dropped[key] = np.asarray(source[key])
        else:
            rep.unexpected.append(key)
    if not rep.ok or dtype_errors:
        more = dtype_errors[:3] + ([f"(+{len(dtype_errors) - 3} more dtype differences)"]
                                   if len(dtype_errors) > 3 else [])
        raise RuleError(rep, more)
    return Mapped(out, dropped, filled, rep)


def torch_layout(model: "object") -> Dict[str, TargetKey]:
    """``key -> TargetKey`` of a ``torch.nn.Module``'s state dict (layer kinds by class name)."""
    kinds = {name: rule_family(type(m).__name__)
             for name, m in model.named_modules()}  # type: ignore[attr-defined]
    out: Dict[str, TargetKey] = {}
    for key, v in model.state_dict().items():  # type: ignore[attr-defined]
        prefix, _ = _split(key)
        out[key] = TargetKey(tuple(v.shape), str(v.dtype).replace("torch.", ""),
                             kinds.get(prefix[:-1], "other"))
    return out


def paddle_layout(model: "object") -> Dict[str, TargetKey]:
    """``key -> TargetKey`` of a ``paddle.nn.Layer``'s state dict (layer kinds by class name)."""
    kinds = {name: rule_family(type(m).__name__)
             for name, m in model.named_sublayers(include_self=True)}  # type: ignore[attr-defined]
    out: Dict[str, TargetKey] = {}
    for key, v in model.state_dict().items():  # type: ignore[attr-defined]
        prefix, _ = _split(key)
        dtype = str(v.dtype).replace("paddle.", "")
        out[key] = TargetKey(tuple(int(s) for s in v.shape), dtype, kinds.get(prefix[:-1], "other"))
    return out


def paddle_to_torch_names(values: Mapping[str, np.ndarray], layout: Mapping[str, TargetKey]
                          ) -> Dict[str, np.ndarray]:
    """Entries named as in the Paddle model of ``layout`` (:func:`paddle_layout`) in torch's names
    and layouts by :data:`RULES`: a whole state dict or any part of one (gradients, momentum).

    No completeness check (a part is expected): use :func:`apply_rules` for a whole state dict that
    must fit a model. Keys ``layout`` lacks are copied unchanged.
    """
    out: Dict[str, np.ndarray] = {}
    for key, value in values.items():
        prefix, leaf = _split(key)
        rule = rule_for("paddle", leaf, layout[key].kind) if key in layout else None
        out[prefix + (rule.torch_leaf if rule is not None else leaf)] = _moved(value, rule)
    return out


def torch_to_paddle_names(values: Mapping[str, np.ndarray], layout: Mapping[str, TargetKey]
                          ) -> Dict[str, np.ndarray]:
    """The inverse of :func:`paddle_to_torch_names`: torch-named entries (any part of a state
    dict) in the names and layouts of the Paddle model of ``layout``; entries a ``drop`` rule
    removes (``num_batches_tracked``) are left out."""
    kinds = {_split(k)[0]: t.kind for k, t in layout.items()}
    out: Dict[str, np.ndarray] = {}
    for key, value in values.items():
        prefix, leaf = _split(key)
        rule = rule_for("torch", leaf, kinds.get(prefix, "other"))
        if rule is not None and rule.action == "drop":
            continue
        out[prefix + str(rule.paddle_leaf if rule is not None else leaf)] = _moved(value, rule)
    return out


def _moved(value: np.ndarray, rule: Optional[Rule]) -> np.ndarray:
    """``value`` in the other framework's layout: a ``transpose`` rule swaps a 2-D entry's axes."""
    a = np.asarray(value)
    if rule is not None and rule.action == "transpose" and a.ndim == 2:
        a = np.ascontiguousarray(a.T)
    return a
