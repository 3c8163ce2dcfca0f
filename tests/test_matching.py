"""converters.matching: the torchvision <-> paddle.vision zoo paired with no hand-written table, and
every way a pairing can be refused (never a silent guess).

The models keep their default random initialisation: matching looks at structure, kinds, shapes and
execution order, never at values.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Dict, Tuple

import numpy as np
import paddle
import paddle.vision.models as pvm
import pytest
import torch
import torchvision.models as tvm

from converters.matching import (MATCHING_FORMAT, LayerMatch, Matching, MatchError,
                                 load_matching, match_models, paddle_to_torch_state,
                                 save_matching, torch_to_paddle_state)

pytestmark = pytest.mark.paddle

#: torchvision/paddle.vision constructor name -> (how its stateful layers are expected to be paired,
#: example input side). Names coincide (BN buffers and the Linear layout aside) for resnet18,
#: mobilenet_v2 and vgg11; mobilenet_v3_large shares 2 layer paths (the classifier's Linears) out of
#: 110; the others share none. paddle.vision's AlexNet has no adaptive pooling: 224 px only.
ZOO: Dict[str, Tuple[frozenset, int]] = {
    "resnet18": (frozenset({"name"}), 64),
    "mobilenet_v2": (frozenset({"name"}), 64),
    "mobilenet_v3_large": (frozenset({"name", "order"}), 64),
    "shufflenet_v2_x1_0": (frozenset({"order"}), 64),
    "vgg11": (frozenset({"name"}), 32),
    "densenet121": (frozenset({"order"}), 32),
    "squeezenet1_1": (frozenset({"order"}), 64),
    "alexnet": (frozenset({"order"}), 224),
}


def _example(size: int) -> np.ndarray:
    return np.random.RandomState(0).standard_normal((1, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def zoo_match():
    """Build and match a zoo pair once per module: ``zoo_match(name) -> (torch, paddle, Matching)``."""
    cache: Dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            t, p = getattr(tvm, name)(), getattr(pvm, name)()
            cache[name] = (t, p, match_models(t, p, _example(ZOO[name][1])))
        return cache[name]
    return get


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_pair_is_matched_completely(name, zoo_match):
    t, p, m = zoo_match(name)
    stateful = [x for x in m.layers if x.has_params]
    assert {x.how for x in stateful} == ZOO[name][0]
    # every torch state entry is mapped or dropped by a rule, every Paddle entry is reached once
    assert set(m.keys) | set(m.dropped) == set(t.state_dict())
    assert sorted(m.keys.values()) == sorted(p.state_dict())
    assert all(k.endswith("num_batches_tracked") for k in m.dropped)
    assert all(t.get_submodule(k.rpartition(".")[0]).__class__.__name__ == "Linear"
               for k in m.transposed)
    # parameter-free modules and containers are paired too (paddle.vision's AlexNet has no container
    # around the same layers as torchvision's), in torch execution order
    assert any(not x.has_params and x.how == "order" for x in m.layers)
    assert any(x.how == "structure" for x in m.layers) == (name != "alexnet")
    paths = [x.torch for x in m.layers]
    assert len(paths) == len(set(paths)) and len({x.paddle for x in m.layers}) == len(paths)


@pytest.mark.parametrize("name", ["resnet18", "shufflenet_v2_x1_0"])
def test_weights_round_trip_through_the_matching(name, zoo_match):
    t, p, m = zoo_match(name)
    ts = {k: v.numpy() for k, v in t.state_dict().items()}
    ps = torch_to_paddle_state(ts, m, p)
    assert {k: v.shape for k, v in ps.items()} == {k: tuple(v.shape) for k, v in
                                                    p.state_dict().items()}
    back = paddle_to_torch_state(ps, m, t)
    for k, v in ts.items():
        want = np.zeros_like(v) if k in m.dropped else v  # torch's counters come back as 0
        np.testing.assert_array_equal(back[k], want, err_msg=k)


def test_matching_json_round_trip_and_edited_map(zoo_match, tmp_path):
    t, p, m = zoo_match("mobilenet_v3_large")
    assert Matching.from_json(json.loads(json.dumps(m.to_json()))) == m
    path = tmp_path / "map.json"
    save_matching(m, path)
    data = json.loads(path.read_text())
    assert data["format"] == MATCHING_FORMAT
    del data["keys"]  # an edited map may leave the key map out: it is re-derived
    path.write_text(json.dumps(data))
    loaded = load_matching(path, t, p)
    assert loaded.keys == m.keys and loaded.transposed == m.transposed
    assert {x.how for x in loaded.layers} == {"file"}


def test_matching_as_yaml(zoo_match, tmp_path):
    t, p, m = zoo_match("shufflenet_v2_x1_0")
    path = tmp_path / "map.yaml"
    save_matching(m, path)
    assert path.read_text().startswith("format: converters.matching/1")
    assert load_matching(path, t, p).keys == m.keys
    path.write_text("layers: [unclosed\n")
    with pytest.raises(MatchError, match="cannot read a matching"):
        load_matching(path, t, p)


def _edit(tmp_path, m: Matching, change) -> str:
    data = m.to_json()
    change(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return str(path)


def _swap_paddle(a: dict, b: dict) -> None:
    a["paddle"], b["paddle"] = b["paddle"], a["paddle"]


def _first_stateful(data, kind: str) -> dict:
    return next(e for e in data["layers"] if e["has_params"] and e["kind"] == kind)


@pytest.mark.parametrize("edit, message", [
    (lambda d: _first_stateful(d, "conv2d").update(paddle="no.such.layer"),
     "'no.such.layer' is not in the Paddle model"),
    (lambda d: _first_stateful(d, "conv2d").update(torch="features.99"),
     "'features.99' is not in the torch model"),
    # swap the Paddle sides of the first conv and the first BN: kinds disagree
    (lambda d: _swap_paddle(*[e for e in d["layers"] if e["has_params"]][:2]), "kinds differ"),
    (lambda d: d["layers"].remove(_first_stateful(d, "batchnorm2d")), "not paired"),
    (lambda d: d.update(format="something/0"), "not a layer matching"),
    (lambda d: d["layers"][0].update(how="guess"), "'how' must be one of"),
    (lambda d: d["keys"].update({next(iter(d["keys"])): "x.weight"}), "'keys' disagree"),
])
def test_edited_map_is_validated(zoo_match, tmp_path, edit, message):
    t, p, m = zoo_match("mobilenet_v3_large")
    path = _edit(tmp_path, m, edit)
    with pytest.raises(MatchError, match=message) as e:
        load_matching(path, t, p)
    assert str(e.value).startswith(path) and "\n" not in str(e.value)


def test_a_wrong_shape_in_an_edited_map_is_refused(zoo_match, tmp_path):
    t, p, m = zoo_match("resnet18")
    # conv1 (64x3x7x7) and layer1.0.conv1 (64x64x3x3) swapped
    swap = (lambda d: _swap_paddle(*[e for e in d["layers"] if e["kind"] == "conv2d"][:2]))
    with pytest.raises(MatchError, match=r"entries differ.*\[64, 3, 7, 7\]"):
        load_matching(_edit(tmp_path, m, swap), t, p)


@pytest.mark.parametrize("torch_name, paddle_ctor, message", [
    ("resnet18", lambda: pvm.resnet34(), "cannot pair the stateful layers"),
    ("resnet18", lambda: pvm.resnet18(num_classes=10), r"'fc'.*entries differ"),
    ("mobilenet_v2", lambda: pvm.mobilenet_v2(scale=0.5), "entries differ"),
    ("vgg11", lambda: pvm.resnet18(), "cannot pair|entries differ|kinds differ"),
])
def test_models_that_cannot_be_matched(torch_name, paddle_ctor, message):
    with pytest.raises(MatchError, match=message) as e:
        match_models(getattr(tvm, torch_name)(), paddle_ctor(), _example(32))
    assert "\n" not in str(e.value)


def test_a_model_failing_on_the_example_input_is_a_match_error():
    with pytest.raises(MatchError, match="Paddle model fails on an example input"):
        match_models(tvm.alexnet(), pvm.alexnet(), _example(64))  # paddle's AlexNet: 224 only


# --- small synthetic pairs: coincidental names, ambiguous parameter-free modules ----------------

class _Swapped(paddle.nn.Layer):
    """Paddle twin of a torch Sequential(x: Linear, y: Linear) whose *names* are swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.y = paddle.nn.Linear(4, 4)
        self.x = paddle.nn.Linear(4, 4)

    def forward(self, v):
        return self.x(self.y(v))  # runs y first: y is torch's x


