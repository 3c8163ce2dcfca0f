"""Retrain a Cream child net in Paddle with the official recipe; twin of ``cream_torch_ref.train``.

Same functions and classes as the torch module, built from the Paddle port: :class:`ChildNet` (its
framework differences in :mod:`cream_paddle.compat`), :class:`~cream_paddle.optim.RMSpropTF` (timm's
update: mean square started at 1, eps inside the root, lr in the momentum buffer, L2 decay on the
gradient, none on biases and 1-D parameters), the framework-free schedules of
:mod:`cream_core.training.schedules` stepped per epoch, :class:`~cream_paddle.losses.LabelSmoothingCrossEntropy`,
and :class:`ModelEma`, a re-implementation of timm's ``ModelEma`` (every state-dict entry —
parameters and BatchNorm statistics — updated as ``ema * decay + (1 - decay) * model``).

Data, augmentation, drop masks and the loop are the same framework-free code as for torch
(:mod:`cream_core.training.loop`). Checkpoints are ``.pdparams`` pickles of numpy arrays, readable by
:func:`cream_paddle.checkpoint.load_checkpoint` and ``convert-ckpt``: ``state_dict``,
``state_dict_ema``, ``optimizer`` (accumulators keyed by structured parameter names, so they load in
any process), ``epoch``, ``arch``, ``args``, ``version``. Multi-process runs use
``python -m paddle.distributed.launch`` (gloo on CPU) and ``paddle.DataParallel``.
"""
from __future__ import annotations

import copy
import pickle
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

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

from . import compat, optim
from .backend import FRAMEWORK, Backend
from .blocks import DropPath
from .checkpoint import read_checkpoint
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

_SCHED_KEY = "LR_Scheduler"


def build_model(cfg: Any, seed: Optional[int] = None) -> ChildNet:
    """The child net of ``cfg.model`` with the recipe's classes, dropout and drop path, in train mode.

    Weights are the official initialisation (:func:`compat.init_weights_goog`) drawn after
    ``paddle.seed(seed)`` (default ``cfg.seed``).
    """
    paddle.seed(cfg.seed if seed is None else seed)
    model = ChildNet(child_spec(cfg.model).arch_list, num_classes=cfg.num_classes,
                     drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    model.train()
    return model


def create_optimizer(model: nn.Layer, cfg: Any) -> paddle.optimizer.Optimizer:
    """:class:`~cream_paddle.optim.RMSpropTF` as timm 0.1.20's ``create_optimizer`` built it."""
    return optim.create_retrain_optimizer(model, **optimizer_args(cfg))


def create_scheduler(optimizer: paddle.optimizer.Optimizer, cfg: Any) -> Tuple[Any, int]:
    """The per-epoch schedule (``step`` or ``cosine``) attached to ``optimizer``; and the epochs."""
    return optim.create_retrain_scheduler(optimizer, **scheduler_args(cfg), lr=cfg.lr)


def create_loss(cfg: Any) -> Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]:
    """The recipe's training loss (:func:`.losses.training_loss` of ``cfg.smoothing``)."""
    return training_loss(cfg.smoothing)


def current_lr(optimizer: paddle.optimizer.Optimizer) -> float:
    """The optimizer's learning rate (every group uses it; groups only carry multipliers of 1)."""
    return float(optimizer.get_lr())


class ModelEma:
    """timm's ``ModelEma`` in Paddle: a copy of the model whose every state-dict entry (parameters
    and BatchNorm statistics) follows ``ema = ema * decay + (1 - decay) * model`` after each step.

    The copy is made at construction (deep copy, eval mode, no gradients), as timm does. Arguments
    are timm's: ``device`` may only be ``''`` or ``'cpu'`` (this port runs on the CPU); ``resume``
    names a training checkpoint whose ``state_dict_ema`` is loaded (read safely).
    """

    def __init__(self, model: nn.Layer, decay: float = 0.9999, device: str = "",
                 resume: str = "") -> None:
        if device not in ("", "cpu"):
            raise ValueError(f"ModelEma: device {device!r} is not supported (CPU only)")
        self.ema = copy.deepcopy(model)
        self.ema.eval()
        self.decay = decay
        self.device = device
        if resume:
            obj = read_checkpoint(resume)
            if not isinstance(obj, Mapping) or "state_dict_ema" not in obj:
                raise CheckpointError(resume, "has no 'state_dict_ema' to resume the EMA from")
            Backend.load_native_state(self.ema, obj["state_dict_ema"])
        for p in self.ema.parameters():
            p.stop_gradient = True

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        """One EMA step towards ``model``'s current state."""
        msd = model.state_dict()
        for k, ema_v in self.ema.state_dict().items():
            model_v = msd[k].detach()
            paddle.assign(ema_v * self.decay + (1.0 - self.decay) * model_v, output=ema_v)


