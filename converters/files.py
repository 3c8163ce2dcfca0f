"""The files of a checkpoint conversion, for every converter (Cream: :mod:`converters.convert`, any
model pair: :mod:`converters.generic`, x2paddle: :mod:`converters.x2paddle_engine`).

* names: :func:`default_output` (SRC's name with the other framework's suffix), :func:`sidecar_path`;
* checks before any work: :func:`check_source`, :func:`check_destination` (never the source, never
  an input, an existing file only with ``force``, the folder writable: probed);
* hashing: :func:`sha256_file`, :class:`BackgroundHash` (overlaps with the model building),
  :class:`HashingFile` (hashes what ``pickle.dump`` writes);
* writing: :func:`write_outputs` writes the converted file and its JSON sidecar as one
  crash-consistent set; :func:`read_own_sidecar` reads back the sidecar ``convert-ckpt`` wrote next
  to a file, only if it describes exactly that file; :func:`tool_version`.

Every failure is a :class:`~cream_core.io.errors.CheckpointError` naming the file at fault.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from cream_core.backend import CHECKPOINT_SUFFIXES
from cream_core.io.digest import sha256_file
from cream_core.io.errors import CheckpointError, OutputError
from cream_core.io.outputs import commit_files, entry_per_line_json, prepare_outputs

__all__ = ["SIDECAR_TOOL", "TORCH_SUFFIXES", "PADDLE_SUFFIX", "is_paddle_file", "tool_version",
           "sha256_file", "BackgroundHash", "HashingFile", "default_output", "sidecar_path",
           "check_source", "check_destination", "write_outputs", "read_own_sidecar",
           "torch_state_to_numpy", "pdparams_writer", "recorded_counters", "counters_record"]

#: The ``tool`` recorded in every sidecar; a sidecar without it was not written by a converter.
SIDECAR_TOOL = "convert-ckpt"
#: Suffixes stripped from a torch checkpoint's name to form the default ``.pdparams`` name.
TORCH_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")
#: A Paddle checkpoint's suffix (the one table: :data:`cream_core.backend.CHECKPOINT_SUFFIXES`).
PADDLE_SUFFIX = CHECKPOINT_SUFFIXES["paddle"]


def is_paddle_file(path: str) -> bool:
    """Whether ``path`` names a Paddle checkpoint (converted back to torch by default)."""
    return os.fspath(path).lower().endswith(PADDLE_SUFFIX)


def tool_version() -> str:
    """Version of this toolkit (recorded in every sidecar)."""
    try:
        from importlib.metadata import version
        return version("cream-parity")
    except Exception:  # noqa: BLE001 - not installed: running from a source tree
        return "0+unknown"


class BackgroundHash:
    """sha256 of a file computed in a thread (hashlib and file reads release the GIL), so that it
    overlaps with reading the checkpoint and building the target model."""

    def __init__(self, path: str) -> None:
        self._digest: Optional[str] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()

    def _run(self, path: str) -> None:
        try:
            self._digest = sha256_file(path)
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest


class HashingFile:
    """Write-only view of a binary file that hashes the bytes written (for ``pickle.dump``)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self._f.write(data)


def default_output(src: str, reverse: bool = False) -> str:
    """SRC's name with ``.pdparams`` (or ``.pth.tar`` for the reverse), in SRC's folder."""
    base = os.fspath(src)
    low = base.lower()
    if reverse:
        if is_paddle_file(base):
            base = base[: -len(PADDLE_SUFFIX)]
        return base + CHECKPOINT_SUFFIXES["torch"]
    for suf in TORCH_SUFFIXES:
        if low.endswith(suf):
            base = base[: -len(suf)]
            break
    return base + PADDLE_SUFFIX


def sidecar_path(dst: str) -> str:
    """The JSON sidecar written next to ``dst``."""
    return os.fspath(dst) + ".json"


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_source(src: str) -> None:
    if not os.path.exists(src):
        raise CheckpointError(src, "no such file")
    if os.path.isdir(src):
        raise CheckpointError(src, "is a directory, not a checkpoint file")


