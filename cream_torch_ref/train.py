"""Retrain a Cream child net in PyTorch with the official recipe (the reference for the Paddle twin).

The pieces are the ones the official ``Cream/tools/retrain.py`` used, on current torch/timm:
timm's ``ChildNet`` blocks (:class:`~cream_torch_ref.childnet.ChildNet`, dropout before the
classifier, optional drop path), timm's ``RMSpropTF`` with the bias/BN weight-decay filter and timm's
step/cosine schedule stepped per epoch (:mod:`cream_torch_ref.optim`), timm's
``LabelSmoothingCrossEntropy`` and timm's ``ModelEma`` (every state-dict entry, buffers included).
Data, augmentation, drop masks and the epoch loop are framework-free
(:mod:`cream_core.training.loop`); this module supplies the framework half (:class:`Trainer`).

Twin: ``cream_paddle.train`` has the same names. Differences from the official run, on purpose:

* drop-path / dropout masks come from numpy (:mod:`cream_core.training.masks`) through
  :class:`MaskInjector`, so both frameworks drop the same units; the masks follow timm's rule
  (per-sample / per-unit Bernoulli, kept units scaled by ``1/keep``);
* data-parallel runs use the CPU ``gloo`` backend (``torchrun``) and plain per-process BatchNorm,
  as the official default (``SYNC_BN: False``); ``shards=W`` makes one process compute exactly what
  ``W`` such processes compute together (see :func:`train_step`).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import ModelEma

from cream_core.arch import child_spec
from cream_core.io.errors import CheckpointError
from cream_core.data.datasets import ImageDataset
from cream_core.training.loop import TrainResult, run_training
from cream_core.training.trainer import Trainer as CoreTrainer, optimizer_args, scheduler_args
from cream_core.config.retrain import check_resume_args
from cream_core.training import step as core_step
from cream_core.training.checkpoint import check_train_checkpoint, check_train_states, official_arch
from cream_core.training.injector import MaskedForward, MaskInjectorBase
from cream_core.training.masks import StepMasks

from . import optim
from .backend import FRAMEWORK, Backend
from .blocks import DropPath
from .checkpoint import read_checkpoint, save_official_checkpoint
from .childnet import ChildNet
from .evaluate import evaluate  # noqa: F401  (the shared Trainer calls this module's evaluate)
from .losses import training_loss

__all__ = [
    "FRAMEWORK", "build_model", "create_optimizer", "create_scheduler",
    "create_loss", "current_lr", "ModelEma", "MaskedDropPath", "MaskInjector", "TrainStepOps",
    "train_step",
    "bn_buffers", "optimizer_state", "train_checkpoint_writer",
    "load_train_checkpoint", "Trainer", "train",
]


def build_model(cfg: Any, seed: Optional[int] = None) -> ChildNet:
    """The child net of ``cfg.model`` with the recipe's classes, dropout and drop path, in train mode.

    Weights are timm's initialisation drawn after ``torch.manual_seed(seed)`` (default ``cfg.seed``).
    """
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = ChildNet(child_spec(cfg.model).arch_list, num_classes=cfg.num_classes,
                     drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    return model.train()


def create_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """timm ``RMSpropTF`` as timm 0.1.20's ``create_optimizer`` built it (no decay on bias / 1-D)."""
    return optim.create_retrain_optimizer(model, **optimizer_args(cfg))


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> Tuple[Any, int]:
    """timm's per-epoch schedule (``step`` or ``cosine``); returns it and the epochs to run."""
    return optim.create_retrain_scheduler(optimizer, **scheduler_args(cfg))


