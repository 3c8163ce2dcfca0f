"""Output safety for every tool: one path guard, one crash-consistent commit of file *sets*, and the
clean-up of what killed runs left behind.

* :func:`prepare_outputs` runs before any work: outputs are compared by their real paths
  (``os.path.realpath``: ``./a/r.json`` and ``a/r.json`` are one file), never equal to each other,
  never equal to or inside an input file or folder; output folders are created and probed for
  writability (a small file is written, synced and removed: ``os.access`` says yes to root on a
  read-only mount); pending commits of earlier runs are finished (:func:`recover_commits`) and
  their stale temporaries removed (:func:`clean_stale_temporaries`).
* :func:`commit_files` writes a set of files (a ``.pdparams`` and its sidecar JSON; a training
  checkpoint, the best checkpoint and ``summary.csv``) so that after a crash at any point the set
  on disk is either entirely the old one or entirely the new one. Protocol: every member goes to a
  temporary file in its destination's folder and is ``fsync``-ed; then a journal naming each
  temporary and its destination is written atomically (the commit point); then the members are
  renamed in order and the journal removed. A crash before the journal leaves the old set (the
  temporaries are removed later as stale); a crash after it is rolled forward by
  :func:`recover_commits`, which :func:`commit_files`, :func:`prepare_outputs` and resuming
  runs call first. Commits into one folder are serialised with an advisory lock (``flock``) on the
  folder, so two concurrent runs (``convert-ckpt --force`` twice) leave one run's complete set,
  never a mix.

Temporaries are named ``.<file name>.<pid>-<random>.part`` (earlier versions:
``.<file name>.<random>.part`` / ``.tmp``); clean-up only ever touches that pattern, only for the
file names the tool itself writes, only files older than the current run and not belonging to a
live process.

Every failure is an :class:`~cream_core.io.errors.OutputError`: one line naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
import time
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

from cream_core.io.errors import OutputError

__all__ = ["OutputError", "prepare_outputs", "check_output_paths", "commit_files",
           "recover_commits", "clean_stale_temporaries", "temp_file", "usual_mode", "os_problem",
           "entry_per_line_json", "PROBE_BYTES", "JOURNAL_PREFIX", "LEGACY_GRACE_S"]

PathLike = "os.PathLike[str] | str"
#: Size of the probe written into each output folder before the work (one file-system block: a
#: folder on a full disk fails here, not after an hour of work).
PROBE_BYTES = 4096
#: Journals of pending commits: ``.cream-commit.<pid>-<random>.json`` in the first member's folder.
JOURNAL_PREFIX = ".cream-commit."
_PROBE_NAME = "cream-probe"
#: A temporary in the older naming (no process id) counts as stale only when it is this much older
#: than the current run: a concurrent run of an older version could still be writing it.
LEGACY_GRACE_S = 600.0


def os_problem(e: BaseException) -> str:
    """A short reason for an OS-level failure (``Read-only file system``, ``No space left on device``)."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.strerror or os.strerror(e.errno)
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


