"""The recipes as data: retrain.yaml and search.yaml parsed into dataclasses by one machinery
(cream_core.config.schema), overrides, errors; drop masks."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest

from cream_core.arch import model_names
from cream_core.config.retrain import (AugmentConfig, ConfigError, RetrainConfig, config_path,
                                       load_retrain_config)
from cream_core.config.search import SearchConfig, load_search_config
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
    ("learning_rate: 0.1\n", "unknown key learning_rate; known: augment, batch_size"),
    ("augment:\n  re_mode: blur\n", "re_mode must be one of"),
    ("augment:\n  auto_augment: rand-m9-w0\n", "unsupported RandAugment section"),
    ("augment:\n  scale: [0.5]\n", "scale must be a list of 2"),
    ("augment:\n  colour: 1\n", "unknown key augment.colour; known: augment.auto_augment"),
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


# --- one machinery for both recipes ---------------------------------------------------------------
#: Parse results of valid configs, written by the two config readers as they were before they were
#: merged into cream_core.config.schema (commit dd7e297); the inputs are _valid_config_values'.
VALUES_FILE = Path(__file__).parent / "data" / "config_values.json"


def _valid_config_values(tmp: Path) -> Dict[str, Any]:
    official = tmp / "train.yaml"  # official layout: PRE_PROB as a string, ignored and pinned keys
    official.write_text("SEED: 42\nLR: 1.0\nMETA_LR: 1.0e-3\nNET:\n  EMA:\n    USE: True\nSUPERNET:\n"
                        "  PICK_METHOD: 'top1'\n  PRE_PROB: (0.05,0.2,0.05,0.5,0.05,0.15)\n"
                        "  RESUNIT: False\n  SLICE: 2.0\nDATASET:\n  BATCH_SIZE: 8\n")
    mine = tmp / "mine.yaml"
    mine.write_text("epochs: 7\naugment:\n  re_prob: 0.0\n  auto_augment: ''\n  color_jitter: 0\n")
    user = load_retrain_config("cream-43", mine, batch_size=16, augment={"hflip": 0.0})
    out = {"search_default": dataclasses.asdict(load_search_config()),
           "search_official": dataclasses.asdict(load_search_config(official)),
           "search_over": dataclasses.asdict(load_search_config(
               official, batch_size=16, flops_minimum=10.0, pick_method="meta", fix_meta_value=True)),
           "digits": load_retrain_config("cream-14", config_path("digits.yaml"), epochs=3).to_dict(),
           "retrain_user": user.to_dict(),
           "retrain_replace": user.replace(lr=0.01, augment={"re_prob": 0.3}).to_dict()}
    out.update({f"retrain_{m}": load_retrain_config(m).to_dict() for m in model_names()})
    return json.loads(json.dumps(out, default=list))  # tuples as lists, as in the file


def test_valid_configs_parse_to_the_same_values_as_before(tmp_path: Path) -> None:
    expected = json.loads(VALUES_FILE.read_text())
    got = _valid_config_values(tmp_path)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], name


def _search(path: Path) -> Any:
    return load_search_config(path)


def _retrain(path: Path) -> Any:
    return load_retrain_config("cream-14", path)


#: The same mistake in either recipe's file: (search text, retrain text, the message with {key}).
SAME_MISTAKES = [
    ("SUPERNET:\n  SLICEE: 4\n", "augment:\n  SLICEE: 4\n", "unknown key {key}.SLICEE; known: "),
    ("LR: fast\n", "lr: fast\n", "{key} must be a number, got 'fast'"),
    ("SEED: true\n", "seed: true\n", "{key} must be a number, got True"),
    ("EPOCHS: 2.5\n", "epochs: 2.5\n", "{key} must be an integer, got 2.5"),
    ("EPOCHS: 0\n", "epochs: 0\n", "{key} must be >= 1, got 0"),
    ("SUPERNET: 3\n", "augment: 3\n", "{key} must be a mapping of settings, got 3"),
    ("SUPERNET:\n  PICK_METHOD: best\n", "sched: best\n", "{key} must be one of "),
    ("SUPERNET:\n  PRE_PROB: [1]\n", "augment:\n  mean: [1]\n", "{key} must be a list of "),
    ("OPTIONS:\n  FIX_META_VALUE: 1\n", "ema: 1\n", "{key} must be true or false, got 1"),
    ("[1]\n", "[1]\n", "expected a mapping of settings, got list"),
    ("LR: [\n", "lr: [\n", "not valid YAML at line 2"),
]
_KEYS = {"search": ["SUPERNET", "LR", "SEED", "EPOCHS", "EPOCHS", "SUPERNET",
                    "SUPERNET.PICK_METHOD", "SUPERNET.PRE_PROB", "OPTIONS.FIX_META_VALUE", "", ""],
         "retrain": ["augment", "lr", "seed", "epochs", "epochs", "augment", "sched",
                     "augment.mean", "ema", "", ""]}


@pytest.mark.parametrize("recipe, load", [("search", _search), ("retrain", _retrain)])
@pytest.mark.parametrize("case", range(len(SAME_MISTAKES)))
def test_same_mistake_same_error(tmp_path: Path, recipe: str, load: Callable[[Path], Any],
                                 case: int) -> None:
    """Both recipes read files through cream_core.config.schema: one wording for one mistake,
    naming the file and the key, on one line."""
    search_text, retrain_text, message = SAME_MISTAKES[case]
    f = tmp_path / "bad.yaml"
    f.write_text(search_text if recipe == "search" else retrain_text)
    with pytest.raises(ConfigError) as e:
        load(f)
    assert str(e.value).startswith(f"{f}: " + message.format(key=_KEYS[recipe][case]))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("load", [_search, _retrain])
def test_missing_file_and_numbers_written_as_strings(tmp_path: Path,
                                                     load: Callable[[Path], Any]) -> None:
    """PyYAML reads ``1e-4`` as a string (yacs, for which the official files were written, as a
    number): both recipes take it as the number."""
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load(tmp_path / "nope.yaml")
    f = tmp_path / "lr.yaml"
    f.write_text("LR: 1e-4\n" if load is _search else "lr: 1e-4\n")
    assert load(f).lr == 1e-4


def test_search_check_applies_the_field_rules() -> None:
    """A SearchConfig built in code (parity search-step does) gets the checks a file's values get."""
    with pytest.raises(ConfigError, match="SUPERNET.PICK_METHOD must be one of"):
        SearchConfig(pick_method="best").check("golden.json")
    with pytest.raises(ConfigError, match="DATASET.BATCH_SIZE must be >= 1"):
        SearchConfig(batch_size=0).check("golden.json")
    assert SearchConfig().check() == SearchConfig()
