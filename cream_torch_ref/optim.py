"""Optimizers and learning-rate schedulers of the official Cream training, on current torch and timm.

* **Search** (``lib/utils/util.py``): ``create_optimizer_supernet`` builds ``torch.optim.SGD`` with
  Nesterov momentum (``OPT: 'sgd'`` means Nesterov there), momentum 0.9, weight decay 1e-4 applied
  only to weights with more than one dimension that are not biases (``add_weight_decay_supernet``),
  lr 1.0; ``create_supernet_scheduler`` is a per-iteration ``LambdaLR``.
* **Retrain** (``tools/retrain.py``, timm 0.1.20 ``create_optimizer`` / ``create_scheduler``):
  ``RMSpropTF`` (alpha 0.9, eps ``OPT_EPS`` 1e-3, momentum 0.9, weight decay 1e-5 with the same
  bias/BN filter), and timm's step or cosine schedule stepped per epoch.

The twin ``cream_paddle.optim`` has the same functions; the schedules' math is framework-free in
:mod:`cream_core.training.schedules`, and the parity harness compares both sides step by step.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from timm.optim import RMSpropTF
from timm.scheduler import CosineLRScheduler, StepLRScheduler

from cream_core.training.schedules import SupernetLinearSchedule, supernet_iters

__all__ = ["param_groups_weight_decay", "create_search_optimizer", "create_retrain_optimizer",
           "create_search_scheduler", "create_retrain_scheduler", "RMSpropTF"]


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float, lr: float,
                              meta_lr: float = 1e-4, skip_list: Sequence[str] = ()
                              ) -> List[Dict[str, Any]]:
    """Parameter groups as the official ``add_weight_decay_supernet``.

    1-D parameters (BN affine) and biases get no decay; parameters whose name contains
    ``meta_layer`` (the search's meta-matching network) get ``meta_lr`` and no decay at all (the
    official code sets 0 there for both of its meta groups). Empty groups are dropped.
    """
    no_decay: List[torch.nn.Parameter] = []
    decay: List[torch.nn.Parameter] = []
    meta: List[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "meta_layer" in name:
            meta.append(p)
        elif p.ndim == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0, "lr": lr},
              {"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": meta, "weight_decay": 0.0, "lr": meta_lr}]
    return [g for g in groups if g["params"]]


def create_search_optimizer(model: torch.nn.Module, lr: float = 1.0, momentum: float = 0.9,
                            weight_decay: float = 1e-4, nesterov: bool = True,
                            meta_lr: float = 1e-4) -> torch.optim.SGD:
    """SGD of the supernet search (``OPT 'sgd'`` -> Nesterov; ``'momentum'`` -> ``nesterov=False``)."""
    if weight_decay:
        params: Any = param_groups_weight_decay(model, weight_decay, lr, meta_lr)
        weight_decay = 0.0
    else:
        params = model.parameters()
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def create_retrain_optimizer(model: torch.nn.Module, lr: float = 0.064, eps: float = 1e-3,
                             momentum: float = 0.9, weight_decay: float = 1e-5,
                             alpha: float = 0.9) -> RMSpropTF:
    """timm's ``RMSpropTF`` as timm 0.1.20's ``create_optimizer`` built it for ``OPT 'rmsproptf'``.

    timm 1.0's ``RMSpropTF`` keeps 0.1.20's update (eps inside the square root, ``square_avg``
    starting at ones, lr accumulated in the momentum buffer, L2 weight decay added to the gradient);
    ``decoupled_decay`` and ``lr_in_momentum`` are pinned to those behaviours here.
    """
    if weight_decay:
        params: Any = [{k: v for k, v in g.items() if k != "lr"}
                       for g in param_groups_weight_decay(model, weight_decay, lr)]
        weight_decay = 0.0
    else:
        params = model.parameters()
    return RMSpropTF(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                     weight_decay=weight_decay, decoupled_decay=False, lr_in_momentum=True,
                     foreach=False)


def create_search_scheduler(optimizer: torch.optim.Optimizer, lr: float = 1.0, epochs: int = 120,
                            num_gpu: int = 8, batch_size: int = 128
                            ) -> torch.optim.lr_scheduler.LambdaLR:
    """The search's per-iteration ``LambdaLR`` (``create_supernet_scheduler``)."""
    sched = SupernetLinearSchedule(lr=lr, iters=supernet_iters(epochs, num_gpu, batch_size))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, sched.factor, last_epoch=-1)


def create_retrain_scheduler(optimizer: torch.optim.Optimizer, sched: str = "step",
                             epochs: int = 500, min_lr: float = 1e-5, decay_epochs: float = 2.4,
                             decay_rate: float = 0.973, warmup_lr: float = 1e-6,
                             warmup_epochs: int = 3, cooldown_epochs: int = 10
                             ) -> Tuple[Any, int]:
    """timm's scheduler as timm 0.1.20 ``create_scheduler`` configured it; returns it and the epochs.

    Call ``scheduler.step(epoch + 1)`` after each epoch, as the official retrain loop does.
    ``warmup_prefix=False`` reproduces 0.1.20 (timm >= 0.4 defaults the step schedule to True).
    """
    if sched == "step":
        return StepLRScheduler(optimizer, decay_t=decay_epochs, decay_rate=decay_rate,
                               warmup_t=warmup_epochs, warmup_lr_init=warmup_lr,
                               warmup_prefix=False, t_in_epochs=True), epochs
    if sched == "cosine":
        s = CosineLRScheduler(optimizer, t_initial=epochs, lr_min=min_lr, cycle_mul=1.0,
                              cycle_decay=decay_rate, cycle_limit=1, warmup_t=warmup_epochs,
                              warmup_lr_init=warmup_lr, warmup_prefix=False, t_in_epochs=True)
        return s, s.get_cycle_length() + cooldown_epochs
    raise ValueError(f"unknown retrain schedule {sched!r}; Cream retrained with 'step' or 'cosine'")
