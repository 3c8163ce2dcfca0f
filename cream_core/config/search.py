"""Settings of the Cream supernet search as an immutable dataclass, read from an official-style YAML.

The defaults live in ``search.yaml`` next to this module (the official ``train.yaml`` over the
official ``lib/config.py`` defaults). :func:`load_search_config` reads that file, then a user file
in the same layout (an official config works as it is), then keyword overrides, and returns a frozen
:class:`SearchConfig`; nothing global is modified. Keys of the official layout that have no effect on
the search (paths, AMP, EMA, image saving, ...) are accepted and listed in
:attr:`SearchConfig.ignored`; any other key is an error naming the file and the key.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from cream_core.search.board import PICK_METHODS, PROB_METHODS
from cream_core.io.errors import ConfigError

__all__ = ["SearchConfig", "DEFAULTS_FILE", "load_search_config", "ConfigError", "YAML_KEYS"]

#: The shipped defaults.
DEFAULTS_FILE: Path = Path(__file__).resolve().parent / "search.yaml"


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of the search (official names, lower case, flattened)."""

    seed: int = 42
    log_interval: int = 50
    recovery_interval: int = 0
    workers: int = 8
    num_gpu: int = 8
    eval_metrics: str = "prec1"
    num_classes: int = 1000
    image_size: int = 224
    interpolation: str = "bilinear"
    batch_size: int = 128
    val_batch_mul: int = 4
    gp: str = "avg"
    dropout_rate: float = 0.0
    opt: str = "sgd"
    lr: float = 1.0
    epochs: int = 120
    meta_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    color_jitter: float = 0.4
    re_prob: float = 0.2
    re_mode: str = "pixel"
    smoothing: float = 0.1
    update_iter: int = 200
    slice: int = 4
    pool_size: int = 10
    flops_minimum: float = 0.0
    flops_maximum: float = 600.0
    pick_method: str = "meta"
    meta_sta_epoch: int = 20
    how_to_prob: str = "pre_prob"
    pre_prob: Tuple[float, ...] = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)
    fix_meta_value: bool = False
    sync_meta_step: bool = False
    ignored: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def nesterov(self) -> bool:
        """The official optimizer: ``'sgd'``/``'nesterov'`` -> Nesterov, ``'momentum'`` -> plain."""
        return self.opt.lower().split("_")[-1] in ("sgd", "nesterov")

    def check(self, where: str = "config") -> "SearchConfig":
        """``self``, or :class:`ConfigError` for a value the search cannot run with."""
        opt = self.opt.lower().split("_")[-1]
        if opt not in ("sgd", "nesterov", "momentum"):
            raise ConfigError(where, f"OPT {self.opt!r}: the search supports 'sgd' (Nesterov) and "
                                     "'momentum' (the official Adam branch is not ported)")
        if self.pick_method not in PICK_METHODS:
            raise ConfigError(where, f"SUPERNET.PICK_METHOD {self.pick_method!r} is not one of "
                                     f"{', '.join(PICK_METHODS)}")
        if self.how_to_prob not in PROB_METHODS:
            raise ConfigError(where, f"SUPERNET.HOW_TO_PROB {self.how_to_prob!r} is not one of "
                                     f"{', '.join(PROB_METHODS)}")
        if len(self.pre_prob) != 6 or abs(sum(self.pre_prob) - 1.0) > 1e-6 or min(self.pre_prob) < 0:
            raise ConfigError(where, f"SUPERNET.PRE_PROB must be six probabilities summing to 1, "
                                     f"got {list(self.pre_prob)}")
        for name in ("batch_size", "epochs", "slice", "pool_size", "update_iter", "num_classes",
                     "image_size", "num_gpu", "val_batch_mul"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(where, f"{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2 * self.slice and self.update_iter > 0:
            raise ConfigError(where, f"DATASET.BATCH_SIZE {self.batch_size} is smaller than twice "
                                     f"SUPERNET.SLICE {self.slice}: the meta step trains on the first "
                                     "slice of a batch and validates on the second")
        if self.gp != "avg":
            raise ConfigError(where, f"NET.GP {self.gp!r}: only 'avg' pooling is ported")
        if self.re_mode not in ("pixel", "rand", "const"):
            raise ConfigError(where, f"AUGMENTATION.RE_MODE {self.re_mode!r} is not pixel/rand/const")
        return self


# (yaml path) -> field name
YAML_KEYS: Dict[Tuple[str, ...], str] = {
    ("SEED",): "seed", ("LOG_INTERVAL",): "log_interval", ("RECOVERY_INTERVAL",): "recovery_interval",
    ("WORKERS",): "workers", ("NUM_GPU",): "num_gpu", ("EVAL_METRICS",): "eval_metrics",
    ("DATASET", "NUM_CLASSES"): "num_classes", ("DATASET", "IMAGE_SIZE"): "image_size",
    ("DATASET", "INTERPOLATION"): "interpolation", ("DATASET", "BATCH_SIZE"): "batch_size",
    ("DATASET", "VAL_BATCH_MUL"): "val_batch_mul",
    ("NET", "GP"): "gp", ("NET", "DROPOUT_RATE"): "dropout_rate",
    ("OPT",): "opt", ("LR",): "lr", ("EPOCHS",): "epochs", ("META_LR",): "meta_lr",
    ("MOMENTUM",): "momentum", ("WEIGHT_DECAY",): "weight_decay",
    ("AUGMENTATION", "COLOR_JITTER"): "color_jitter", ("AUGMENTATION", "RE_PROB"): "re_prob",
    ("AUGMENTATION", "RE_MODE"): "re_mode", ("AUGMENTATION", "SMOOTHING"): "smoothing",
    ("SUPERNET", "UPDATE_ITER"): "update_iter", ("SUPERNET", "SLICE"): "slice",
    ("SUPERNET", "POOL_SIZE"): "pool_size", ("SUPERNET", "FLOPS_MINIMUM"): "flops_minimum",
    ("SUPERNET", "FLOPS_MAXIMUM"): "flops_maximum", ("SUPERNET", "PICK_METHOD"): "pick_method",
    ("SUPERNET", "META_STA_EPOCH"): "meta_sta_epoch", ("SUPERNET", "HOW_TO_PROB"): "how_to_prob",
    ("SUPERNET", "PRE_PROB"): "pre_prob",
    ("OPTIONS", "FIX_META_VALUE"): "fix_meta_value", ("OPTIONS", "SYNC_META_STEP"): "sync_meta_step",
}

#: Official keys that do not change what the search computes here (paths, logging extras, GPU-only
#: switches, unused knobs); accepted so that official config files load.
_IGNORED_PREFIXES: Tuple[Tuple[str, ...], ...] = (
    ("AUTO_RESUME",), ("DATA_DIR",), ("MODEL",), ("RESUME_PATH",), ("SAVE_PATH",), ("SAVE_IMAGES",),
    ("AMP",), ("OUTPUT",), ("TTA",), ("LOCAL_RANK",), ("VERBOSE",), ("NET", "EMA"), ("NET", "SELECTION"),
    ("BATCHNORM",), ("DATASET", "NO_PREFECHTER"), ("DATASET", "PIN_MEM"), ("OPT_EPS",),
    ("OPTIMIZER",), ("SCHED",), ("LR_NOISE_PCT",), ("LR_NOISE_STD",), ("WARMUP_LR",), ("MIN_LR",),
    ("START_EPOCH",), ("DECAY_EPOCHS",), ("WARMUP_EPOCHS",), ("COOLDOWN_EPOCHS",), ("PATIENCE_EPOCHS",),
    ("DECAY_RATE",), ("LR_NOISE",), ("AUGMENTATION", "AA"), ("AUGMENTATION", "MIXUP"),
    ("AUGMENTATION", "MIXUP_OFF_EPOCH"), ("SUPERNET", "UPDATE_2ND"),
)
# Official switches whose non-default values select code this port does not have.
_MUST_BE_FALSE: Tuple[Tuple[str, ...], ...] = (("SUPERNET", "RESUNIT"), ("SUPERNET", "DIL_CONV"))


def _flatten(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
    out: Dict[Tuple[str, ...], Any] = {}
    for k, v in tree.items():
        key = prefix + (str(k),)
        if isinstance(v, Mapping) and key not in YAML_KEYS:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _coerce(path: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(path, f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ConfigError(path, f"{key} must be a list of numbers, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"{key} must be a list of numbers, got {value!r}")
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(path, f"{key} must be a list of numbers, got {value!r}") from None
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(path, f"{key} must be a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(path, f"{key} must be a string, got {value!r}")
    return value


def _read_yaml(path: str) -> Mapping[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, "config file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot read config file ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, "a config file must be a mapping of keys to values")
    return data


def _apply(cfg: SearchConfig, data: Mapping[str, Any], path: str) -> SearchConfig:
    defaults = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    changes: Dict[str, Any] = {}
    ignored = list(cfg.ignored)
    for key, value in _flatten(data).items():
        name = ".".join(key)
        if key in YAML_KEYS:
            field_name = YAML_KEYS[key]
            changes[field_name] = _coerce(path, name, value, defaults[field_name])
        elif key in _MUST_BE_FALSE:
            if value:
                raise ConfigError(path, f"{name}: {value!r} selects official code this port does not "
                                        "have (only the default False is supported)")
        elif any(key[:len(p)] == p for p in _IGNORED_PREFIXES):
            if name not in ignored:
                ignored.append(name)
        else:
            raise ConfigError(path, f"unknown key {name}")
    return replace(cfg, ignored=tuple(ignored), **changes)


def load_search_config(path: "Optional[os.PathLike[str] | str]" = None,
                       **overrides: Any) -> SearchConfig:
    """The shipped defaults, then the YAML file ``path`` (official layout), then ``overrides``.

    ``overrides`` use the dataclass field names (``batch_size=8``). Raises :class:`ConfigError`.
    """
    cfg = _apply(SearchConfig(), _read_yaml(str(DEFAULTS_FILE)), str(DEFAULTS_FILE))
    where = str(DEFAULTS_FILE)
    if path is not None:
        where = os.fspath(path)
        cfg = _apply(cfg, _read_yaml(where), where)
    names = {f.name for f in fields(SearchConfig)} - {"ignored"}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"unknown search setting(s): {', '.join(bad)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = replace(cfg, **given)
    return cfg.check(f"{where} with the command-line settings" if given else where)
