"""The one YAML machinery of every recipe (search, retraining): read, layer, check, build.

A recipe is a frozen dataclass whose fields carry a :class:`Rule` in their metadata (made with
:func:`setting`): the key the field has in a YAML file (dotted for nesting, ``DATASET.BATCH_SIZE``),
its range or choices; the type is the field's annotation (``int``, ``float``, ``bool``, ``str``,
``Tuple[float, ...]``, ``Optional[...]``, or a nested recipe dataclass, whose keys then sit under
the field's name). :func:`load` layers sources in order (shipped defaults -> user file ->
overrides), and every source goes through the same code, so the same mistake gives the same
one-line :class:`ConfigError` naming the file and the key whichever recipe it is in:

* an unreadable file, invalid YAML or a file that is no mapping;
* an unknown key (``unknown key X; known: ...`` listing the keys beside it);
* a value of the wrong type or out of range, named by its key and the source that set it.

Numbers may be given as strings (``1e-4`` is a string to PyYAML, a float to yacs, for which the
official config files were written); lists may be given as a Python literal string (the official
``PRE_PROB: (0.05,0.2,...)``). Nothing here is global or mutable.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from cream_core.io.errors import ConfigError

__all__ = ["Rule", "Layout", "Layer", "setting", "read_yaml", "flatten", "file_layer",
           "field_layer", "coerce", "load", "check_fields", "ConfigError"]

_RULE = "cream_rule"


@dataclass(frozen=True)
class Rule:
    """How one setting is written in a file and which values it takes."""

    key: str = ""  # its key in a file, dotted for nesting; "" = the field's name
    lo: Optional[float] = None  # smallest allowed value (numbers)
    hi: Optional[float] = None  # largest allowed value (numbers)
    lo_open: bool = False  # the value must be > lo, not >= lo
    choices: Tuple[str, ...] = ()  # allowed strings
    length: int = 0  # lists: the exact number of items (0: any)
    in_files: bool = True  # False: set only by the program (e.g. the model name), never by a file


def setting(default: Any = dataclasses.MISSING, **rule: Any) -> Any:
    """A dataclass field with its :class:`Rule` (``setting(8, key="WORKERS", lo=0)``)."""
    return field(default=default, metadata={_RULE: Rule(**rule)})


@dataclass(frozen=True)
class Layout:
    """Keys a file may hold that are not settings: ``ignored`` prefixes (accepted, listed in the
    result), and ``pinned`` keys that must keep the given value (they select code not ported)."""

    ignored: Tuple[str, ...] = ()
    pinned: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Layer:
    """One source of values: ``where`` (a file, or a description) and its settings by key."""

    where: str
    values: Dict[str, Any]
    ignored: List[str] = field(default_factory=list)


# --- the recipe's keys ----------------------------------------------------------------------------
def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls: type, prefix: str = "") -> Dict[str, Tuple[Tuple[str, ...], Any, Rule]]:
    """Every settable key of recipe ``cls``: key -> (field path, type, rule)."""
    out: Dict[str, Tuple[Tuple[str, ...], Any, Rule]] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        rule = f.metadata.get(_RULE)
        if rule is None:
            continue
        hint = hints[f.name]
        key = prefix + (rule.key or f.name)
        if dataclasses.is_dataclass(hint):
            for k, (path, h, r) in _keys(hint, key + ".").items():
                out[k] = ((f.name,) + path, h, r)
        else:
            out[key] = ((f.name,), hint, rule)
    return out


def _sections(keys: Sequence[str]) -> Dict[str, List[str]]:
    """Each section (``""`` = the top) -> the keys and sub-sections right below it."""
    out: Dict[str, List[str]] = {}
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            below = out.setdefault(".".join(parts[:i]), [])
            if ".".join(parts[:i + 1]) not in below:
                below.append(".".join(parts[:i + 1]))
    return out


# --- files ----------------------------------------------------------------------------------------
def read_yaml(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """A YAML file holding a mapping (an empty file is ``{}``), or :class:`ConfigError`."""
    p = os.fspath(path)
    try:
        with open(p, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(p, "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(p, "is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(p, f"cannot read config file ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(p, f"not valid YAML{at} ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(p, f"expected a mapping of settings, got {type(data).__name__}")
    return data


def flatten(tree: Mapping[str, Any], stop: Callable[[str], bool] = lambda key: False,
            prefix: str = "") -> Dict[str, Any]:
    """Nested mappings as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); a key for which
    ``stop`` is true keeps its value even when that is a mapping."""
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        key = prefix + str(k)
        if isinstance(v, Mapping) and not stop(key):
            out.update(flatten(v, stop, key + "."))
        else:
            out[key] = v
    return out


def _is_ignored(key: str, layout: Layout) -> bool:
    return any(key == p or key.startswith(p + ".") for p in layout.ignored)


def file_layer(cls: type, tree: Mapping[str, Any], where: str,
               layout: Layout = Layout()) -> Layer:
    """The settings of a parsed file (or any mapping in file keys) for recipe ``cls``; an unknown
    key, a section given a value, or a pinned key set otherwise is :class:`ConfigError`."""
    keys = {k: v for k, v in _keys(cls).items() if v[2].in_files}
    sections = _sections(list(keys))
    layer = Layer(where, {})
    for key, value in flatten(tree, lambda k: k in keys).items():
        if key in keys:
            layer.values[key] = value
        elif key in layout.pinned:
            if value != layout.pinned[key]:
                raise ConfigError(where, f"{key}: {value!r} selects official code this port does "
                                         f"not have (only {layout.pinned[key]!r} is supported)")
        elif _is_ignored(key, layout):
            layer.ignored.append(key)
        elif key in sections:
            raise ConfigError(where, f"{key} must be a mapping of settings, got {value!r}")
        else:
            parent = key.rpartition(".")[0] if key.rpartition(".")[0] in sections else ""
            raise ConfigError(where, f"unknown key {key}; known: "
                                     f"{', '.join(sorted(sections[parent]))}")
    return layer


def field_layer(cls: type, values: Mapping[str, Any], where: str, keep_none: bool = False) -> Layer:
    """Settings given by field name (``batch_size=8``, ``augment={"hflip": 0.0}``) as a layer;
    ``None`` means not set (a command line's unset option) unless ``keep_none``."""
    by_path = {path: key for key, (path, _, _) in _keys(cls).items()}
    layer = Layer(where, {})
    for name, value in flatten(values, lambda k: (k,) in by_path).items():
        path = tuple(name.split("."))
        if path not in by_path:
            raise ConfigError(where, f"unknown setting {name}; known: "
                                     f"{', '.join(sorted('.'.join(p) for p in by_path))}")
        if value is not None or keep_none:
            layer.values[by_path[path]] = value
    return layer


# --- values ---------------------------------------------------------------------------------------
def _number(where: str, key: str, value: Any, integer: bool) -> Any:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(where, f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(where, f"{key} must be a number, got {value!r}")
    if not integer:
        return float(value)
    if not (math.isfinite(value) and float(value) == int(value)):
        raise ConfigError(where, f"{key} must be an integer, got {value!r}")
    return int(value)


def _numbers(where: str, key: str, value: Any, length: int) -> Tuple[float, ...]:
    what = f"a list of {length} numbers" if length else "a list of numbers"
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(where, f"{key} must be {what}, got {value!r}") from None
    if not isinstance(value, (list, tuple)) or (length and len(value) != length):
        raise ConfigError(where, f"{key} must be {what}, got {value!r}")
    return tuple(_number(where, key, v, False) for v in value)


def _in_range(where: str, key: str, value: Any, rule: Rule) -> None:
    lo, hi = rule.lo, rule.hi
    if lo is not None and (value <= lo if rule.lo_open else value < lo):
        raise ConfigError(where, f"{key} must be {'>' if rule.lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(where, f"{key} must be <= {hi}, got {value}")


def coerce(where: str, key: str, value: Any, hint: Any, rule: Rule) -> Any:
    """``value`` as the type ``hint`` says, checked against ``rule``; :class:`ConfigError` naming
    ``where`` and ``key`` otherwise. ``Optional`` settings are off (``None``) when falsy."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        if not value:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"{key} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        value = _number(where, key, value, hint is int)
        _in_range(where, key, value, rule)
        return value
    if typing.get_origin(hint) is tuple:
        return _numbers(where, key, value, rule.length)
    if not isinstance(value, str):
        raise ConfigError(where, f"{key} must be a string, got {value!r}")
    if rule.choices and value not in rule.choices:
        raise ConfigError(where, f"{key} must be one of {', '.join(rule.choices)}, got {value!r}")
    return value


# --- recipes --------------------------------------------------------------------------------------
def _build(cls: type, values: Mapping[Tuple[str, ...], Any]) -> Any:
    hints = _hints(cls)
    kwargs: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], {p[1:]: v for p, v in values.items()
                                                    if p[0] == f.name})
        elif (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
    return cls(**kwargs)


def load(cls: type, layers: Sequence[Layer]) -> Any:
    """Recipe ``cls`` from ``layers`` (later ones win), each value checked and named by the layer
    that set it; a setting without a value in any layer or in the dataclass is an error naming
    the last layer. Cross-field checks are the recipe's own (e.g. its ``check`` method)."""
    keys = _keys(cls)
    given: Dict[str, Tuple[Any, str]] = {}
    for layer in layers:
        given.update({k: (v, layer.where) for k, v in layer.values.items()})
    values: Dict[Tuple[str, ...], Any] = {}
    missing: List[str] = []
    for key, (path, hint, rule) in keys.items():
        if key in given:
            values[path] = coerce(given[key][1], key, given[key][0], hint, rule)
        elif _default(cls, path) is dataclasses.MISSING:
            missing.append(key)
    if missing:
        raise ConfigError(layers[-1].where, f"missing key(s) {', '.join(sorted(missing))}")
    return _build(cls, values)


def _default(cls: type, path: Tuple[str, ...]) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == path[0])
    if len(path) > 1:
        return _default(_hints(cls)[path[0]], path[1:])
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def check_fields(recipe: Any, where: str) -> None:
    """:class:`ConfigError` for the first field of ``recipe`` (however it was built) whose value
    breaks its rule: the same check a file's values get."""
    for key, (path, hint, rule) in _keys(type(recipe)).items():
        value = recipe
        for name in path:
            value = getattr(value, name)
        coerce(where, key, value, hint, rule)
