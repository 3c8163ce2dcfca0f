"""The trainer both frameworks hand to :func:`cream_core.training.loop.run_training`, once.

``cream_torch_ref.train.Trainer`` and ``cream_paddle.train.Trainer`` are this class over their own
module's functions (a :class:`TrainOps`: model, optimizer, schedule, loss, EMA, mask injector, the
step, evaluation, checkpoint files) and their one ``Backend`` (processes, collectives). Nothing
here touches a framework.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Protocol, Tuple

from cream_core.backend import BackendBase
from cream_core.data.evaluation import EvalResult
from cream_core.data.loader import EvalLoader
from cream_core.data.train_loader import TrainBatch
from cream_core.training.masks import MaskSpec, StepMasks

__all__ = ["TrainOps", "Trainer", "optimizer_args", "scheduler_args"]


def optimizer_args(cfg: Any) -> Dict[str, float]:
    """The recipe's ``create_retrain_optimizer`` keywords (RMSpropTF: lr, eps, momentum, decay,
    alpha), the same for both frameworks."""
    return dict(lr=cfg.lr, eps=cfg.opt_eps, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, alpha=cfg.rmsprop_alpha)


def scheduler_args(cfg: Any) -> Dict[str, Any]:
    """The recipe's ``create_retrain_scheduler`` arguments after the optimizer (schedule name,
    epochs, decay, warm-up, cool-down), the same for both frameworks."""
    return dict(sched=cfg.sched, epochs=cfg.epochs, min_lr=cfg.min_lr,
                decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate, warmup_lr=cfg.warmup_lr,
                warmup_epochs=cfg.warmup_epochs, cooldown_epochs=cfg.cooldown_epochs)


class TrainOps(Protocol):
    """What a framework's ``train`` module supplies (its module-level names)."""

    FRAMEWORK: str
    ModelEma: Any
    MaskInjector: Any

    def build_model(self, cfg: Any, seed: Optional[int] = None) -> Any: ...  # noqa: D102,E704

    def create_optimizer(self, model: Any, cfg: Any) -> Any: ...  # noqa: D102,E704

    def create_scheduler(self, optimizer: Any, cfg: Any) -> Tuple[Any, int]: ...  # noqa: D102,E704

    def create_loss(self, cfg: Any) -> Any: ...  # noqa: D102,E704

    def current_lr(self, optimizer: Any) -> float: ...  # noqa: D102,E704

    def train_step(self, model: Any, optimizer: Any, loss_fn: Any, images: Any, labels: Any,  # noqa: D102
                   **kwargs: Any) -> float: ...  # noqa: E704

    def evaluate(self, model: Any, loader: EvalLoader, **kwargs: Any) -> Any: ...  # noqa: D102,E704

    def train_checkpoint_writer(self, model: Any, ema: Any, optimizer: Any, epoch: int,  # noqa: D102
                                cfg: Any) -> Callable[[Any], None]: ...  # noqa: E704

    def load_train_checkpoint(self, path: str, model: Any, ema: Any, optimizer: Any,  # noqa: D102
                              cfg: Any) -> int: ...  # noqa: E704


class Trainer:
    """A framework's half of :func:`~cream_core.training.loop.run_training` (its ``TrainerProtocol``).

    Args:
        cfg: the recipe (:class:`cream_core.config.retrain.RetrainConfig`).
        ops: the framework's ``train`` module.
        backend: the framework's ``Backend`` (rank, world size, collectives, data-parallel wrapper).
        shards: emulate that many data-parallel processes in this one (see ``train_step``).
    """

    def __init__(self, cfg: Any, ops: TrainOps, backend: BackendBase, shards: int = 1) -> None:
        self.cfg = cfg
        self.ops = ops
        self.framework = ops.FRAMEWORK
        self.backend = backend
        self.rank, self.world_size = backend.rank, backend.world_size
        self.shards = shards
        self.model = ops.build_model(cfg)
        self.optimizer = ops.create_optimizer(self.model, cfg)
        self.scheduler, self.epochs = ops.create_scheduler(self.optimizer, cfg)
        self.ema = ops.ModelEma(self.model, decay=cfg.ema_decay) if cfg.ema else None
        self.injector = ops.MaskInjector(self.model)
        self.loss_fn = ops.create_loss(cfg)
        self.forward_model = backend.data_parallel(self.model)

    @property
    def has_ema(self) -> bool:
        """Whether an EMA of the weights is kept (and evaluated)."""
        return self.ema is not None

    def mask_spec(self) -> MaskSpec:
        """What the model drops (drop-path probabilities, dropout rate)."""
        return self.injector.spec()

    def train_step(self, batch: TrainBatch, masks: StepMasks) -> float:
        """One optimisation step on ``batch`` with the given drop masks; returns the loss."""
        return self.ops.train_step(self.model, self.optimizer, self.loss_fn, batch.images,
                                   batch.labels, injector=self.injector, masks=masks, ema=self.ema,
                                   shards=self.shards, forward_model=self.forward_model)

    def lr(self) -> float:
        """The current learning rate."""
        return self.ops.current_lr(self.optimizer)

    def set_epoch(self, epoch: int) -> None:
        """Step the per-epoch schedule to ``epoch``."""
        self.scheduler.step(epoch)

    def evaluate(self, loader: EvalLoader, ema: bool) -> EvalResult:
        """Evaluate the model (or its EMA) eagerly; the model is back in train mode after."""
        model = self.ema.ema if ema and self.ema is not None else self.model
        try:
            return self.ops.evaluate(model, loader, mode="eager",
                                     desc=f"{self.framework} eval{' EMA' if ema else ''}")
        finally:
            self.model.train()

    def checkpoint_writer(self, epoch: int) -> Callable[[Any], None]:
        """``write(f)`` of a training checkpoint of the current state."""
        return self.ops.train_checkpoint_writer(self.model, self.ema, self.optimizer, epoch,
                                                self.cfg)

    def load(self, path: str) -> int:
        """Restore model, EMA and optimizer from ``path``; returns its epoch."""
        return self.ops.load_train_checkpoint(path, self.model, self.ema, self.optimizer, self.cfg)

    def mean_over_ranks(self, value: float) -> float:
        """The mean of ``value`` over all processes."""
        return self.backend.mean_over_ranks(value)

    def barrier(self) -> None:
        """Wait for every process."""
        self.backend.barrier()
