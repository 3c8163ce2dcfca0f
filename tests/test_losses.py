"""Loss twins: the Paddle losses equal the torch reference (and the official formulas)."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

import cream_paddle.losses as P
import cream_torch_ref.losses as T

RNG = np.random.RandomState(0)
LOGITS = (RNG.standard_normal((4, 10)) * 3).astype(np.float32)
TARGET = RNG.randint(0, 10, 4).astype(np.int64)
SOFT = np.exp(RNG.standard_normal((4, 10)))
SOFT = (SOFT / SOFT.sum(1, keepdims=True)).astype(np.float32)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _numpy(name: str) -> float:
    ls = _log_softmax(LOGITS)
    nll = -ls[np.arange(4), TARGET]
    if name == "cross_entropy":
        return float(nll.mean())
    if name == "label_smoothing_cross_entropy":  # timm: (1-s)*nll + s*mean(-logp)
        return float((0.9 * nll + 0.1 * (-ls.mean(1))).mean())
    return float((-(SOFT * ls).sum(1)).mean())  # Cream's soft-target loss


def _both(name: str):  # noqa: ANN202
    zt = torch.tensor(LOGITS, requires_grad=True)
    zp = paddle.to_tensor(LOGITS, stop_gradient=False)
    if name == "cross_entropy_loss_with_soft_target":
        lt = T.cross_entropy_loss_with_soft_target(zt, torch.tensor(SOFT))
        lp = P.cross_entropy_loss_with_soft_target(zp, paddle.to_tensor(SOFT))
    else:
        lt = getattr(T, name)(zt, torch.tensor(TARGET))
        lp = getattr(P, name)(zp, paddle.to_tensor(TARGET))
    lt.backward()
    lp.backward()
    return float(lt), float(lp), zt.grad.numpy(), zp.grad.numpy()


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing_cross_entropy",
                                  "cross_entropy_loss_with_soft_target"])
def test_loss_twins_agree_with_each_other_and_the_formula(name: str) -> None:
    vt, vp, gt, gp = _both(name)
    assert vt == pytest.approx(_numpy(name), rel=1e-6)
    assert vp == pytest.approx(vt, rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(gp, gt, rtol=1e-5, atol=1e-7)


def test_label_smoothing_zero_is_cross_entropy() -> None:
    z, t = paddle.to_tensor(LOGITS), paddle.to_tensor(TARGET)
    assert float(P.label_smoothing_cross_entropy(z, t, 0.0)) == pytest.approx(
        float(P.cross_entropy(z, t)), rel=1e-6)
    with pytest.raises(ValueError):
        P.LabelSmoothingCrossEntropy(1.0)


def test_cream_distill_loss_combines_as_the_search() -> None:
    teacher = LOGITS[::-1].copy()
    meta = 0.7
    vt = float(T.cream_distill_loss(torch.tensor(LOGITS), torch.tensor(TARGET),
                                    torch.tensor(teacher), meta))
    vp = float(P.cream_distill_loss(paddle.to_tensor(LOGITS), paddle.to_tensor(TARGET),
                                    paddle.to_tensor(teacher), meta))
    soft = torch.softmax(torch.tensor(teacher), 1)
    kd = float(T.cross_entropy_loss_with_soft_target(torch.tensor(LOGITS), soft))
    ce = float(T.label_smoothing_cross_entropy(torch.tensor(LOGITS), torch.tensor(TARGET)))
    assert vt == pytest.approx((meta * kd + (2 - meta) * ce) / 2, rel=1e-6)
    assert vp == pytest.approx(vt, rel=1e-6)


def test_torch_label_smoothing_is_timms() -> None:
    """The reference re-exports timm's class, i.e. the code the official training ran."""
    import timm.loss

    assert T.LabelSmoothingCrossEntropy is timm.loss.LabelSmoothingCrossEntropy
