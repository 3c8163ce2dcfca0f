"""Model registry of the PyTorch reference: build a released Cream child net, optionally with weights."""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from cream_arch import child_spec, model_names

from .checkpoint import check_state_dict, load_checkpoint
from .childnet import ChildNet

__all__ = ["create_model", "list_models", "load_weights"]


def list_models() -> List[str]:
    """Names of the models :func:`create_model` builds (the six released child nets)."""
    return model_names()


def load_weights(model: torch.nn.Module, checkpoint: "os.PathLike[str] | str",
                 use_ema: bool = True) -> str:
    """Load a checkpoint into ``model`` strictly; returns which entry was used.

    Raises :class:`~cream_torch_ref.checkpoint.CheckpointError` naming the file on any missing,
    unexpected or mis-shaped key, before touching the model.
    """
    ck = load_checkpoint(checkpoint, use_ema=use_ema)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, ck.state_dict, ck.path, what=type(model).__name__)
    model.load_state_dict(ck.state_dict, strict=True)
    return ck.source


def create_model(name: str, num_classes: int = 1000,
                 checkpoint: "Optional[os.PathLike[str] | str]" = None, use_ema: bool = True,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> ChildNet:
    """Build released child net ``name`` (see :func:`list_models`), in eval mode.

    With ``checkpoint``, load its EMA weights (``use_ema=True``, as the official test does) or its
    raw weights (``use_ema=False``).
    """
    spec = child_spec(name)
    model = ChildNet(spec.arch_list, num_classes=num_classes, drop_rate=drop_rate,
                     drop_path_rate=drop_path_rate)
    if checkpoint is not None:
        load_weights(model, checkpoint, use_ema=use_ema)
    return model.eval()
