"""One search run's state, framework-free: supernet, optimizer, board, path sampler, LR schedule,
iteration counter, and the resumable checkpoint state.

A framework supplies a :class:`SearchFramework` (``cream_torch_ref.search.SearchOps`` and its
Paddle twin): the step's operations (:class:`cream_core.search.step.StepOps`), its backend, the
supernet and torch 1.2 optimizer builders, and its checkpoint files. :class:`Searcher` does the
bookkeeping around them once for both.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from cream_core.arch.supernet import flops_table
from cream_core.io.errors import CheckpointError
from cream_core.io.statecheck import compare_shapes
from cream_core.search.board import BoardEntry, PrioritizedBoard
from cream_core.search.legacy_sgd import LegacySGDBase
from cream_core.search.records import StepOutput
from cream_core.search.step import StepOps, search_step

__all__ = ["SearchFramework", "Searcher", "plain_config"]


class SearchFramework(StepOps, Protocol):
    """What a framework supplies besides the step's operations (a class with static methods)."""

    framework: str
    #: the framework's LegacySGD: ``(model, lr, meta_lr, momentum, weight_decay, nesterov)``
    optimizer: Callable[..., LegacySGDBase]

    def make_loss_fn(self, smoothing: float) -> Callable[[Any, Any], Any]: ...  # noqa: D102,E704

    def cross_entropy(self, output: Any, target: Any) -> Any: ...  # noqa: D102,E704

    def create_supernet(self, flops_minimum: float, flops_maximum: float, num_classes: int,  # noqa: D102
                        slice: int, drop_rate: float, global_pool: str) -> Tuple[Any, Any, int]: ...  # noqa: E704

    def checkpoint_writer(self, model_state: Mapping[str, np.ndarray], search_state: Dict[str, Any],  # noqa: D102
                          epoch: int, arch: str, args: Dict[str, Any]) -> Callable[[Any], None]: ...  # noqa: E704

    def read_checkpoint(self, path: str) -> Any: ...  # noqa: D102,E704

    def child_writer(self, state: Mapping[str, np.ndarray], label: str  # noqa: D102
                     ) -> Callable[[Any], None]: ...  # noqa: E704


def plain_config(cfg: Any) -> Dict[str, Any]:
    """A ``SearchConfig`` as plain values (lists for tuples, without ``ignored``), as checkpoints
    store it."""
    d = asdict(cfg)
    d.pop("ignored", None)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


