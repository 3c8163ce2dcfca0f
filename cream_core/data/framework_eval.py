"""The ``forward_logits`` and ``evaluate`` of a framework's ``evaluate`` module, written once.

``cream_torch_ref.evaluate`` and ``cream_paddle.evaluate`` differ only in how they run the model
(``make_forward``) and which forward modes they offer (``resolve_mode``); choosing the mode, running
:func:`cream_core.data.evaluation.run_evaluation` and naming the framework in the result are the
same, so :func:`bind_evaluate` builds both functions from those two (the mirror test compares their
signatures across the frameworks).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from cream_core.data.eval_journal import PredictionJournal
from cream_core.data.evaluation import EvalResult, ForwardFn, run_evaluation
from cream_core.data.loader import EvalLoader
from cream_core.data.sharded_eval import Comm

__all__ = ["MakeForward", "bind_evaluate"]

#: ``(model, mode, img_size, threads) -> forward``: a framework's ``make_forward``.
MakeForward = Callable[[Any, str, Optional[int], Optional[int]], ForwardFn]


def bind_evaluate(framework: str, make_forward: MakeForward,
                  resolve_mode: Callable[[str, int], str]
                  ) -> Tuple[Callable[[Any, np.ndarray], np.ndarray], Callable[..., Optional[EvalResult]]]:
    """``(forward_logits, evaluate)`` of ``framework`` given its ``make_forward`` and
    ``resolve_mode`` (the forward mode a mode name stands for on a run over N images)."""

    def forward_logits(model: Any, images: np.ndarray) -> np.ndarray:
        """Logits of one normalised float32 NCHW batch (eager, eval mode)."""
        return make_forward(model, "eager", None, None)(images)

    def evaluate(model: Any, loader: EvalLoader, *, mode: str = "auto",
                 threads: Optional[int] = None, keep_logits: bool = False, progress: bool = False,
                 desc: Optional[str] = None, comm: Optional[Comm] = None,
                 journal: Optional[PredictionJournal] = None, resume: bool = False
                 ) -> Optional[EvalResult]:
        """Top-1/top-5 (percent), mean cross-entropy and images/s of ``model`` over ``loader``; with
        ``comm`` (``init_comm``) this process's share, merged on rank 0 (the others get ``None``);
        ``journal``/``resume``: the predictions file as it goes (:mod:`cream_core.data.sharded_eval`)."""
        forward = make_forward(model, resolve_mode(mode, loader.num_images), loader.img_size,
                               threads)
        return run_evaluation(forward, loader, framework, keep_logits=keep_logits,
                              progress=progress, desc=desc or framework, comm=comm,
                              journal=journal, resume=resume)

    return forward_logits, evaluate