def _torch_xy():
    return torch.nn.Sequential(OrderedDict(x=torch.nn.Linear(4, 4), y=torch.nn.Linear(4, 4)))


def test_coincidental_names_out_of_order_are_not_trusted():
    m = match_models(_torch_xy(), _Swapped(), np.ones((1, 4), np.float32))
    pairs = {(x.torch, x.paddle, x.how) for x in m.layers}
    assert pairs == {("x", "y", "order"), ("y", "x", "order")}
    assert any("different order" in n for n in m.notes)


def test_parameter_free_modules_are_paired_only_when_unambiguous():
    t = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.ReLU(),
                            torch.nn.Linear(4, 4), torch.nn.Dropout(), torch.nn.Linear(4, 2))
    p = paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.ReLU(), paddle.nn.Linear(4, 4),
                             paddle.nn.Dropout(), paddle.nn.Linear(4, 2))
    m = match_models(t, p, np.ones((1, 4), np.float32))
    free = {(x.torch, x.paddle) for x in m.layers if not x.has_params}
    assert free == {("4", "3")}  # the dropouts; two torch ReLUs vs one Paddle ReLU: no guess
    assert {"1", "2"} <= set(m.unmatched_torch) and "1" in m.unmatched_paddle
    assert any("relu: 2 module(s) in torch" in n for n in m.notes)


