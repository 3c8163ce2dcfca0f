"""The retraining recipe as data: ``retrain.yaml`` (official values) parsed into frozen dataclasses.

``load_retrain_config(model)`` layers, in order: ``retrain.yaml`` ``defaults``, its
``models.<model>`` entry, an optional user YAML file (same keys), then keyword overrides (what the
command line sets). Every field of :class:`RetrainConfig` / :class:`AugmentConfig` must be given by
``retrain.yaml``, so the file is the single source of the defaults; an unknown key anywhere is an
error naming the file and the key. Both training loops (``cream_torch_ref.train`` and
``cream_paddle.train``) take the resulting object; nothing here is global or mutable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Dict, Mapping, Optional, Tuple

from cream_core.io.errors import CheckpointError, ConfigError
from cream_core.data.rand_augment import parse_rand_augment
from cream_core.arch.space import child_spec, model_names

__all__ = ["AugmentConfig", "RetrainConfig", "ConfigError", "load_retrain_config",
           "check_resume_args", "RESUME_MAY_CHANGE",
           "read_config_file", "config_path", "SCHEDULES", "OPTIMIZERS", "RE_MODES",
           "INTERPOLATIONS"]

#: Schedules the official retraining used (timm 0.1.20 names).
SCHEDULES = ("step", "cosine")
#: Optimizers implemented for retraining (the official runs all used ``rmsproptf``).
OPTIMIZERS = ("rmsproptf",)
#: timm random-erasing modes.
RE_MODES = ("const", "rand", "pixel")
#: Resize interpolations of the random-resized crop (``random`` = bilinear or bicubic per image).
INTERPOLATIONS = ("random", "bilinear", "bicubic")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (timm 0.1.20 ``transforms_imagenet_train`` + prefetcher erasing)."""

    scale: Tuple[float, float]
    ratio: Tuple[float, float]
    interpolation: str
    hflip: float
    auto_augment: Optional[str]  # None / '' = off (then colour jitter applies)
    color_jitter: Optional[float]
    re_prob: float
    re_mode: str
    re_count: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


@dataclass(frozen=True)
class RetrainConfig:
    """One retraining run (``retrain.yaml`` keys; see that file for where each value comes from)."""

    model: str
    num_classes: int
    img_size: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    opt: str
    lr: float
    opt_eps: float
    momentum: float
    rmsprop_alpha: float
    weight_decay: float
    sched: str
    decay_epochs: float
    decay_rate: float
    warmup_lr: float
    warmup_epochs: int
    min_lr: float
    cooldown_epochs: int
    drop_rate: float
    drop_path_rate: float
    smoothing: float
    ema: bool
    ema_decay: float
    seed: int
    eval_interval: int
    augment: AugmentConfig

    @property
    def total_epochs(self) -> int:
        """Epochs the run lasts: timm's cosine schedule adds ``cooldown_epochs``, step does not."""
        return self.epochs + self.cooldown_epochs if self.sched == "cosine" else self.epochs

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (lists for tuples), as stored in checkpoints and reports."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v
        d = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "augment"}
        d["augment"] = {f.name: plain(getattr(self.augment, f.name)) for f in fields(AugmentConfig)}
        return d

    def replace(self, **changes: Any) -> "RetrainConfig":
        """A copy with top-level fields (or ``augment=dict(...)`` entries) changed, validated."""
        aug = changes.pop("augment", None)
        base = self.to_dict()
        base.update(changes)
        if aug:
            base["augment"] = {**base["augment"], **dict(aug)}
        return _build(base, "<replace>")


_PACKAGE_FILE = "retrain.yaml"


def config_path(name: str = _PACKAGE_FILE) -> str:
    """Path of a config file shipped in this package (``retrain.yaml``, ``digits.yaml``)."""
    return str(resources.files(__package__).joinpath(name))


def _yaml_load(path: str) -> Any:
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot read config file ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, f"not valid YAML{where} ({getattr(e, 'problem', None) or e})") \
            from None


