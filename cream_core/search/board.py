"""The prioritized path board of Cream (``lib/models/PrioritizedBoard.py``), framework-free.

The board keeps the best paths seen so far (by training-batch top-1, then FLOPs) together with a
slice of the batch they were recorded on and the softmax of the network's output on it; the search
distills from them. What needs a network (running an entry's inputs through the supernet for the
``meta`` pick) lives in ``cream_torch_ref.search`` / ``cream_paddle.search``; the rules live here:

* **update** (:meth:`PrioritizedBoard.should_add`, :meth:`~PrioritizedBoard.add`): nothing before
  ``meta_sta_epoch`` has passed; then a path enters while the board has fewer than ``pool_size``
  entries, or if its top-1 beats the last entry's by more than ``acc_gap`` (5) points, or beats it
  at all with fewer FLOPs. Entries are kept sorted best first; once the board is over size, the last
  entry is dropped (one per update, as the official code does).
* **size**: ``pool_size`` (10).
* **pick**: ``top1`` takes the first entry with meta value 0.5; ``meta`` scores every entry with the
  meta network and takes the best (done by the framework code, which calls :meth:`entries`).
* **sampling** (:meth:`~PrioritizedBoard.get_prob`, :meth:`~PrioritizedBoard.sample`): ``even``
  (uniform), ``pre_prob`` (fixed per-op probabilities), ``teacher`` (op frequencies on the board,
  counting the stem and head blocks' op 0 too, as the official code does; uniform while the board is
  empty). Draws use a ``numpy.random.RandomState`` with the calls ``np.random.choice`` makes, so a
  seeded run samples the paths the official run would.

Ordering. The official board sorts tuples ``(prec1, prec1, flops, cand, data, feat)`` in reverse;
here entries are sorted by ``(prec1, flops, cand)`` in reverse, stably. That is the same order except
for complete ties (same accuracy, FLOPs *and* path), where the official comparison falls through to
tensors and raises; here the earlier entry stays first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

__all__ = ["BoardEntry", "PrioritizedBoard", "PICK_METHODS", "PROB_METHODS", "ACC_GAP",
           "with_fixed_stages"]

T = TypeVar("T")

#: How a teacher is picked from the board.
PICK_METHODS: Tuple[str, ...] = ("top1", "meta")
#: How paths are sampled.
PROB_METHODS: Tuple[str, ...] = ("even", "pre_prob", "teacher")
#: The official ``acc_gap``: a path better by this many top-1 points always enters the board.
ACC_GAP: float = 5.0


def with_fixed_stages(middle: Sequence[Sequence[int]]) -> List[List[int]]:
    """A full path: ``[[0]] + middle + [[0]]`` (the stem and head stages have one candidate)."""
    return [[0]] + [list(s) for s in middle] + [[0]]


@dataclass
class BoardEntry(Generic[T]):
    """One prioritized path: its batch top-1, FLOPs, choices, and the data it was recorded on.

    ``data`` is the first ``slice`` images of the batch, ``feat`` the softmax of the supernet's output
    on them (the teacher's output once the board is non-empty), both framework tensors.
    """

    prec1: float
    flops: float
    cand: List[List[int]]
    data: T = None
    feat: T = None

    def key(self) -> Tuple[float, float, List[List[int]]]:
        """Sort key (compared in reverse: best accuracy first, then *more* FLOPs, as the official tuple)."""
        return (self.prec1, self.flops, self.cand)


@dataclass
class PrioritizedBoard(Generic[T]):
    """The board and the path sampler, with the official defaults."""

    sta_num: Tuple[int, ...]
    choice_num: int = 6
    pool_size: int = 10
    meta_sta_epoch: int = 20
    pick_method: str = "meta"
    how_to_prob: str = "pre_prob"
    pre_prob: Tuple[float, ...] = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)
    acc_gap: float = ACC_GAP
    board: List[BoardEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pick_method not in PICK_METHODS:
            raise ValueError(f"pick method {self.pick_method!r} is not one of {', '.join(PICK_METHODS)}")
        if self.how_to_prob not in PROB_METHODS:
            raise ValueError(f"sampling {self.how_to_prob!r} is not one of {', '.join(PROB_METHODS)}")
        if self.how_to_prob == "pre_prob":
            if len(self.pre_prob) != self.choice_num:
                raise ValueError(f"pre_prob needs {self.choice_num} probabilities, got "
                                 f"{len(self.pre_prob)}")
            if abs(sum(self.pre_prob) - 1.0) > 1e-6 or min(self.pre_prob) < 0:
                raise ValueError(f"pre_prob must be non-negative and sum to 1, got {list(self.pre_prob)}")
        self.sta_num = tuple(int(n) for n in self.sta_num)
        self.restore(self.board)

    # -- size and access ---------------------------------------------------------------------------
    def board_size(self) -> int:
        """Number of entries."""
        return len(self.board)

    def entries(self) -> List[BoardEntry]:
        """The entries, best first."""
        return list(self.board)

    def top1(self) -> BoardEntry:
        """The best entry (the ``top1`` pick; also the search's final answer)."""
        if not self.board:
            raise ValueError("the prioritized board is empty")
        return self.board[0]

    # -- sampling ------------------------------------------------------------------------------------
    def get_prob(self) -> Optional[List[float]]:
        """Per-op sampling probabilities, or ``None`` for uniform sampling."""
        if self.how_to_prob == "even" or (self.how_to_prob == "teacher" and not self.board):
            return None
        if self.how_to_prob == "pre_prob":
            return list(self.pre_prob)
        counts = [0] * self.choice_num
        for entry in self.board:
            for stage in entry.cand:
                for op in stage:
                    counts[op] += 1
        total = 0
        for c in counts:
            total = total + c
        return [float(c) / total for c in counts]

    def sample(self, rng: np.random.RandomState, prob: Optional[Sequence[float]] = None
               ) -> List[List[int]]:
        """A random path with the stem/head stages, drawn as the official ``get_cand_with_prob``."""
        if prob is None:
            middle = [rng.choice(self.choice_num, n).tolist() for n in self.sta_num]
        else:
            middle = [rng.choice(self.choice_num, n, p=list(prob)).tolist() for n in self.sta_num]
        return with_fixed_stages(middle)

    # -- update ---------------------------------------------------------------------------------------
    def should_add(self, epoch: int, prec1: float, flops: float) -> bool:
        """Whether a path with batch top-1 ``prec1`` and ``flops`` enters the board now."""
        if epoch <= self.meta_sta_epoch:
            return False
        if len(self.board) < self.pool_size:
            return True
        last = self.board[-1]
        if prec1 > last.prec1 + self.acc_gap:
            return True
        return prec1 > last.prec1 and flops < last.flops

    def add(self, prec1: float, flops: float, cand: Sequence[Sequence[int]], data: T, feat: T) -> None:
        """Insert an entry and re-sort, best first (call after :meth:`should_add` said yes)."""
        self.board.append(BoardEntry(float(prec1), float(flops), [list(s) for s in cand], data, feat))
        self.board = sorted(self.board, key=BoardEntry.key, reverse=True)

    def trim(self) -> None:
        """Drop the last entry if the board is over ``pool_size`` (the end of every official update)."""
        if len(self.board) > self.pool_size:
            del self.board[-1]

    def restore(self, entries: Sequence[BoardEntry]) -> None:
        """Replace the entries (e.g. from a checkpoint), sorted best first like :meth:`add` keeps them
        (stably: a saved board comes back in its saved order)."""
        self.board = sorted(entries, key=BoardEntry.key, reverse=True)

    def summary(self) -> List[Dict[str, Any]]:
        """The board without its tensors, for logs and checkpoints' metadata."""
        return [{"prec1": e.prec1, "flops": e.flops, "cand": e.cand} for e in self.board]
