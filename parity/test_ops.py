"""Op-level checks of framework differences the parity harness relies on or found.

``tests/test_compat.py`` covers each helper of ``cream_paddle.compat`` in the forward direction; this
file adds what the harness needs beyond it: the training-mode BatchNorm must also run *backward*
(the harness's gradient and optimizer stages), and two reference quirks that set the size of named
fp64 choices are pinned here, so a torch/Paddle upgrade that removes them is noticed.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle

from cream_paddle.blocks import BatchNormAct2d  # noqa: E402

pytestmark = pytest.mark.paddle


def _x(shape, seed: int = 0) -> np.ndarray:  # noqa: ANN001
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def test_bn_train_mode_backward_matches_torch() -> None:
    """Gradients through a train-mode BatchNorm (batch statistics), and the statistics after it."""
    x = _x((4, 3, 5, 5)) * 2 + 0.5
    g = _x((4, 3, 5, 5), 1)
    tb = torch.nn.BatchNorm2d(3).train()
    pb = BatchNormAct2d(3, apply_act=False)
    pb.train()
    xt = torch.tensor(x, requires_grad=True)
    (tb(xt) * torch.tensor(g)).sum().backward()
    xp = paddle.to_tensor(x, stop_gradient=False)
    (pb(xp) * paddle.to_tensor(g)).sum().backward()  # must not fail: no in-place edit of saved stats
    np.testing.assert_allclose(xp.grad.numpy(), xt.grad.numpy(), atol=2e-6, rtol=0)
    np.testing.assert_allclose(pb.weight.grad.numpy(), tb.weight.grad.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(pb.bias.grad.numpy(), tb.bias.grad.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(pb._variance.numpy(), tb.running_var.numpy(), atol=1e-6, rtol=0)


def test_torch_fp64_hardsigmoid_backward_uses_a_float32_constant() -> None:
    """Why GRAD_FP64 is 1e-6, not 1e-9: torch's double backward multiplies by (float)1/6."""
    x = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.hardsigmoid(x).sum().backward()
    assert x.grad[0].item() == float(np.float32(1 / 6)) != 1 / 6
    xp = paddle.to_tensor(np.array([0.5, -1.0]), stop_gradient=False)
    (paddle.nn.functional.relu6(xp + 3.0) / 6.0).sum().backward()  # compat.hard_sigmoid's formula
    assert xp.grad.numpy()[0] == pytest.approx(1 / 6, rel=1e-15)


def test_paddle_bn_momentum_is_a_float32_attribute() -> None:
    """Why the fp64 reference rounds its BN momentum: Paddle weighs fp64 statistics with float32 0.9."""
    paddle.set_default_dtype("float64")
    try:
        bn = paddle.nn.BatchNorm2D(1, momentum=0.9)
    finally:
        paddle.set_default_dtype("float32")
    bn.train()
    x = np.full((2, 1, 2, 2), 10.0)
    x[0, 0, 0, 0] = 11.0
    bn(paddle.to_tensor(x))
    mean = float(np.mean(x))
    exact = 0.1 * mean  # running mean starts at 0
    got = float(bn._mean.numpy()[0])
    assert got == pytest.approx((1 - float(np.float32(0.9))) * mean, rel=1e-12)
    assert abs(got - exact) > 1e-8


def test_paddle_bn_epsilon_is_a_float32_attribute() -> None:
    """Why the fp64 reference rounds its BN epsilon: with a ~0 running variance it shows at 1e-8."""
    import torch.nn.functional as TF

    from parity.engine import align_bn_constants_to_paddle

    x = np.random.RandomState(0).standard_normal((2, 3, 4, 4))
    stats = [np.zeros(3), np.array([1e-8, 1e-4, 1.0]), np.ones(3), np.zeros(3)]
    got = paddle.nn.functional.batch_norm(paddle.to_tensor(x), *map(paddle.to_tensor, stats),
                                          training=False, epsilon=1e-5).numpy()

    def ref(eps: float) -> np.ndarray:
        return TF.batch_norm(torch.tensor(x), *map(torch.tensor, stats), training=False,
                             eps=eps).numpy()

    assert np.abs(got - ref(1e-5)).max() / np.abs(got).max() > 1e-9
    bn = align_bn_constants_to_paddle(torch.nn.BatchNorm2d(3).double())
    assert np.array_equal(got, ref(bn.eps))
