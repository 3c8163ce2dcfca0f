"""One ordered, prefetching pool of worker processes for every loader (eval and training batches).

A loader hands :func:`ordered_batches` its batches one by one, each cut into chunks (the argument
tuples of one task each); the pool (the standard library's
:class:`concurrent.futures.ProcessPoolExecutor`) works on at most ``prefetch + 1`` batches at a
time, which bounds memory, and gives back each batch's results in the order the batches and their
chunks were given, so the output never depends on the number of workers.

Clean-up is one and the same however the iteration ends early (a task or the consumer raises, the
consumer stops, Ctrl-C): the work not yet started is cancelled, the chunks already handed to the
workers (those running and the one the standard library queues ahead) get :data:`STOP_GRACE_S` to
finish, and a worker still busy after that is terminated; a second Ctrl-C during that wait
terminates them at once. Every worker process has exited before control returns to the caller.
Workers ignore SIGINT (Ctrl-C reaches the whole foreground process group; the parent alone handles
it, so no worker prints a traceback)
and take SIGTERM's default action (with ``fork`` they would inherit the parent's handlers: Paddle
installs one that prints a "FatalError" report). A worker that dies (killed, out of memory) raises
:class:`WorkerDied` instead of leaving the loader waiting forever for its result.

Nothing here imports torch or Paddle.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import (Any, Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar)

from cream_core.io.errors import RunAborted

__all__ = ["ordered_batches", "split_for_workers", "default_workers", "default_start_method",
           "WorkerDied", "DEFAULT_PREFETCH", "STOP_GRACE_S"]

#: Batches worked on ahead of the one being consumed.
DEFAULT_PREFETCH: int = 2
#: Seconds a stopped pool's running chunks may take before their workers are terminated. A chunk
#: decodes a slice of one batch (well under a second on this project's machines); a worker stuck
#: longer (a hung read) must not keep Ctrl-C or an error from ending the run.
STOP_GRACE_S: float = 10.0

K = TypeVar("K")
R = TypeVar("R")
T = TypeVar("T")


class WorkerDied(RunAborted):
    """A worker process ended without finishing its task (killed, out of memory); the tools print
    it as one line and exit 1 (:data:`cream_core.io.cli_errors.CHECK_FAILED_ERRORS`)."""


def default_workers() -> int:
    """One worker process per CPU core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_start_method() -> str:
    """``fork`` on Linux (starts fast; workers only run PIL and numpy), ``spawn`` elsewhere (fork
    is unsafe there with the frameworks loaded)."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _worker_init() -> None:
    """Workers leave Ctrl-C to the parent and die quietly on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives while the pool starts, takes work or shuts down, and deliver it
    after: a KeyboardInterrupt raised half-way through those leaves worker processes behind, and a
    worker forked in that window would print its own traceback (tests/test_data.py's Ctrl-C test
    did either in 4 of 5 runs before). Only the main thread receives signals; a handler that is
    not Python's (ignored, default) has nothing to hold."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    held: List[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            previous(signal.SIGINT, held[0])


def split_for_workers(items: Sequence[T], workers: Optional[int]) -> List[Sequence[T]]:
    """``items`` cut into at most ``workers`` contiguous chunks of one size (the last may be shorter),
    one task each; no workers: one chunk."""
    parts = max(1, min(int(workers or 0), len(items)))
    step = (len(items) + parts - 1) // parts
    return [items[i:i + step] for i in range(0, len(items), step)]


def ordered_batches(task: Callable[..., R], batches: Iterable[Tuple[K, Sequence[Tuple[Any, ...]]]],
                    workers: int, prefetch: int = DEFAULT_PREFETCH,
                    start_method: Optional[str] = None,
                    stop_grace_s: float = STOP_GRACE_S) -> Iterator[Tuple[K, List[R]]]:
    """``(key, [task(*args) for args in chunks])`` for each ``(key, chunks)`` of ``batches``, in
    order, computed by ``workers`` processes (0: in this process, one chunk after the other)."""
    if workers <= 0:
        for key, chunks in batches:
            yield key, [task(*args) for args in chunks]
        return
    with _ctrl_c_held():
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                   mp_context=mp.get_context(start_method or default_start_method()))
    pending: Deque[Tuple[K, List["Future[R]"]]] = deque()
    todo = iter(batches)
    finished = False

    def submit() -> None:
        with _ctrl_c_held():
            for key, chunks in todo:
                pending.append((key, [pool.submit(task, *args) for args in chunks]))
                return

    try:
        for _ in range(max(0, prefetch) + 1):
            submit()
        while pending:
            key, futures = pending.popleft()
            results = [f.result() for f in futures]
            submit()
            yield key, results
        finished = True
    except BrokenProcessPool:
        raise WorkerDied("a data-loading worker process died before finishing its task (killed, "
                         "or out of memory?); try fewer --workers or a smaller batch") from None
    finally:
        _stop(pool, finished, stop_grace_s)


def _stop(pool: ProcessPoolExecutor, finished: bool, grace_s: float) -> None:
    """Shut ``pool`` down: after the last batch, wait (nothing is running); after an early end,
    give the running chunks ``grace_s`` and terminate the workers still busy (see the module
    docstring). Ctrl-C is held only while the pool itself is told to stop.

    The pool's manager thread alone waits for (reaps) the workers: a second thread waiting for the
    same child would leave it "alive" forever in ``multiprocessing.active_children()``.
    """
    # the standard library offers no public handle on its workers or its manager thread
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    with _ctrl_c_held():
        pool.shutdown(wait=finished, cancel_futures=True)
    if finished or manager is None:
        return
    try:
        manager.join(grace_s)  # it joins the workers once their last chunk is done
    finally:  # also on a second Ctrl-C during the wait
        if manager.is_alive():
            for proc in processes:
                proc.terminate()  # a no-op for a worker already reaped (its returncode is set)
            manager.join()
