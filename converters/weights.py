"""Seeded, BatchNorm-calibrated weights for any torch model, and the bundled photos as a batch.

Parity and conversion tests need weights nobody has to download. Seeded values alone make a poor
test network: eval-mode BatchNorm with running statistics unrelated to the activations never
renormalises, the input-dependent part of the signal shrinks block by block, and the logits hardly
depend on the input (as found for Cream; see :mod:`cream_core.arch.seeded`). So
:func:`seed_and_calibrate` draws every entry with :func:`cream_core.arch.seeded.seeded_array` (the same
per-key values the Cream checkpoints use: deterministic from ``(seed, key, shape)``), then sets each
BatchNorm's running statistics to those of the input it sees on the given images -- the bundled
photos (:func:`bundled_photos`), as a benchmark on photos needs.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from cream_core.arch.seeded import seeded_state

__all__ = ["seed_and_calibrate", "bundled_photos"]


def bundled_photos(height: int, width: Optional[int] = None, *, count: Optional[int] = None
                   ) -> np.ndarray:
    """The bundled photos (``cream_core/data/samples``, sorted by name; the first ``count``) as an
    ``N x 3 x height x width`` float32 batch: the official eval crop (square, at the larger side,
    then centre-cropped to ``height x width``) and ImageNet normalisation."""
    import cream_core.data as cd

    width = height if width is None else width
    if min(height, width) < 1:
        raise ValueError(f"photo size must be positive, got {height}x{width}")
    files = cd.sample_files()[:count]
    if not files:
        raise ValueError("no bundled photos found")
    side = max(height, width)
    batch = np.stack([cd.EvalTransform(side)(p) for p in files])
    top, left = (side - height) // 2, (side - width) // 2
    return cd.normalize(np.ascontiguousarray(batch[:, :, top:top + height, left:left + width]))


def seed_and_calibrate(torch_model: Any, seed: int, images: np.ndarray) -> None:
    """In place: seeded weights for every state-dict entry of ``torch_model`` (a ``torch.nn.Module``),
    then every BatchNorm's running mean / variance set to the mean / unbiased variance of its input
    on ``images`` (one pass, earlier BatchNorms already normalising with their batch statistics --
    what a train-mode pass with cumulative averaging stores). Dropout and every other layer stay in
    eval mode; training flags, momenta and BN step counters are restored."""
    import torch

    state = torch_model.state_dict()
    values = seeded_state(((k, tuple(v.shape)) for k, v in state.items()), seed)
    torch_model.load_state_dict({k: torch.from_numpy(values[k]).to(v.dtype)
                                 for k, v in state.items()})
    _calibrate_batchnorm(torch_model, np.asarray(images, dtype=np.float32))


def _calibrate_batchnorm(model: Any, images: np.ndarray) -> None:
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return
    modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> exactly its statistics
            m.train()
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            model(torch.from_numpy(images).to(dtype))
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.training = mode
