"""Model registry of the PyTorch reference: build a released Cream child net, optionally with weights."""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import torch

from cream_core.arch import child_spec, model_names

from .checkpoint import check_state_dict, load_checkpoint, save_official_checkpoint
from .childnet import ChildNet

__all__ = ["create_model", "list_models", "load_weights", "seeded_official_checkpoint"]


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


def seeded_official_checkpoint(name: str, path: "os.PathLike[str] | str", *, legacy: bool = True,
                               seed_raw: int = 1, seed_ema: Optional[int] = 2,
                               num_classes: int = 1000, module_prefix: bool = False,
                               args: str = "yacs", calibration_images: Optional[np.ndarray] = None
                               ) -> "os.PathLike[str] | str":
    """Write a seeded checkpoint of model ``name`` in the official training's layout.

    The weights are :func:`cream_core.arch.seeded_child_state` of the model (raw: ``seed_raw``, EMA:
    ``seed_ema``; no EMA entry when it is None): seeded values with BN statistics calibrated so the
    logits depend on the input, the weights the golden logits of the official code were made with.
    Tests and the demo therefore need no downloaded file. ``args`` is a yacs ``CfgNode`` like the
    official configs (``'yacs'``, needs yacs installed to *write*), an argparse ``Namespace``
    (``'namespace'``) or absent (``'none'``). ``module_prefix`` adds DDP's ``module.`` prefix.
    ``calibration_images``: see :func:`cream_core.arch.seeded_child_state`.
    """
    import argparse

    from cream_core.arch import seeded_child_state

    arch_list = child_spec(name).arch_list
    pre = "module." if module_prefix else ""

    def state(seed: int) -> "dict[str, torch.Tensor]":
        return {pre + k: torch.from_numpy(v)
                for k, v in seeded_child_state(arch_list, seed, num_classes=num_classes,
                                               calibration_images=calibration_images).items()}

    selection = int(name.split("-")[1])
    if args == "yacs":
        from yacs.config import CfgNode

        cfg = CfgNode({"MODEL": f"{selection}m_retrain", "SEED": 42,
                       "NET": CfgNode({"SELECTION": selection, "GP": "avg", "DROPOUT_RATE": 0.2,
                                       "EMA": CfgNode({"USE": True, "DECAY": 0.9999})}),
                       "DATASET": CfgNode({"NUM_CLASSES": num_classes,
                                           "IMAGE_SIZE": child_spec(name).resolution}),
                       "LR": 0.064, "OPT": "rmsproptf"})
        cfg.freeze()
        run_args: object = cfg
    elif args == "namespace":
        run_args = argparse.Namespace(model=f"{selection}m_retrain", lr=0.064, num_classes=num_classes)
    else:
        run_args = None
    save_official_checkpoint(path, state(seed_raw),
                             state(seed_ema) if seed_ema is not None else None,
                             epoch=7, args=run_args, arch=f"{selection}m_retrain", legacy=legacy)
    return path
