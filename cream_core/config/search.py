"""Settings of the Cream supernet search as an immutable dataclass, read from an official-style YAML.

The defaults live in ``search.yaml`` next to this module (the official ``train.yaml`` over the
official ``lib/config.py`` defaults). :func:`load_search_config` reads that file, then a user file
in the same layout (an official config works as it is), then keyword overrides, and returns a frozen
:class:`SearchConfig`; nothing global is modified. Keys of the official layout that have no effect on
the search (paths, AMP, EMA, image saving, ...) are accepted and listed in
:attr:`SearchConfig.ignored`; any other key is an error naming the file and the key. Reading,
layering and checking are :mod:`cream_core.config.schema`, shared with the retraining recipe.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Tuple

from cream_core.config.schema import (ConfigError, Layout, check_fields, field_layer, file_layer,
                                      load, read_yaml, setting)
from cream_core.search.board import PICK_METHODS, PROB_METHODS

__all__ = ["SearchConfig", "DEFAULTS_FILE", "load_search_config", "ConfigError", "LAYOUT"]

#: The shipped defaults.
DEFAULTS_FILE: Path = Path(__file__).resolve().parent / "search.yaml"


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of the search (official names, lower case, flattened; ``key`` = official key)."""

    seed: int = setting(42, key="SEED")
    log_interval: int = setting(50, key="LOG_INTERVAL")
    recovery_interval: int = setting(0, key="RECOVERY_INTERVAL")
    workers: int = setting(8, key="WORKERS")
    num_gpu: int = setting(8, key="NUM_GPU", lo=1)
    eval_metrics: str = setting("prec1", key="EVAL_METRICS")
    num_classes: int = setting(1000, key="DATASET.NUM_CLASSES", lo=1)
    image_size: int = setting(224, key="DATASET.IMAGE_SIZE", lo=1)
    interpolation: str = setting("bilinear", key="DATASET.INTERPOLATION")
    batch_size: int = setting(128, key="DATASET.BATCH_SIZE", lo=1)
    val_batch_mul: int = setting(4, key="DATASET.VAL_BATCH_MUL", lo=1)
    gp: str = setting("avg", key="NET.GP", choices=("avg",))  # only average pooling is ported
    dropout_rate: float = setting(0.0, key="NET.DROPOUT_RATE")
    opt: str = setting("sgd", key="OPT")
    lr: float = setting(1.0, key="LR")
    epochs: int = setting(120, key="EPOCHS", lo=1)
    meta_lr: float = setting(1e-4, key="META_LR")
    momentum: float = setting(0.9, key="MOMENTUM")
    weight_decay: float = setting(1e-4, key="WEIGHT_DECAY")
    color_jitter: float = setting(0.4, key="AUGMENTATION.COLOR_JITTER")
    re_prob: float = setting(0.2, key="AUGMENTATION.RE_PROB")
    re_mode: str = setting("pixel", key="AUGMENTATION.RE_MODE", choices=("pixel", "rand", "const"))
    smoothing: float = setting(0.1, key="AUGMENTATION.SMOOTHING")
    update_iter: int = setting(200, key="SUPERNET.UPDATE_ITER", lo=1)
    slice: int = setting(4, key="SUPERNET.SLICE", lo=1)
    pool_size: int = setting(10, key="SUPERNET.POOL_SIZE", lo=1)
    flops_minimum: float = setting(0.0, key="SUPERNET.FLOPS_MINIMUM")
    flops_maximum: float = setting(600.0, key="SUPERNET.FLOPS_MAXIMUM")
    pick_method: str = setting("meta", key="SUPERNET.PICK_METHOD", choices=PICK_METHODS)
    meta_sta_epoch: int = setting(20, key="SUPERNET.META_STA_EPOCH")
    how_to_prob: str = setting("pre_prob", key="SUPERNET.HOW_TO_PROB", choices=PROB_METHODS)
    pre_prob: Tuple[float, ...] = setting((0.05, 0.2, 0.05, 0.5, 0.05, 0.15),
                                          key="SUPERNET.PRE_PROB", length=6)
    fix_meta_value: bool = setting(False, key="OPTIONS.FIX_META_VALUE")
    sync_meta_step: bool = setting(False, key="OPTIONS.SYNC_META_STEP")
    ignored: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def nesterov(self) -> bool:
        """The official optimizer: ``'sgd'``/``'nesterov'`` -> Nesterov, ``'momentum'`` -> plain."""
        return self.opt.lower().split("_")[-1] in ("sgd", "nesterov")

    def check(self, where: str = "config") -> "SearchConfig":
        """``self``, or :class:`ConfigError` for a value the search cannot run with: each field's
        rule (:func:`cream_core.config.schema.check_fields`), then what involves several fields."""
        check_fields(self, where)
        if self.opt.lower().split("_")[-1] not in ("sgd", "nesterov", "momentum"):
            raise ConfigError(where, f"OPT {self.opt!r}: the search supports 'sgd' (Nesterov) and "
                                     "'momentum' (the official Adam branch is not ported)")
        if abs(sum(self.pre_prob) - 1.0) > 1e-6 or min(self.pre_prob) < 0:
            raise ConfigError(where, f"SUPERNET.PRE_PROB must be six probabilities summing to 1, "
                                     f"got {list(self.pre_prob)}")
        if self.batch_size < 2 * self.slice and self.update_iter > 0:
            raise ConfigError(where, f"DATASET.BATCH_SIZE {self.batch_size} is smaller than twice "
                                     f"SUPERNET.SLICE {self.slice}: the meta step trains on the first "
                                     "slice of a batch and validates on the second")
        return self


