"""Optimizers and LR schedules: the Paddle twins step exactly like the torch/timm originals."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np
import paddle
import pytest
import torch

from cream_core.training.schedules import (CosineSchedule, StepSchedule, SupernetLinearSchedule,
                                  schedule_values, supernet_iters)
from cream_paddle import optim as P
from cream_torch_ref import optim as T

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "parity", "golden", "lr_timm0120.json")


class _TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class _PaddleNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(4, momentum=0.9)
        self.fc = paddle.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(paddle.nn.functional.relu(self.bn(self.conv(x))).flatten(1))


def _pair(seed: int = 0) -> Tuple[_TorchNet, _PaddleNet]:
    rng = np.random.RandomState(seed)
    t, p = _TorchNet(), _PaddleNet()
    w = {"conv.weight": rng.randn(4, 3, 3, 3) * 0.3, "bn.weight": rng.uniform(0.5, 1.5, 4),
         "bn.bias": rng.randn(4) * 0.1, "fc.weight": rng.randn(5, 64) * 0.1,
         "fc.bias": rng.randn(5) * 0.1}
    w = {k: v.astype("float32") for k, v in w.items()}
    t.load_state_dict({k: torch.tensor(v) for k, v in w.items()}, strict=False)
    p.set_state_dict({k: paddle.to_tensor(v.T if k == "fc.weight" else v) for k, v in w.items()})
    return t, p


def _params(t: _TorchNet, p: _PaddleNet) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    pd = dict(p.named_parameters())
    out = []
    for k, v in t.named_parameters():
        pv = pd[k].numpy()
        out.append((k, v.detach().numpy(), pv.T if k == "fc.weight" else pv))
    return out


def _train(kind: str, steps: int = 4
           ) -> Tuple[List[Tuple[str, np.ndarray, np.ndarray]], List, List]:
    t, p = _pair()
    rng = np.random.RandomState(1)
    if kind == "sgd":
        to, po = T.create_search_optimizer(t, lr=0.5), P.create_search_optimizer(p, lr=0.5)
        ts = T.create_search_scheduler(to, lr=0.5, epochs=1, num_gpu=1, batch_size=200000)
        ps = P.create_search_scheduler(po, lr=0.5, epochs=1, num_gpu=1, batch_size=200000)
    else:
        to, po = T.create_retrain_optimizer(t), P.create_retrain_optimizer(p)
        ts, _ = T.create_retrain_scheduler(to, kind)
        ps, _ = P.create_retrain_scheduler(po, kind)
    tl, pl = [], []
    for step in range(steps):
        x = rng.randn(4, 3, 6, 6).astype("float32")
        y = rng.randint(0, 5, 4)
        tl.append(to.param_groups[0]["lr"])
        pl.append(po.get_lr())
        loss_t = torch.nn.functional.cross_entropy(t(torch.tensor(x)), torch.tensor(y))
        to.zero_grad()
        loss_t.backward()
        to.step()
        loss_p = paddle.nn.functional.cross_entropy(p(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss_p.backward()
        po.step()
        po.clear_grad()
        if kind == "sgd":
            ts.step()
            ps.step()
        else:
            ts.step(step + 1)
            ps.step(step + 1)
    return _params(t, p), tl, pl


@pytest.mark.paddle
@pytest.mark.parametrize("kind", ["sgd", "step", "cosine"])
def test_optimizer_steps_match(kind: str) -> None:
    params, tl, pl = _train(kind)
    np.testing.assert_allclose(pl, tl, rtol=1e-12)
    for name, a, b in params:
        scale = np.abs(a).max()
        assert np.abs(a - b).max() <= 1e-5 * scale, name


@pytest.mark.paddle
def test_rmsproptf_is_not_plain_paddle_rmsprop() -> None:
    """The mean-square start value matters: Paddle's own RMSProp (zeros) drifts from timm's."""
    t, p = _pair()
    to = T.create_retrain_optimizer(t, weight_decay=0.0)
    po = paddle.optimizer.RMSProp(0.064, rho=0.9, epsilon=1e-3, momentum=0.9,
                                  parameters=p.parameters())
    x = np.random.RandomState(2).randn(4, 3, 6, 6).astype("float32")
    y = np.array([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(t(torch.tensor(x)), torch.tensor(y)).backward()
    to.step()
    paddle.nn.functional.cross_entropy(p(paddle.to_tensor(x)), paddle.to_tensor(y)).backward()
    po.step()
    a, b = _params(t, p)[0][1:]
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


def test_weight_decay_groups_follow_official_filter() -> None:
    t, p = _pair()
    tg = T.param_groups_weight_decay(t, 1e-4, lr=1.0)
    pg = P.param_groups_weight_decay(p, 1e-4, lr=1.0)
    assert [len(g["params"]) for g in tg] == [len(g["params"]) for g in pg] == [3, 2]
    assert [g["weight_decay"] for g in tg] == [g["weight_decay"] for g in pg] == [0.0, 1e-4]


def test_schedules_match_timm_0_1_20_golden() -> None:
    """cream_core.training.schedules against values timm 0.1.20 produced (see parity/golden/README.md)."""
    with open(GOLDEN) as f:
        gold = json.load(f)
    n = len(gold["step"])
    assert schedule_values(StepSchedule(), n) == gold["step"]
    assert schedule_values(CosineSchedule(), n) == gold["cosine"]


@pytest.mark.parametrize("sched", ["step", "cosine"])
def test_torch_reference_scheduler_matches_timm_0_1_20(sched: str) -> None:
    with open(GOLDEN) as f:
        gold = json.load(f)[sched]
    t, _ = _pair()
    opt = T.create_retrain_optimizer(t)
    s, _ = T.create_retrain_scheduler(opt, sched)
    got = []
    for e in range(len(gold)):
        got.append(opt.param_groups[0]["lr"])
        s.step(e + 1)
    assert got == gold


def test_search_schedule_is_official_lambda() -> None:
    it = supernet_iters(120, 8, 128)
    assert it == 120 * 1280000 / 1024
    s = SupernetLinearSchedule(lr=1.0, iters=it)
    assert s.lr_at(0) == 1.0 and s.lr_at(int(it) + 1) == 0
    assert s.lr_at(1500) == pytest.approx(1.0 - 1500 / it, rel=0, abs=0)
