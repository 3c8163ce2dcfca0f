"""What the two safe checkpoint readers share, framework-free.

``cream_torch_ref.checkpoint`` (``.pth.tar``, read through ``torch.load``) and
``cream_paddle.checkpoint`` (``.pdparams``, a plain pickle) differ in their file formats and in the
globals they allow, not in how they refuse: both unpickle with :func:`restricted_unpickler`, check a
file with :func:`read_head` before unpickling, word a failure with :func:`read_error`, check the keys
and shapes with :func:`check_state_dict` and return a :class:`LoadedCheckpoint` built by
:func:`load_selected`. Every failure is a :class:`~cream_core.io.errors.CheckpointError` whose one
line names the file.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Mapping, Tuple, Type

import numpy as np

from cream_core.io.errors import CheckpointError
from cream_core.io.statecheck import KeyReport, compare_shapes

__all__ = ["BARE", "RefusedGlobal", "restricted_unpickler", "read_head", "read_error",
           "check_state_dict", "LoadedCheckpoint", "load_selected"]

#: The ``source`` of weights that were the whole file (no checkpoint dict around them).
BARE = "bare state_dict"


class RefusedGlobal(pickle.UnpicklingError):
    """A global outside the allow-list; carries its dotted name."""


def restricted_unpickler(allowed: Mapping[Tuple[str, str], Any]) -> Type[pickle.Unpickler]:
    """An ``Unpickler`` class that resolves only the ``(module, name)`` globals of ``allowed`` and
    raises :class:`RefusedGlobal` for any other, so nothing a file names can run."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
            try:
                return allowed[(module, name)]
            except KeyError:
                raise RefusedGlobal(f"{module}.{name}") from None

    return RestrictedUnpickler


def read_head(path: str, size: int = 4) -> bytes:
    """The first ``size`` bytes of ``path``, after refusing a missing file, a folder or an empty file."""
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file")
    if os.path.isdir(path):
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "is empty (0 bytes), not a checkpoint")
    with open(path, "rb") as f:
        return f.read(size)


def read_error(path: str, e: BaseException, kind: str, truncated_words: Collection[str],
               truncated_types: Tuple[Type[BaseException], ...]) -> CheckpointError:
    """The one-line error for an exception ``e`` raised while unpickling ``path``.

    A refused global says which; an exception of ``truncated_types`` or whose first line holds one
    of ``truncated_words`` means a cut-off file; anything else is "not a readable ``kind``".
    """
    if isinstance(e, RefusedGlobal):
        return CheckpointError(path, f"refused: the pickle references {e.args[0]}, which is not "
                                     "data (loading it could run code)")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, truncated_types) or any(w in msg for w in truncated_words):
        return CheckpointError(path, f"is truncated or corrupt ({msg[:80]})")
    return CheckpointError(path, f"is not a readable {kind} ({type(e).__name__}: {msg[:160]})")


def check_state_dict(expected: Mapping[str, Tuple[int, ...]], sd: Mapping[str, Any], path: str,
                     what: str = "model") -> KeyReport:
    """Compare ``sd`` (tensors or arrays) with the keys/shapes a model expects; raise a one-line
    error on any difference."""
    report = compare_shapes(expected, {k: tuple(np.shape(v)) for k, v in sd.items()})
    if not report.ok:
        raise CheckpointError(path, f"does not fit {what}: {report.summary()}")
    return report


@dataclass
class LoadedCheckpoint:
    """Weights chosen from a checkpoint file, with where they came from and the rest of the file."""

    path: str
    state_dict: "OrderedDict[str, Any]"  # torch tensors or numpy arrays, by framework
    source: str  # BARE, 'state_dict_ema', 'state_dict', 'model', ...
    meta: Dict[str, Any]  # epoch, arch, args, ... (everything but the weights)


def load_selected(path: "os.PathLike[str] | str", read: Callable[[str], Any],
                  select: Callable[..., Tuple["OrderedDict[str, Any]", str]], use_ema: bool,
                  not_meta: Collection[str]) -> LoadedCheckpoint:
    """``read`` the file, ``select`` its weights; the other top-level entries of a checkpoint dict
    (all but ``not_meta``) are its ``meta``."""
    p = os.fspath(path)
    obj = read(p)
    sd, source = select(obj, p, use_ema=use_ema)
    meta = {k: v for k, v in obj.items() if k not in not_meta} if source != BARE else {}
    return LoadedCheckpoint(p, sd, source, meta)
