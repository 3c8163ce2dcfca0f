"""Every framework difference handled in ``cream_paddle.compat``, checked op by op against torch.

Each test also shows that the difference is real (the naive Paddle call disagrees with torch), so
the compat helper is needed and a regression to the naive call would be caught.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle

from cream_paddle import compat
from cream_paddle.blocks import BatchNormAct2d, DropPath, create_conv2d

pytestmark = pytest.mark.paddle

#: float32 ops that sum in a different order (conv, BN, means) agree to a few ulp of O(1) values.
OP_ATOL = 2e-6
#: Running statistics: same formula, different rounding order (BN update, unbiased correction).
STATS_ATOL = 1e-6
#: Gradients and second derivatives of O(10) values: a few ulp of their size.
GRAD_ATOL = 2e-5


def _x(shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- BatchNorm momentum and variance


def test_bn_momentum_convention() -> None:
    assert compat.paddle_bn_momentum(0.1) == pytest.approx(0.9)
    assert compat.paddle_bn_momentum(0.0) == 1.0
    for bad in (None, -0.1, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            compat.paddle_bn_momentum(bad)


@pytest.mark.parametrize("formulation", list(compat.Formulation))
@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (2, 3, 1, 1), (8, 4, 7, 3)])
def test_bn_train_step_matches_torch(shape, formulation) -> None:
    """Three training steps then eval: outputs, gradients and running stats equal torch's, in each
    formulation of the one BatchNorm path."""
    c = shape[1]
    tb = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
    pb = BatchNormAct2d(c, apply_act=False)
    pb.formulation = formulation
    w, b = _x((c,), 7) * 0.1 + 1.0, _x((c,), 8) * 0.1
    tb.weight.data = torch.from_numpy(w.copy())
    tb.bias.data = torch.from_numpy(b.copy())
    pb.weight.set_value(w)
    pb.bias.set_value(b)
    tb.train()
    pb.train()
    for step in range(3):
        x = _x(shape, step, scale=2.0) + 0.5
        g = _x(shape, 10 + step)  # upstream gradient
        xt = torch.from_numpy(x).requires_grad_()
        xp = paddle.to_tensor(x, stop_gradient=False)
        yt, yp = tb(xt), pb(xp)
        np.testing.assert_allclose(yp.numpy(), yt.detach().numpy(), atol=OP_ATOL, rtol=0)
        (yt * torch.from_numpy(g)).sum().backward()  # training works and gives torch's gradients
        (yp * paddle.to_tensor(g)).sum().backward()
        np.testing.assert_allclose(xp.grad.numpy(), xt.grad.numpy(), atol=OP_ATOL, rtol=0)
        np.testing.assert_allclose(pb.weight.grad.numpy(), tb.weight.grad.numpy(),
                                   atol=OP_ATOL * shape[0] * shape[2] * shape[3], rtol=1e-5)
        np.testing.assert_allclose(pb.bias.grad.numpy(), tb.bias.grad.numpy(),
                                   atol=OP_ATOL * shape[0] * shape[2] * shape[3], rtol=1e-5)
        tb.zero_grad()
        pb.clear_gradients()
    np.testing.assert_allclose(pb._mean.numpy(), tb.running_mean.numpy(), atol=STATS_ATOL, rtol=0)
    np.testing.assert_allclose(pb._variance.numpy(), tb.running_var.numpy(), atol=STATS_ATOL, rtol=0)
    tb.eval()
    pb.eval()
    x = _x(shape, 9)
    np.testing.assert_allclose(pb(paddle.to_tensor(x)).numpy(),
                               tb(torch.from_numpy(x)).detach().numpy(), atol=OP_ATOL, rtol=0)


def test_plain_paddle_bn_keeps_biased_variance() -> None:
    """The difference compat corrects: Paddle's own BN puts the biased variance into running_var."""
    x = _x((4, 3, 5, 5), 1)
    tb = torch.nn.BatchNorm2d(3, momentum=0.1).train()
    pb = paddle.nn.BatchNorm2D(3, momentum=compat.paddle_bn_momentum(0.1))
    pb.train()
    tb(torch.from_numpy(x))
    pb(paddle.to_tensor(x))
    np.testing.assert_allclose(pb._mean.numpy(), tb.running_mean.numpy(), atol=STATS_ATOL)
    gap = np.abs(pb._variance.numpy() - tb.running_var.numpy()).max()
    assert gap > 100 * STATS_ATOL, "Paddle's BN now matches torch's variance update; simplify compat"