class MaskedDropPath(MaskedForward, DropPath):
    """The port's ``DropPath`` with a given per-sample mask (``.mask``, shape (N,))
    (:class:`~cream_core.training.injector.MaskedForward`); without a mask, the random rule of
    :func:`compat.drop_path`."""

    @staticmethod
    def _cast(tensor: paddle.Tensor, like: paddle.Tensor) -> paddle.Tensor:
        return tensor.astype(like.dtype)


class MaskInjector(MaskInjectorBase):
    """Feed numpy drop masks to a model (twin of the torch class): drop-path layers become
    :class:`MaskedDropPath`; dropout before the classifier becomes a pre-hook on the classifier.

    The model's own dropout (:func:`compat.dropout`, ``upscale_in_train``) is switched off while the
    injector is installed; its rule — kept units scaled by ``1/(1-p)`` — is the mask's.
    """

    drop_path_class = DropPath
    masked_class = MaskedDropPath
    _tensor = staticmethod(Backend.tensor)

    @staticmethod
    def _named_layers(model: nn.Layer) -> Iterable[Tuple[str, nn.Layer]]:
        return model.named_sublayers()

    @staticmethod
    def _features(classifier: nn.Linear) -> int:
        return int(classifier.weight.shape[0])  # Linear is [in, out]

    @staticmethod
    def _random_dropout(x: paddle.Tensor, p: float) -> paddle.Tensor:
        return compat.dropout(x, p, True)


def bn_buffers(model: nn.Layer) -> Dict[str, paddle.Tensor]:
    """The model's non-trainable state (BatchNorm ``_mean`` / ``_variance``), by state-dict name.

    Paddle keeps BatchNorm statistics as parameters with ``stop_gradient=True``, not as buffers, so
    they are the state-dict entries that are not trainable parameters.
    """
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    return {k: v for k, v in model.state_dict().items() if k not in trainable}


class TrainStepOps:
    """The Paddle half of :func:`cream_core.training.step.train_step` (twin of the torch class)."""

    tensor = staticmethod(Backend.tensor)

    @staticmethod
    def zero_grad(optimizer: paddle.optimizer.Optimizer) -> None:
        """Clear the gradients."""
        optimizer.clear_grad()

    bn_buffers = staticmethod(bn_buffers)
    no_grad = staticmethod(paddle.no_grad)

    @staticmethod
    def assign(target: paddle.Tensor, value: paddle.Tensor) -> None:
        """Copy ``value`` into ``target`` in place."""
        paddle.assign(value, output=target)


def train_step(model: nn.Layer, optimizer: paddle.optimizer.Optimizer, loss_fn: nn.Layer,
               images: np.ndarray, labels: np.ndarray, *, injector: Optional[MaskInjector] = None,
               masks: Optional[StepMasks] = None, ema: Optional[ModelEma] = None, shards: int = 1,
               forward_model: Optional[nn.Layer] = None) -> float:
    """One optimisation step, as the torch twin (:func:`cream_core.training.step.train_step` with
    :class:`TrainStepOps`)."""
    return core_step.train_step(TrainStepOps, model, optimizer, loss_fn, images, labels,
                                injector=injector, masks=masks, ema=ema, shards=shards,
                                forward_model=forward_model)


