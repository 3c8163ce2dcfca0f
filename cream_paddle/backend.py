"""The Paddle half every tool shares: threads, processes, all-reduce, tensors and state as numpy.

Twin of :mod:`cream_torch_ref.backend` (same class, same methods). State leaves the framework as
numpy arrays in *torch's* names and layouts through the shared rules of :mod:`cream_core.rules`
(BatchNorm ``_mean``/``_variance`` -> ``running_mean``/``running_var``, Linear weights transposed,
no ``num_batches_tracked``, which Paddle does not keep); ``native_state`` keeps Paddle's own.

Data-parallel runs use ``paddle.distributed.launch`` (``PADDLE_TRAINERS_NUM > 1``) on the CPU.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import paddle

from cream_core.backend import CHECKPOINT_SUFFIXES, BackendBase, launched
from cream_core.rules import paddle_layout, paddle_to_torch_names, torch_to_paddle_names

__all__ = ["FRAMEWORK", "CHECKPOINT_SUFFIX", "WORLD_SIZE_ENV", "Backend", "init_distributed",
           "set_threads"]

FRAMEWORK = "paddle"
CHECKPOINT_SUFFIX = CHECKPOINT_SUFFIXES[FRAMEWORK]
#: The variable the launcher (``paddle.distributed.launch``) sets to the number of processes.
WORLD_SIZE_ENV = "PADDLE_TRAINERS_NUM"


def init_distributed() -> Tuple[int, int]:
    """``(rank, world_size)``; under ``paddle.distributed.launch`` (several trainers) joins the
    collective group (gloo on CPU)."""
    if not launched(WORLD_SIZE_ENV):
        return 0, 1
    import paddle.distributed as dist

    paddle.set_device("cpu")
    dist.init_parallel_env()
    return dist.get_rank(), dist.get_world_size()


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads (``None``/0: Paddle's default); worker processes started
    later read ``OMP_NUM_THREADS``."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(int(threads))
    core = getattr(getattr(paddle, "base", None), "core", None)
    if core is not None and hasattr(core, "set_num_threads"):
        core.set_num_threads(int(threads))  # the math libraries' thread count


class Backend(BackendBase):
    """Processes, collectives and numpy conversions of one Paddle run (twin of the torch class)."""

    framework = FRAMEWORK
    world_size_env = WORLD_SIZE_ENV
    _set_threads = staticmethod(set_threads)
    _init_distributed = staticmethod(init_distributed)

    # --- processes ------------------------------------------------------------------------------
    _all_reduce = staticmethod(paddle.distributed.all_reduce)
    _concat = staticmethod(paddle.concat)

    _barrier = staticmethod(paddle.distributed.barrier)
    #: ``paddle.DataParallel``
    _data_parallel = staticmethod(paddle.DataParallel)

    @staticmethod
    def _broadcast_state(model: paddle.nn.Layer) -> None:
        for t in model.state_dict().values():
            paddle.distributed.broadcast(t, src=0)

    # --- tensors <-> numpy ----------------------------------------------------------------------
    @staticmethod
    def seed(seed: int) -> None:
        """Seed Paddle's generator (weights drawn at construction)."""
        paddle.seed(seed)

    @staticmethod
    def is_tensor(obj: Any) -> bool:
        """Whether ``obj`` is a Paddle tensor."""
        return isinstance(obj, paddle.Tensor)

    @staticmethod
    def tensor(array: Any) -> paddle.Tensor:
        """A tensor of a numpy array."""
        return paddle.to_tensor(np.asarray(array))

    @staticmethod
    def to_numpy(tensor: Any) -> np.ndarray:
        """A numpy copy of a tensor (detached)."""
        return np.asarray(tensor.detach().numpy()).copy()

    # --- model state ----------------------------------------------------------------------------
    @staticmethod
    def native_state(model: paddle.nn.Layer) -> Dict[str, np.ndarray]:
        """``model``'s state dict as numpy arrays in Paddle's own names and layouts."""
        return {k: np.asarray(v.numpy()) for k, v in model.state_dict().items()}

    @staticmethod
    def load_native_state(model: paddle.nn.Layer, state: Mapping[str, Any]) -> None:
        """Load numpy arrays in Paddle's names and layouts."""
        model.set_state_dict({k: np.asarray(v) for k, v in state.items()})

    @staticmethod
    def torch_state(model: paddle.nn.Layer) -> Dict[str, np.ndarray]:
        """``model``'s state dict as numpy copies in torch's names and layouts (by the rules)."""
        native = {k: np.asarray(v.numpy()).copy() for k, v in model.state_dict().items()}
        return paddle_to_torch_names(native, paddle_layout(model))

    @staticmethod
    def load_torch_state(model: paddle.nn.Layer, state: Mapping[str, Any]) -> None:
        """Load a state dict in torch's names and layouts; every missing, unexpected or mis-shaped
        entry is reported (:class:`cream_core.rules.RuleError`) before anything changes."""
        from cream_core.rules import apply_rules

        mapped = apply_rules(state, paddle_layout(model), to="paddle")
        model.set_state_dict({k: np.asarray(v) for k, v in mapped.state_dict.items()})

    @staticmethod
    def named_to_torch(model: paddle.nn.Layer, named: Iterable[Tuple[str, Any]]
                       ) -> Dict[str, np.ndarray]:
        """Per-parameter tensors (gradients, momentum) keyed by parameter name, as numpy copies in
        torch's names and layouts."""
        arrays = {n: np.asarray(t.detach().numpy()).copy() for n, t in named}
        return paddle_to_torch_names(arrays, paddle_layout(model))

    @staticmethod
    def named_from_torch(model: paddle.nn.Layer, arrays: Mapping[str, np.ndarray]
                         ) -> Dict[str, paddle.Tensor]:
        """The inverse of :meth:`named_to_torch`: tensors keyed by this model's parameter names."""
        mapped = torch_to_paddle_names(arrays, paddle_layout(model))
        return {n: paddle.to_tensor(np.array(a, copy=True)) for n, a in mapped.items()}

    @staticmethod
    def trainable(model: paddle.nn.Layer) -> List[Tuple[str, paddle.Tensor]]:
        """``(name, parameter)`` of every parameter that takes gradients, in model order."""
        return [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
