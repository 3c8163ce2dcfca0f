"""What one search iteration reports, as plain numbers, and when the meta-matching update runs.

Framework-free: ``cream_torch_ref.search`` and ``cream_paddle.search`` fill these records; the
parity harness compares them (every array in torch's names and layouts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol

import numpy as np

from cream_core.search.board import PrioritizedBoard

__all__ = ["StepRecord", "StepOutput", "MetaSchedule", "should_meta_update"]


@dataclass
class StepRecord:
    """What one iteration computed, for the parity harness (filled when passed to ``search_step``);
    arrays in torch's names and layouts whichever framework ran."""

    meta_ran: bool = False
    meta_value_meta_update: Optional[float] = None
    meta_kd_loss: Optional[float] = None
    meta_valid_loss: Optional[float] = None
    grads: Dict[str, np.ndarray] = field(default_factory=dict)
    after_meta_update: Dict[str, np.ndarray] = field(default_factory=dict)
    after_step: Dict[str, np.ndarray] = field(default_factory=dict)
    meta_value: Optional[float] = None
    loss: Optional[float] = None
    kd_loss: Optional[float] = None
    valid_loss: Optional[float] = None


@dataclass
class StepOutput:
    """What the training loop needs from an iteration."""

    loss: float
    kd_loss: Optional[float]
    prec1: float
    prec5: float
    cand: List[List[int]]
    flops: float
    meta_ran: bool
    teacher: Optional[List[List[int]]]


class MetaSchedule(Protocol):
    """The settings :func:`should_meta_update` reads (a ``cream_core.config.search.SearchConfig``;
    the config package sits above this one)."""

    meta_sta_epoch: int
    update_iter: int


def should_meta_update(epoch: int, batch_idx: int, board: PrioritizedBoard, cfg: MetaSchedule
                       ) -> bool:
    """The official ``MetaMatchingNetwork.isUpdate`` (``cfg``: a ``SearchConfig``)."""
    return (epoch > cfg.meta_sta_epoch and batch_idx > 0 and batch_idx % cfg.update_iter == 0
            and board.board_size() > 0)
