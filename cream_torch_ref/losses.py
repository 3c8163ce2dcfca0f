"""Losses of the official Cream training, on current torch (the twin is ``cream_paddle.losses``).

* ``cross_entropy``: ``nn.CrossEntropyLoss`` (mean over the batch), the validation loss and the
  training loss when label smoothing is off.
* ``LabelSmoothingCrossEntropy`` / ``label_smoothing_cross_entropy``: timm's label smoothing
  (``AUGMENTATION.SMOOTHING`` 0.1 in every config): ``(1 - s) * nll + s * mean(-log_softmax)``,
  averaged over the batch. timm 1.0's class computes exactly what timm 0.1.20's did; it is
  re-exported so the reference *is* the code the official training ran.
* ``cross_entropy_loss_with_soft_target``: Cream's distillation loss (``lib/utils/util.py``),
  ``mean_over_batch(sum_over_classes(-soft_target * log_softmax(pred)))``.
* ``cream_distill_loss``: how the search combines them once a teacher is picked
  (``lib/core/train.py``): ``(meta_value * kd + (2 - meta_value) * ce) / 2``.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy

__all__ = ["training_loss", "cross_entropy", "LabelSmoothingCrossEntropy", "label_smoothing_cross_entropy",
           "cross_entropy_loss_with_soft_target", "cream_distill_loss"]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, C] against class indices ``target`` [N]."""
    return F.cross_entropy(logits, target)


def label_smoothing_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                  smoothing: float = 0.1) -> torch.Tensor:
    """timm's label-smoothing cross-entropy (the official retrain and search training loss)."""
    return LabelSmoothingCrossEntropy(smoothing=smoothing)(logits, target)


def cross_entropy_loss_with_soft_target(pred: torch.Tensor, soft_target: torch.Tensor
                                        ) -> torch.Tensor:
    """Cream's distillation loss: batch mean of ``sum(-soft_target * log_softmax(pred), dim=1)``."""
    return torch.mean(torch.sum(-soft_target * F.log_softmax(pred, dim=1), 1))


def cream_distill_loss(output: torch.Tensor, target: torch.Tensor, teacher_output: torch.Tensor,
                       meta_value: Union[float, torch.Tensor], smoothing: float = 0.1
                       ) -> torch.Tensor:
    """The search's loss with a teacher: ``(meta * kd + (2 - meta) * ce) / 2``.

    ``kd`` uses the teacher's softmax as soft target (no gradient through the teacher) and ``ce`` is
    the training loss (label smoothing ``smoothing``; 0 means plain cross-entropy).
    """
    soft = F.softmax(teacher_output.detach(), dim=1)
    kd = cross_entropy_loss_with_soft_target(output, soft)
    ce = label_smoothing_cross_entropy(output, target, smoothing) if smoothing > 0 else \
        cross_entropy(output, target)
    return (meta_value * kd + (2 - meta_value) * ce) / 2


def training_loss(smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of the official retraining and search: label smoothing (timm's rule)
    if ``smoothing > 0``, else cross-entropy."""
    return LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing > 0 else cross_entropy
