"""Optimizers and learning-rate schedulers of the official Cream training in Paddle.

Twin of ``cream_torch_ref.optim`` (same function names and arguments). How each maps:

* **Search SGD** (torch ``SGD(momentum=0.9, nesterov=True)``) -> ``paddle.optimizer.Momentum(
  use_nesterov=True)``. Both keep ``v = mu * v + g`` with ``v`` starting at 0 (torch's first step
  sets ``v = g``, the same value) and step by ``lr * (g + mu * v)``; L2 weight decay is added to the
  gradient first in both.
* **Retrain RMSpropTF** (timm) -> :class:`RMSpropTF`, Paddle's ``RMSProp`` with one change. Paddle's
  kernel is already TensorFlow-style like timm's: ``eps`` inside the square root
  (``sqrt(ms + eps)``) and the learning rate accumulated in the momentum buffer
  (``mom = mu * mom + lr * g / sqrt(ms + eps); p -= mom``). The difference is the initial mean
  square: Paddle starts it at 0, timm (like TensorFlow) at **1**, which makes the first steps of
  timm ~``1/sqrt(1 - alpha)`` ~ 3x smaller. :class:`RMSpropTF` creates it at 1.
* **Weight decay filter** (``add_weight_decay``): per-group ``weight_decay`` floats, which Paddle
  turns into ``L2Decay`` on each parameter (``g += wd * p``, timm's non-decoupled decay).
* **Schedules**: :class:`CreamLRScheduler` is a ``paddle.optimizer.lr.LRScheduler`` whose values come
  from the framework-free :mod:`cream_core.training.schedules`. Its ``last_epoch`` semantics match both torch's
  ``LambdaLR`` (``step()`` per iteration) and timm's epoch schedulers (``step(epoch + 1)`` after an
  epoch, the warmup start value from construction on).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import paddle

from cream_core.training.schedules import Schedule, SupernetLinearSchedule, retrain_schedule, supernet_iters

__all__ = ["param_groups_weight_decay", "create_search_optimizer", "create_retrain_optimizer",
           "create_search_scheduler", "create_retrain_scheduler", "RMSpropTF", "CreamLRScheduler"]


def param_groups_weight_decay(model: paddle.nn.Layer, weight_decay: float, lr: float,
                              meta_lr: float = 1e-4, skip_list: Sequence[str] = ()
                              ) -> List[Dict[str, Any]]:
    """Parameter groups as the official ``add_weight_decay_supernet`` (see the torch twin).

    Paddle's per-group ``learning_rate`` is a multiplier of the optimizer's rate, so a group's
    ``lr`` becomes ``learning_rate = group_lr / lr``. Empty groups are dropped.
    """
    no_decay: List[paddle.Tensor] = []
    decay: List[paddle.Tensor] = []
    meta: List[paddle.Tensor] = []
    for name, p in model.named_parameters():
        if p.stop_gradient:
            continue
        if "meta_layer" in name:
            meta.append(p)
        elif len(p.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0, "learning_rate": 1.0},
              {"params": decay, "weight_decay": float(weight_decay), "learning_rate": 1.0},
              {"params": meta, "weight_decay": 0.0, "learning_rate": meta_lr / lr}]
    return [g for g in groups if g["params"]]


def create_search_optimizer(model: paddle.nn.Layer, lr: float = 1.0, momentum: float = 0.9,
                            weight_decay: float = 1e-4, nesterov: bool = True,
                            meta_lr: float = 1e-4) -> paddle.optimizer.Momentum:
    """Nesterov momentum SGD of the supernet search (twin of the torch ``SGD``)."""
    params: Any = (param_groups_weight_decay(model, weight_decay, lr, meta_lr) if weight_decay
                   else model.parameters())
    return paddle.optimizer.Momentum(learning_rate=lr, momentum=momentum, parameters=params,
                                     use_nesterov=nesterov, weight_decay=None)


class RMSpropTF(paddle.optimizer.RMSProp):
    """timm's ``RMSpropTF`` in Paddle: Paddle's TF-style ``RMSProp`` with the mean square started at 1.

    Arguments follow timm (``alpha`` is Paddle's ``rho``, ``eps`` its ``epsilon``). Only the
    behaviours the official retraining used are supported: not centered, L2 (non-decoupled) weight
    decay, learning rate in the momentum buffer.
    """

    def __init__(self, parameters: Any, lr: Union[float, paddle.optimizer.lr.LRScheduler] = 1e-2,
                 alpha: float = 0.9, eps: float = 1e-10, weight_decay: float = 0.0,
                 momentum: float = 0.0) -> None:
        super().__init__(learning_rate=lr, rho=alpha, epsilon=eps, momentum=momentum,
                         centered=False, parameters=parameters,
                         weight_decay=float(weight_decay) if weight_decay else None)

    def _create_accumulators(self, block: Any, parameters: Any) -> None:
        if isinstance(parameters, dict):
            parameters = parameters.get("params")
        for p in parameters:
            if p.name in self._already_create_accumulator:
                continue
            self._add_accumulator(self._momentum_acc_str, p)
            self._add_accumulator(self._mean_square_acc_str, p, fill_value=1.0)  # timm/TF: ones
            self._add_accumulator(self._mean_grad_acc_str, p)
            self._already_create_accumulator.add(p.name)


def create_retrain_optimizer(model: paddle.nn.Layer, lr: float = 0.064, eps: float = 1e-3,
                             momentum: float = 0.9, weight_decay: float = 1e-5,
                             alpha: float = 0.9) -> RMSpropTF:
    """:class:`RMSpropTF` as timm 0.1.20's ``create_optimizer`` built it for ``OPT 'rmsproptf'``."""
    params: Any = (param_groups_weight_decay(model, weight_decay, lr) if weight_decay
                   else model.parameters())
    return RMSpropTF(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=0.0)


class CreamLRScheduler(paddle.optimizer.lr.LRScheduler):
    """A Paddle ``LRScheduler`` whose value at ``last_epoch`` is ``schedule.lr_at(last_epoch)``."""

    def __init__(self, schedule: Schedule, last_epoch: int = -1) -> None:
        self.schedule = schedule
        super().__init__(learning_rate=float(schedule.lr_at(0)), last_epoch=last_epoch)

    def get_lr(self) -> float:
        return float(self.schedule.lr_at(self.last_epoch))


def _attach(optimizer: Optional[paddle.optimizer.Optimizer], sched: CreamLRScheduler) -> None:
    if optimizer is not None:
        optimizer.set_lr_scheduler(sched)


def create_search_scheduler(optimizer: Optional[paddle.optimizer.Optimizer], lr: float = 1.0,
                            epochs: int = 120, num_gpu: int = 8, batch_size: int = 128
                            ) -> CreamLRScheduler:
    """The search's per-iteration linear decay; attached to ``optimizer`` (call ``step()`` per iter).

    ``lr`` is the configured ``LR`` (the optimizer's base rate and the lambda's start value).
    """
    sched = CreamLRScheduler(SupernetLinearSchedule(lr=lr, iters=supernet_iters(epochs, num_gpu,
                                                                                batch_size),
                                                    base_lr=lr))
    _attach(optimizer, sched)
    return sched


def create_retrain_scheduler(optimizer: Optional[paddle.optimizer.Optimizer], sched: str = "step",
                             epochs: int = 500, min_lr: float = 1e-5, decay_epochs: float = 2.4,
                             decay_rate: float = 0.973, warmup_lr: float = 1e-6,
                             warmup_epochs: int = 3, cooldown_epochs: int = 10,
                             lr: Optional[float] = None) -> Tuple[CreamLRScheduler, int]:
    """The retrain schedule attached to ``optimizer``; returns it and the number of epochs to run.

    ``lr`` defaults to the optimizer's current rate (timm reads it from the optimizer too). Call
    ``scheduler.step(epoch + 1)`` after each epoch, as the official loop does.
    """
    if lr is None:
        if optimizer is None:
            raise ValueError("give lr= when no optimizer is passed")
        lr = float(optimizer.get_lr())
    schedule = retrain_schedule(sched, lr=lr, epochs=epochs, min_lr=min_lr,
                                decay_epochs=decay_epochs, decay_rate=decay_rate,
                                warmup_lr=warmup_lr, warmup_epochs=warmup_epochs)
    s = CreamLRScheduler(schedule)
    _attach(optimizer, s)
    n = epochs + cooldown_epochs if sched == "cosine" else epochs
    return s, n
