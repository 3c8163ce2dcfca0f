"""Paddle's twice-differentiable formulations (``cream_paddle.second_order``) against torch.

Each formulation is checked for its value, its gradient and a second derivative (the gradient of a
gradient, as the meta-matching step takes it) against torch's own ops. Also checked: the in-place
mechanism the 2020 numerics rely on (a weight written without a version bump is what the *second*
backward reads), in both frameworks.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle
    import paddle.nn.functional as F

from cream_paddle import second_order as so
from parity.tolerances import LAYER_TRAIN_FP32

pytestmark = pytest.mark.paddle

#: fp32 values, gradients and second derivatives: a few ulp per op; relative to the tensor's scale.
VALUE_REL = 2e-6
GRAD_REL = 2e-5


def _close(got, ref, rel: float, floor: float = 1e-12) -> None:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= rel * max(np.abs(ref).max(), floor), np.abs(got - ref).max()


def _second_order(p_fn, t_fn, xs, seed: int = 0):
    """value, d(sum(y*c))/dx, and d/dx of sum(grad * d) in both frameworks; compared."""
    rng = np.random.RandomState(seed)
    pt = [paddle.to_tensor(x) for x in xs]
    tt = [torch.tensor(x, requires_grad=True) for x in xs]
    for t in pt:
        t.stop_gradient = False
    py, ty = p_fn(*pt), t_fn(*tt)
    _close(py.numpy(), ty.detach().numpy(), VALUE_REL)
    c = rng.standard_normal(ty.shape).astype(np.float32)
    pg = paddle.grad((py * paddle.to_tensor(c)).sum(), pt, create_graph=True)
    tg = torch.autograd.grad((ty * torch.from_numpy(c)).sum(), tt, create_graph=True)
    for a, b in zip(pg, tg):
        _close(a.numpy(), b.detach().numpy(), GRAD_REL)
    d = [rng.standard_normal(g.shape).astype(np.float32) for g in tg]
    pgg = paddle.grad(sum((g * paddle.to_tensor(v)).sum() for g, v in zip(pg, d)), pt, allow_unused=True)
    tgg = torch.autograd.grad(sum((g * torch.from_numpy(v)).sum() for g, v in zip(tg, d)), tt,
                              allow_unused=True)
    for a, b in zip(pgg, tgg):
        if b is None:
            assert a is None or np.abs(a.numpy()).max() == 0
            continue
        _close(a.numpy(), b.numpy(), GRAD_REL)


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (7, 1), (3, 2)])
def test_depthwise_conv(k: int, stride: int) -> None:
    rng = np.random.RandomState(k + stride)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = (rng.standard_normal((8, 1, k, k)) * 0.3).astype(np.float32)
    pad = ((stride - 1) + (k - 1)) // 2
    _second_order(lambda a, b: so.depthwise_conv2d(a, b, (stride, stride), (pad, pad), (1, 1), 8),
                  lambda a, b: TF.conv2d(a, b, stride=stride, padding=pad, groups=8), [x, w])


def test_hard_sigmoid_softmax_log_softmax() -> None:
    x = (np.random.RandomState(1).standard_normal((4, 10)) * 4).astype(np.float32)
    _second_order(so.hard_sigmoid, lambda a: TF.relu6(a + 3.0) / 6.0, [x])
    _second_order(lambda a: so.softmax(a, 1), lambda a: TF.softmax(a, 1), [x])
    _second_order(lambda a: so.log_softmax(a, 1), lambda a: TF.log_softmax(a, 1), [x])
    big = x * 50  # max subtraction keeps exp finite
    _second_order(lambda a: so.log_softmax(a, 1), lambda a: TF.log_softmax(a, 1), [big])


def test_soft_target_cross_entropy() -> None:
    rng = np.random.RandomState(2)
    pred = rng.standard_normal((4, 10)).astype(np.float32)
    soft = np.exp(rng.standard_normal((4, 10))).astype(np.float32)
    soft /= soft.sum(1, keepdims=True)
    _second_order(lambda a: so.soft_target_cross_entropy(a, paddle.to_tensor(soft)),
                  lambda a: torch.mean(torch.sum(-torch.from_numpy(soft) * TF.log_softmax(a, 1), 1)),
                  [pred])


def test_batch_norm_train() -> None:
    rng = np.random.RandomState(3)
    x = rng.standard_normal((4, 6, 3, 3)).astype(np.float32) * 2 + 1
    w = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    _second_order(lambda a, g, bb: so.batch_norm_train(a, g, bb, 1e-5)[0],
                  lambda a, g, bb: TF.batch_norm(a, None, None, g, bb, training=True, eps=1e-5),
                  [x, w, b])


def test_second_order_mode_switches_and_restores() -> None:
    from cream_core.arch.supernet import plan_supernet
    from cream_paddle.supernet import SuperNet

    model = SuperNet(plan_supernet((1, 1, 1, 1, 1)), num_classes=5)
    model.train()
    x = paddle.to_tensor(np.random.RandomState(4).standard_normal((4, 3, 32, 32)).astype(np.float32))
    cand = [[0], [1], [2], [3], [4], [5], [0]]
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    ref = model(x, cand).numpy()
    stats_normal = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model.set_state_dict(state)
    with so.second_order_mode(model):
        assert {dw.formulation for dw in _depthwise(model)} == {so.Formulation.TWICE_DIFFERENTIABLE}
        out = model(x, cand)
        params = list(model.rand_parameters(cand))
        g = paddle.grad(out.sum(), params, create_graph=True)
        gg = paddle.grad(sum((t * t).sum() for t in g), params[-4:], allow_unused=True)
        assert all(t is not None for t in gg)
    # the same function: train-mode fp32 on a batch of 4, where BN divides by the small-batch std
    # and amplifies rounding -- the harness's documented bound for that category
    _close(out.numpy(), ref, LAYER_TRAIN_FP32.rtol)
    for k, v in model.state_dict().items():  # and the same running-statistics update
        _close(v.numpy(), stats_normal[k], 1e-5, floor=1e-2)  # some means are ~1e-9: noise
    assert {dw.formulation for dw in _depthwise(model)} == {so.Formulation.KERNEL}


def test_paddle_depthwise_kernel_has_no_double_grad() -> None:
    """Why the module exists; if Paddle gains the kernel this test tells us the formulation may go."""
    x = paddle.to_tensor(np.ones((1, 4, 5, 5), np.float32))
    x.stop_gradient = False
    w = paddle.create_parameter([4, 1, 3, 3], "float32")
    g, = paddle.grad(F.conv2d(x, w, padding=1, groups=4).sum() * 1.0, [x], create_graph=True)
    try:
        paddle.grad((g * g).sum(), [w])
    except (RuntimeError, ValueError, NotImplementedError) as e:
        assert "depthwise_conv2d_double_grad" in str(e) or "grad op" in str(e)
    else:  # pragma: no cover - depends on the Paddle build
        pytest.skip("this Paddle build has a depthwise double-grad kernel")


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_untracked_write_reaches_second_backward(framework: str) -> None:
    """h = x W, loss = s * |h|^2; d/ds of (dloss/dx . v) reads W in the backward: after an untracked
    in-place write of W it must read the *new* W (torch 1.2's ``.data`` semantics)."""
    rng = np.random.RandomState(5)
    xn, wn = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    v = rng.standard_normal((4, 3)).astype(np.float32)
    h = xn @ wn
    expect_new = float((2 * h @ (wn + 1).T * v).sum())
    expect_old = float((2 * h @ wn.T * v).sum())
    if framework == "torch":
        x = torch.tensor(xn, requires_grad=True)
        w = torch.nn.Parameter(torch.tensor(wn))
        s = torch.tensor(1.5, requires_grad=True)
        hh = x @ w
        gx, = torch.autograd.grad(s * (hh * hh).sum(), [x], create_graph=True)
        w.data.add_(1.0)
        gs, = torch.autograd.grad((gx * torch.from_numpy(v)).sum(), [s])
        got = float(gs)
    else:
        x = paddle.to_tensor(xn)
        x.stop_gradient = False
        w = paddle.create_parameter([3, 2], "float32")
        w.set_value(wn)
        s = paddle.to_tensor(1.5)
        s.stop_gradient = False
        hh = paddle.matmul(x, w)
        gx, = paddle.grad(s * (hh * hh).sum(), [x], create_graph=True)
        w.set_value(wn + 1)
        gs, = paddle.grad((gx * paddle.to_tensor(v)).sum(), [s])
        got = float(gs)
    assert abs(got - expect_new) <= 1e-4 * abs(expect_new)
    assert abs(expect_new - expect_old) > 1.0  # the two semantics are far apart here


def _bn_with_stats(formulation):
    """``compat.batch_norm`` in training on fresh running statistics, which it returns too."""
    from cream_paddle import compat

    stats = (paddle.zeros([6]), paddle.ones([6]))
    fn = lambda a, g, bb: compat.batch_norm(a, *stats, g, bb, True, 0.1, 1e-5,  # noqa: E731
                                            formulation=formulation)
    return fn, stats


def test_batch_norm_twice_differentiable_formulation_matches_torch() -> None:
    """The one BatchNorm path in its ``TWICE_DIFFERENTIABLE`` formulation: value, gradient and second
    derivative as torch's, and the running statistics torch keeps (the same update, done once)."""
    from cream_paddle.compat import Formulation

    rng = np.random.RandomState(6)
    x = rng.standard_normal((4, 6, 3, 3)).astype(np.float32) * 2 + 1
    w = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    fn, (mean, var) = _bn_with_stats(Formulation.TWICE_DIFFERENTIABLE)
    tmean, tvar = torch.zeros(6), torch.ones(6)
    _second_order(fn, lambda a, g, bb: TF.batch_norm(a, tmean, tvar, g, bb, training=True,
                                                     momentum=0.1, eps=1e-5), [x, w, b])
    _close(mean.numpy(), tmean.numpy(), VALUE_REL)
    _close(var.numpy(), tvar.numpy(), VALUE_REL)


@pytest.mark.parametrize("formulation", ["kernel", "twice_differentiable"])
def test_batch_norm_weight_second_derivative_needs_the_option(formulation: str) -> None:
    """Why the option exists: differentiating twice w.r.t. the input and the weight only (the bias
    held fixed), Paddle's kernel returns no weight gradient under ``create_graph``; the
    ``TWICE_DIFFERENTIABLE`` formulation gives torch's value, gradient and second derivative."""
    from cream_paddle.compat import Formulation

    rng = np.random.RandomState(7)
    x = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    fn, _ = _bn_with_stats(Formulation(formulation))
    run = lambda: _second_order(lambda a, g: fn(a, g, paddle.to_tensor(b)),  # noqa: E731
                                lambda a, g: TF.batch_norm(a, None, None, g, torch.from_numpy(b),
                                                           training=True, eps=1e-5), [x, w])
    if formulation == "twice_differentiable":
        run()
        return
    try:
        run()
    except (TypeError, AttributeError, RuntimeError, ValueError):
        return
    pytest.skip("this Paddle build differentiates batch_norm twice here")  # pragma: no cover


def _formulations(model) -> dict:
    return {id(layer): layer.formulation for layer in model.sublayers() if hasattr(layer, "formulation")}


def _depthwise(model) -> list:
    dws = [layer for layer in model.sublayers() if so.is_depthwise(layer)]
    assert dws
    return dws


def test_second_order_mode_switches_formulations_not_forwards() -> None:
    """BatchNorms, gates and convs are switched by their ``formulation`` option, and only by it: no
    layer gets a ``forward`` of its own (no class-name test); every option comes back, also after
    an exception or a wrong value."""
    from cream_core.arch.supernet import plan_supernet
    from cream_paddle.blocks import BatchNormAct2d
    from cream_paddle.compat import Conv2D, Formulation
    from cream_paddle.supernet import HardSigmoid, SuperNet

    model = SuperNet(plan_supernet((1, 1, 1, 1, 1)), num_classes=5)
    kinds = (BatchNormAct2d, HardSigmoid, Conv2D)
    switchable = [layer for layer in model.sublayers() if isinstance(layer, kinds)]
    assert len(_formulations(model)) == len(switchable) > 0
    assert {type(layer) for layer in switchable} == set(kinds)
    before = _formulations(model)
    assert set(before.values()) == {Formulation.KERNEL}
    with so.second_order_mode(model):
        assert set(_formulations(model).values()) == {Formulation.TWICE_DIFFERENTIABLE}
        assert not [name for name, layer in model.named_sublayers(include_self=True)
                    if "forward" in layer.__dict__]
    assert _formulations(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with so.second_order_mode(model):
            raise RuntimeError("boom")
    assert _formulations(model) == before
    conv = switchable[0]
    for value in ("fast", "twice_differentiable"):  # a member's string too: refused, not guessed
        with pytest.raises(ValueError, match=f"formulation must be a Formulation, got '{value}'"):
            conv.formulation = value  # a property: checked when set
    assert conv.formulation is Formulation.KERNEL
    wrong = [layer for layer in switchable if not isinstance(layer, Conv2D)][-1]
    wrong.formulation = "fast"  # a plain attribute: checked when switched
    with pytest.raises(ValueError, match="formulation 'fast'"):
        with so.second_order_mode(model):
            pass  # pragma: no cover
    assert {k: v for k, v in _formulations(model).items() if k != id(wrong)} == \
        {k: v for k, v in before.items() if k != id(wrong)}


def test_supernet_builds_every_conv_with_the_option() -> None:
    """Every conv of the supernet is ``compat.Conv2D`` (so ``second_order_mode`` reaches all the
    depthwise ones through their option); the child nets: ``tests/test_mirror.py``."""
    from cream_core.arch.supernet import plan_supernet
    from cream_paddle.compat import Conv2D
    from cream_paddle.supernet import SuperNet

    model = SuperNet(plan_supernet((1, 1, 1, 1, 1)), num_classes=5)
    convs = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Conv2D)]
    assert convs and {type(c) for c in convs} == {Conv2D}
    assert len(_depthwise(model)) > 1


