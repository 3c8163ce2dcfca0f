"""The retraining recipe as data: retrain.yaml parsed into dataclasses, overrides, errors; drop masks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cream_core.arch import model_names
from cream_core.config.retrain import (AugmentConfig, ConfigError, RetrainConfig, config_path,
                                load_retrain_config)
from cream_core.training.masks import MaskSpec, draw_keep_mask, step_masks


def test_official_cream14_recipe() -> None:
    """The values of Cream/experiments/configs/retrain/14.yaml + lib/config.py + timm 0.1.20."""
    c = load_retrain_config("cream-14")
    assert (c.opt, c.lr, c.opt_eps, c.momentum, c.rmsprop_alpha, c.weight_decay) == (
        "rmsproptf", 0.064, 1e-3, 0.9, 0.9, 1e-5)
    assert (c.sched, c.decay_epochs, c.decay_rate, c.warmup_lr, c.warmup_epochs) == (
        "step", 2.4, 0.973, 1e-6, 3)
    assert (c.drop_rate, c.drop_path_rate, c.smoothing, c.ema, c.ema_decay) == (
        0.2, 0.0, 0.1, True, 0.9999)
    assert (c.batch_size, c.epochs, c.img_size, c.num_classes, c.seed) == (128, 500, 64, 1000, 42)
    a = c.augment
    assert (a.auto_augment, a.re_prob, a.re_mode, a.interpolation, a.hflip) == (
        "rand-m9-mstd0.5", 0.2, "pixel", "random", 0.5)
    assert a.scale == (0.08, 1.0) and a.ratio == pytest.approx((3 / 4, 4 / 3))
    assert c.total_epochs == 500


@pytest.mark.parametrize("name", model_names())
def test_every_model_has_a_recipe(name: str) -> None:
    c = load_retrain_config(name)
    assert c.sched == ("step" if name in ("cream-14", "cream-43") else "cosine")
    assert c.img_size in (64, 96, 160, 224)
    if c.sched == "cosine":
        assert c.total_epochs == c.epochs + c.cooldown_epochs


def test_yaml_sets_every_field() -> None:
    """retrain.yaml is the single source of the defaults: no field falls back to code."""
    import yaml

    with open(config_path()) as f:
        data = yaml.safe_load(f)
    top = {f.name for f in dataclasses.fields(RetrainConfig)} - {"model", "augment"}
    assert top == set(data["defaults"]) - {"augment"}
    assert {f.name for f in dataclasses.fields(AugmentConfig)} == set(data["defaults"]["augment"])


def test_user_file_and_overrides(tmp_path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("epochs: 7\naugment:\n  re_prob: 0.0\n")
    c = load_retrain_config("cream-43", f, batch_size=16, augment={"hflip": 0.0})
    assert (c.epochs, c.batch_size, c.augment.re_prob, c.augment.hflip) == (7, 16, 0.0, 0.0)
    assert c.augment.auto_augment == "rand-m9-mstd0.5"  # untouched keys keep the official value
    assert load_retrain_config("cream-14", epochs=None).epochs == 500  # None = not set
    r = c.replace(lr=0.01, augment={"re_prob": 0.3})
    assert (r.lr, r.augment.re_prob, r.epochs) == (0.01, 0.3, 7)
    d = load_retrain_config("cream-14", config_path("digits.yaml"))
    assert d.num_classes == 10 and d.augment.hflip == 0.0


@pytest.mark.parametrize("text, match", [
    ("epochs: 0\n", "epochs must be >= 1"),
    ("lr: fast\n", "lr must be a number"),
    ("sched: linear\n", "sched must be one of"),
    ("learning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ("augment:\n  re_mode: blur\n", "re_mode must be one of"),
    ("augment:\n  auto_augment: rand-m9-w0\n", "unsupported RandAugment section"),
    ("augment:\n  scale: [0.5]\n", "scale must be a list of 2"),
    ("augment:\n  colour: 1\n", "unknown key 'augment.colour'"),
    ("[1, 2]\n", "expected a mapping"),
    ("epochs: [\n", "not valid YAML at line"),
    ("ema: yes please\n", "ema must be true or false"),
])
def test_bad_config_files_name_file_and_problem(tmp_path, text: str, match: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_retrain_config("cream-14", f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file_and_unknown_model(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_retrain_config("cream-14", tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown model"):
        load_retrain_config("cream-15")


def test_masks_are_deterministic_and_scaled() -> None:
    spec = MaskSpec((0.0, 0.1, 0.3), 0.2, 16)
    a = step_masks(spec, 1, 2, 3, 64)
    b = step_masks(spec, 1, 2, 3, 64)
    assert a.drop_path[0] is None
    np.testing.assert_array_equal(a.drop_path[2], b.drop_path[2])
    np.testing.assert_array_equal(a.dropout, b.dropout)
    assert not np.array_equal(a.dropout, step_masks(spec, 1, 2, 4, 64).dropout)
    assert set(np.unique(a.drop_path[2])) <= {0.0, np.float32(1 / np.float32(0.7))}
    assert a.dropout.shape == (64, 16) and a.dropout.dtype == np.float32
    big = draw_keep_mask(np.random.default_rng(0), (200000,), 0.2)
    assert big.mean() == pytest.approx(1.0, abs=0.01)  # E[mask] = 1: the 1/keep scaling
    assert (big == 0).mean() == pytest.approx(0.2, abs=0.005)
    r = a.rows(8, 16)
    np.testing.assert_array_equal(r.dropout, a.dropout[8:16])
    assert r.batch_size == 8
