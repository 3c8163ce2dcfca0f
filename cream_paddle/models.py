"""Model registry of the Paddle port: build a released Cream child net, optionally with weights."""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import paddle

from cream_core.arch import child_spec, model_names

from .checkpoint import CheckpointError, check_state_dict, load_checkpoint
from .childnet import ChildNet

__all__ = ["create_model", "list_models", "load_weights"]


def list_models() -> List[str]:
    """Names of the models :func:`create_model` builds (the six released child nets)."""
    return model_names()


def load_weights(model: paddle.nn.Layer, checkpoint: "os.PathLike[str] | str",
                 use_ema: bool = True) -> str:
    """Load a ``.pdparams`` file into ``model`` strictly; returns which entry was used.

    Raises :class:`~cream_core.io.errors.CheckpointError` naming the file on any missing, unexpected,
    mis-shaped or mis-typed key, before touching the model.
    """
    ck = load_checkpoint(checkpoint, use_ema=use_ema)
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, ck.state_dict, ck.path,
                     what=type(model).__name__)
    for k, v in own.items():
        want = np.dtype(paddle.base.data_feeder.convert_dtype(v.dtype))
        if ck.state_dict[k].dtype != want:
            raise CheckpointError(ck.path, f"entry {k!r} is {ck.state_dict[k].dtype}, "
                                           f"the model expects {want}")
    model.set_state_dict(dict(ck.state_dict))
    return ck.source


def create_model(name: str, num_classes: int = 1000,
                 checkpoint: "Optional[os.PathLike[str] | str]" = None, use_ema: bool = True,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> ChildNet:
    """Build released child net ``name`` (see :func:`list_models`), in eval mode.

    With ``checkpoint`` (a ``.pdparams`` file, e.g. from ``convert-ckpt``), load its weights; a
    checkpoint dict with both entries gives its EMA weights (``use_ema=True``) or the raw ones.
    """
    spec = child_spec(name)
    model = ChildNet(spec.arch_list, num_classes=num_classes, drop_rate=drop_rate,
                     drop_path_rate=drop_path_rate)
    if checkpoint is not None:
        load_weights(model, checkpoint, use_ema=use_ema)
    model.eval()
    return model