class Searcher:
    """Supernet, optimizer, schedule, board and sampler of one search run (one process).

    ``schedule`` gives the learning-rate factor of an iteration (``factor(i)``, the official
    per-iteration linear decay); ``threads`` the framework's intra-op threads. The supernet is
    drawn after seeding with ``cfg.seed`` and, in a data-parallel run, every process takes rank 0's
    weights. :meth:`checkpoint_state` / :meth:`restore` make checkpoints that resume the run exactly
    (weights, momentum, live gradients, board with its tensors, the sampler's random state, the
    iteration counter).
    """

    def __init__(self, fw: SearchFramework, cfg: Any, schedule: Any,
                 threads: Optional[int] = None) -> None:
        self.fw = fw
        self.cfg = cfg
        self.backend = fw.backend(threads=threads)
        self.backend.seed(cfg.seed)
        self.model, _, self.resolution = fw.create_supernet(
            cfg.flops_minimum, cfg.flops_maximum, cfg.num_classes, slice=cfg.slice,
            drop_rate=cfg.dropout_rate, global_pool=cfg.gp)
        self.backend.broadcast_model(self.model)
        self.flops = flops_table(self.model.plan)
        self.board = PrioritizedBoard(
            self.model.plan.sta_num, choice_num=self.model.plan.choice_num, pool_size=cfg.pool_size,
            meta_sta_epoch=cfg.meta_sta_epoch, pick_method=cfg.pick_method,
            how_to_prob=cfg.how_to_prob, pre_prob=cfg.pre_prob)
        self.optimizer = fw.optimizer(self.model, cfg.lr, cfg.meta_lr, cfg.momentum,
                                      cfg.weight_decay, cfg.nesterov)
        self.schedule = schedule
        self.loss_fn = fw.make_loss_fn(cfg.smoothing)
        self.rng = np.random.RandomState(cfg.seed)
        self.iteration = 0

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.backend.rank

    @property
    def world_size(self) -> int:
        """The number of processes."""
        return self.backend.world_size

    def _labels(self, y: np.ndarray) -> Any:
        return self.backend.tensor(y.astype(np.int64))

    def train_batch(self, x: np.ndarray, y: np.ndarray, epoch: int, batch_idx: int) -> StepOutput:
        """Sample a path and run one iteration on a numpy batch; the LR follows the official schedule."""
        factor = self.schedule.factor(self.iteration)
        self.optimizer.set_lr(self.cfg.lr * factor, self.cfg.meta_lr * factor)
        cand = self.board.sample(self.rng, self.board.get_prob())
        self.model.train()
        replicas = self.backend if self.backend.world_size > 1 else None
        out = search_step(self.fw, self.model, self.optimizer, self.board, self.backend.tensor(x),
                          self._labels(y), cand, epoch, batch_idx, self.cfg, self.loss_fn,
                          self.flops, replicas=replicas)
        self.iteration += 1
        return out

    def current_lr(self) -> float:
        """Mean lr over the parameter groups, as the official log prints it."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    def eval_batch(self, x: np.ndarray, y: np.ndarray, cand: Sequence[Sequence[int]]
                   ) -> Tuple[float, float, float]:
        """(loss, prec1, prec5) of path ``cand`` in eval mode (the official ``validate``)."""
        self.model.eval()
        with self.fw.no_grad():
            out = self.model(self.backend.tensor(x), cand)
            t = self._labels(y)
            loss = float(self.fw.cross_entropy(out, t))
            p1, p5 = self.fw.accuracy(out, t)
        return loss, p1, p5

    def model_state(self) -> Dict[str, np.ndarray]:
        """The supernet's state dict as numpy arrays in the framework's own layout."""
        return self.backend.native_state(self.model)

    def checkpoint_state(self, epoch: int, next_step: int, best_seen: Mapping[str, Any]
                         ) -> Dict[str, Any]:
        """The resumable state besides the weights, as numpy arrays (the framework's layout) and
        plain Python values."""
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        to_numpy = self.backend.tree_to_numpy
        opt = self.optimizer.state_dict()
        return {"framework": self.fw.framework, "config": plain_config(self.cfg),
                "epoch": int(epoch), "next_step": int(next_step), "iteration": int(self.iteration),
                "rng": [str(name), [int(k) for k in np.asarray(keys).ravel()], int(pos),
                        int(has_gauss), float(cached)],
                "live": opt["live"], "lr": [float(lr) for lr in opt["lr"]],
                "momentum": opt["momentum_buffer"],
                "board": [{"prec1": float(e.prec1), "flops": float(e.flops), "cand": e.cand,
                           "data": to_numpy(e.data), "feat": to_numpy(e.feat)}
                          for e in self.board.board],
                "best_seen": dict(best_seen)}

    def restore(self, model_state: Mapping[str, np.ndarray], state: Mapping[str, Any],
                path: str) -> None:
        """Continue from :meth:`model_state` and :meth:`checkpoint_state` as a checkpoint at
        ``path`` holds them; a checkpoint that does not fit is a :class:`CheckpointError`."""
        try:
            self._restore(model_state, state)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(path, f"cannot resume from it ({e})") from None

    def _restore(self, model_state: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        # keys and shapes first: Paddle's set_state_dict only warns on a mis-shaped entry and
        # keeps the fresh weights
        fit = compare_shapes({k: tuple(v.shape) for k, v in self.model.state_dict().items()},
                             {k: tuple(np.shape(v)) for k, v in model_state.items()})
        if not fit.ok:
            raise ValueError(f"checkpoint does not fit this supernet: {fit.summary()}")
        name, keys, pos, has_gauss, cached = state["rng"]
        rng_state = (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        self.backend.load_native_state(self.model, model_state)
        self.optimizer.load_state_dict({"momentum_buffer": state["momentum"], "live": state["live"],
                                        "lr": state["lr"]})
        tensor = self.backend.tensor
        self.board.restore([BoardEntry(float(e["prec1"]), float(e["flops"]),
                                       [list(s) for s in e["cand"]], tensor(np.asarray(e["data"])),
                                       tensor(np.asarray(e["feat"])))
                            for e in state["board"]])
        self.rng.set_state(rng_state)
        self.iteration = int(state["iteration"])