#: Official keys that do not change what the search computes here (paths, logging extras, GPU-only
#: switches, unused knobs), accepted so that official config files load; and official switches
#: whose non-default values select code this port does not have.
LAYOUT = Layout(
    ignored=("AUTO_RESUME", "DATA_DIR", "MODEL", "RESUME_PATH", "SAVE_PATH", "SAVE_IMAGES", "AMP",
             "OUTPUT", "TTA", "LOCAL_RANK", "VERBOSE", "NET.EMA", "NET.SELECTION", "BATCHNORM",
             "DATASET.NO_PREFECHTER", "DATASET.PIN_MEM", "OPT_EPS", "OPTIMIZER", "SCHED",
             "LR_NOISE_PCT", "LR_NOISE_STD", "WARMUP_LR", "MIN_LR", "START_EPOCH", "DECAY_EPOCHS",
             "WARMUP_EPOCHS", "COOLDOWN_EPOCHS", "PATIENCE_EPOCHS", "DECAY_RATE", "LR_NOISE",
             "AUGMENTATION.AA", "AUGMENTATION.MIXUP", "AUGMENTATION.MIXUP_OFF_EPOCH",
             "SUPERNET.UPDATE_2ND"),
    pinned={"SUPERNET.RESUNIT": False, "SUPERNET.DIL_CONV": False})


def load_search_config(path: "Optional[os.PathLike[str] | str]" = None,
                       **overrides: Any) -> SearchConfig:
    """The shipped defaults, then the YAML file ``path`` (official layout), then ``overrides``.

    ``overrides`` use the dataclass field names (``batch_size=8``; ``None`` = not set). Raises
    :class:`ConfigError`.
    """
    where = str(DEFAULTS_FILE)
    layers = [file_layer(SearchConfig, read_yaml(where), where, LAYOUT)]
    if path is not None:
        where = os.fspath(path)
        layers.append(file_layer(SearchConfig, read_yaml(where), where, LAYOUT))
    over = field_layer(SearchConfig, overrides, f"{where} with the command-line settings")
    if over.values:
        layers.append(over)
        where = over.where
    ignored = tuple(dict.fromkeys(k for layer in layers for k in layer.ignored))
    return replace(load(SearchConfig, layers), ignored=ignored).check(where)
