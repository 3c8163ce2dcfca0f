"""The framework-free half of the one backend per framework (``cream_torch_ref.backend.Backend``,
``cream_paddle.backend.Backend``): how a run starts its processes and threads, the collectives
built on one framework all-reduce (means of floats and of tensors, one flat all-reduce for many
tensors), the one-process short cuts, and nested state converted to and from numpy.

A framework's ``Backend`` subclasses :class:`BackendBase` and supplies the leaves: its launcher's
environment variable, thread and process-group setup, its all-reduce, concatenation, barrier,
state broadcast and data-parallel wrapper, tensor <-> numpy, and the model state in torch's names
and layouts (through :mod:`cream_core.rules`). No framework import.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["CHECKPOINT_SUFFIXES", "BackendBase", "launched"]

#: Each framework's checkpoint file suffix: the one table (a tool checks its outputs before it
#: imports a framework).
CHECKPOINT_SUFFIXES: Mapping[str, str] = {"torch": ".pth.tar", "paddle": ".pdparams"}


def launched(world_size_env: str) -> bool:
    """Whether the launcher started this process as one of several (``world_size_env`` > 1)."""
    return int(os.environ.get(world_size_env, "1")) > 1


class BackendBase:
    """Processes, collectives and numpy conversions of one run (the framework-free half).

    Args:
        distributed: join the process group (default: if the launcher started several processes).
        threads: intra-op threads (``None``: leave the framework's setting).

    Collectives leave their inputs untouched (one semantics for both frameworks); with several
    processes they return new values, with one the inputs themselves, so a caller never changes a
    result in place.
    """

    framework: str = ""
    #: the variable the framework's launcher sets to the number of processes
    world_size_env: str = ""
    #: ``set_threads(n)`` and ``init_distributed() -> (rank, world_size)`` of the framework
    _set_threads: Callable[[Optional[int]], None]
    _init_distributed: Callable[[], Tuple[int, int]]

    def __init__(self, *, distributed: Optional[bool] = None, threads: Optional[int] = None) -> None:
        type(self)._set_threads(threads)
        if distributed is None:
            distributed = launched(self.world_size_env)
        self.rank, self.world_size = type(self)._init_distributed() if distributed else (0, 1)

    # --- the framework half ---------------------------------------------------------------------
    @staticmethod
    def _all_reduce(tensor: Any) -> Any:
        """Sum ``tensor`` over the processes, in place (the framework's all-reduce)."""
        raise NotImplementedError

    @staticmethod
    def _concat(tensors: List[Any]) -> Any:
        """1-D tensors joined end to end (the framework's concatenation)."""
        raise NotImplementedError

    @staticmethod
    def _broadcast_state(model: Any) -> None:
        """Overwrite every state-dict entry of ``model`` with rank 0's (the framework's broadcast)."""
        raise NotImplementedError

    @staticmethod
    def _barrier() -> None:
        """The framework's barrier."""
        raise NotImplementedError

    @staticmethod
    def _data_parallel(model: Any) -> Any:
        """The framework's data-parallel wrapper of ``model``."""
        raise NotImplementedError

    @staticmethod
    def is_tensor(obj: Any) -> bool:
        """Whether ``obj`` is a tensor of this framework."""
        raise NotImplementedError

    @staticmethod
    def tensor(array: Any) -> Any:
        """A tensor of a numpy array."""
        raise NotImplementedError

    @staticmethod
    def to_numpy(tensor: Any) -> np.ndarray:
        """A numpy copy of a tensor (detached)."""
        raise NotImplementedError

    # --- built on it ----------------------------------------------------------------------------
    def mean_over_ranks(self, value: float) -> float:
        """The mean of a float over all processes (float64 all-reduce)."""
        if self.world_size <= 1:
            return value
        total = self.tensor(np.array([value], dtype=np.float64))
        self._all_reduce(total)
        return float(self.to_numpy(total)[0]) / self.world_size

    def broadcast_model(self, model: Any) -> None:
        """Every process takes rank 0's weights and buffers."""
        if self.world_size > 1:
            self._broadcast_state(model)

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            self._barrier()

    def data_parallel(self, model: Any) -> Any:
        """What to call for a data-parallel forward (the framework's wrapper), or ``model``."""
        return self._data_parallel(model) if self.world_size > 1 else model

    def mean_tensors(self, tensors: Sequence[Any]) -> List[Any]:
        """The means of ``tensors`` over all processes (one flat all-reduce in their dtype), as new
        tensors; the inputs are not changed. One process: the inputs themselves."""
        if self.world_size <= 1 or not tensors:
            return list(tensors)
        dtypes = sorted({str(t.dtype) for t in tensors})
        if len(dtypes) > 1:  # torch's concatenation would promote them, Paddle's refuses
            raise ValueError(f"mean_tensors: tensors of one dtype only, got {', '.join(dtypes)}")
        flat = self._concat([t.detach().reshape([-1]) for t in tensors])
        self._all_reduce(flat)
        flat = flat / self.world_size
        out, offset = [], 0
        for t in tensors:
            n = int(np.prod(tuple(t.shape))) if t.ndim else 1
            out.append(flat[offset:offset + n].reshape(t.shape).clone())
            offset += n
        return out

    def mean_floats(self, values: Sequence[float]) -> List[float]:
        """The means of float32 scalars over all processes (one all-reduce)."""
        if self.world_size <= 1:
            return [float(v) for v in values]
        red = self.mean_tensors([self.tensor(np.asarray(list(values), dtype=np.float32))])[0]
        return [float(v) for v in self.to_numpy(red)]

    @classmethod
    def item(cls, value: Any) -> float:
        """The first element of a tensor, or a number, as a float."""
        return float(cls.to_numpy(value).reshape(-1)[0]) if cls.is_tensor(value) else float(value)

    @classmethod
    def tree_to_numpy(cls, obj: Any) -> Any:
        """``obj`` with every tensor inside dicts, lists and tuples made a numpy array (tuples
        become lists)."""
        if cls.is_tensor(obj):
            return cls.to_numpy(obj)
        if isinstance(obj, Mapping):
            return {k: cls.tree_to_numpy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [cls.tree_to_numpy(v) for v in obj]
        return obj

    @classmethod
    def tree_from_numpy(cls, obj: Any) -> Any:
        """``obj`` with every numpy array inside dicts and lists made a tensor (copied)."""
        if isinstance(obj, np.ndarray):
            return cls.tensor(np.array(obj, copy=True))
        if isinstance(obj, Mapping):
            return {k: cls.tree_from_numpy(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [cls.tree_from_numpy(v) for v in obj]
        return obj
