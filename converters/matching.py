"""Pair the layers of any torch model with those of its Paddle port, with no hand-written table.

The two trees of a port rarely share names (torchvision's ``features.4.block.2.fc1`` is
paddle.vision's ``blocks.3.mid_se.fc1``), but they compute the same layers in the same order. So:

1. **name**: a layer holding state (parameters or persistent buffers) whose path exists on both sides
   with a compatible kind (:func:`cream_core.rules.layer_kind`) and the same entries and shapes after
   the framework rules (:data:`cream_core.rules.RULES`) is paired by name -- if these pairs keep the
   execution order of both sides (a coincidental name elsewhere in the tree is not trusted);
2. **order**: the other stateful layers, between two such anchors, are paired by execution order
   (forward pre-hooks, one run each side at the example input in eval mode), and every pair must agree
   on kind and shapes;
3. parameter-free modules present on both sides (a ``ReLU`` module in torch may be a functional call in
   Paddle) are paired by kind and order between consecutive stateful layers -- only where each kind
   occurs equally often on both sides there (otherwise left unmatched and noted: no guess);
4. **structure**: containers whose matched descendants coincide exactly are paired (outermost with
   outermost when several nest around the same layers).

A stateful layer that cannot be paired this way raises :class:`MatchError` naming it: weights never
go through a guess. :func:`save_matching` / :func:`load_matching` write and read the result as JSON
or YAML (``--map FILE``: an edited pairing is validated against both models, its layers become
``how='file'``).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.io.atomic import atomic_write_text
from cream_core.rules import RULE_FAMILIES, RuleError, kinds_compatible, layer_kind, rule_for
from cream_core.io.statecheck import KeyReport

__all__ = [
    "LayerMatch",
    "Matching",
    "MatchError",
    "MATCHING_FORMAT",
    "match_models",
    "save_matching",
    "load_matching",
    "torch_to_paddle_state",
    "paddle_to_torch_state",
]

#: Value of the ``format`` field of a saved matching; bumped when the layout changes.
MATCHING_FORMAT = "converters.matching/1"
_HOWS = ("name", "order", "structure", "file")
_SHOW = 3  # names listed in a one-line error before "(+N more)"


class MatchError(ValueError):
    """The two models (or a ``--map`` file) cannot be paired; one line naming the layers and why."""


@dataclass(frozen=True)
class LayerMatch:
    """One pair of boundaries: the torch path, the Paddle path, their shared kind and how it was found."""

    torch: str
    paddle: str
    kind: str
    how: str
    has_params: bool


@dataclass
class Matching:
    """Every matched boundary in torch execution order, and the state-dict key map it implies."""

    layers: List[LayerMatch]
    keys: Dict[str, str]
    transposed: FrozenSet[str]
    dropped: Tuple[str, ...]
    unmatched_torch: Tuple[str, ...]
    unmatched_paddle: Tuple[str, ...]
    notes: Tuple[str, ...]

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (``format``, ``layers``, ``keys``, ...)."""
        return {"format": MATCHING_FORMAT, "layers": [asdict(m) for m in self.layers],
                "keys": dict(self.keys), "transposed": sorted(self.transposed),
                "dropped": list(self.dropped), "unmatched_torch": list(self.unmatched_torch),
                "unmatched_paddle": list(self.unmatched_paddle), "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Matching":
        """Rebuild from :meth:`to_json` output, checking the layout (not the models: see
        :func:`load_matching`)."""
        if not isinstance(data, Mapping) or data.get("format") != MATCHING_FORMAT:
            raise MatchError(f"not a layer matching (expected format {MATCHING_FORMAT!r})")
        layers = [_layer_from_json(i, e) for i, e in enumerate(_list(data, "layers"))]
        keys = data.get("keys", {})
        if not isinstance(keys, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            raise MatchError("'keys' must map torch state-dict keys to Paddle ones")
        return cls(layers, dict(keys), frozenset(_strings(data, "transposed")),
                   tuple(_strings(data, "dropped")), tuple(_strings(data, "unmatched_torch")),
                   tuple(_strings(data, "unmatched_paddle")), tuple(_strings(data, "notes")))


def _list(data: Mapping[str, Any], name: str) -> list:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise MatchError(f"'{name}' must be a list")
    return value


def _strings(data: Mapping[str, Any], name: str) -> List[str]:
    value = _list(data, name)
    if not all(isinstance(v, str) for v in value):
        raise MatchError(f"'{name}' must be a list of strings")
    return value


def _layer_from_json(i: int, entry: Any) -> LayerMatch:
    want = {"torch": str, "paddle": str, "kind": str, "how": str, "has_params": bool}
    if not isinstance(entry, Mapping) or set(entry) != set(want) or not all(
            isinstance(entry[k], t) for k, t in want.items()):
        raise MatchError(f"layers[{i}] must have exactly the fields {sorted(want)} "
                         "(strings, has_params a boolean)")
    if entry["how"] not in _HOWS:
        raise MatchError(f"layers[{i}]: 'how' must be one of {list(_HOWS)}, got {entry['how']!r}")
    return LayerMatch(**entry)


# ------------------------------------------------------------------------------------------------
# what each side looks like


@dataclass
class _Layer:
    """A module of one side: its kind, its own state entries (leaf -> shape), whether it has children."""

    path: str
    kind: str
    entries: Dict[str, Tuple[int, ...]]
    has_children: bool
    order: Optional[int] = None  # first-call index in the example run; None if never called


@dataclass
class _Side:
    layers: Dict[str, _Layer]
    calls: List[str]  # paths in first-call order


def _describe(modules: Sequence[Tuple[str, Any]], state: Mapping[str, Any],
              children: Callable[[Any], bool]) -> Dict[str, _Layer]:
    out = {path: _Layer(path, layer_kind(type(m).__name__), {}, children(m)) for path, m in modules}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in out:
            out[prefix].entries[leaf] = tuple(int(s) for s in value.shape)
    return out


def _torch_input(model: Any, x: np.ndarray) -> Any:
    import torch

    params = list(model.parameters())
    dtype = params[0].dtype if params else torch.float32
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def _paddle_input(model: Any, x: np.ndarray) -> Any:
    import paddle

    params = model.parameters()
    dtype = params[0].dtype if params else paddle.float32
    return paddle.to_tensor(np.ascontiguousarray(x)).astype(dtype)


def _torch_no_grad() -> Any:
    import torch

    return torch.no_grad()


def _paddle_no_grad() -> Any:
    import paddle

    return paddle.no_grad()


@dataclass(frozen=True)
class _Framework:
    """What differs between the two sides when a tree is described and run once: how modules are
    listed, whether one has children, the example input in the model's dtype, no-grad mode."""

    name: str  # in messages
    modules: Callable[[Any], List[Tuple[str, Any]]]  # (path, module), the root included as ""
    has_children: Callable[[Any], bool]
    example_input: Callable[[Any, np.ndarray], Any]
    no_grad: Callable[[], Any]


_TORCH = _Framework("torch", lambda m: list(m.named_modules()),
                    lambda m: any(True for _ in m.children()), _torch_input, _torch_no_grad)
_PADDLE = _Framework("Paddle", lambda m: list(m.named_sublayers(include_self=True)),
                     lambda m: bool(m.sublayers()), _paddle_input, _paddle_no_grad)


def _layers(fw: _Framework, model: Any) -> Dict[str, _Layer]:
    return _describe(fw.modules(model), model.state_dict(), fw.has_children)


def _side(fw: _Framework, model: Any, x: np.ndarray) -> _Side:
    """The layers of one side and the order they are first called in on the example input ``x``
    (eval mode, no gradients; every module's mode restored afterwards)."""
    modules = fw.modules(model)
    layers = _layers(fw, model)
    calls: List[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, p=path: calls.append(p))
               for path, m in modules]
    modes = {id(m): (m, m.training) for _, m in modules}
    try:
        model.eval()
        with fw.no_grad():
            _run(fw.name, model, fw.example_input(model, x))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.values():
            m.training = mode
    return _Side(layers, _first_calls(calls, layers))


def _run(side: str, model: Any, x: Any) -> None:
    """One forward pass; a model that rejects the example input is a MatchError, not a traceback."""
    try:
        model(x)
    except Exception as e:  # any framework error: the input does not fit this model
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise MatchError(f"the {side} model fails on an example input of shape "
                         f"{list(x.shape)}: {first[:200]}") from None


def _first_calls(calls: Sequence[str], layers: Dict[str, _Layer]) -> List[str]:
    seen: Dict[str, int] = {}
    for path in calls:
        seen.setdefault(path, len(seen))
    for path, idx in seen.items():
        layers[path].order = idx
    return list(seen)


# ------------------------------------------------------------------------------------------------
# stateful layers


def _entry_map(t: _Layer, p: _Layer) -> Tuple[Optional[str], Dict[str, Tuple[Optional[str], str]]]:
    """``(problem or None, torch leaf -> (paddle leaf or None, action))`` for a candidate pair."""
    if not (kinds_compatible(t.kind, p.kind) or
            (t.kind.startswith("other:") and p.kind.startswith("other:"))):
        return f"kinds differ ({t.kind} vs {p.kind})", {}
    family = RULE_FAMILIES.get(t.kind, RULE_FAMILIES.get(p.kind, "other"))
    leaves: Dict[str, Tuple[Optional[str], str]] = {}
    want: Dict[str, Tuple[int, ...]] = {}
    for leaf, shape in t.entries.items():
        rule = rule_for("torch", leaf, family)
        action = rule.action if rule else "copy"
        target = None if action == "drop" else (rule.paddle_leaf if rule else leaf)
        leaves[leaf] = (target, action)
        if target is not None:
            want[target] = shape[::-1] if action == "transpose" else shape
    if want != p.entries:
        return (f"entries differ ({t.kind} {_shapes(want)} in Paddle's names vs "
                f"{p.kind} {_shapes(p.entries)})"), {}
    return None, leaves


def _shapes(entries: Mapping[str, Tuple[int, ...]]) -> str:
    return "{" + ", ".join(f"{k}: {list(v)}" for k, v in sorted(entries.items())) + "}"


def _few(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:_SHOW])
    return shown + (f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _name_anchors(t: _Side, p: _Side, ts: List[str], ps: List[str], notes: List[str]
                  ) -> List[Tuple[str, str]]:
    """Same-path stateful pairs that agree, if they keep the execution order of both sides."""
    p_index = {path: i for i, path in enumerate(ps)}
    pairs = [(path, path) for path in ts if path in p_index
             and _entry_map(t.layers[path], p.layers[path])[0] is None]
    positions = [p_index[b] for _, b in pairs]
    if any(b <= a for a, b in zip(positions, positions[1:])):
        notes.append(f"{len(pairs)} same-named layers run in a different order on the two sides: "
                     "names ignored, layers paired by execution order")
        return []
    return pairs


def _pair_segment(t: _Side, p: _Side, seg_t: List[str], seg_p: List[str], after: Optional[str]
                  ) -> List[Tuple[str, str]]:
    """Pair one run of stateful layers between two anchors by order; MatchError if they disagree."""
    where = f"after torch {after!r}" if after is not None else "from the start"
    if len(seg_t) != len(seg_p):
        raise MatchError(
            f"cannot pair the stateful layers {where}: {len(seg_t)} in torch ({_few(seg_t)}) vs "
            f"{len(seg_p)} in Paddle ({_few(seg_p)})")
    for a, b in zip(seg_t, seg_p):
        problem = _entry_map(t.layers[a], p.layers[b])[0]
        if problem is not None:
            raise MatchError(f"torch layer {a!r} and Paddle layer {b!r} run at the same place "
                             f"({where}) but {problem}")
    return list(zip(seg_t, seg_p))


def _stateful_pairs(t: _Side, p: _Side, notes: List[str]) -> List[Tuple[str, str, str]]:
    """``(torch, paddle, how)`` for every stateful layer; MatchError if any is left over."""
    ts = [path for path in t.calls if t.layers[path].entries]
    ps = [path for path in p.calls if p.layers[path].entries]
    t_index = {path: i for i, path in enumerate(ts)}
    p_index = {path: i for i, path in enumerate(ps)}
    out: List[Tuple[str, str, str]] = []
    start_t = start_p = 0
    last: Optional[str] = None
    for a, b in _name_anchors(t, p, ts, ps, notes):
        i, j = t_index[a], p_index[b]
        out += [(x, y, "order") for x, y in _pair_segment(t, p, ts[start_t:i], ps[start_p:j], last)]
        out.append((a, b, "name"))
        start_t, start_p, last = i + 1, j + 1, a
    out += [(x, y, "order") for x, y in _pair_segment(t, p, ts[start_t:], ps[start_p:], last)]
    return out + _uncalled_pairs(t, p, notes)


def _uncalled_pairs(t: _Side, p: _Side, notes: List[str]) -> List[Tuple[str, str, str]]:
    """Stateful layers the example run never reached: paired by name only, else MatchError."""
    lost_t = [k for k, v in t.layers.items() if v.entries and v.order is None]
    lost_p = {k for k, v in p.layers.items() if v.entries and v.order is None}
    pairs = [(k, k, "name") for k in lost_t if k in lost_p
             and _entry_map(t.layers[k], p.layers[k])[0] is None]
    left_t = [k for k in lost_t if (k, k, "name") not in pairs]
    left_p = sorted(lost_p - {k for k, _, _ in pairs})
    if left_t or left_p:
        raise MatchError("stateful layers never called at the example input and not paired by "
                         f"name: torch {_few(left_t)}; Paddle {_few(left_p)} (their weights have "
                         "no place on the other side: build both models with or without them)")
    if pairs:
        notes.append(f"{len(pairs)} stateful layers never called at the example input, paired by name")
    return pairs


# ------------------------------------------------------------------------------------------------
# parameter-free modules and containers


def _gaps(side: _Side) -> Dict[int, Dict[str, List[str]]]:
    """Called parameter-free leaf modules grouped by the number of stateful layers run before them,
    then by kind, in call order."""
    out: Dict[int, Dict[str, List[str]]] = {}
    done = 0
    for path in side.calls:
        layer = side.layers[path]
        if layer.entries:
            done += 1
        elif not layer.has_children:
            out.setdefault(done, {}).setdefault(layer.kind, []).append(path)
    return out


def _param_free_pairs(t: _Side, p: _Side, notes: List[str]) -> List[Tuple[str, str]]:
    """Parameter-free modules of one kind between the same two stateful layers, paired in order
    where the kind occurs equally often on both sides there."""
    gaps_t, gaps_p = _gaps(t), _gaps(p)
    out: List[Tuple[str, str]] = []
    for gap in sorted(set(gaps_t) & set(gaps_p)):
        pairs: List[Tuple[str, str]] = []
        for kind in sorted(set(gaps_t[gap]) & set(gaps_p[gap])):
            a, b = gaps_t[gap][kind], gaps_p[gap][kind]
            if len(a) == len(b):
                pairs += zip(a, b)
            else:
                notes.append(f"{kind}: {len(a)} module(s) in torch ({_few(a)}) vs {len(b)} in "
                             f"Paddle ({_few(b)}) at the same place: left unmatched")
        pairs.sort(key=lambda ab: t.layers[ab[0]].order or 0)
        seq = [p.layers[b].order or 0 for _, b in pairs]
        if any(y <= x for x, y in zip(seq, seq[1:])):
            notes.append(f"parameter-free modules {_few([a for a, _ in pairs])} run in a different "
                         "order on the two sides: left unmatched")
            continue
        out += pairs
    return out


def _signatures(side: _Side, matched: Sequence[str], rename: Mapping[str, str]
                ) -> Dict[FrozenSet[str], List[str]]:
    """Called containers (not the root) by the set of matched layers inside them (in Paddle's
    names), outermost first."""
    out: Dict[FrozenSet[str], List[str]] = {}
    for path in side.calls:
        layer = side.layers[path]
        if not path or layer.entries or not layer.has_children:
            continue
        inside = frozenset(rename.get(m, m) for m in matched if m.startswith(path + "."))
        if inside:
            out.setdefault(inside, []).append(path)
    for paths in out.values():
        paths.sort(key=lambda q: (q.count("."), side.layers[q].order or 0))
    return out


def _container_pairs(t: _Side, p: _Side, matched: Sequence[Tuple[str, str]]
                     ) -> List[Tuple[str, str]]:
    """Containers around exactly the same matched layers, paired outermost with outermost."""
    rename = dict(matched)
    sig_t = _signatures(t, [a for a, _ in matched], rename)
    sig_p = _signatures(p, [b for _, b in matched], {})
    out: List[Tuple[str, str]] = []
    for sig, paths in sig_t.items():
        out += zip(paths, sig_p.get(sig, []))
    return out


# ------------------------------------------------------------------------------------------------
# assembling a matching


def _shared_kind(t: _Layer, p: _Layer, container: bool) -> str:
    if t.kind == p.kind:
        return t.kind
    if container:
        return "container"
    return p.kind if t.kind in RULE_FAMILIES.values() else t.kind  # the rank-specific one


def _derive_keys(t_layers: Mapping[str, _Layer], p_layers: Mapping[str, _Layer],
                 pairs: Sequence[Tuple[str, str]]
                 ) -> Tuple[Dict[str, str], FrozenSet[str], Tuple[str, ...]]:
    """torch key -> Paddle key, the transposed torch keys, the dropped torch keys."""
    keys: Dict[str, str] = {}
    transposed: List[str] = []
    dropped: List[str] = []
    for a, b in pairs:
        problem, leaves = _entry_map(t_layers[a], p_layers[b])
        if problem is not None:
            raise MatchError(f"torch layer {a!r} and Paddle layer {b!r}: {problem}")
        for leaf, (target, action) in leaves.items():
            src = f"{a}.{leaf}" if a else leaf
            if action == "drop":
                dropped.append(src)
                continue
            keys[src] = f"{b}.{target}" if b else str(target)
            if action == "transpose":
                transposed.append(src)
    return keys, frozenset(transposed), tuple(dropped)


def _assemble(t_layers: Mapping[str, _Layer], p_layers: Mapping[str, _Layer],
              pairs: Sequence[Tuple[str, str, str]], notes: Sequence[str]) -> Matching:
    layers = [LayerMatch(a, b, _shared_kind(t_layers[a], p_layers[b], t_layers[a].has_children
                                            and not t_layers[a].entries),
                         how, bool(t_layers[a].entries)) for a, b, how in pairs]
    keys, transposed, dropped = _derive_keys(
        t_layers, p_layers, [(m.torch, m.paddle) for m in layers if m.has_params])
    used_t = {m.torch for m in layers}
    used_p = {m.paddle for m in layers}
    return Matching(layers, keys, transposed, dropped,
                    tuple(k for k in t_layers if k and k not in used_t),
                    tuple(k for k in p_layers if k and k not in used_p), tuple(notes))


def match_models(torch_model: Any, paddle_model: Any, example_input: np.ndarray) -> Matching:
    """Pair the layers of ``torch_model`` (``torch.nn.Module``) and ``paddle_model``
    (``paddle.nn.Layer``): by name, else by execution order at ``example_input`` (one eval-mode run
    each side, modes restored), checked by kind and shapes. Raises :class:`MatchError`."""
    x = np.asarray(example_input)
    t, p = _side(_TORCH, torch_model, x), _side(_PADDLE, paddle_model, x)
    notes: List[str] = []
    stateful = _stateful_pairs(t, p, notes)
    free = _param_free_pairs(t, p, notes)
    containers = _container_pairs(t, p, [(a, b) for a, b, _ in stateful] + free)
    pairs = stateful + [(a, b, "order") for a, b in free] + [(a, b, "structure")
                                                           for a, b in containers]
    big = len(t.calls) + 1
    pairs.sort(key=lambda abh: t.layers[abh[0]].order if t.layers[abh[0]].order is not None else big)
    return _assemble(t.layers, p.layers, pairs, notes)


# ------------------------------------------------------------------------------------------------
# --map files (JSON or YAML)


_YAML_SUFFIXES = (".yaml", ".yml")


def _is_yaml(path: "os.PathLike[str] | str") -> bool:
    return os.fspath(path).lower().endswith(_YAML_SUFFIXES)


def save_matching(matching: Matching, path: "os.PathLike[str] | str") -> None:
    """Write ``matching`` atomically: YAML for a ``.yaml``/``.yml`` path, else JSON."""
    if _is_yaml(path):
        import yaml

        text = yaml.safe_dump(matching.to_json(), sort_keys=False, width=100)
    else:
        text = json.dumps(matching.to_json(), indent=1) + "\n"
    atomic_write_text(path, text)


def load_matching(path: "os.PathLike[str] | str", torch_model: Any, paddle_model: Any) -> Matching:
    """Read a (possibly edited) matching, JSON or YAML (by suffix), and check it against both models:
    every path exists, every stateful layer of each side is paired exactly once, with agreeing kinds
    and shapes. The key map is re-derived from the layer pairs (a ``keys`` section that disagrees
    is an error). Layers come back as ``how='file'``. Raises :class:`MatchError` naming the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) if _is_yaml(path) else json.load(f)
        stored = Matching.from_json(data)
        return _validated(stored, _layers(_TORCH, torch_model), _layers(_PADDLE, paddle_model))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        problem = getattr(e, "strerror", None) or " ".join(str(e).split())
        raise MatchError(f"{os.fspath(path)}: cannot read a matching: {problem[:200]}") from None
    except MatchError as e:
        raise MatchError(f"{os.fspath(path)}: {e}") from None


def _validated(stored: Matching, t_layers: Mapping[str, _Layer], p_layers: Mapping[str, _Layer]
               ) -> Matching:
    for m in stored.layers:
        if m.torch not in t_layers:
            raise MatchError(f"layer {m.torch!r} is not in the torch model")
        if m.paddle not in p_layers:
            raise MatchError(f"layer {m.paddle!r} is not in the Paddle model")
    for side, layers, names in (("torch", t_layers, [m.torch for m in stored.layers]),
                                ("Paddle", p_layers, [m.paddle for m in stored.layers])):
        twice = sorted({n for n in names if names.count(n) > 1})
        missing = [k for k, v in layers.items() if v.entries and k not in names]
        if twice or missing:
            raise MatchError(f"{side} layers paired twice: {_few(twice)}; "
                             f"stateful {side} layers not paired: {_few(missing)}")
    pairs = [(m.torch, m.paddle, "file") for m in stored.layers]
    out = _assemble(t_layers, p_layers, pairs, stored.notes)
    if stored.keys and stored.keys != out.keys:
        bad = sorted(k for k in set(stored.keys) | set(out.keys)
                     if stored.keys.get(k) != out.keys.get(k))
        raise MatchError(f"'keys' disagree with the layer pairs at {_few(bad)} "
                         "(delete 'keys' to re-derive them)")
    return out


# ------------------------------------------------------------------------------------------------
# state dicts through a matching


def _convert(source: Mapping[str, Any], keys: Mapping[str, str], transposed: FrozenSet[str],
             ignorable: Sequence[str], target: Mapping[str, Tuple[Tuple[int, ...], str]],
             fill: Mapping[str, Optional[int]]) -> Dict[str, np.ndarray]:
    """Map ``source`` onto ``target`` (key -> (shape, dtype)) through ``keys``; ``fill``: target keys
    set to a recorded value, or zero if None (torch's counters). RuleError lists every
    missing/unexpected/mis-shaped entry."""
    rep, extra, out = KeyReport(), [], {}
    for src, dst in keys.items():
        if dst not in target:
            extra.append(f"the matching maps {src} to {dst}, which the target model lacks")
        elif src not in source:
            rep.missing.append(src)
        else:
            value = np.asarray(source[src])
            shape, dtype = target[dst]
            want = shape[::-1] if src in transposed else shape
            if tuple(value.shape) != want:
                rep.mismatched.append((src, want, tuple(value.shape)))
            elif value.dtype.name != dtype:
                extra.append(f"{src} is {value.dtype.name}, {dst} expects {dtype}")
            else:
                out[dst] = np.ascontiguousarray(value.T) if src in transposed else value
                rep.matched += 1
    rep.unexpected += [k for k in source if k not in keys and k not in ignorable]
    for dst, value in fill.items():
        out[dst] = np.full(target[dst][0], value or 0, dtype=target[dst][1])
    lost = [k for k in target if k not in out and k not in set(keys.values())]
    if lost:
        extra.append(f"target keys no source maps to: {_few(lost)}")
    if not rep.ok or extra:
        raise RuleError(rep, extra[:_SHOW])
    return {k: out[k] for k in target}  # in the target model's order


def torch_to_paddle_state(torch_state: Mapping[str, Any], matching: Matching, paddle_model: Any
                          ) -> Dict[str, np.ndarray]:
    """A torch state dict (numpy values) as ``paddle_model``'s state dict, through ``matching``
    (BN buffer names, Linear transpose, ``num_batches_tracked`` dropped). Raises RuleError."""
    target = {k: (tuple(int(s) for s in v.shape), str(v.dtype).replace("paddle.", ""))
              for k, v in paddle_model.state_dict().items()}
    return _convert(torch_state, matching.keys, matching.transposed, matching.dropped, target, {})


def paddle_to_torch_state(paddle_state: Mapping[str, Any], matching: Matching, torch_model: Any,
                          counters: Optional[Mapping[str, int]] = None) -> Dict[str, np.ndarray]:
    """The way back: a Paddle state dict as ``torch_model``'s; the entries a rule dropped (torch's
    ``num_batches_tracked``) come back from ``counters`` (torch key -> value), else as 0."""
    target = {k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
              for k, v in torch_model.state_dict().items()}
    back = {v: k for k, v in matching.keys.items()}
    flipped = frozenset(matching.keys[k] for k in matching.transposed)
    recorded = dict(counters or {})
    return _convert(paddle_state, back, flipped, (), target,
                    {k: recorded.get(k) for k in matching.dropped if k in target})