def read_config_file(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """A user config file: a YAML mapping of :class:`RetrainConfig` keys (``augment:`` nested)."""
    p = os.fspath(path)
    data = _yaml_load(p)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(p, f"expected a mapping of settings, got {type(data).__name__}")
    _check_keys(data, p)
    return data


_TOP = {f.name for f in fields(RetrainConfig)} - {"model"}
_AUG = {f.name for f in fields(AugmentConfig)}


def _check_keys(data: Mapping[str, Any], where: str) -> None:
    for k, v in data.items():
        if k == "augment":
            if not isinstance(v, dict):
                raise ConfigError(where, "'augment' must be a mapping")
            for a in v:
                if a not in _AUG:
                    raise ConfigError(where, f"unknown key 'augment.{a}'; known: "
                                             f"{', '.join(sorted(_AUG))}")
        elif k not in _TOP:
            raise ConfigError(where, f"unknown key {k!r}; known: {', '.join(sorted(_TOP))}")


def _merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if k == "augment":
            out["augment"] = {**out.get("augment", {}), **dict(v or {})}
        else:
            out[k] = v
    return out


def _num(where: str, key: str, v: Any, kind: type, lo: Optional[float] = None,
         hi: Optional[float] = None, lo_open: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(where, f"{key} must be a number, got {v!r}")
    if kind is int:
        if float(v) != int(v):
            raise ConfigError(where, f"{key} must be an integer, got {v!r}")
        v = int(v)
    else:
        v = float(v)
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(where, f"{key} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(where, f"{key} must be <= {hi}, got {v}")
    return v


def _pair(where: str, key: str, v: Any, n: int = 2) -> Tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ConfigError(where, f"{key} must be a list of {n} numbers, got {v!r}")
    return tuple(_num(where, key, x, float) for x in v)


def _build(d: Mapping[str, Any], where: str) -> RetrainConfig:
    missing = sorted((_TOP | {"model"}) - set(d))
    if missing:
        raise ConfigError(where, f"missing key(s) {', '.join(missing)}")
    a = dict(d["augment"])
    amissing = sorted(_AUG - set(a))
    if amissing:
        raise ConfigError(where, f"missing key(s) {', '.join('augment.' + m for m in amissing)}")
    scale = _pair(where, "augment.scale", a["scale"])
    ratio = _pair(where, "augment.ratio", a["ratio"])
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(where, f"augment.scale must satisfy 0 < min <= max <= 1, got {list(scale)}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(where, f"augment.ratio must satisfy 0 < min <= max, got {list(ratio)}")
    aa = a["auto_augment"] or None
    if aa is not None and not (isinstance(aa, str) and aa.startswith("rand")):
        raise ConfigError(where, f"augment.auto_augment must be a RandAugment string like "
                                 f"'rand-m9-mstd0.5' (or empty), got {aa!r}")
    if aa is not None:
        try:
            parse_rand_augment(aa)
        except ValueError as e:
            raise ConfigError(where, f"augment.auto_augment: {e}") from None
    if a["interpolation"] not in INTERPOLATIONS:
        raise ConfigError(where, f"augment.interpolation must be one of {', '.join(INTERPOLATIONS)}")
    if a["re_mode"] not in RE_MODES:
        raise ConfigError(where, f"augment.re_mode must be one of {', '.join(RE_MODES)}")
    cj = a["color_jitter"]
    aug = AugmentConfig(
        scale=scale, ratio=ratio, interpolation=a["interpolation"],
        hflip=_num(where, "augment.hflip", a["hflip"], float, 0, 1),
        auto_augment=aa,
        color_jitter=None if cj in (None, 0) else _num(where, "augment.color_jitter", cj, float, 0),
        re_prob=_num(where, "augment.re_prob", a["re_prob"], float, 0, 1),
        re_mode=a["re_mode"], re_count=_num(where, "augment.re_count", a["re_count"], int, 1),
        mean=_pair(where, "augment.mean", a["mean"], 3),
        std=_pair(where, "augment.std", a["std"], 3))
    model = d["model"]
    if model not in model_names():
        raise ConfigError(where, f"unknown model {model!r}; choose one of {', '.join(model_names())}")
    if d["opt"] not in OPTIMIZERS:
        raise ConfigError(where, f"opt must be one of {', '.join(OPTIMIZERS)}, got {d['opt']!r}")
    if d["sched"] not in SCHEDULES:
        raise ConfigError(where, f"sched must be one of {', '.join(SCHEDULES)}, got {d['sched']!r}")
    if not isinstance(d["ema"], bool):
        raise ConfigError(where, f"ema must be true or false, got {d['ema']!r}")
    img_size = _num(where, "img_size", d["img_size"], int, 0)
    return RetrainConfig(
        model=model,
        num_classes=_num(where, "num_classes", d["num_classes"], int, 1),
        img_size=img_size or child_spec(model).resolution,
        epochs=_num(where, "epochs", d["epochs"], int, 1),
        batch_size=_num(where, "batch_size", d["batch_size"], int, 1),
        eval_batch_size=_num(where, "eval_batch_size", d["eval_batch_size"], int, 1),
        opt=d["opt"],
        lr=_num(where, "lr", d["lr"], float, 0, lo_open=True),
        opt_eps=_num(where, "opt_eps", d["opt_eps"], float, 0, lo_open=True),
        momentum=_num(where, "momentum", d["momentum"], float, 0, 1),
        rmsprop_alpha=_num(where, "rmsprop_alpha", d["rmsprop_alpha"], float, 0, 1),
        weight_decay=_num(where, "weight_decay", d["weight_decay"], float, 0),
        sched=d["sched"],
        decay_epochs=_num(where, "decay_epochs", d["decay_epochs"], float, 0, lo_open=True),
        decay_rate=_num(where, "decay_rate", d["decay_rate"], float, 0, lo_open=True),
        warmup_lr=_num(where, "warmup_lr", d["warmup_lr"], float, 0),
        warmup_epochs=_num(where, "warmup_epochs", d["warmup_epochs"], int, 0),
        min_lr=_num(where, "min_lr", d["min_lr"], float, 0),
        cooldown_epochs=_num(where, "cooldown_epochs", d["cooldown_epochs"], int, 0),
        drop_rate=_num(where, "drop_rate", d["drop_rate"], float, 0, 1),
        drop_path_rate=_num(where, "drop_path_rate", d["drop_path_rate"], float, 0, 1),
        smoothing=_num(where, "smoothing", d["smoothing"], float, 0, 1),
        ema=d["ema"],
        ema_decay=_num(where, "ema_decay", d["ema_decay"], float, 0, 1),
        seed=_num(where, "seed", d["seed"], int, 0),
        eval_interval=_num(where, "eval_interval", d["eval_interval"], int, 0),
        augment=aug)


def load_retrain_config(model: str, path: "Optional[os.PathLike[str] | str]" = None,
                        **overrides: Any) -> RetrainConfig:
    """The recipe for ``model``: shipped defaults, per-model entry, user ``path``, ``overrides``.

    ``overrides`` use the field names (``epochs=3``, ``augment={'re_prob': 0.0}``); ``None`` values
    are ignored so a CLI can pass its unset options through. Raises :class:`ConfigError`.
    """
    shipped = config_path()
    data = _yaml_load(shipped)
    if not isinstance(data, dict) or "defaults" not in data:
        raise ConfigError(shipped, "corrupt shipped config: no 'defaults' mapping")
    _check_keys(data["defaults"], shipped)
    if model not in model_names():
        raise ConfigError("--model", f"unknown model {model!r}; choose one of "
                                     f"{', '.join(model_names())}")
    merged = _merge(data["defaults"], {"model": model})
    per_model = (data.get("models") or {}).get(model) or {}
    _check_keys(per_model, shipped)
    merged = _merge(merged, per_model)
    where = shipped
    if path is not None:
        where = os.fspath(path)
        merged = _merge(merged, read_config_file(where))
    extra = {k: v for k, v in overrides.items() if v is not None}
    if extra:
        _check_keys(extra, "overrides")
        merged = _merge(merged, extra)
        where = f"{where} (+ overrides)"
    return _build(merged, where)



#: Settings a resumed run may change (as ``cream-search --resume``, everything else must match, or
#: the continued run is neither the old one nor a new one): how often and in which batches it
#: evaluates, and, with the step schedule (which ``epochs`` does not shape), how long it lasts.
RESUME_MAY_CHANGE = ("eval_interval", "eval_batch_size")
_STEP_ONLY = ("epochs",)


def _flat(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def check_resume_args(path: "os.PathLike[str] | str", saved: Any, cfg: RetrainConfig) -> None:
    """:class:`CheckpointError` naming every setting (as its option) in which ``cfg`` differs from
    the ``args`` a checkpoint of this toolkit recorded (other checkpoints' args are not checked)."""
    if not isinstance(saved, Mapping):
        return
    old, new = _flat(saved), _flat(cfg.to_dict())
    free = RESUME_MAY_CHANGE + (_STEP_ONLY if cfg.sched == "step" else ())
    diff = []
    for key in sorted(set(old) & set(new)):
        if key not in free and old[key] != new[key]:
            opt = f"--{key.replace('_', '-')}" if "." not in key else f"config {key}"
            diff.append(f"{opt} {new[key]!r} (the checkpoint has {old[key]!r})")
    if diff:
        raise CheckpointError(path, "was made with other settings: " + "; ".join(diff)
                              + "; resume with the same settings or start afresh (--force)")