def _dw_layer(k: int, stride: int, pad: int, bias: bool, w: np.ndarray, b: np.ndarray):
    from cream_paddle.compat import Conv2D

    layer = Conv2D(8, 8, k, stride=stride, padding=pad, groups=8, bias_attr=None if bias else False)
    layer.weight.set_value(w)
    if bias:
        layer.bias.set_value(b)
    return layer


@pytest.mark.parametrize("formulation", ["kernel", "twice_differentiable"])
@pytest.mark.parametrize("k,stride,bias", [(3, 1, False), (5, 2, True)])
def test_depthwise_conv_layer_option(formulation: str, k: int, stride: int, bias: bool) -> None:
    """``compat.Conv2D``'s option: with ``TWICE_DIFFERENTIABLE`` a depthwise layer gives torch's
    value, gradients (input, weight, bias) and second derivatives; with ``KERNEL`` the same value
    (bit for bit: Paddle's forward) but Paddle 3.3 cannot differentiate it twice."""
    from cream_paddle.compat import Formulation

    rng = np.random.RandomState(10 * k + stride)
    xn = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    wn = (rng.standard_normal((8, 1, k, k)) * 0.3).astype(np.float32)
    bn = rng.standard_normal(8).astype(np.float32)
    pad = ((stride - 1) + (k - 1)) // 2
    layer = _dw_layer(k, stride, pad, bias, wn, bn)
    plain = paddle.nn.Conv2D(8, 8, k, stride=stride, padding=pad, groups=8,
                             bias_attr=None if bias else False)
    plain.set_state_dict(layer.state_dict())
    layer.formulation = Formulation(formulation)
    x = paddle.to_tensor(xn)
    x.stop_gradient = False
    params = [layer.weight] + ([layer.bias] if bias else [])
    tx, tw = torch.tensor(xn, requires_grad=True), torch.tensor(wn, requires_grad=True)
    tb = torch.tensor(bn, requires_grad=True) if bias else None
    ty = TF.conv2d(tx, tw, tb, stride=stride, padding=pad, groups=8)
    py = layer(x)
    if formulation == "kernel":
        assert np.array_equal(py.numpy(), plain(x).numpy())
    _close(py.numpy(), ty.detach().numpy(), VALUE_REL)
    c = rng.standard_normal(ty.shape).astype(np.float32)
    pg = paddle.grad((py * paddle.to_tensor(c)).sum(), [x] + params, create_graph=True)
    tg = torch.autograd.grad((ty * torch.from_numpy(c)).sum(), [tx, tw] + ([tb] if bias else []),
                             create_graph=True)
    for a, b in zip(pg, tg):
        _close(a.numpy(), b.detach().numpy(), GRAD_REL)
    d = [rng.standard_normal(g.shape).astype(np.float32) for g in tg]
    second = lambda: paddle.grad(sum((g * paddle.to_tensor(v)).sum()  # noqa: E731
                                     for g, v in zip(pg, d)), [x, layer.weight], allow_unused=True)
    tgg = torch.autograd.grad(sum((g * torch.from_numpy(v)).sum() for g, v in zip(tg, d)), [tx, tw])
    if formulation == "kernel":
        with pytest.raises((RuntimeError, ValueError, NotImplementedError),
                           match="depthwise_conv2d_double_grad|grad op"):
            second()
        return
    for a, b in zip(second(), tgg):
        _close(a.numpy(), b.numpy(), GRAD_REL)


