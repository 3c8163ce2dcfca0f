"""The retraining recipe as data: ``retrain.yaml`` (official values) parsed into frozen dataclasses.

``load_retrain_config(model)`` layers, in order: ``retrain.yaml`` ``defaults``, its
``models.<model>`` entry, an optional user YAML file (same keys), then keyword overrides (what the
command line sets). Every field of :class:`RetrainConfig` / :class:`AugmentConfig` must be given by
``retrain.yaml``, so the file is the single source of the defaults; an unknown key anywhere is an
error naming the file and the key (reading, layering and checking are
:mod:`cream_core.config.schema`, shared with the search recipe). Both training loops (``cream_torch_ref.train`` and
``cream_paddle.train``) take the resulting object; nothing here is global or mutable.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from cream_core.arch.space import child_spec, model_names
from cream_core.config.schema import (ConfigError, Layer, field_layer, file_layer, flatten, load,
                                      read_yaml, setting)
from cream_core.data.rand_augment import parse_rand_augment
from cream_core.io.errors import CheckpointError

__all__ = ["AugmentConfig", "RetrainConfig", "ConfigError", "load_retrain_config",
           "check_resume_args", "RESUME_MAY_CHANGE",
           "config_path", "SCHEDULES", "OPTIMIZERS", "RE_MODES",
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

    scale: Tuple[float, float] = setting(length=2)
    ratio: Tuple[float, float] = setting(length=2)
    interpolation: str = setting(choices=INTERPOLATIONS)
    hflip: float = setting(lo=0, hi=1)
    auto_augment: Optional[str] = setting()  # None / '' = off (then colour jitter applies)
    color_jitter: Optional[float] = setting(lo=0)  # None / 0 = off
    re_prob: float = setting(lo=0, hi=1)
    re_mode: str = setting(choices=RE_MODES)
    re_count: int = setting(lo=1)
    mean: Tuple[float, float, float] = setting(length=3)
    std: Tuple[float, float, float] = setting(length=3)


@dataclass(frozen=True)
class RetrainConfig:
    """One retraining run (``retrain.yaml`` keys; see that file for where each value comes from)."""

    model: str = setting(choices=tuple(model_names()), in_files=False)
    num_classes: int = setting(lo=1)
    img_size: int = setting(lo=0)  # 0 = the model's resolution
    epochs: int = setting(lo=1)
    batch_size: int = setting(lo=1)
    eval_batch_size: int = setting(lo=1)
    opt: str = setting(choices=OPTIMIZERS)
    lr: float = setting(lo=0, lo_open=True)
    opt_eps: float = setting(lo=0, lo_open=True)
    momentum: float = setting(lo=0, hi=1)
    rmsprop_alpha: float = setting(lo=0, hi=1)
    weight_decay: float = setting(lo=0)
    sched: str = setting(choices=SCHEDULES)
    decay_epochs: float = setting(lo=0, lo_open=True)
    decay_rate: float = setting(lo=0, lo_open=True)
    warmup_lr: float = setting(lo=0)
    warmup_epochs: int = setting(lo=0)
    min_lr: float = setting(lo=0)
    cooldown_epochs: int = setting(lo=0)
    drop_rate: float = setting(lo=0, hi=1)
    drop_path_rate: float = setting(lo=0, hi=1)
    smoothing: float = setting(lo=0, hi=1)
    ema: bool = setting()
    ema_decay: float = setting(lo=0, hi=1)
    seed: int = setting(lo=0)
    eval_interval: int = setting(lo=0)
    augment: AugmentConfig = setting()

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
        return _load([field_layer(RetrainConfig, self.to_dict(), "<replace>", keep_none=True),
                      field_layer(RetrainConfig, changes, "<replace>")])


_PACKAGE_FILE = "retrain.yaml"


def config_path(name: str = _PACKAGE_FILE) -> str:
    """Path of a config file shipped in this package (``retrain.yaml``, ``digits.yaml``)."""
    return str(resources.files(__package__).joinpath(name))


def _check(cfg: RetrainConfig, where: str) -> RetrainConfig:
    """What involves more than one field's rule; ``img_size`` 0 becomes the model's resolution."""
    a = cfg.augment
    if not 0 < a.scale[0] <= a.scale[1] <= 1:
        raise ConfigError(where, f"augment.scale must satisfy 0 < min <= max <= 1, got {list(a.scale)}")
    if not 0 < a.ratio[0] <= a.ratio[1]:
        raise ConfigError(where, f"augment.ratio must satisfy 0 < min <= max, got {list(a.ratio)}")
    if a.auto_augment is not None:
        if not a.auto_augment.startswith("rand"):
            raise ConfigError(where, f"augment.auto_augment must be a RandAugment string like "
                                     f"'rand-m9-mstd0.5' (or empty), got {a.auto_augment!r}")
        try:
            parse_rand_augment(a.auto_augment)
        except ValueError as e:
            raise ConfigError(where, f"augment.auto_augment: {e}") from None
    return dataclasses.replace(cfg, img_size=cfg.img_size or child_spec(cfg.model).resolution)


def _load(layers: Sequence[Layer]) -> RetrainConfig:
    return _check(load(RetrainConfig, layers), layers[-1].where)


def load_retrain_config(model: str, path: "Optional[os.PathLike[str] | str]" = None,
                        **overrides: Any) -> RetrainConfig:
    """The recipe for ``model``: shipped defaults, per-model entry, user ``path``, ``overrides``.

    ``overrides`` use the field names (``epochs=3``, ``augment={'re_prob': 0.0}``); ``None`` values
    are ignored so a CLI can pass its unset options through. Raises :class:`ConfigError`.
    """
    shipped = config_path()
    data = read_yaml(shipped)
    if not isinstance(data.get("defaults"), dict):
        raise ConfigError(shipped, "corrupt shipped config: no 'defaults' mapping")
    if model not in model_names():
        raise ConfigError("--model", f"unknown model {model!r}; choose one of "
                                     f"{', '.join(model_names())}")
    layers = [file_layer(RetrainConfig, data["defaults"], shipped),
              field_layer(RetrainConfig, {"model": model}, "--model"),
              file_layer(RetrainConfig, (data.get("models") or {}).get(model) or {}, shipped)]
    where = shipped
    if path is not None:
        where = os.fspath(path)
        layers.append(file_layer(RetrainConfig, read_yaml(where), where))
    over = field_layer(RetrainConfig, overrides, f"{where} with the command-line settings")
    if over.values:
        layers.append(over)
    return _load(layers)


#: Settings a resumed run may change (as ``cream-search --resume``, everything else must match, or
#: the continued run is neither the old one nor a new one): how often and in which batches it
#: evaluates, and, with the step schedule (which ``epochs`` does not shape), how long it lasts.
RESUME_MAY_CHANGE = ("eval_interval", "eval_batch_size")
_STEP_ONLY = ("epochs",)


def _flat(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(d).items()}


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