def _with_aux(base: type, linear: type) -> type:
    """A net with an auxiliary head (as torchvision's Inception v3) that eval mode never calls, on
    ``base`` (``torch.nn.Module`` or ``paddle.nn.Layer``) with that framework's ``linear``."""

    class WithAux(base):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.aux = linear(4, 4), linear(4, 2)

        def forward(self, v):
            return self.aux(self.body(v)) if self.training else self.body(v)

    return WithAux


_TorchWithAux = _with_aux(torch.nn.Module, torch.nn.Linear)
_PaddleWithAux = _with_aux(paddle.nn.Layer, paddle.nn.Linear)


def test_layers_never_called_pair_by_name_or_are_refused():
    p = paddle.nn.Sequential(("body", paddle.nn.Linear(4, 4)))
    with pytest.raises(MatchError, match="never called at the example input.*torch 'aux'"):
        match_models(_TorchWithAux(), p, np.ones((1, 4), np.float32))
    m = match_models(_TorchWithAux(), _PaddleWithAux(), np.ones((1, 4), np.float32))
    assert ("aux", "aux", "name") in {(x.torch, x.paddle, x.how) for x in m.layers}


def test_layer_match_is_the_contract_interface():
    x = LayerMatch("a", "b", "conv2d", "order", True)
    assert (x.torch, x.paddle, x.kind, x.how, x.has_params) == ("a", "b", "conv2d", "order", True)


def test_cream_pair_matches_by_name_through_the_shared_rules():
    """The flagship pair: every stateful layer paired by name, keys exactly the Cream rules' map."""
    import cream_paddle
    from cream_core.rules import apply_rules, paddle_layout
    from cream_torch_ref import create_model

    t, p = create_model("cream-14"), cream_paddle.create_model("cream-14")
    m = match_models(t, p, _example(64))
    assert {x.how for x in m.layers if x.has_params} == {"name"}
    ts = {k: v.numpy() for k, v in t.state_dict().items()}
    by_rules = apply_rules(ts, paddle_layout(p), to="paddle").state_dict
    by_matching = torch_to_paddle_state(ts, m, p)
    assert by_matching.keys() == by_rules.keys()
    for k, v in by_rules.items():
        np.testing.assert_array_equal(by_matching[k], v, err_msg=k)