@pytest.mark.parametrize("options", [{"padding_mode": "reflect"}, {"padding": "SAME"},
                                     {"data_format": "NHWC"}, {"padding": [1, 1, 0, 2]}])
def test_depthwise_configurations_the_formulation_cannot_compute_are_refused(options: dict) -> None:
    """Switching such a depthwise conv raises the ValueError naming the layer and keeps ``KERNEL``;
    a normal conv of the same configuration switches (Paddle's own forward has double grad); in a
    model, ``second_order_mode`` raises and restores every option it had switched."""
    from cream_paddle.compat import Conv2D, Formulation

    kwargs = {"padding": 1, **options}
    dw, normal = Conv2D(4, 4, 3, groups=4, **kwargs), Conv2D(4, 4, 3, **kwargs)
    with pytest.raises(ValueError, match="second-order depthwise conv: unsupported layer configuration"):
        dw.formulation = Formulation.TWICE_DIFFERENTIABLE
    assert dw.formulation is Formulation.KERNEL
    normal.formulation = Formulation.TWICE_DIFFERENTIABLE
    normal.formulation = Formulation.KERNEL
    model = paddle.nn.Sequential(normal, Conv2D(4, 4, 3, groups=4, padding=1), dw)
    with pytest.raises(ValueError, match="unsupported layer configuration"):
        with so.second_order_mode(model):
            pass  # pragma: no cover
    assert set(_formulations(model).values()) == {Formulation.KERNEL}