def check_destination(src: str, dst: str, force: bool, other_inputs: Sequence[str] = ()) -> None:
    """Refuse a destination that is the source (or one of ``other_inputs``, e.g. a ``--map``
    file), in a missing folder, a directory or (without force) taken."""
    for out in (dst, sidecar_path(dst)):
        if _same_file(src, out):
            raise CheckpointError(out, "is the source file; choose another output (-o)")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise CheckpointError(dst, f"output folder {folder} does not exist")
    for out in (dst, sidecar_path(dst)):
        if os.path.isdir(out):
            raise CheckpointError(out, "is a directory; give a file name for the output")
        if os.path.exists(out) and not force:
            raise CheckpointError(out, "already exists; pass --force to overwrite it")
    try:  # real paths, writability (probed), interrupted commits finished, stale temporaries gone
        prepare_outputs({"output": dst, "sidecar": sidecar_path(dst)},
                        [src, sidecar_path(src), *other_inputs], log=_note)
    except OutputError as e:
        raise CheckpointError(e.path, e.problem) from None


def _note(msg: str) -> None:
    print(f"convert-ckpt: note: {msg}", file=sys.stderr)


def write_outputs(dst: str, write_main: Callable[[Any], Optional[str]],
                   sidecar: Dict[str, Any]) -> str:
    """Write ``dst`` and its sidecar as one crash-consistent set; returns the sha256 of ``dst``.

    ``write_main(f)`` writes the content to the open file and may return its sha256 (else the file
    is re-read). :func:`cream_core.io.outputs.commit_files` writes both to temporaries, then renames
    them under a folder lock with a journal: after a crash, or with a concurrent ``--force`` run,
    the sidecar's ``output_sha256`` always describes the file next to it.
    """
    digest: Dict[str, str] = {}

    def write_checkpoint(f: Any) -> None:
        got = write_main(f)
        if got is None:  # re-read: torch.save may write through the file descriptor
            f.flush()
            got = sha256_file(f.name)
        digest["sha256"] = got

    def write_sidecar(f: Any) -> None:
        f.write(entry_per_line_json(dict(sidecar, output=os.path.basename(dst),
                                         output_sha256=digest["sha256"])))

    side = sidecar_path(dst)
    try:
        commit_files({dst: write_checkpoint, side: write_sidecar}, modes={side: "w"})
    except OutputError as e:
        raise CheckpointError(e.path, e.problem) from None
    return digest["sha256"]


def read_own_sidecar(src: str, src_sha: str, notes: List[str]) -> Dict[str, Any]:
    """The sidecar ``convert-ckpt`` wrote next to ``src``, if it describes exactly this file."""
    path = sidecar_path(src)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            side = json.load(f)
    except (OSError, ValueError) as e:
        notes.append(f"ignored sidecar {os.path.basename(path)} ({type(e).__name__})")
        return {}
    if not isinstance(side, dict) or side.get("tool") != SIDECAR_TOOL:
        notes.append(f"ignored sidecar {os.path.basename(path)} (not written by {SIDECAR_TOOL})")
        return {}
    if side.get("output_sha256") != src_sha:
        notes.append(f"ignored sidecar {os.path.basename(path)} (it describes another version "
                     "of the file)")
        return {}
    return side


def torch_state_to_numpy(src: str, state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """A torch state dict (read from ``src``) as numpy arrays; an entry whose dtype numpy has no
    counterpart (bfloat16 and the like) is a :class:`CheckpointError` naming it."""
    out: Dict[str, np.ndarray] = {}
    for k, v in state.items():
        try:
            out[k] = v.detach().cpu().numpy()
        except TypeError:
            raise CheckpointError(src, f"entry {k!r} is {str(v.dtype).replace('torch.', '')}, "
                                       "which has no numpy type (the Paddle model takes "
                                       "float32)") from None
    return out


def pdparams_writer(state: Mapping[str, Any]) -> Callable[[Any], str]:
    """``write(f)`` of a ``.pdparams`` holding ``state`` that returns the file's sha256 (for
    :func:`write_outputs`)."""
    from cream_paddle.checkpoint import save_checkpoint  # Paddle, lazily

    def write(f: Any) -> str:
        hashing = HashingFile(f)
        save_checkpoint(hashing, state)
        return hashing.sha.hexdigest()
    return write


def counters_record(counters: Mapping[str, int]) -> Any:
    """The sidecar's ``num_batches_tracked``: torch-only BatchNorm counters, kept so that the way
    back restores them; one number when all are equal (the usual case), else torch key -> value."""
    values = set(counters.values())
    return values.pop() if len(values) == 1 else dict(counters)


def recorded_counters(recorded: Any) -> Dict[str, int]:
    """:func:`counters_record`'s value read back: torch key -> value, or ``{"*": value}`` for one
    number for all; anything else recorded nothing."""
    if isinstance(recorded, dict):
        return {k: v for k, v in recorded.items() if isinstance(v, int) and not isinstance(v, bool)}
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return {"*": recorded}
    return {}
