"""What a retraining checkpoint must hold to resume, checked once for both frameworks.

``cream_torch_ref.train.load_train_checkpoint`` and its Paddle twin read the file (each with its
own safe reader) and call these checks before anything changes, so the same broken file gives the
same one-line :class:`~cream_core.io.errors.CheckpointError` in both. No framework import.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from cream_core.io.errors import CheckpointError
from cream_core.io.safe_checkpoint import check_state_dict

__all__ = ["official_arch", "check_train_checkpoint", "check_train_states"]


def official_arch(cfg: Any) -> str:
    """The official ``MODEL`` name of ``cfg.model`` stored as ``arch``, e.g. ``'14m_retrain'``."""
    return f"{cfg.model.split('-')[1]}m_retrain"


def check_train_checkpoint(path: str, obj: Any, cfg: Any,
                           check_args: Callable[[str, Any, Any], None]) -> Mapping[str, Any]:
    """``obj`` as a training checkpoint: a mapping with ``state_dict`` and ``epoch`` whose ``args``
    pass ``check_args(path, args, cfg)`` (the recipe's resume check)."""
    if not isinstance(obj, Mapping) or "state_dict" not in obj or "epoch" not in obj:
        raise CheckpointError(path, "is not a training checkpoint (needs 'state_dict' and 'epoch' "
                                    "to resume)")
    check_args(path, obj.get("args"), cfg)
    return obj


def check_train_states(path: str, obj: Mapping[str, Any], model_state: Mapping[str, Any],
                       cfg: Any, ema: bool) -> None:
    """The checkpoint's model entries (and, with ``ema``, the EMA's if stored) have the names and
    shapes of ``model_state`` (the model's state dict, tensors of either framework)."""
    expected = {k: tuple(int(s) for s in v.shape) for k, v in model_state.items()}
    check_state_dict(expected, obj["state_dict"], path, what=f"{cfg.model} ({cfg.num_classes} "
                                                             "classes)")
    if ema and "state_dict_ema" in obj:
        check_state_dict(expected, obj["state_dict_ema"], path, what="the EMA model")
