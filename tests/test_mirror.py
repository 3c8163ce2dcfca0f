"""``cream_paddle`` mirrors ``cream_torch_ref``: files, public names, signatures, layer trees, keys.

Differences that are not mere framework spelling are declared below with the reason; anything else
that differs fails.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle  # noqa: F401

import cream_paddle
import cream_torch_ref
from cream_core.arch import child_arch_def, child_spec, plan_network
from cream_core.rules import apply_rules, paddle_layout, torch_layout

pytestmark = pytest.mark.paddle

TORCH_DIR = Path(cream_torch_ref.__file__).parent
PADDLE_DIR = Path(cream_paddle.__file__).parent

#: Files that exist on one side only, and why.
PADDLE_ONLY_FILES: Dict[str, str] = {
    "compat.py": "the one place for framework differences; torch is the reference, needs none",
    "second_order.py": "double-grad formulations for ops Paddle 3.3 CPU has no double-grad kernel "
                       "for; torch differentiates them twice natively",
}
TORCH_ONLY_FILES: Dict[str, str] = {}

#: Public names (``__all__``) that exist on one side only, per module, and why.
TORCH_ONLY_NAMES: Dict[str, Dict[str, str]] = {
    "checkpoint": {
        "CfgNodeStandIn": "inert stand-in for the yacs args pickled in official .pth.tar files",
        "NamespaceStandIn": "inert stand-in for argparse args pickled in .pth.tar files",
        "save_official_checkpoint": "writes the official (torch) training checkpoint layout",
    },
    "models": {"seeded_official_checkpoint": "seeded checkpoints are made in the official format"},
    "": {"save_official_checkpoint": "see checkpoint",
         "seeded_official_checkpoint": "see models"},
}
PADDLE_ONLY_NAMES: Dict[str, Dict[str, str]] = {
    "checkpoint": {"PADDLE_META_KEY": "name-map entry paddle.save adds to a Layer state dict",
                   "save_checkpoint": "writes .pdparams (torch's twin writes the official layout)"},
    "": {"save_checkpoint": "see checkpoint"},
    "evaluate": {"AUTO_MODE": "Paddle speed path (to_static / Paddle Inference), no torch analogue",
                 "AUTO_COMPILE_MIN_IMAGES": "see AUTO_MODE",
                 "INFERENCE_ONEDNN": "see AUTO_MODE"},
    "optim": {"CreamLRScheduler": "Paddle optimizers take an LRScheduler object; torch's twin steps "
                                  "timm's scheduler, which has no Paddle counterpart"},
}

#: Shared names whose signatures follow each framework's own API, and why.
SIGNATURE_DIFFERENCES: Dict[str, str] = {
    "optim.RMSpropTF": "torch's twin is timm's class as the official retrain used it (params=...); "
                       "Paddle's follows Paddle's Optimizer API (parameters=..., grad_clip, name)",
    "optim.create_retrain_scheduler": "Paddle's scheduler is built before/without an optimizer "
                                      "(it owns the lr), so it also takes lr=; torch reads it from "
                                      "the optimizer",
}

#: torch layer class -> its Paddle twin, where the framework spells the name differently.
LEAF_CLASS_MAP: Dict[str, str] = {
    "Conv2d": "Conv2D",
    "SiLU": "Silu",
    "AdaptiveAvgPool2d": "AdaptiveAvgPool2D",
    "AdaptiveMaxPool2d": "AdaptiveMaxPool2D",
    "BatchNorm2d": "BatchNorm2D",
}


def _py_files(d: Path) -> List[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def _modules() -> List[str]:
    """Module stems present on both sides ('' is the package itself)."""
    both = set(_py_files(TORCH_DIR)) & set(_py_files(PADDLE_DIR))
    return sorted("" if f == "__init__.py" else f[:-3].replace("/", ".") for f in both)


def _import(pkg: str, stem: str) -> Any:
    return importlib.import_module(pkg if not stem else f"{pkg}.{stem}")


def test_same_files() -> None:
    t, p = set(_py_files(TORCH_DIR)), set(_py_files(PADDLE_DIR))
    assert sorted(t - p - set(TORCH_ONLY_FILES)) == [], "torch files without a Paddle twin"
    assert sorted(p - t - set(PADDLE_ONLY_FILES)) == [], "Paddle files without a torch twin"
    for f in list(PADDLE_ONLY_FILES) + list(TORCH_ONLY_FILES):
        assert (f in p) != (f in t), f"declared one-sided file {f} is now on both or neither side"


@pytest.mark.parametrize("stem", _modules())
def test_same_public_names(stem: str) -> None:
    tm, pm = _import("cream_torch_ref", stem), _import("cream_paddle", stem)
    t, p = set(getattr(tm, "__all__", ())), set(getattr(pm, "__all__", ()))
    assert t and p, f"{stem or '__init__'} needs __all__ on both sides"
    t_only, p_only = TORCH_ONLY_NAMES.get(stem, {}), PADDLE_ONLY_NAMES.get(stem, {})
    assert sorted(t - p - set(t_only)) == [], "public torch names without a Paddle twin"
    assert sorted(p - t - set(p_only)) == [], "public Paddle names without a torch twin"
    assert set(t_only) <= t and set(p_only) <= p, "stale declared exception"


def _default(v: Any) -> Any:
    if v is inspect.Parameter.empty:
        return "<required>"
    if inspect.isclass(v):
        return LEAF_CLASS_MAP.get(v.__name__, v.__name__)
    if callable(v):
        return getattr(v, "__name__", repr(v))
    return v


def _sig(obj: Any) -> List[Tuple[str, str, Any]]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(obj):
        params = params[1:]  # self
    return [(q.name, str(q.kind), _default(q.default)) for q in params]


@pytest.mark.parametrize("stem", _modules())
def test_same_signatures(stem: str) -> None:
    """Constructor arguments of every shared public class, arguments of every shared function."""
    tm, pm = _import("cream_torch_ref", stem), _import("cream_paddle", stem)
    shared = sorted(set(tm.__all__) & set(pm.__all__))
    checked = 0
    for name in shared:
        t, p = getattr(tm, name), getattr(pm, name)
        if not (inspect.isclass(t) or inspect.isfunction(t)) or isinstance(t, type(ValueError)) \
                and issubclass(t, BaseException):
            continue
        if f"{stem}.{name}" in SIGNATURE_DIFFERENCES:
            continue
        assert _sig(t) == _sig(p), f"{stem}.{name}"
        checked += 1
    if stem in ("blocks", "builder", "childnet", "models"):
        assert checked > 0


def test_childnet_methods_mirror() -> None:
    from cream_paddle.childnet import ChildNet as P
    from cream_torch_ref.childnet import ChildNet as T

    for m in ("forward", "forward_features", "forward_head", "get_classifier", "reset_classifier"):
        assert callable(getattr(T, m)) and callable(getattr(P, m)), m
        if m != "forward":
            assert [q for q in inspect.signature(getattr(T, m)).parameters] == \
                   [q for q in inspect.signature(getattr(P, m)).parameters], m


def _torch_tree(model: Any) -> List[Tuple[str, str]]:
    return [(n, LEAF_CLASS_MAP.get(type(m).__name__, type(m).__name__))
            for n, m in model.named_modules()]


def _paddle_tree(model: Any) -> List[Tuple[str, str]]:
    return [(n, type(m).__name__) for n, m in model.named_sublayers(include_self=True)]


@pytest.mark.parametrize("name", cream_torch_ref.list_models())
def test_layer_tree_and_keys_mirror(name: str) -> None:
    tm = cream_torch_ref.create_model(name)
    pm = cream_paddle.create_model(name)
    assert _paddle_tree(pm) == _torch_tree(tm)
    gates = [m for _, m in pm.named_sublayers() if type(m).__name__ == "Hardsigmoid"]
    assert gates and all(type(g).__module__ == "cream_paddle.compat" for g in gates)
    # every conv is compat's Conv2D (Paddle's class name, plus the second-order option)
    convs = [m for _, m in pm.named_sublayers() if type(m).__name__ == "Conv2D"]
    assert convs and all(type(c) is cream_paddle.compat.Conv2D for c in convs)
    # state dicts are equal modulo the conversion rules, both ways, with no key left over
    tl, pl = torch_layout(tm), paddle_layout(pm)
    zt = {k: np.zeros(v.shape, dtype=v.dtype) for k, v in tl.items()}
    zp = {k: np.zeros(v.shape, dtype=v.dtype) for k, v in pl.items()}
    to_p = apply_rules(zt, pl, to="paddle")
    to_t = apply_rules(zp, tl, to="torch", fill=lambda k, t: np.zeros(t.shape, t.dtype))
    assert set(to_p.state_dict) == set(pl) and set(to_t.state_dict) == set(tl)
    assert set(to_p.dropped) == {k for k in tl if k.endswith("num_batches_tracked")}


def test_drop_path_placement_mirrors() -> None:
    tm = cream_torch_ref.create_model("cream-43", drop_path_rate=0.2, drop_rate=0.2)
    pm = cream_paddle.create_model("cream-43", drop_path_rate=0.2, drop_rate=0.2)
    assert _paddle_tree(pm) == _torch_tree(tm)
    t = {n: m.drop_prob for n, m in tm.named_modules() if type(m).__name__ == "DropPath"}
    p = {n: m.drop_prob for n, m in pm.named_sublayers() if type(m).__name__ == "DropPath"}
    assert t and t.keys() == p.keys()
    assert all(abs(t[k] - p[k]) < 1e-12 for k in t)
    assert pm.drop_rate == tm.drop_rate == 0.2


@pytest.mark.parametrize("name", ["cream-14", "cream-604"])
def test_plan_builders_match_timm(name: str) -> None:
    """Blocks built from the framework-free plan equal timm's own builder (torch) and the Paddle trunk."""
    from cream_paddle.builder import build_blocks as pbuild
    from cream_torch_ref.builder import build_blocks as tbuild

    plan = plan_network(child_arch_def(child_spec(name).arch_list))
    timm_trunk = cream_torch_ref.create_model(name).blocks
    ours = tbuild(plan)
    assert _torch_tree(ours) == _torch_tree(timm_trunk)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in timm_trunk.state_dict().items()}
    assert _paddle_tree(pbuild(plan)) == _torch_tree(timm_trunk)


def test_unsupported_options_refused() -> None:
    from cream_paddle import blocks

    with pytest.raises(ValueError, match="s2d"):
        blocks.InvertedResidual(8, 8, s2d=1)
    with pytest.raises(ValueError, match="aa_layer"):
        blocks.ConvBnAct(8, 8, 3, aa_layer="avg")
    with pytest.raises(ValueError, match="track_running_stats"):
        blocks.BatchNormAct2d(8, track_running_stats=False)
    with pytest.raises(ValueError, match="pool_type"):
        blocks.SelectAdaptivePool2d(pool_type="catavgmax")
