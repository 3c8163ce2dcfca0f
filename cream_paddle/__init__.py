"""Paddle port of Cream (NeurIPS 2020): the official child nets, mirroring ``cream_torch_ref``.

Module for module the same tree as the PyTorch reference (``blocks``, ``builder``, ``childnet``,
``checkpoint``, ``models``); framework differences live in :mod:`cream_paddle.compat`.
"""
import warnings as _warnings

with _warnings.catch_warnings():  # Paddle warns on import about a C++ build cache it never uses here
    _warnings.filterwarnings("ignore", message=".*ccache.*")
    import paddle as _paddle  # noqa: F401

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .childnet import ChildNet
from .models import create_model, list_models, load_weights

__all__ = ["CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint",
           "ChildNet", "create_model", "list_models", "load_weights"]
