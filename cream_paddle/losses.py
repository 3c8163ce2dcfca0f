"""Losses of the official Cream training in Paddle, twin of ``cream_torch_ref.losses``.

Same names, arguments and reductions as the torch module; each is written with the same sequence of
operations as the torch reference (log-softmax, gather/mean, batch mean), so float32 results agree
to a few ulp. See ``cream_torch_ref.losses`` for what each loss is in the official code.
"""
from __future__ import annotations

from typing import Callable, Union

import paddle
import paddle.nn.functional as F

__all__ = ["training_loss", "cross_entropy", "LabelSmoothingCrossEntropy",
           "label_smoothing_cross_entropy", "cross_entropy_loss_with_soft_target", "cream_distill_loss"]


def _nll(logprobs: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """``-logprobs[i, target[i]]`` per row (torch's ``gather(dim=-1, index=target[:, None])``)."""
    index = target.astype("int64").reshape([-1, 1])
    return -paddle.take_along_axis(logprobs, index, axis=-1).squeeze(-1)


def cross_entropy(logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy of ``logits`` [N, C] against class indices ``target`` [N].

    Written as log-softmax + gather + mean, the op sequence of torch's ``cross_entropy``
    (log_softmax + nll_loss), so both frameworks round the same intermediate values.
    """
    return _nll(F.log_softmax(logits, axis=-1), target).mean()


class LabelSmoothingCrossEntropy(paddle.nn.Layer):
    """NLL with label smoothing, as timm's ``LabelSmoothingCrossEntropy``."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not smoothing < 1.0:
            raise ValueError(f"smoothing must be < 1.0, got {smoothing}")
        self.smoothing = smoothing
        self.confidence = 1.0 - smoothing

    def forward(self, x: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        logprobs = F.log_softmax(x, axis=-1)
        nll_loss = _nll(logprobs, target)
        smooth_loss = -logprobs.mean(axis=-1)
        loss = self.confidence * nll_loss + self.smoothing * smooth_loss
        return loss.mean()


def label_smoothing_cross_entropy(logits: paddle.Tensor, target: paddle.Tensor,
                                  smoothing: float = 0.1) -> paddle.Tensor:
    """timm's label-smoothing cross-entropy (the official retrain and search training loss)."""
    return LabelSmoothingCrossEntropy(smoothing=smoothing)(logits, target)


def cross_entropy_loss_with_soft_target(pred: paddle.Tensor, soft_target: paddle.Tensor
                                        ) -> paddle.Tensor:
    """Cream's distillation loss: batch mean of ``sum(-soft_target * log_softmax(pred), 1)``."""
    return paddle.mean(paddle.sum(-soft_target * F.log_softmax(pred, axis=1), axis=1))


def cream_distill_loss(output: paddle.Tensor, target: paddle.Tensor, teacher_output: paddle.Tensor,
                       meta_value: Union[float, paddle.Tensor], smoothing: float = 0.1
                       ) -> paddle.Tensor:
    """The search's loss with a teacher: ``(meta * kd + (2 - meta) * ce) / 2`` (as the torch twin)."""
    soft = F.softmax(teacher_output.detach(), axis=1)
    kd = cross_entropy_loss_with_soft_target(output, soft)
    ce = label_smoothing_cross_entropy(output, target, smoothing) if smoothing > 0 else \
        cross_entropy(output, target)
    return (meta_value * kd + (2 - meta_value) * ce) / 2


def training_loss(smoothing: float) -> Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]:
    """The training loss of the official retraining and search: label smoothing (timm's rule)
    if ``smoothing > 0``, else cross-entropy."""
    return LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing > 0 else cross_entropy
