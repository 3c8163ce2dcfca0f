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
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import ModelEma

from cream_core.arch import child_spec
from cream_core.io.atomic import atomic_write
from cream_core.io.errors import CheckpointError
from cream_core.data.datasets import ImageDataset
from cream_core.training.loop import TrainResult, run_training
from cream_core.training.trainer import Trainer as CoreTrainer
from cream_core.training.masks import MaskSpec, StepMasks

from . import optim
from .backend import CHECKPOINT_SUFFIX, FRAMEWORK, Backend, init_distributed
from .blocks import DropPath
from .checkpoint import check_state_dict, read_checkpoint, save_official_checkpoint
from .childnet import ChildNet
from .evaluate import evaluate  # noqa: F401  (the shared Trainer calls this module's evaluate)
from .losses import LabelSmoothingCrossEntropy

__all__ = [
    "FRAMEWORK", "CHECKPOINT_SUFFIX", "build_model", "create_optimizer", "create_scheduler",
    "create_loss", "current_lr", "ModelEma", "MaskedDropPath", "MaskInjector", "train_step",
    "bn_buffers", "optimizer_state", "save_train_checkpoint", "train_checkpoint_writer",
    "load_train_checkpoint", "init_distributed", "Trainer", "train",
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
    return optim.create_retrain_optimizer(model, lr=cfg.lr, eps=cfg.opt_eps, momentum=cfg.momentum,
                                          weight_decay=cfg.weight_decay, alpha=cfg.rmsprop_alpha)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> Tuple[Any, int]:
    """timm's per-epoch schedule (``step`` or ``cosine``); returns it and the epochs to run."""
    return optim.create_retrain_scheduler(
        optimizer, cfg.sched, epochs=cfg.epochs, min_lr=cfg.min_lr, decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
        cooldown_epochs=cfg.cooldown_epochs)


def create_loss(cfg: Any) -> nn.Module:
    """Label-smoothing cross-entropy (timm's) when ``cfg.smoothing > 0``, else cross-entropy."""
    return LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (all groups share it here)."""
    return float(optimizer.param_groups[0]["lr"])


class MaskedDropPath(DropPath):
    """timm's ``DropPath`` whose per-sample mask is given (``.mask``, shape (N,)) instead of drawn.

    Without a mask it falls back to timm's random rule, so the model stays usable on its own.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__(drop_prob, scale_by_keep)
        self.mask: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.training or self.drop_prob == 0.0:
            return x
        if self.mask is None:
            return super().forward(x)
        if self.mask.shape[0] != x.shape[0]:
            raise RuntimeError(f"drop-path mask is for {self.mask.shape[0]} samples, the batch has "
                               f"{x.shape[0]}")
        return x * self.mask.view([-1] + [1] * (x.ndim - 1)).to(x.dtype)


class MaskInjector:
    """Feed numpy drop masks to a model: drop-path layers become :class:`MaskedDropPath`, and the
    dropout before the classifier becomes a pre-hook multiplying the classifier's input by a mask.

    ``set(masks)`` before each training forward; ``remove()`` restores the model (the swapped layers
    hold no weights, so the state dict never changes).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._swapped: List[Tuple[nn.Module, str, nn.Module]] = []
        self.layers: List[MaskedDropPath] = []
        for name, mod in list(model.named_modules()):
            if type(mod) is DropPath:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                new = MaskedDropPath(mod.drop_prob, mod.scale_by_keep)
                setattr(parent, attr, new)
                self._swapped.append((parent, attr, mod))
                self.layers.append(new)
            elif isinstance(mod, MaskedDropPath):
                self.layers.append(mod)
        self.drop_rate = float(getattr(model, "drop_rate", 0.0))
        self.dropout_mask: Optional[torch.Tensor] = None
        model.drop_rate = 0.0  # the hook applies dropout instead of forward_head
        self._hook = model.get_classifier().register_forward_pre_hook(self._dropout)

    def spec(self) -> MaskSpec:
        """What the model drops: drop-path probabilities in model order and the dropout rate."""
        return MaskSpec(tuple(float(m.drop_prob) for m in self.layers), self.drop_rate,
                        int(self.model.get_classifier().in_features))

    def set(self, masks: Optional[StepMasks]) -> None:
        """Use ``masks`` for the next forward (``None``: timm's random rule)."""
        if masks is None:
            for layer in self.layers:
                layer.mask = None
            self.dropout_mask = None
            return
        if len(masks.drop_path) != len(self.layers):
            raise ValueError(f"{len(masks.drop_path)} drop-path masks for {len(self.layers)} layers")
        for layer, m in zip(self.layers, masks.drop_path):
            layer.mask = None if m is None else torch.from_numpy(np.ascontiguousarray(m))
        self.dropout_mask = None if masks.dropout is None else torch.from_numpy(
            np.ascontiguousarray(masks.dropout))

    def _dropout(self, module: nn.Module, args: Tuple[torch.Tensor, ...]) -> Optional[tuple]:
        if not self.model.training or self.drop_rate <= 0.0:
            return None
        x = args[0]
        if self.dropout_mask is None:
            return (F.dropout(x, p=self.drop_rate, training=True),) + tuple(args[1:])
        if tuple(self.dropout_mask.shape) != tuple(x.shape):
            raise RuntimeError(f"dropout mask has shape {tuple(self.dropout_mask.shape)}, the "
                               f"classifier input {tuple(x.shape)}")
        return (x * self.dropout_mask.to(x.dtype),) + tuple(args[1:])

    def remove(self) -> None:
        """Put the original layers and the model's own dropout back."""
        self._hook.remove()
        for parent, attr, orig in self._swapped:
            setattr(parent, attr, orig)
        self.model.drop_rate = self.drop_rate
        self._swapped.clear()


def bn_buffers(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's buffers (BatchNorm running statistics and counters), by state-dict name."""
    return dict(model.named_buffers())


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
               images: np.ndarray, labels: np.ndarray, *, injector: Optional[MaskInjector] = None,
               masks: Optional[StepMasks] = None, ema: Optional[ModelEma] = None, shards: int = 1,
               forward_model: Optional[nn.Module] = None) -> float:
    """One optimisation step as the official loop: forward, loss, zero grad, backward, step, EMA.

    ``forward_model`` is what to call (a ``DistributedDataParallel`` wrapper of ``model``).
    ``shards=W`` splits the batch in ``W`` equal parts, each normalised by BatchNorm on its own, the
    loss averaged over parts and the running statistics kept from part 0: exactly what ``W``
    data-parallel processes with per-process BatchNorm compute (DDP averages gradients and
    broadcasts rank 0's buffers). Returns the loss (mean over parts). Gradients stay in ``.grad``.
    """
    net = forward_model if forward_model is not None else model
    model.train()
    n = int(labels.shape[0])
    if shards < 1 or n % shards:
        raise ValueError(f"batch of {n} cannot be split into {shards} equal shards")
    per = n // shards
    optimizer.zero_grad()
    total = 0.0
    keep: Optional[Dict[str, torch.Tensor]] = None
    for s in range(shards):
        lo, hi = s * per, (s + 1) * per
        if injector is not None:
            injector.set(masks.rows(lo, hi) if masks is not None else None)
        x = torch.from_numpy(np.ascontiguousarray(images[lo:hi]))
        y = torch.from_numpy(np.ascontiguousarray(labels[lo:hi]))
        loss = loss_fn(net(x), y)
        (loss / shards if shards > 1 else loss).backward()
        total += float(loss.detach())
        if shards > 1 and s == 0:
            keep = {k: v.detach().clone() for k, v in bn_buffers(model).items()}
    if keep is not None:
        with torch.no_grad():
            for k, v in bn_buffers(model).items():
                v.copy_(keep[k])
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return total / shards


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The optimizer's state dict (torch keys it by parameter position, stable across processes)."""
    return optimizer.state_dict()


def _official_arch(cfg: Any) -> str:
    return f"{cfg.model.split('-')[1]}m_retrain"  # the official MODEL name, e.g. '14m_retrain'


def train_checkpoint_writer(model: nn.Module, ema: Optional[ModelEma],
                            optimizer: torch.optim.Optimizer, epoch: int, cfg: Any
                            ) -> Callable[[Any], None]:
    """``write(f)`` of the official layout (``state_dict``, ``state_dict_ema``, ``optimizer``,
    ``epoch``, ``arch``, ``args``, ``version``), for :func:`cream_core.io.outputs.commit_files`."""
    return lambda f: save_official_checkpoint(
        f, model.state_dict(), ema.ema.state_dict() if ema is not None else None, epoch=epoch,
        args=cfg.to_dict(), arch=_official_arch(cfg), optimizer=optimizer_state(model, optimizer))


def save_train_checkpoint(path: str, model: nn.Module, ema: Optional[ModelEma],
                          optimizer: torch.optim.Optimizer, epoch: int, cfg: Any) -> None:
    """Write :func:`train_checkpoint_writer`'s checkpoint atomically (temporary file, rename)."""
    atomic_write(path, train_checkpoint_writer(model, ema, optimizer, epoch, cfg))


def _check_args(path: str, args: Any, cfg: Any) -> None:
    from cream_core.config.retrain import check_resume_args

    check_resume_args(path, args, cfg)


def load_train_checkpoint(path: str, model: nn.Module, ema: Optional[ModelEma],
                          optimizer: torch.optim.Optimizer, cfg: Any) -> int:
    """Restore model, EMA and optimizer from a checkpoint of :func:`save_train_checkpoint`;
    returns its epoch. Read with the project's restricted unpickler; every problem is a
    :class:`~cream_core.io.errors.CheckpointError` naming the file, raised before anything changes."""
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping) or "state_dict" not in obj or "epoch" not in obj:
        raise CheckpointError(path, "is not a training checkpoint (needs 'state_dict' and 'epoch' "
                                    "to resume)")
    _check_args(path, obj.get("args"), cfg)
    opt = obj.get("optimizer")
    if not isinstance(opt, Mapping) or not opt.get("param_groups"):
        raise CheckpointError(path, "has no optimizer state, so training cannot resume from it")
    if len(opt["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(path, f"optimizer has {len(opt['param_groups'])} parameter groups, "
                                    f"this run {len(optimizer.param_groups)}")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, obj["state_dict"], path, what=f"{cfg.model} ({cfg.num_classes} "
                                                             "classes)")
    if ema is not None and "state_dict_ema" in obj:
        check_state_dict(expected, obj["state_dict_ema"], path, what="the EMA model")
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
