"""Evaluate a torch child net on ImageNet-style data with the official preprocessing.

Twin of ``cream_paddle.evaluate`` (same functions, same signatures). Only the forward pass is
framework code; decoding, normalisation, top-k and loss are the shared, framework-free
:func:`cream_core.data.run_evaluation`, so both frameworks see the same float32 input and are scored
by the same arithmetic.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from cream_core.data import ForwardFn
from cream_core.data.framework_eval import bind_evaluate
from cream_core.data.sharded_eval import Comm

from .backend import init_distributed

__all__ = ["FRAMEWORK", "FORWARD_MODES", "resolve_mode", "make_forward", "forward_logits",
           "init_comm", "evaluate"]

FRAMEWORK = "torch"
#: ``eager``: the module as is (the reference). ``auto`` is ``eager``. (``cream_paddle.evaluate``
#: has the same names; there ``auto`` picks a compiled predictor.)
FORWARD_MODES = ("auto", "eager")


def resolve_mode(mode: str, num_images: int) -> str:
    """The forward mode ``mode`` stands for on a run over ``num_images`` images (always eager)."""
    if mode not in FORWARD_MODES:
        raise ValueError(f"unknown forward mode {mode!r} for torch; choose one of "
                         f"{', '.join(FORWARD_MODES)}")
    return "eager"


def make_forward(model: torch.nn.Module, mode: str = "auto", img_size: Optional[int] = None,
                 threads: Optional[int] = None) -> ForwardFn:
    """A function float32 NCHW numpy batch -> float32 logits numpy, running ``model`` in eval mode.

    ``img_size`` is unused here (the Paddle twin needs it to compile); it is accepted so callers can
    treat both frameworks alike. ``threads`` sets torch's intra-op threads for the whole process
    (default: torch's own choice, one per core).
    """
    resolve_mode(mode, 0)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    model.eval()

    def forward(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(images)))
        if isinstance(out, (tuple, list)):  # as the official validate(): first output
            out = out[0]
        return out.float().numpy()

    return forward


def init_comm() -> Comm:
    """This process's place among the ``torchrun`` processes (joins the gloo group when there are
    several), with ``all_gather_object`` to merge their results."""
    rank, world = init_distributed()
    if world == 1:
        return Comm()
    import torch.distributed as dist

    def all_gather(obj: object) -> list:
        out: list = [None] * world
        dist.all_gather_object(out, obj)
        return out

    return Comm(rank, world, all_gather)


#: ``forward_logits(model, images)`` and ``evaluate(model, loader, *, mode, threads, ...)``: the
#: framework-free pair of :mod:`cream_core.data.framework_eval` around this module's forward.
forward_logits, evaluate = bind_evaluate(FRAMEWORK, make_forward, resolve_mode)