@pytest.mark.parametrize("formulation", list(compat.Formulation))
def test_bn_eval_leaves_running_stats_untouched(formulation) -> None:
    """Eval normalises with the running statistics, as torch, and never writes them (bit-exact)."""
    c = 3
    pb = BatchNormAct2d(c, apply_act=False)
    pb.formulation = formulation
    tb = torch.nn.BatchNorm2d(c).eval()
    mean, var = _x((c,), 1), np.abs(_x((c,), 2)) + 0.5
    pb._mean.set_value(mean)
    pb._variance.set_value(var)
    tb.running_mean.copy_(torch.from_numpy(mean))
    tb.running_var.copy_(torch.from_numpy(var))
    pb.eval()
    x = _x((2, c, 4, 4), 3)
    np.testing.assert_allclose(pb(paddle.to_tensor(x)).numpy(), tb(torch.from_numpy(x)).detach().numpy(),
                               atol=OP_ATOL, rtol=0)
    assert np.array_equal(pb._mean.numpy(), mean) and np.array_equal(pb._variance.numpy(), var)
    pb.train()  # and the same layer in training does move them: the check above is not vacuous
    pb(paddle.to_tensor(x))
    assert not np.array_equal(pb._mean.numpy(), mean)


@pytest.mark.parametrize("formulation", list(compat.Formulation))
def test_bn_several_forwards_before_one_backward(formulation) -> None:
    """The search's pattern: two train-mode forwards through one layer, then one backward. Gradients
    and the twice-updated running statistics equal torch's (the statistics are written back outside
    autograd's version tracking, so the backward of the first forward still works)."""
    c = 4
    tb = torch.nn.BatchNorm2d(c)
    pb = BatchNormAct2d(c, apply_act=False)
    pb.formulation = formulation
    pb.train()
    x1, x2 = _x((3, c, 4, 4), 4, 2.0), _x((3, c, 4, 4), 5) + 1.0
    xt = torch.from_numpy(x1).requires_grad_()
    xp = paddle.to_tensor(x1, stop_gradient=False)
    (tb(xt) * tb(torch.from_numpy(x2))).sum().backward()
    (pb(xp) * pb(paddle.to_tensor(x2))).sum().backward()
    np.testing.assert_allclose(xp.grad.numpy(), xt.grad.numpy(), atol=GRAD_ATOL, rtol=0)
    np.testing.assert_allclose(pb._mean.numpy(), tb.running_mean.numpy(), atol=STATS_ATOL, rtol=0)
    np.testing.assert_allclose(pb._variance.numpy(), tb.running_var.numpy(), atol=STATS_ATOL, rtol=0)


def test_wrong_bn_formulation_is_caught() -> None:
    """A formulation that is not a ``Formulation`` stops with a ``ValueError`` naming it, in the
    function, on the layer, and on the gate, rather than silently picking one."""
    x = paddle.to_tensor(_x((2, 3, 4, 4), 6))
    stats = (paddle.zeros([3]), paddle.ones([3]))
    assert compat.Formulation("twice_differentiable") is compat.Formulation.TWICE_DIFFERENTIABLE
    for training in (True, False):
        with pytest.raises(ValueError, match="formulation 'twice'.*'kernel'"):
            compat.batch_norm(x, *stats, None, None, training, formulation="twice")
    layer = BatchNormAct2d(3)
    layer.formulation = None
    with pytest.raises(ValueError, match="formulation None"):
        layer(x)
    gate = compat.Hardsigmoid()
    gate.formulation = "kernel"  # the value's string, not the member: refused, not guessed
    with pytest.raises(ValueError, match="Hardsigmoid.formulation"):
        gate(x)


# ---------------------------------------------------------------- hard-sigmoid


def test_hard_sigmoid_bit_exact() -> None:
    v = np.concatenate([np.linspace(-4, 4, 200001, dtype=np.float32),
                        np.array([-3, 3, -2.9999998, 2.9999998, 0, -0.0, 1e-30], np.float32)])
    want = TF.hardsigmoid(torch.from_numpy(v)).numpy()
    got = compat.Hardsigmoid()(paddle.to_tensor(v)).numpy()
    assert np.array_equal(got, want)
    naive = paddle.nn.Hardsigmoid()(paddle.to_tensor(v)).numpy()  # slope 0.1666667
    assert not np.array_equal(naive, want)


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("k,s", [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2), (7, 2)])
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_padding_matches_timm(k, s, hw) -> None:
    from timm.layers.create_conv2d import create_conv2d as timm_conv

    tc = timm_conv(4, 4, k, stride=s, groups=4, padding="")
    pc = create_conv2d(4, 4, k, stride=s, groups=4, padding="")
    w = _x(tuple(tc.weight.shape), 3) / k  # keeps outputs O(1), where OP_ATOL applies
    tc.weight.data = torch.from_numpy(w.copy())
    pc.weight.set_value(w)
    x = _x((2, 4) + hw, 4)
    yt = tc(torch.from_numpy(x)).detach().numpy()
    yp = pc(paddle.to_tensor(x)).numpy()
    assert yp.shape == yt.shape
    np.testing.assert_allclose(yp, yt, atol=OP_ATOL, rtol=0)
    assert compat.get_padding(k, s) == tc.padding[0]


def test_dynamic_same_padding_refused() -> None:
    with pytest.raises(ValueError, match="dynamic padding"):
        create_conv2d(4, 4, 3, stride=2, padding="same")


# ---------------------------------------------------------------- dropout and drop path


