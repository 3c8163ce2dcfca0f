"""The torch half every tool shares: threads, processes, all-reduce, tensors and state as numpy.

One :class:`Backend` serves retraining (:mod:`cream_torch_ref.train`), the supernet search
(:mod:`cream_torch_ref.search`) and the parity commands; ``cream_paddle.backend`` is its twin (same
class, same methods). State leaves the framework as numpy arrays in *torch's* names and layouts
(the names every file and report uses): here that is the identity, the Paddle twin maps through the
shared rules of :mod:`cream_core.rules`.

Data-parallel runs use the CPU ``gloo`` backend under ``torchrun`` (``WORLD_SIZE > 1``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["FRAMEWORK", "CHECKPOINT_SUFFIX", "WORLD_SIZE_ENV", "Backend", "init_distributed",
           "launched", "set_threads"]

FRAMEWORK = "torch"
CHECKPOINT_SUFFIX = ".pth.tar"
#: The variable the launcher (``torchrun``) sets to the number of processes.
WORLD_SIZE_ENV = "WORLD_SIZE"


def launched() -> bool:
    """Whether this process was started by the launcher as one of several."""
    return int(os.environ.get(WORLD_SIZE_ENV, "1")) > 1


def init_distributed() -> Tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE > 1``) joins the gloo process group."""
    import torch.distributed as dist

    if not launched():
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads (``None``/0: torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


class Backend:
    """Processes, collectives and numpy conversions of one torch run.

    Args:
        distributed: join the process group (default: if the launcher started several processes).
        threads: intra-op threads (``None``: leave torch's setting).

    Collectives return new values and leave their inputs untouched (one semantics for both
    frameworks: :meth:`mean_tensors`).
    """

    framework = FRAMEWORK
    checkpoint_suffix = CHECKPOINT_SUFFIX

    def __init__(self, *, distributed: Optional[bool] = None, threads: Optional[int] = None) -> None:
        set_threads(threads)
        if distributed is None:
            distributed = launched()
        self.rank, self.world_size = init_distributed() if distributed else (0, 1)

    # --- processes ------------------------------------------------------------------------------
    def mean_over_ranks(self, value: float) -> float:
        """The mean of a float over all processes (float64 all-reduce)."""
        if self.world_size <= 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def mean_tensors(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The means of ``tensors`` over all processes (one flat all-reduce in their dtype), as new
        tensors; the inputs are not changed. One process: the inputs themselves."""
        if self.world_size <= 1 or not tensors:
            return list(tensors)
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        out, offset = [], 0
        for t in tensors:
            n = t.numel()
            out.append(flat[offset:offset + n].view_as(t).clone())
            offset += n
        return out

    def mean_floats(self, values: Sequence[float]) -> List[float]:
        """The means of float32 scalars over all processes (one all-reduce)."""
        if self.world_size <= 1:
            return [float(v) for v in values]
        red = self.mean_tensors([torch.tensor(list(values), dtype=torch.float32)])[0]
        return [float(v) for v in red]

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Every process takes rank 0's weights and buffers."""
        if self.world_size <= 1:
            return
        with torch.no_grad():
            for t in list(model.state_dict().values()):
                torch.distributed.broadcast(t, 0)

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def data_parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """What to call for a data-parallel forward (``DistributedDataParallel``), or ``model``."""
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    # --- tensors <-> numpy ----------------------------------------------------------------------
    @staticmethod
    def seed(seed: int) -> None:
        """Seed torch's generator (weights drawn at construction)."""
        torch.manual_seed(seed)

    @staticmethod
    def tensor(array: Any) -> torch.Tensor:
        """A tensor of a numpy array (shared memory where numpy allows)."""
        return torch.from_numpy(np.asarray(array))

    @staticmethod
    def to_numpy(tensor: Any) -> np.ndarray:
        """A numpy copy of a tensor (detached, on the CPU)."""
        return tensor.detach().cpu().numpy().copy()

    @staticmethod
    def item(value: Any) -> float:
        """The first element of a tensor, or a number, as a float."""
        return float(value.detach().reshape(-1)[0]) if torch.is_tensor(value) else float(value)

    @classmethod
    def tree_to_numpy(cls, obj: Any) -> Any:
        """``obj`` with every tensor inside dicts, lists and tuples made a numpy array."""
        if torch.is_tensor(obj):
            return obj.detach().cpu().numpy()
        if isinstance(obj, Mapping):
            return {k: cls.tree_to_numpy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [cls.tree_to_numpy(v) for v in obj]
        return obj

    @classmethod
    def tree_from_numpy(cls, obj: Any) -> Any:
        """``obj`` with every numpy array inside dicts and lists made a tensor (copied)."""
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(np.array(obj, copy=True))
        if isinstance(obj, Mapping):
            return {k: cls.tree_from_numpy(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [cls.tree_from_numpy(v) for v in obj]
        return obj

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