def create_loss(cfg: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The recipe's training loss (:func:`.losses.training_loss` of ``cfg.smoothing``)."""
    return training_loss(cfg.smoothing)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (all groups share it here)."""
    return float(optimizer.param_groups[0]["lr"])


class MaskedDropPath(MaskedForward, DropPath):
    """timm's ``DropPath`` whose per-sample mask is given (``.mask``, shape (N,)) instead of drawn
    (:class:`~cream_core.training.injector.MaskedForward`); without a mask, timm's random rule."""

    @staticmethod
    def _cast(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return tensor.to(like.dtype)


class MaskInjector(MaskInjectorBase):
    """Feed numpy drop masks to a model (:class:`~cream_core.training.injector.MaskInjectorBase`):
    drop-path layers become :class:`MaskedDropPath`, the dropout before the classifier a pre-hook
    (without a mask: ``F.dropout``, timm's rule)."""

    drop_path_class = DropPath
    masked_class = MaskedDropPath
    _tensor = staticmethod(Backend.tensor)

    @staticmethod
    def _named_layers(model: nn.Module) -> Iterable[Tuple[str, nn.Module]]:
        return model.named_modules()

    @staticmethod
    def _features(classifier: nn.Linear) -> int:
        return int(classifier.in_features)

    @staticmethod
    def _random_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(x, p=p, training=True)


def bn_buffers(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's buffers (BatchNorm running statistics and counters), by state-dict name."""
    return dict(model.named_buffers())


class TrainStepOps:
    """The torch half of :func:`cream_core.training.step.train_step`."""

    tensor = staticmethod(Backend.tensor)

    @staticmethod
    def zero_grad(optimizer: torch.optim.Optimizer) -> None:
        """Clear the gradients (torch's default: set to ``None``)."""
        optimizer.zero_grad()

    bn_buffers = staticmethod(bn_buffers)
    no_grad = staticmethod(torch.no_grad)

    @staticmethod
    def assign(target: torch.Tensor, value: torch.Tensor) -> None:
        """Copy ``value`` into ``target`` in place."""
        target.copy_(value)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
               images: np.ndarray, labels: np.ndarray, *, injector: Optional[MaskInjector] = None,
               masks: Optional[StepMasks] = None, ema: Optional[ModelEma] = None, shards: int = 1,
               forward_model: Optional[nn.Module] = None) -> float:
    """One optimisation step as the official loop: forward, loss, zero grad, backward, step, EMA
    (:func:`cream_core.training.step.train_step` with :class:`TrainStepOps`).

    ``forward_model`` is what to call (a ``DistributedDataParallel`` wrapper of ``model``).
    ``shards=W`` makes one process compute exactly what ``W`` data-parallel processes with
    per-process BatchNorm compute. Returns the loss (mean over parts). Gradients stay in ``.grad``.
    """
    return core_step.train_step(TrainStepOps, model, optimizer, loss_fn, images, labels,
                                injector=injector, masks=masks, ema=ema, shards=shards,
                                forward_model=forward_model)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The optimizer's state dict (torch keys it by parameter position, stable across processes)."""
    return optimizer.state_dict()


def train_checkpoint_writer(model: nn.Module, ema: Optional[ModelEma],
                            optimizer: torch.optim.Optimizer, epoch: int, cfg: Any
                            ) -> Callable[[Any], None]:
    """``write(f)`` of the official layout (``state_dict``, ``state_dict_ema``, ``optimizer``,
    ``epoch``, ``arch``, ``args``, ``version``), for :func:`cream_core.io.outputs.commit_files`."""
    return lambda f: save_official_checkpoint(
        f, model.state_dict(), ema.ema.state_dict() if ema is not None else None, epoch=epoch,
        args=cfg.to_dict(), arch=official_arch(cfg), optimizer=optimizer_state(model, optimizer))


def load_train_checkpoint(path: str, model: nn.Module, ema: Optional[ModelEma],
                          optimizer: torch.optim.Optimizer, cfg: Any) -> int:
    """Restore model, EMA and optimizer from a checkpoint of :func:`train_checkpoint_writer`;
    returns its epoch. Read with the project's restricted unpickler; every problem is a
    :class:`~cream_core.io.errors.CheckpointError` naming the file, raised before anything changes."""
    obj = check_train_checkpoint(path, read_checkpoint(path), cfg, check_resume_args)
    opt = obj.get("optimizer")
    if not isinstance(opt, Mapping) or not opt.get("param_groups"):
        raise CheckpointError(path, "has no optimizer state, so training cannot resume from it")
    if len(opt["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(path, f"optimizer has {len(opt['param_groups'])} parameter groups, "
                                    f"this run {len(optimizer.param_groups)}")
    check_train_states(path, obj, model.state_dict(), cfg, ema is not None)
    model.load_state_dict(obj["state_dict"], strict=True)
    if ema is not None:
        ema.ema.load_state_dict(obj.get("state_dict_ema", obj["state_dict"]), strict=True)
    optimizer.load_state_dict(opt)
    return int(obj["epoch"])


class Trainer(CoreTrainer):
    """The torch half of :func:`cream_core.training.loop.run_training`: the shared
    :class:`~cream_core.training.trainer.Trainer` over this module's functions and the one
    :class:`~cream_torch_ref.backend.Backend`.

    Args:
        cfg: the recipe (:class:`cream_core.config.retrain.RetrainConfig`).
        distributed: join the process group when launched by the launcher (default: if it did).
        shards: emulate that many data-parallel processes in this one (see :func:`train_step`).
    """

    def __init__(self, cfg: Any, *, distributed: Optional[bool] = None, shards: int = 1) -> None:
        super().__init__(cfg, sys.modules[__name__], Backend(distributed=distributed), shards)


def train(cfg: Any, train_set: ImageDataset, val_set: Optional[ImageDataset] = None,
          output_dir: Optional[str] = None, *, resume: Optional[str] = None,
          workers: Optional[int] = None, progress: bool = True, max_steps: Optional[int] = None,
          shards: int = 1, log: Any = print) -> TrainResult:
    """Retrain ``cfg.model`` on ``train_set`` (evaluating on ``val_set``); see ``run_training``."""
    trainer = Trainer(cfg, shards=shards)
    return run_training(cfg, trainer, train_set, val_set, output_dir, resume=resume,
                        workers=workers, progress=progress, max_steps=max_steps, log=log)
