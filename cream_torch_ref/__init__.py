"""PyTorch reference of Cream (NeurIPS 2020): the official child nets on current torch and timm.

Names are imported on first use (PEP 562), so that ``import cream_torch_ref.checkpoint`` (what
``convert-ckpt`` needs) does not pay for importing timm.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "CheckpointError": ".checkpoint", "load_checkpoint": ".checkpoint",
    "read_checkpoint": ".checkpoint", "save_official_checkpoint": ".checkpoint",
    "ChildNet": ".childnet",
    "create_model": ".models", "list_models": ".models", "load_weights": ".models",
    "seeded_official_checkpoint": ".models",
}

__all__ = ["CheckpointError", "load_checkpoint", "read_checkpoint", "save_official_checkpoint",
           "ChildNet", "create_model", "list_models", "load_weights", "seeded_official_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
