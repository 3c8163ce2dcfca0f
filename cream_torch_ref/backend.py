"""The torch half every tool shares: threads, processes, all-reduce, tensors and state as numpy.

One :class:`Backend` serves retraining (:mod:`cream_torch_ref.train`), the supernet search
(:mod:`cream_torch_ref.search`) and the parity commands; ``cream_paddle.backend`` is its twin (same
class, same methods). State leaves the framework as numpy arrays in *torch's* names and layouts
(the names every file and report uses): here that is the identity, the Paddle twin maps through the
shared rules of :mod:`cream_core.rules`.

Data-parallel runs use the CPU ``gloo`` backend under ``torchrun`` (``WORLD_SIZE > 1``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from cream_core.backend import CHECKPOINT_SUFFIXES, BackendBase, launched

__all__ = ["FRAMEWORK", "CHECKPOINT_SUFFIX", "WORLD_SIZE_ENV", "Backend", "init_distributed",
           "set_threads"]

FRAMEWORK = "torch"
CHECKPOINT_SUFFIX = CHECKPOINT_SUFFIXES[FRAMEWORK]
#: The variable the launcher (``torchrun``) sets to the number of processes.
WORLD_SIZE_ENV = "WORLD_SIZE"


def init_distributed() -> Tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE > 1``) joins the gloo process group."""
    import torch.distributed as dist

    if not launched(WORLD_SIZE_ENV):
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads (``None``/0: torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


class Backend(BackendBase):
    """Processes, collectives and numpy conversions of one torch run
    (:class:`~cream_core.backend.BackendBase` over torch).

    Args:
        distributed: join the process group (default: if the launcher started several processes).
        threads: intra-op threads (``None``: leave torch's setting).
    """

    framework = FRAMEWORK
    world_size_env = WORLD_SIZE_ENV
    _set_threads = staticmethod(set_threads)
    _init_distributed = staticmethod(init_distributed)

    # --- processes ------------------------------------------------------------------------------
    _all_reduce = staticmethod(torch.distributed.all_reduce)
    _concat = staticmethod(torch.cat)

    _barrier = staticmethod(torch.distributed.barrier)
    #: ``DistributedDataParallel`` (gloo, CPU)
    _data_parallel = staticmethod(torch.nn.parallel.DistributedDataParallel)

    @staticmethod
    def _broadcast_state(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for t in list(model.state_dict().values()):
                torch.distributed.broadcast(t, 0)

    # --- tensors <-> numpy ----------------------------------------------------------------------
    @staticmethod
    def seed(seed: int) -> None:
        """Seed torch's generator (weights drawn at construction)."""
        torch.manual_seed(seed)

    is_tensor = staticmethod(torch.is_tensor)

    @staticmethod
    def tensor(array: Any) -> torch.Tensor:
        """A tensor of a numpy array (shared memory where numpy allows)."""
        return torch.from_numpy(np.asarray(array))

    @staticmethod
    def to_numpy(tensor: Any) -> np.ndarray:
        """A numpy copy of a tensor (detached, on the CPU)."""
        return tensor.detach().cpu().numpy().copy()

    # --- model state ----------------------------------------------------------------------------
    @staticmethod
    def native_state(model: torch.nn.Module) -> Dict[str, np.ndarray]:
        """``model``'s state dict as numpy arrays in torch's own names and layouts (no copy)."""
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}

    @staticmethod
    def load_native_state(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
        """Load numpy arrays in torch's names and layouts (strict)."""
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})

    @staticmethod
    def torch_state(model: torch.nn.Module) -> Dict[str, np.ndarray]:
        """``model``'s state dict as numpy copies in torch's names and layouts."""
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    @classmethod
    def load_torch_state(cls, model: torch.nn.Module, state: Mapping[str, Any]) -> None:
        """Load a state dict in torch's names and layouts (strict; here the native one)."""
        cls.load_native_state(model, state)

    @staticmethod
    def named_to_torch(model: torch.nn.Module, named: Iterable[Tuple[str, Any]]
                       ) -> Dict[str, np.ndarray]:
        """Per-parameter tensors (gradients, momentum) keyed by parameter name, as numpy copies in
        torch's names and layouts."""
        return {n: t.detach().cpu().numpy().copy() for n, t in named}

    @staticmethod
    def named_from_torch(model: torch.nn.Module, arrays: Mapping[str, np.ndarray]
                         ) -> Dict[str, torch.Tensor]:
        """The inverse of :meth:`named_to_torch`: tensors keyed by this model's parameter names."""
        return {n: torch.from_numpy(np.array(a, copy=True)) for n, a in arrays.items()}

    @staticmethod
    def trainable(model: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
        """``(name, parameter)`` of every parameter that takes gradients, in model order."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
