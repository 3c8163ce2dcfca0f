"""The one backend per framework: state in torch layout through the shared rules, collectives on
one process, nested numpy conversions; both twins give the same torch-layout state."""
from __future__ import annotations

import warnings
from typing import Any, Dict

import numpy as np
import pytest
import torch

from cream_core.arch.seeded import seeded_state
from cream_core.arch.supernet import plan_supernet
from cream_torch_ref.backend import Backend as TorchBackend
from cream_torch_ref.supernet import SuperNet as TorchSuperNet

pytestmark = [pytest.mark.paddle, pytest.mark.usefixtures("one_torch_thread")]

PLAN = plan_supernet((1, 1, 2, 1, 1))
FRAMEWORKS = ("torch", "paddle")


def _backend_and_model(framework: str) -> Any:
    if framework == "torch":
        return TorchBackend, TorchSuperNet(PLAN, num_classes=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cream_paddle.backend import Backend
        from cream_paddle.supernet import SuperNet
    return Backend, SuperNet(PLAN, num_classes=6)


@pytest.fixture(scope="module")
def torch_init() -> Dict[str, np.ndarray]:
    """Seeded supernet weights in torch's names and layouts."""
    ks = [(k, tuple(v.shape)) for k, v in TorchSuperNet(PLAN, num_classes=6).state_dict().items()]
    return {k: np.asarray(v).astype(np.int64 if "num_batches" in k else np.float32)
            for k, v in seeded_state(ks, seed=4).items()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_torch_state_round_trip(framework: str, torch_init: Dict[str, np.ndarray]) -> None:
    backend, model = _backend_and_model(framework)
    backend.load_torch_state(model, torch_init)
    got = backend.torch_state(model)
    expected = {k: v for k, v in torch_init.items()
                if framework == "torch" or not k.endswith("num_batches_tracked")}
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) for k in got)
    linear = "classifier.weight" if "classifier.weight" in got else None
    assert linear is not None and got[linear].shape == torch_init[linear].shape


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_named_round_trip_in_torch_layout(framework: str, torch_init: Dict[str, np.ndarray]) -> None:
    """Per-parameter arrays (gradients, momentum) leave in torch's layout and come back."""
    backend, model = _backend_and_model(framework)
    backend.load_torch_state(model, torch_init)
    named = backend.trainable(model)
    arrays = backend.named_to_torch(model, named)
    assert {k: v.shape for k, v in arrays.items()} == \
        {k: torch_init[k].shape for k in arrays}  # every name and shape is torch's
    assert all(np.array_equal(arrays[k], torch_init[k]) for k in arrays)
    back = backend.named_from_torch(model, arrays)
    assert all(np.array_equal(backend.to_numpy(back[n]), backend.to_numpy(p)) for n, p in named)


def test_paddle_wrong_layout_is_refused(torch_init: Dict[str, np.ndarray]) -> None:
    """A Linear weight in Paddle's layout where torch's is expected is a shape mismatch, by name."""
    from cream_core.rules import RuleError

    backend, model = _backend_and_model("paddle")
    bad = dict(torch_init)
    bad["classifier.weight"] = np.ascontiguousarray(bad["classifier.weight"].T)
    with pytest.raises(RuleError, match="classifier.weight"):
        backend.load_torch_state(model, bad)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_process_collectives_and_trees(framework: str) -> None:
    backend_cls, _ = _backend_and_model(framework)
    backend = backend_cls(distributed=False)
    assert (backend.rank, backend.world_size) == (0, 1)
    assert backend.mean_over_ranks(2.5) == 2.5
    assert backend.mean_floats([1.0, 2.0]) == [1.0, 2.0]
    t = backend.tensor(np.arange(3, dtype=np.float32))
    assert backend.mean_tensors([t])[0] is t and backend.mean_tensors([]) == []
    tree = {"a": [np.ones(2, np.float32), {"b": np.zeros((1, 2), np.float32)}], "n": 3}
    back = backend.tree_to_numpy(backend.tree_from_numpy(tree))
    assert back["n"] == 3 and np.array_equal(back["a"][1]["b"], tree["a"][1]["b"])
    assert backend.item(backend.tensor(np.array([4.0], np.float32))) == 4.0
    backend.barrier()


def test_twins_agree_on_torch_state(torch_init: Dict[str, np.ndarray]) -> None:
    """Both backends give the same torch-layout state for the same weights (Paddle minus the
    step counters it does not keep)."""
    tb, tm = _backend_and_model("torch")
    pb, pm = _backend_and_model("paddle")
    tb.load_torch_state(tm, torch_init)
    pb.load_torch_state(pm, torch_init)
    t, p = tb.torch_state(tm), pb.torch_state(pm)
    assert set(t) - set(p) == {k for k in t if k.endswith("num_batches_tracked")}
    assert all(np.array_equal(t[k], p[k]) for k in p)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_mean_tensors_over_ranks_refuses_mixed_dtypes(framework: str, monkeypatch) -> None:
    """The several-process path (all-reduce stubbed as a no-op, world size 2: each mean is half the
    input): one dtype gives new tensors, inputs untouched; mixed dtypes are refused in both
    frameworks (torch's concatenation would promote them, Paddle's raises)."""
    backend_cls, _ = _backend_and_model(framework)
    backend = backend_cls(distributed=False)
    monkeypatch.setattr(backend, "world_size", 2)
    monkeypatch.setattr(backend_cls, "_all_reduce", staticmethod(lambda tensor: None))
    a = backend.tensor(np.arange(4, dtype=np.float32).reshape(2, 2))
    b = backend.tensor(np.array(3.0, dtype=np.float32))
    out = backend.mean_tensors([a, b])
    assert out[0] is not a and np.array_equal(backend.to_numpy(out[0]), backend.to_numpy(a) / 2)
    assert float(backend.to_numpy(out[1])) == 1.5 and float(backend.to_numpy(b)) == 3.0
    with pytest.raises(ValueError, match="one dtype only"):
        backend.mean_tensors([a, backend.tensor(np.zeros(2, dtype=np.float64))])