def test_dropout_upscale_in_train() -> None:
    p = 0.3
    x = np.abs(_x((64, 256), 5)) + 0.1
    for out in (compat.dropout(paddle.to_tensor(x), p, True).numpy(),
                TF.dropout(torch.from_numpy(x), p, training=True).numpy()):
        kept = out != 0
        np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
        assert abs(1 - kept.mean() - p) < 0.02  # 16384 draws: 5 sigma is ~0.018
    assert np.array_equal(compat.dropout(paddle.to_tensor(x), p, False).numpy(), x)
    naive = paddle.nn.functional.dropout(paddle.to_tensor(x), p, training=True,
                                         mode="downscale_in_infer").numpy()
    assert np.allclose(naive[naive != 0], x[naive != 0])  # the other Paddle mode does not scale


def test_drop_path_per_sample() -> None:
    p = 0.25
    x = np.abs(_x((400, 3, 2, 2), 6)) + 0.1
    dp = DropPath(p)
    dp.train()
    out = dp(paddle.to_tensor(x)).numpy()
    dropped = (out == 0).all(axis=(1, 2, 3))
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - p), rtol=1e-6)
    assert ((out == 0).any(axis=(1, 2, 3)) == dropped).all()  # whole samples, never parts
    assert abs(dropped.mean() - p) < 0.11  # 400 draws: 5 sigma
    dp.eval()
    assert np.array_equal(dp(paddle.to_tensor(x)).numpy(), x)


# ---------------------------------------------------------------- element-wise ops of the blocks


def test_silu_close() -> None:
    x = _x((2, 8, 7, 7), 3, scale=3.0)
    np.testing.assert_allclose(paddle.nn.Silu()(paddle.to_tensor(x)).numpy(),
                               TF.silu(torch.from_numpy(x)).numpy(), atol=OP_ATOL, rtol=0)


@pytest.mark.parametrize("keepdim", [True, False])
def test_spatial_mean_value_grad_and_double_grad(keepdim: bool) -> None:
    """``spatial_mean`` is torch's ``mean((2, 3))`` in value, gradient and second derivative (the
    meta step differentiates through the SE pooling twice)."""
    x, w = _x((2, 8, 7, 7), 3, scale=3.0), _x((8,), 4)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = (xt * wt.view(1, 8, 1, 1)).mean((2, 3), keepdim=keepdim)
    gt = torch.autograd.grad((yt ** 2).sum(), wt, create_graph=True)[0]
    ggt = torch.autograd.grad(gt.sum(), xt)[0]
    xp = paddle.to_tensor(x, stop_gradient=False)
    wp = paddle.to_tensor(w, stop_gradient=False)
    yp = compat.spatial_mean(xp * wp.reshape([1, 8, 1, 1]), keepdim=keepdim)
    gp = paddle.grad((yp ** 2).sum(), wp, create_graph=True)[0]
    ggp = paddle.grad(gp.sum(), xp)[0]
    assert list(yp.shape) == list(yt.shape)
    for a, b in ((yp, yt), (gp, gt), (ggp, ggt)):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=GRAD_ATOL, rtol=OP_ATOL)


# ---------------------------------------------------------------- initialisation

#: Relative error of a sample std/bound over >= 50k draws (5 sigma is ~1.6 %).
INIT_RTOL = 0.03


def test_goog_init_same_distributions_as_timm() -> None:
    """Same rule as timm's ``_init_weight_goog`` on the same layers (values differ: other RNG)."""
    from cream_paddle.childnet import ChildNet as PChild
    from cream_torch_ref.childnet import ChildNet as TChild

    arch = [[0], [3], [3, 3], [3, 3], [3], [3], [0]]
    paddle.seed(0)
    torch.manual_seed(0)
    pm, tm = PChild(arch), TChild(arch)
    psd = {k: v.numpy() for k, v in pm.state_dict().items()}
    tsd = {k: v.numpy() for k, v in tm.state_dict().items()}
    for key in ("conv_head.weight", "blocks.5.0.conv_pw.weight", "blocks.5.0.conv_dw.weight"):
        shape = tsd[key].shape
        fan_out = shape[0] * shape[2] * shape[3] // (shape[0] if shape[1] == 1 else 1)
        want = math.sqrt(2.0 / fan_out)
        for sd in (psd, tsd):
            assert abs(sd[key].std() / want - 1) < INIT_RTOL, key
            assert abs(sd[key].mean()) < 5 * want / math.sqrt(sd[key].size)
    bound = 1.0 / math.sqrt(1000)  # U(-1/sqrt(out_features), ...)
    for w in (psd["classifier.weight"], tsd["classifier.weight"]):
        assert np.abs(w).max() <= bound and np.abs(w).max() > bound * (1 - 1e-3)
        assert abs(w.std() / (bound / math.sqrt(3)) - 1) < INIT_RTOL
    for key in ("bn1.weight", "blocks.2.1.bn3.weight"):
        assert (psd[key] == 1).all() and (tsd[key] == 1).all()
    for key in ("bn1.bias", "classifier.bias", "conv_head.bias", "blocks.1.0.se.conv_reduce.bias"):
        assert (psd[key] == 0).all() and (tsd[key] == 0).all()
