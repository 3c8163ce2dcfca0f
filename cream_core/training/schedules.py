"""Learning-rate schedules of the official Cream training, as framework-free math.

Cream trained with three schedules, and the Paddle port drives its optimizers from this module while
the PyTorch reference uses the original schedulers (timm's, torch's ``LambdaLR``); the parity
harness checks the two agree value by value.

* **Retraining** (``tools/retrain.py``, timm 0.1.20 ``create_scheduler``), stepped once per epoch:

  - ``'step'`` (Cream-14, -43): linear warmup from ``warmup_lr`` over ``warmup_epochs``, then
    ``lr * decay_rate ** (epoch // decay_epochs)``. In timm 0.1.20 the decay counts epochs *from 0*,
    warmup included (timm >= 0.4 defaults to ``warmup_prefix=True``, which shifts it; the released
    nets were trained without the shift).
  - ``'cosine'`` (Cream-114 and larger): the same warmup, then half a cosine from ``lr`` to
    ``min_lr`` over ``epochs`` (one cycle), ``min_lr`` afterwards; training runs
    ``epochs + cooldown_epochs`` epochs.

* **Supernet search** (``lib/utils/util.py create_supernet_scheduler``), stepped once per iteration:
  ``LambdaLR`` with factor ``(LR - step / ITERS)`` while ``step <= ITERS``, else 0, where
  ``ITERS = EPOCHS * 1_280_000 / (NUM_GPU * BATCH_SIZE)``. The factor multiplies the optimizer's
  base learning rate, which the search also sets to ``LR`` (1.0), so lr = ``LR * (LR - step/ITERS)``.

Defaults are the official configs' values (``experiments/configs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Union

__all__ = ["StepSchedule", "CosineSchedule", "SupernetLinearSchedule", "Schedule",
           "supernet_iters", "retrain_schedule", "schedule_values"]


@dataclass(frozen=True)
class StepSchedule:
    """timm 0.1.20 ``StepLRScheduler`` as the retrain configs of Cream-14/43 set it (per epoch)."""

    lr: float = 0.064
    decay_epochs: float = 2.4
    decay_rate: float = 0.973
    warmup_lr: float = 1e-6
    warmup_epochs: int = 3

    def lr_at(self, epoch: int) -> float:
        """Learning rate during epoch ``epoch`` (0-based)."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr + epoch * ((self.lr - self.warmup_lr) / self.warmup_epochs)
        return self.lr * (self.decay_rate ** (epoch // self.decay_epochs))


@dataclass(frozen=True)
class CosineSchedule:
    """timm 0.1.20 ``CosineLRScheduler`` as ``create_scheduler`` builds it (one cycle, per epoch)."""

    lr: float = 0.064
    epochs: int = 500
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 3
    decay_rate: float = 0.973  # only scales cycles after the first, which never run (cycle_limit 1)
    cycle_limit: int = 1

    def lr_at(self, epoch: int) -> float:
        """Learning rate during epoch ``epoch`` (0-based)."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr + epoch * ((self.lr - self.warmup_lr) / self.warmup_epochs)
        i = epoch // self.epochs
        t_curr = epoch - self.epochs * i
        gamma = self.decay_rate ** i
        if self.cycle_limit == 0 or i < self.cycle_limit:
            lr_min = self.min_lr * gamma
            lr_max = self.lr * gamma
            return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t_curr / self.epochs))
        return self.min_lr


def supernet_iters(epochs: int = 120, num_gpu: int = 8, batch_size: int = 128) -> float:
    """``ITERS`` of the official search: iterations over which the LR falls linearly (a float)."""
    return epochs * (1280000 / (num_gpu * batch_size))


@dataclass(frozen=True)
class SupernetLinearSchedule:
    """The search's ``LambdaLR``: ``base_lr * (lr - step / iters)`` until ``iters``, then 0."""

    lr: float = 1.0
    iters: float = supernet_iters()
    base_lr: float = 1.0  # the optimizer's lr, which the official search also sets to ``lr``

    def factor(self, step: int) -> float:
        """The lambda of the official ``LambdaLR`` (multiplies the optimizer's base lr)."""
        return (self.lr - step / self.iters) if step <= self.iters else 0

    def lr_at(self, step: int) -> float:
        """Learning rate at iteration ``step`` (0-based, the scheduler steps after each iteration)."""
        return self.base_lr * self.factor(step)


Schedule = Union[StepSchedule, CosineSchedule, SupernetLinearSchedule]


def retrain_schedule(sched: str, *, lr: float = 0.064, epochs: int = 500, min_lr: float = 1e-5,
                     decay_epochs: float = 2.4, decay_rate: float = 0.973, warmup_lr: float = 1e-6,
                     warmup_epochs: int = 3) -> Union[StepSchedule, CosineSchedule]:
    """The retrain schedule named ``sched`` ('step' or 'cosine') with the configs' keyword values."""
    if sched == "step":
        return StepSchedule(lr, decay_epochs, decay_rate, warmup_lr, warmup_epochs)
    if sched == "cosine":
        return CosineSchedule(lr, epochs, min_lr, warmup_lr, warmup_epochs, decay_rate)
    raise ValueError(f"unknown retrain schedule {sched!r}; Cream retrained with 'step' or 'cosine'")


def schedule_values(schedule: Schedule, steps: int) -> List[float]:
    """``[schedule.lr_at(t) for t in range(steps)]``."""
    return [schedule.lr_at(t) for t in range(steps)]
