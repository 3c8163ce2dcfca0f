"""Read official Cream ``.pth.tar`` checkpoints safely, and pick the weights out of them.

The official training (torch 1.2 + timm 0.1.20) wrote a dict with ``state_dict``,
``state_dict_ema``, ``optimizer``, ``epoch``, ``version``, ``arch`` and ``args`` (a yacs
``CfgNode``, or an argparse ``Namespace`` in timm scripts), in torch's legacy non-zip format.

Current torch refuses such files with ``weights_only=True`` (the ``args`` object is not on its
allow-list and cannot be added: a CfgNode is a dict subclass, which its unpickler cannot fill), and
``weights_only=False`` would run any code a malicious pickle names. So the file is read with a
restricted unpickler: every global the pickle names must be on :data:`ALLOWED_GLOBALS`, which holds
only tensor/storage rebuilders and plain containers; ``yacs.config.CfgNode`` and
``argparse.Namespace`` are replaced by inert stand-ins, so yacs need not be installed and nothing
from the file is ever executed.

This module is the single loader the whole project uses (reference models, ``convert-ckpt``,
``parity``, evaluation). Every failure is a :class:`CheckpointError` whose text names the file.
"""
from __future__ import annotations

import os
import pickle
import types
import zipfile
from collections import OrderedDict
from typing import IO, Any, Dict, Mapping, Optional, Tuple

import torch

from cream_core.io.errors import CheckpointError  # framework-free, shared with cream_paddle
from cream_core.io.safe_checkpoint import (BARE, LoadedCheckpoint, check_state_dict, load_selected,
                                           read_error, read_head, restricted_unpickler)

__all__ = [
    "CheckpointError",
    "CfgNodeStandIn",
    "NamespaceStandIn",
    "ALLOWED_GLOBALS",
    "LoadedCheckpoint",
    "read_checkpoint",
    "load_checkpoint",
    "select_state_dict",
    "check_state_dict",
    "save_official_checkpoint",
]


