"""Read and write Paddle ``.pdparams`` checkpoints safely; the twin of ``cream_torch_ref.checkpoint``.

A ``.pdparams`` file is a pickle (protocol 4) of a dict of numpy arrays, as ``paddle.save`` writes a
state dict. ``paddle.load`` unpickles without restriction, so a hostile file could run code; here the
file is read with a restricted unpickler whose :data:`ALLOWED_GLOBALS` hold only numpy's array and
dtype rebuilders and plain containers. No Paddle import is needed to read, so the converter and the
parity harness can inspect a file cheaply.

Every failure is a :class:`~cream_core.io.errors.CheckpointError` whose one-line text names the file.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from cream_core.io.errors import CheckpointError
from cream_core.io.safe_checkpoint import (BARE, LoadedCheckpoint, check_state_dict, load_selected,
                                           read_error, read_head, restricted_unpickler)

__all__ = [
    "CheckpointError",
    "ALLOWED_GLOBALS",
    "PADDLE_META_KEY",
    "LoadedCheckpoint",
    "read_checkpoint",
    "load_checkpoint",
    "select_state_dict",
    "check_state_dict",
    "save_checkpoint",
]

#: Key ``paddle.save`` may add to a saved ``Layer.state_dict()`` (structured -> parameter names).
PADDLE_META_KEY = "StructuredToParameterName@@"


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # numpy 2 pickles ``numpy._core.multiarray``; numpy 1 wrote ``numpy.core.multiarray``
    try:
        from numpy._core import multiarray  # type: ignore[import-not-found]
    except ImportError:  # numpy 1
        from numpy.core import multiarray  # type: ignore[no-redef]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
    return allowed


#: ``(module, name) -> object`` for every global a ``.pdparams`` pickle may name.
ALLOWED_GLOBALS = _allowed_globals()


#: An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses everything else.
_RestrictedUnpickler = restricted_unpickler(ALLOWED_GLOBALS)


def _sniff(path: str) -> None:
    head = read_head(path, 2)
    if head[:1] != b"\x80":
        kind = "a zip archive (a torch checkpoint?)" if head == b"PK" else "not a pickle"
        raise CheckpointError(path, f"is not a Paddle .pdparams file ({kind})")


def read_checkpoint(path: "os.PathLike[str] | str") -> Any:
    """The object stored in a ``.pdparams`` file, unpickled without running any code from it."""
    p = os.fspath(path)
    _sniff(p)
    try:
        with open(p, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OSError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise read_error(p, e, ".pdparams file", ("truncated", "EOF"), (EOFError,)) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and (k == PADDLE_META_KEY or (
            isinstance(v, np.ndarray) and v.dtype != object)) for k, v in obj.items()) and any(
        k != PADDLE_META_KEY for k in obj)


def select_state_dict(obj: Any, path: str, use_ema: bool = True
                      ) -> Tuple["OrderedDict[str, np.ndarray]", str]:
    """The arrays in a loaded ``.pdparams`` object and which entry they came from.

    A bare state dict (what ``paddle.save(layer.state_dict())`` writes) is taken as it is, without
    Paddle's name-map entry. A checkpoint dict is searched like the torch side does
    (``state_dict_ema`` first when ``use_ema``, then ``state_dict``, then ``model``).
    """
    if _is_state_dict(obj):
        return OrderedDict((k, v) for k, v in obj.items() if k != PADDLE_META_KEY), BARE
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    order = ("state_dict_ema", "state_dict", "model") if use_ema else ("state_dict", "model")
    for key in order:
        if key in obj:
            if not _is_state_dict(obj[key]):
                raise CheckpointError(path, f"entry {key!r} is not a state dict of arrays")
            return OrderedDict((k, v) for k, v in obj[key].items() if k != PADDLE_META_KEY), key
    bad = [str(k) for k, v in obj.items() if not isinstance(v, np.ndarray)][:3]
    if not obj:
        raise CheckpointError(path, "holds an empty dict, no weights")
    raise CheckpointError(path, f"is not a state dict of arrays (e.g. entry {bad[0]!r} is not an "
                                "array)" if bad else "is not a state dict of numeric arrays")


def load_checkpoint(path: "os.PathLike[str] | str", use_ema: bool = True) -> LoadedCheckpoint:
    """Read ``path`` safely and select its arrays (see :func:`select_state_dict`); ``meta`` is the
    rest of a checkpoint dict."""
    return load_selected(path, read_checkpoint, select_state_dict, use_ema,
                         ("state_dict", "state_dict_ema", "model", PADDLE_META_KEY))


def save_checkpoint(file: Any, state_dict: Mapping[str, np.ndarray]) -> None:
    """Write ``state_dict`` (numpy arrays) as ``paddle.save`` does: a protocol-4 pickle of a dict.

    ``file`` is a path or a binary file object. ``paddle.load`` reads the result, and so does
    :func:`load_checkpoint`; nothing here imports Paddle.
    """
    data = {k: np.asarray(v) for k, v in state_dict.items()}
    if hasattr(file, "write"):
        pickle.dump(data, file, protocol=4)
        return
    with open(os.fspath(file), "wb") as f:
        pickle.dump(data, f, protocol=4)