def _plain(v: Any) -> Any:
    """Python scalars/containers only (the restricted reader accepts no numpy scalar types)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int, bool)) and not isinstance(v, bool):
        return int(v)
    return v


def _param_names(model: nn.Layer) -> Dict[str, str]:
    """Paddle's generated parameter name (``conv2d_3.w_0``) -> structured name (``conv_stem.weight``)."""
    return {p.name: n for n, p in model.named_parameters()}


def _split_owner(key: str, owners: List[str]) -> Optional[Tuple[str, str]]:
    for owner in owners:  # longest first
        if key.startswith(owner + "_"):
            return owner, key[len(owner):]
    return None


def optimizer_state(model: nn.Layer, optimizer: paddle.optimizer.Optimizer) -> Dict[str, Any]:
    """The optimizer's accumulators as ``{structured name: {suffix: array}}`` plus the schedule."""
    names = _param_names(model)
    owners = sorted(names, key=len, reverse=True)
    acc: Dict[str, Dict[str, np.ndarray]] = {}
    out: Dict[str, Any] = {"accumulators": acc}
    for key, value in optimizer.state_dict().items():
        if key == _SCHED_KEY:
            out[_SCHED_KEY] = _plain(dict(value))
            continue
        hit = _split_owner(key, owners)
        if hit is None or not hasattr(value, "numpy"):
            continue  # nothing else is kept by RMSProp
        acc.setdefault(names[hit[0]], {})[hit[1]] = np.asarray(value.numpy())
    return out


def _load_optimizer_state(path: str, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
                          state: Mapping[str, Any]) -> None:
    acc = state.get("accumulators")
    if not isinstance(acc, Mapping) or not acc:
        raise CheckpointError(path, "has no optimizer state, so training cannot resume from it")
    structured = {n: p.name for n, p in model.named_parameters()}
    unknown = sorted(set(acc) - set(structured))
    if unknown:
        raise CheckpointError(path, f"optimizer state for unknown parameter(s) {unknown[:3]}")
    sd: Dict[str, Any] = {}
    for name, entries in acc.items():
        for suffix, arr in entries.items():
            sd[structured[name] + suffix] = paddle.to_tensor(np.asarray(arr))
    if _SCHED_KEY in state:
        sd[_SCHED_KEY] = dict(state[_SCHED_KEY])
    optimizer.set_state_dict(sd)


def train_checkpoint_writer(model: nn.Layer, ema: Optional[ModelEma],
                            optimizer: paddle.optimizer.Optimizer, epoch: int, cfg: Any
                            ) -> Callable[[Any], None]:
    """``write(f)`` of a ``.pdparams`` training checkpoint, for
    :func:`cream_core.io.outputs.commit_files` (the state is taken now, not when ``f`` is written)."""
    obj: Dict[str, Any] = {
        "epoch": int(epoch), "arch": official_arch(cfg), "args": _plain(cfg.to_dict()),
        "version": 2, "state_dict": Backend.native_state(model),
        "optimizer": optimizer_state(model, optimizer),
    }
    if ema is not None:
        obj["state_dict_ema"] = Backend.native_state(ema.ema)
    return lambda f: pickle.dump(obj, f, protocol=4)


def load_train_checkpoint(path: str, model: nn.Layer, ema: Optional[ModelEma],
                          optimizer: paddle.optimizer.Optimizer, cfg: Any) -> int:
    """Restore model, EMA and optimizer from :func:`train_checkpoint_writer`'s file; returns its epoch."""
    obj = check_train_checkpoint(path, read_checkpoint(path), cfg, check_resume_args)
    if not isinstance(obj.get("optimizer"), Mapping):
        raise CheckpointError(path, "has no optimizer state, so training cannot resume from it")
    check_train_states(path, obj, model.state_dict(), cfg, ema is not None)
    _load_optimizer_state(path, model, optimizer, obj["optimizer"])
    Backend.load_native_state(model, obj["state_dict"])
    if ema is not None:
        Backend.load_native_state(ema.ema, obj.get("state_dict_ema", obj["state_dict"]))
    return int(obj["epoch"])


class Trainer(CoreTrainer):
    """The Paddle half of :func:`cream_core.training.loop.run_training` (twin of the torch class:
    the shared trainer over this module's functions and the one Paddle ``Backend``)."""

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