def _is_write_failure(e: BaseException) -> bool:
    """An OS error, or torch's zip writer reporting one (``PytorchStreamWriter failed writing``)."""
    if isinstance(e, OSError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("file write failed" in text or "inline_container" in text
                                            or "PytorchStreamWriter" in text)


def _write_problem(e: BaseException, path: str) -> str:
    """The reason of a failed write; torch's zip writer hides the OS error, the free space shows it."""
    if isinstance(e, OSError):
        return os_problem(e)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_bavail == 0:
            return os.strerror(errno.ENOSPC)
    return f"write failed: {os_problem(e)}"


# --- temporaries ----------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def entry_per_line_json(record: Mapping[str, Any], indent: int = 2) -> str:
    """JSON text of ``record`` with one top-level entry per line, each value compact: short, and a
    diff of two such files shows which entries changed (sidecars, ``best_arch.json``)."""
    rows = [f"{' ' * indent}{json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def usual_mode(path: str) -> None:
    """Give a file (0666) or folder (0777) made by ``tempfile`` (0600/0700) the mode ``open()`` /
    ``mkdir`` would give it under the umask."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def temp_file(dest: str) -> "tuple[int, str]":
    """A new temporary ``(fd, path)`` next to ``dest``, named after it and this process, with the
    permissions ``open()`` would give ``dest`` (``mkstemp`` alone gives ``0600``)."""
    folder = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.{os.getpid()}-", suffix=".part",
                               dir=folder)
    usual_mode(tmp)
    return fd, tmp


def _temp_pattern(name: str) -> "re.Pattern[str]":
    # ours: .<name>.<pid>-<8 random>.part; before: .<name>.<8 random>.part|.tmp (tempfile's alphabet)
    return re.compile(r"\." + re.escape(name) + r"\.(?:(\d+)-)?[a-z0-9_]{8}\.(?:part|tmp)\Z")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def clean_stale_temporaries(folder: str, names: Iterable[str], started: Optional[float] = None
                            ) -> List[str]:
    """Remove the temporaries that killed runs left for the files ``names`` in ``folder``; returns
    the paths removed. Only our naming pattern, only files last modified before ``started`` (default:
    now) whose process is gone (names without a process id: :data:`LEGACY_GRACE_S` older)."""
    started = time.time() if started is None else started
    patterns = [_temp_pattern(n) for n in {*names, _PROBE_NAME, JOURNAL_PREFIX.strip(".")}]
    removed: List[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = next((m for p in patterns for m in [p.match(e.name)] if m), None)
        if m is None:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not e.is_file(follow_symlinks=False) or st.st_mtime >= started:
                continue
            if m.group(1) and _pid_alive(int(m.group(1))):
                continue
            if not m.group(1) and st.st_mtime >= started - LEGACY_GRACE_S:
                continue
            os.remove(e.path)
            removed.append(e.path)
        except OSError:
            continue
    return removed


# --- locking and journals ----------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folders: Iterable[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on each folder (sorted: no deadlock between two sets)."""
    fds: List[int] = []
    try:
        for folder in sorted(set(folders)):
            fd = os.open(folder, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some file systems cannot sync folders
            raise
    finally:
        os.close(fd)


def _journals(folder: str) -> List[str]:
    try:
        names = [n for n in os.listdir(folder) if n.startswith(JOURNAL_PREFIX) and n.endswith(".json")]
    except OSError:
        return []
    paths = [os.path.join(folder, n) for n in names]
    return sorted(paths, key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0.0)


def _roll_forward(journal: str) -> List[str]:
    """Finish the renames a journal lists; returns the destinations completed."""
    try:
        with open(journal, encoding="utf-8", errors="surrogateescape") as f:
            members = json.load(f)["members"]
        pairs = [(str(m["temp"]), str(m["dest"])) for m in members]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(journal, f"unreadable commit journal ({os_problem(e)}); move it away "
                                   "after checking the files it names") from None
    done = []
    for tmp, dest in pairs:
        if os.path.exists(tmp):
            os.replace(tmp, dest)
            done.append(dest)
    for folder in {os.path.dirname(d) for _, d in pairs}:
        _fsync_folder(folder)
    os.remove(journal)
    return done


def recover_commits(folders: Iterable[str]) -> List[str]:
    """Roll forward every commit a crash interrupted after its commit point in ``folders``; returns
    the files completed. Safe to call any time (a live commit holds the folder lock)."""
    done: List[str] = []
    existing = [os.path.abspath(f) for f in folders if f and os.path.isdir(f)]
    if not existing:
        return done
    try:
        with _locked(existing):
            for folder in existing:
                for journal in _journals(folder):
                    done.extend(_roll_forward(journal))
    except OSError as e:
        raise OutputError(existing[0], f"cannot finish an interrupted commit ({os_problem(e)})") from None
    return done


# --- the set commit ----------------------------------------------------------------------------------
Writer = Callable[[IO[Any]], Any]


def _write_temp(dest: str, write: Writer, mode: str) -> str:
    fd, tmp = temp_file(dest)
    os.close(fd)
    try:  # opened by name, so that ``f.name`` is the temporary's path (writers may re-read it)
        text = {} if mode == "wb" else {"encoding": "utf-8", "newline": "", "errors": "surrogateescape"}
        with open(tmp, mode, **text) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return tmp


def _write_journal(folder: str, pairs: Sequence["tuple[str, str]"]) -> str:
    fd, path = tempfile.mkstemp(prefix=f"{JOURNAL_PREFIX}{os.getpid()}-", suffix=".part",
                                dir=folder)
    journal = path[: -len(".part")] + ".json"
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            json.dump({"version": 1, "members": [{"temp": t, "dest": d} for t, d in pairs]}, f,
                      ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path, journal)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    _fsync_folder(folder)
    return journal


def commit_files(members: Mapping["os.PathLike[str] | str", Writer], mode: str = "wb",
                 modes: Optional[Mapping["os.PathLike[str] | str", str]] = None) -> None:
    """Write every ``dest -> write(f)`` of ``members`` as one crash-consistent set (see the module
    doc); ``mode`` ``"wb"`` or ``"w"`` (UTF-8, names' undecodable bytes kept: surrogateescape),
    ``modes`` per member. Folders are created; on failure nothing changes and an
    :class:`OutputError` names the file."""
    dests = [os.path.abspath(os.fspath(d)) for d in members]
    writers = list(members.values())
    kinds = {os.path.abspath(os.fspath(d)): m for d, m in (modes or {}).items()}
    for m in [mode, *kinds.values()]:
        if m not in ("wb", "w"):
            raise ValueError(f"commit_files: mode must be 'wb' or 'w', got {m!r}")
    if len(set(dests)) != len(dests):
        raise ValueError("commit_files: a file appears twice in one set")
    folders = sorted({os.path.dirname(d) for d in dests})
    temps: List[str] = []
    journal: Optional[str] = None
    current = dests[0] if dests else ""
    try:
        for folder in folders:
            current = folder
            os.makedirs(folder, exist_ok=True)
        recover_commits(folders)
        for dest, write in zip(dests, writers):
            current = dest
            temps.append(_write_temp(dest, write, kinds.get(dest, mode)))
        current = dests[0]
        with _locked(folders):
            journal = _write_journal(folders[0], list(zip(temps, dests))) if len(dests) > 1 else None
            for tmp, dest in zip(temps, dests):
                current = dest
                os.replace(tmp, dest)
            for folder in folders:
                _fsync_folder(folder)
            if journal:
                os.remove(journal)
    except BaseException as e:
        _after_failure(folders, temps, journal is not None and os.path.exists(journal))
        if isinstance(e, Exception) and _is_write_failure(e):
            raise OutputError(current, f"could not be written ({_write_problem(e, current)}); the "
                                       "previous file(s) are unchanged") from None
        raise


def _after_failure(folders: Sequence[str], temps: Sequence[str], committed: bool) -> None:
    """Before the commit point the old set stays and the temporaries go; after it, try to finish
    the commit now (else :func:`recover_commits` finishes it at the next run)."""
    if committed:
        with contextlib.suppress(OSError, OutputError):
            recover_commits(folders)
        return
    for t in temps:
        with contextlib.suppress(OSError):
            os.remove(t)


# --- the guard -----------------------------------------------------------------------------------------
def _real(p: "os.PathLike[str] | str") -> str:
    return os.path.realpath(os.fspath(p))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_paths(files: Mapping[str, Optional["os.PathLike[str] | str"]],
                       inputs: Iterable[Optional["os.PathLike[str] | str"]] = (),
                       folders: Optional[Mapping[str, Optional["os.PathLike[str] | str"]]] = None
                       ) -> None:
    """:class:`OutputError` unless the output ``files`` (label -> path, e.g. ``{"--json": ...}``) and
    output ``folders`` are pairwise distinct real paths, none of them is or lies inside an input
    (file or folder), and no output file is an existing folder."""
    outs = {k: os.fspath(v) for k, v in files.items() if v is not None}
    dirs = {k: os.fspath(v) for k, v in (folders or {}).items() if v is not None}
    ins = [(os.fspath(i), _real(i)) for i in inputs if i is not None and os.path.exists(os.fspath(i))]
    seen: Dict[str, str] = {}
    for label, path in outs.items():
        real = _real(path)
        if real in seen:
            raise OutputError(path, f"{label} and {seen[real]} name the same file; give different "
                                    "outputs")
        seen[real] = label
        if os.path.isdir(path):
            raise OutputError(path, f"{label} is a folder; give a file name")
    for label, path in [*outs.items(), *dirs.items()]:
        real = _real(path)
        for given, inp in ins:
            if real == inp or (os.path.isdir(inp) and _inside(real, inp)):
                what = "would overwrite an input" if real == inp else "lies inside the input folder"
                raise OutputError(path, f"{label} {what} ({given}); choose another place")


def _probe(folder: str) -> None:
    fd, tmp = temp_file(os.path.join(folder, _PROBE_NAME))
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _output_folders(files: Mapping[str, Optional["os.PathLike[str] | str"]],
                    folders: Mapping[str, Optional["os.PathLike[str] | str"]]) -> Dict[str, set]:
    """Each output folder (created if it is an output itself) and the names written into it."""
    names: Dict[str, set] = {}
    for label, path in folders.items():
        if path is None:
            continue
        try:
            os.makedirs(os.fspath(path), exist_ok=True)
        except OSError as e:
            raise OutputError(path, f"{label}: cannot create the output folder ({os_problem(e)})") \
                from None
        names.setdefault(os.path.abspath(os.fspath(path)), set())
    for label, path in files.items():
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        if not os.path.isdir(folder):
            raise OutputError(path, f"{label}: output folder {folder} does not exist")
        names.setdefault(folder, set()).add(os.path.basename(os.fspath(path)))
    return names


def prepare_outputs(files: Mapping[str, Optional["os.PathLike[str] | str"]],
                    inputs: Iterable[Optional["os.PathLike[str] | str"]] = (),
                    folders: Optional[Mapping[str, Optional["os.PathLike[str] | str"]]] = None,
                    log: Optional[Callable[[str], None]] = None) -> None:
    """Everything checked before a tool starts working (see the module doc): the path rules of
    :func:`check_output_paths`; output ``folders`` created; the folder of each output file exists;
    each folder writable (probed); interrupted commits finished (in every folder first: a set may
    span two) and only then stale temporaries of the outputs removed, each told to ``log``."""
    check_output_paths(files, list(inputs), folders)
    names = _output_folders(files, folders or {})
    for folder in names:
        try:
            _probe(folder)
        except OSError as e:
            raise OutputError(folder, f"output folder is not writable ({os_problem(e)})") from None
    tell = log or (lambda msg: None)
    for done in recover_commits(list(names)):
        tell(f"finished the interrupted commit of {done}")
    for folder, members in names.items():
        for path in clean_stale_temporaries(folder, members):
            tell(f"removed {path} (temporary file of an interrupted run)")
