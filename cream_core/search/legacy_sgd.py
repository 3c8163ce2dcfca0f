"""The framework-free half of the search optimizer: torch 1.2's SGD over the official four groups.

``LegacySGD`` in ``cream_torch_ref.search`` / ``cream_paddle.search`` subclass :class:`LegacySGDBase`
and add what touches tensors: :meth:`~LegacySGDBase.step` (the in-place update whose semantics
the official numbers depend on) and the momentum buffers' conversion to and from numpy. The
groups, learning rates, the "live" gradient set and the state's layout are here, once.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Tuple

import numpy as np

__all__ = ["LegacySGDBase"]


class LegacySGDBase:
    """SGD with momentum as torch 1.2 ran it, over the official four parameter groups.

    Groups as ``add_weight_decay_supernet``: no-decay (1-D and biases, lr), decay (lr, weight decay),
    meta layer without and with decay (``meta_lr``, weight decay 0 for both). ``named_params``: the
    trainable parameters, ``(name, tensor)``. Gradients are passed to ``step`` by parameter name; a
    parameter not passed but *live* (it had a gradient before and torch 1.2's ``zero_grad`` only
    zeroed it) is stepped with a zero gradient.
    """

    def __init__(self, named_params: Iterable[Tuple[str, Any]], lr: float, meta_lr: float,
                 momentum: float = 0.9, weight_decay: float = 1e-4, nesterov: bool = True) -> None:
        groups: List[Dict[str, Any]] = [
            {"params": [], "weight_decay": 0.0, "lr": lr},
            {"params": [], "weight_decay": weight_decay, "lr": lr},
            {"params": [], "weight_decay": 0.0, "lr": meta_lr},
            {"params": [], "weight_decay": 0.0, "lr": meta_lr},
        ]
        for name, p in named_params:
            meta = "meta_layer" in name
            if p.ndim == 1 or name.endswith(".bias"):
                groups[2 if meta else 0]["params"].append((name, p))
            else:
                groups[3 if meta else 1]["params"].append((name, p))
        self.param_groups = groups
        self.momentum = momentum
        self.nesterov = nesterov
        self.dampening = 0.0
        self.state: Dict[str, Any] = {}  # momentum buffers (framework tensors) by parameter name
        self.live: set = set()

    def set_lr(self, lr: float, meta_lr: float) -> None:
        """Learning rates of the student groups and the meta groups."""
        for i, g in enumerate(self.param_groups):
            g["lr"] = lr if i < 2 else meta_lr

    @property
    def meta_lr(self) -> float:
        """``param_groups[-1]['lr']``: what the official simulated update multiplies by."""
        return self.param_groups[-1]["lr"]

    def release(self, names: Iterable[str]) -> None:
        """Forget the gradients of ``names`` (the official meta step's ``del weight.grad``)."""
        self.live.difference_update(names)

    def _gradients(self, grads: Mapping[str, Any], zeros_like: Callable[[Any], Any]
                   ) -> Iterator[Tuple[Dict[str, Any], str, Any, Any]]:
        """``(group, name, parameter, gradient copy)`` of every parameter the step updates, in
        group order: those in ``grads``, and the live ones with a zero gradient."""
        for group in self.param_groups:
            for name, p in group["params"]:
                if name in grads:
                    yield group, name, p, grads[name].detach().clone()
                elif name in self.live:
                    yield group, name, p, zeros_like(p)

    # the framework half
    def _buffer_to_numpy(self, buf: Any) -> np.ndarray:
        raise NotImplementedError

    def _buffer_from_numpy(self, value: Any, like: Any) -> Any:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """Momentum buffers by parameter name (numpy copies, the framework's layout), the live set
        and the current lrs."""
        return {"momentum_buffer": {k: self._buffer_to_numpy(v) for k, v in self.state.items()},
                "live": sorted(self.live), "lr": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (buffers are copied, in the parameters' dtype)."""
        params = {n: p for g in self.param_groups for n, p in g["params"]}
        unknown = set(state["momentum_buffer"]) - set(params)
        if unknown:
            raise ValueError(f"optimizer state names unknown parameters: {sorted(unknown)[:3]}")
        self.state = {k: self._buffer_from_numpy(v, params[k])
                      for k, v in state["momentum_buffer"].items()}
        self.live = set(state["live"])
        for g, lr in zip(self.param_groups, state["lr"]):
            g["lr"] = float(lr)