class CfgNodeStandIn(dict):
    """What a pickled ``yacs.config.CfgNode`` becomes: a plain dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class NamespaceStandIn:
    """What a pickled ``argparse.Namespace`` becomes: an object holding the same attributes."""

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


_STORAGES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble")
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
           "bool", "complex64", "complex128")


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
        ("torch", "UntypedStorage"): torch.UntypedStorage,
        ("yacs.config", "CfgNode"): CfgNodeStandIn,
        ("argparse", "Namespace"): NamespaceStandIn,
    }
    for s in _STORAGES:
        if hasattr(torch, f"{s}Storage"):
            allowed[("torch", f"{s}Storage")] = getattr(torch, f"{s}Storage")
    for d in _DTYPES:
        allowed[("torch", d)] = getattr(torch, d)
    return allowed


#: ``(module, name) -> object`` for every global a checkpoint pickle may name.
ALLOWED_GLOBALS: Mapping[Tuple[str, str], Any] = _allowed_globals()


#: An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses everything else.
_RestrictedUnpickler = restricted_unpickler(ALLOWED_GLOBALS)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


#: Passed to ``torch.load`` as ``pickle_module``: its ``Unpickler`` is the restricted one.
_PICKLE_MODULE = types.ModuleType("cream_restricted_pickle")
_PICKLE_MODULE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_PICKLE_MODULE.load = _restricted_load  # type: ignore[attr-defined]
_PICKLE_MODULE.__dict__["UnpicklingError"] = pickle.UnpicklingError


def _sniff(path: str) -> None:
    """Reject what is plainly no torch file before unpickling, with a precise reason."""
    head = read_head(path)
    if head[:2] == b"PK":  # zip: torch's own format since 1.6; a cut-off one lacks its directory
        try:
            with zipfile.ZipFile(path) as zf:
                zf.namelist()
        except (zipfile.BadZipFile, OSError):
            raise CheckpointError(path, "is truncated or corrupt (incomplete zip archive)") from None
        return
    if head[:1] != b"\x80":  # every pickle protocol >= 2 starts with PROTO
        raise CheckpointError(path, "is not a torch checkpoint (neither a zip archive nor a pickle)")


def read_checkpoint(path: "os.PathLike[str] | str") -> Any:
    """The object stored in a torch checkpoint file, loaded without running any code from it."""
    p = os.fspath(path)
    _sniff(p)
    try:
        return torch.load(p, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False)
    except CheckpointError:
        raise
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(p, f"is truncated or corrupt ({type(e).__name__})") from None
    except (RuntimeError, pickle.UnpicklingError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, OSError, UnicodeDecodeError, OverflowError) as e:
        raise read_error(p, e, "torch checkpoint", ("EOF", "corrupt", "truncated"),
                         (IndexError,)) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_module(sd: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    if sd and all(k.startswith("module.") for k in sd):
        return OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return OrderedDict(sd)


def select_state_dict(obj: Any, path: str, use_ema: bool = True
                      ) -> Tuple["OrderedDict[str, torch.Tensor]", str]:
    """The weights in a loaded checkpoint and which entry they came from.

    ``use_ema=True`` takes ``state_dict_ema`` when present (the official test evaluates the EMA) and
    falls back to ``state_dict``; ``use_ema=False`` takes ``state_dict``. A bare state dict is
    taken as it is. A DDP ``module.`` prefix is removed.
    """
    if _is_state_dict(obj):
        return _strip_module(obj), BARE
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict or a "
                                    "checkpoint dict")
    order = ("state_dict_ema", "state_dict") if use_ema else ("state_dict",)
    for key in order:
        if key in obj:
            if not _is_state_dict(obj[key]):
                raise CheckpointError(path, f"entry {key!r} is not a state dict of tensors")
            return _strip_module(obj[key]), key
    for key in ("model", "model_state_dict"):
        if key in obj and _is_state_dict(obj[key]):
            return _strip_module(obj[key]), key
    keys = ", ".join(sorted(map(str, obj))[:8])
    raise CheckpointError(path, f"has no 'state_dict' entry (top-level keys: {keys})")


def load_checkpoint(path: "os.PathLike[str] | str", use_ema: bool = True) -> LoadedCheckpoint:
    """Read ``path`` safely and select its weights (see :func:`select_state_dict`); ``meta`` is the
    rest of a checkpoint dict but its optimizer state."""
    return load_selected(path, read_checkpoint, select_state_dict, use_ema,
                         ("state_dict", "state_dict_ema", "optimizer"))


def save_official_checkpoint(path: "os.PathLike[str] | str | IO[bytes]",
                             state_dict: Mapping[str, torch.Tensor],
                             state_dict_ema: Optional[Mapping[str, torch.Tensor]] = None,
                             *, epoch: int = 0, args: Any = None, arch: str = "",
                             optimizer: Optional[Mapping[str, Any]] = None, legacy: bool = True
                             ) -> None:
    """Write a checkpoint in the layout of the official training (timm 0.1.20 ``CheckpointSaver``)
    to a path or an open binary file (e.g. :func:`cream_core.io.atomic.atomic_write`'s).

    ``legacy=True`` writes torch's pre-1.6 non-zip format, as torch 1.2 did.
    """
    state: Dict[str, Any] = {
        "epoch": epoch,
        "arch": arch,
        "state_dict": OrderedDict(state_dict),
        "optimizer": dict(optimizer) if optimizer is not None else {"state": {}, "param_groups": []},
        "args": args,
        "version": 2,
    }
    if state_dict_ema is not None:
        state["state_dict_ema"] = OrderedDict(state_dict_ema)
    if hasattr(path, "write"):
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        return
    with open(os.fspath(path), "wb") as f:
        torch.save(state, f, _use_new_zipfile_serialization=not legacy)
