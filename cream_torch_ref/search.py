"""One Cream search iteration on current torch, with the numbers the official code produced on torch 1.2.

An iteration of the official ``train_epoch`` (``lib/core/train.py``) is, for a sampled path:

1. **Meta-matching update** (``MetaMatchingNetwork.run_update``), every ``UPDATE_ITER`` batches after
   ``META_STA_EPOCH``: pick a teacher from the board (the ``meta`` pick scores every entry with the
   meta layer, *in train mode*, so BN statistics move), compute the distillation loss on the first
   ``SLICE`` images weighted by the meta value, take its gradient with ``create_graph=True``,
   simulate an SGD step of the first path parameter (``students_weight[0] = w - lr_meta * g``),
   really update the student (clip to norm 1, optimizer step), compute the validation loss on the
   second slice, and back-propagate its gradient through the simulated step into the meta layer,
   which is then updated (clip to norm 1, optimizer step).
2. **Distillation step**: pick a teacher again; the loss is
   ``(meta * kd + (2 - meta) * ce) / 2`` (plain label-smoothed CE before ``META_STA_EPOCH`` or with
   an empty board); one optimizer step; the board is updated with the batch top-1.

How the 2020 numerics are reproduced
------------------------------------
The official code ran on torch 1.2, whose ``SGD.step`` updated weights through ``p.data`` and whose
``clip_grad_norm_`` scaled ``p.grad.data`` in place. Writes through ``.data`` do not bump autograd's
version counters, so in step 1 the second backward (the validation gradient pushed through the
simulated update) ran on a graph whose saved weights *had already been overwritten* by the student
update: every backward formula that reads a weight (conv and linear input-gradients, BatchNorm's
gamma) read the updated weight, while saved activations kept their forward values. Current torch
updates weights with tracked in-place ops, so the unmodified official code raises "one of the
variables needed for gradient computation has been modified by an inplace operation".

:class:`LegacySGD` and :func:`clip_grad_norm_legacy` are deliberate re-implementations of the torch
1.2 rules: the update is written through ``.data`` exactly as torch 1.2 wrote it (same operations,
same order), so the saved weights are overwritten in the same way and the second backward computes
what it computed in 2020; the clip sums per-tensor norms as Python floats as torch 1.2 did. The
golden files in ``tests/data/golden_search`` were made by running the official loop with those two
torch 1.2 functions restored (see the README there), and ``parity search-step`` checks this module
against them.

Two more torch 1.2 behaviours matter over a whole search and are kept: ``zero_grad`` zeroed
gradients instead of dropping them, so every parameter that ever received a gradient keeps being
stepped (weight decay and momentum) even when off the sampled path; and the meta step *deleted* the
gradients of the path and meta parameters it had set. :class:`LegacySGD` tracks that "live" set.

Options that change official behaviour are off by default:

* ``fix_meta_value``: the official ``select_teacher`` returns ``sigmoid(-weight)`` of the *last*
  board entry it scored, not of the one it picked; with the option, the picked entry's.
* ``sync_meta_step`` (data-parallel only): the official meta step uses ``torch.autograd.grad``,
  which bypasses DistributedDataParallel's gradient averaging, so every process makes its own meta
  step; with the option the meta step's gradients are averaged.

The control flow of the iteration is :mod:`cream_core.search.step` (framework-free, shared with the
Paddle twin); this module supplies its torch half (:class:`SearchOps`: the optimizer above, the
teacher pick, the first-order half of the meta step, clipping, accuracy, losses, autograd) and
:func:`search_step` runs the shared flow with it. The search run around it (board, sampler,
schedule, checkpoints) is :mod:`cream_core.search.searcher` and :mod:`cream_core.search.loop`.

With the ``top1`` pick the official meta step raises (the teacher-only parameters are unused in
the graph of ``students_weight[0]``); here their gradients are skipped instead (``allow_unused``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cream_core.search import step as core_step
from cream_core.search.board import PrioritizedBoard
from cream_core.search.legacy_sgd import LegacySGDBase
from cream_core.search.records import StepOutput, StepRecord, should_meta_update
from cream_core.search.step import FirstOrder
from cream_core.config.search import SearchConfig
from cream_core.arch.supernet import FlopsTable

from .backend import FRAMEWORK, Backend
from .checkpoint import read_checkpoint, save_official_checkpoint
from .losses import cross_entropy, cross_entropy_loss_with_soft_target, training_loss
from .supernet import SuperNet, create_supernet

__all__ = ["LegacySGD", "clip_grad_norm_legacy", "StepRecord", "StepOutput", "select_teacher",
           "meta_matching_update", "should_meta_update", "search_step", "accuracy", "make_loss_fn",
           "SearchOps"]


# ---- torch 1.2 optimizer semantics --------------------------------------------------------------
class LegacySGD(LegacySGDBase):
    """SGD with momentum as torch 1.2 ran it, over the official four parameter groups
    (:class:`~cream_core.search.legacy_sgd.LegacySGDBase`); the update is written through
    ``.data``, as torch 1.2 wrote it."""

    def __init__(self, model: torch.nn.Module, lr: float, meta_lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4, nesterov: bool = True) -> None:
        super().__init__(Backend.trainable(model), lr, meta_lr, momentum, weight_decay, nesterov)

    @torch.no_grad()
    def step(self, grads: Mapping[str, torch.Tensor]) -> None:
        """One torch 1.2 ``SGD.step`` with ``grads`` as the ``.grad`` of the named parameters."""
        for group, name, p, d_p in self._gradients(grads, torch.zeros_like):
            if group["weight_decay"] != 0:
                d_p.add_(p.data, alpha=group["weight_decay"])
            if self.momentum != 0:
                if name not in self.state:
                    buf = self.state[name] = torch.clone(d_p).detach()
                else:
                    buf = self.state[name]
                    buf.mul_(self.momentum).add_(d_p, alpha=1 - self.dampening)
                d_p = d_p.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.data.add_(d_p, alpha=-group["lr"])  # through .data: no version bump, as torch 1.2
        self.live.update(grads)

    def _buffer_to_numpy(self, buf: torch.Tensor) -> np.ndarray:
        return Backend.to_numpy(buf)

    def _buffer_from_numpy(self, value: Any, like: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(value):
            return value.detach().clone().to(like.dtype)
        return torch.as_tensor(np.asarray(value)).to(like.dtype).clone()


def clip_grad_norm_legacy(grads: Sequence[torch.Tensor], max_norm: float = 1.0
                          ) -> Tuple[List[torch.Tensor], float]:
    """torch 1.2 ``clip_grad_norm_`` on a list of gradients: returns the clipped list and the norm
    (:func:`cream_core.search.step.clip_grad_norm_legacy`)."""
    return core_step.clip_grad_norm_legacy(grads, max_norm, lambda g: float(g.detach().norm(2)))


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Tuple[int, ...] = (1, 5)
             ) -> List[float]:
    """timm 0.1.20 ``accuracy`` (float32: ``correct * 100. / batch``), ``k`` capped at the classes."""
    maxk = min(max(topk), output.shape[1])
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand(maxk, -1))
    return [float(correct[:min(k, maxk)].reshape(-1).float().sum(0) * 100. / target.shape[0])
            for k in topk]


#: The training loss of the official search, ``make_loss_fn(smoothing)``: the retraining's
#: (:func:`.losses.training_loss`).
make_loss_fn = training_loss


# ---- the algorithm -----------------------------------------------------------------------------
def select_teacher(model: SuperNet, board: PrioritizedBoard, cand: Sequence[Sequence[int]],
                   pick_method: str, fix_meta_value: bool = False
                   ) -> Tuple[Any, List[List[int]]]:
    """The official ``select_teacher``: ``(meta_value, teacher_cand)``
    (:func:`cream_core.search.step.pick_teacher`).

    ``meta``: every entry's inputs go through the path ``cand`` (train mode), the meta layer scores
    ``softmax(output) - entry.feat``. The meta value keeps its graph (it is differentiated).
    """
    def score(entry: Any) -> torch.Tensor:
        return model.forward_meta(F.softmax(model(entry.data, cand), dim=1) - entry.feat)

    return core_step.pick_teacher(board, pick_method, fix_meta_value, score, Backend.item,
                                  torch.sigmoid)


def _meta_first_order(model: SuperNet, board: PrioritizedBoard, x: torch.Tensor,
                      cand: Sequence[Sequence[int]], cfg: SearchConfig) -> FirstOrder:
    """The meta step's first half: teacher, weighted distillation loss on the first slice, and
    its gradient over the path's parameters with ``create_graph`` (to differentiate again)."""
    xs = x[:cfg.slice].clone().detach()
    meta_value, teacher_cand = select_teacher(model, board, cand, cfg.pick_method, cfg.fix_meta_value)
    output = model(xs, cand)
    with torch.no_grad():
        soft_label = F.softmax(model(xs, teacher_cand), dim=1)
    kd_loss = meta_value * cross_entropy_loss_with_soft_target(output, soft_label)
    names = model.rand_parameter_names(cand)
    params = list(model.rand_parameters(cand))
    grads = torch.autograd.grad(kd_loss, params, create_graph=True)
    return FirstOrder(meta_value, teacher_cand, kd_loss, names, params, list(grads))


class SearchOps:
    """The torch half of :mod:`cream_core.search` (its ``SearchFramework`` protocol): the step's
    operations, the supernet and optimizer, and the checkpoint files."""

    framework = FRAMEWORK
    backend = Backend
    optimizer = LegacySGD
    select_teacher = staticmethod(select_teacher)
    meta_first_order = staticmethod(_meta_first_order)
    clip_grad_norm_legacy = staticmethod(clip_grad_norm_legacy)
    accuracy = staticmethod(accuracy)
    soft_target_loss = staticmethod(cross_entropy_loss_with_soft_target)
    cross_entropy = staticmethod(cross_entropy)
    make_loss_fn = staticmethod(make_loss_fn)
    create_supernet = staticmethod(create_supernet)
    grad = staticmethod(torch.autograd.grad)
    no_grad = staticmethod(torch.no_grad)

    @staticmethod
    def softmax(logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes (axis 1)."""
        return F.softmax(logits, dim=1)

    @staticmethod
    def checkpoint_writer(model_state: Mapping[str, np.ndarray], search_state: Dict[str, Any],
                          epoch: int, arch: str, args: Dict[str, Any]) -> Callable[[Any], None]:
        """``write(f)`` of a search checkpoint in the official ``.pth.tar`` layout (the search state
        under ``'search'``)."""
        ck = {"epoch": epoch, "arch": arch, "version": 2,
              "state_dict": Backend.tree_from_numpy(dict(model_state)),
              "optimizer": {"state": {}, "param_groups": []},
              "args": args, "search": Backend.tree_from_numpy(search_state)}
        return lambda f: torch.save(ck, f)

    read_checkpoint = staticmethod(read_checkpoint)

    @staticmethod
    def child_writer(state: Mapping[str, np.ndarray], label: str) -> Callable[[Any], None]:
        """``write(f)`` of a child net's weights as an official (legacy) checkpoint."""
        sd = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
        return lambda f: save_official_checkpoint(f, sd, arch=label, args=None, legacy=True)


def meta_matching_update(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard,
                         x: torch.Tensor, y: torch.Tensor, cand: Sequence[Sequence[int]],
                         loss_fn: Callable, cfg: SearchConfig, record: Optional[StepRecord] = None,
                         replicas: Optional[Backend] = None) -> None:
    """The official second-order meta-matching update (:func:`cream_core.search.step.meta_matching_update`)."""
    core_step.meta_matching_update(SearchOps, model, optimizer, board, x, y, cand, loss_fn, cfg,
                                   record, replicas)


def search_step(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard, x: torch.Tensor,
                y: torch.Tensor, cand: Sequence[Sequence[int]], epoch: int, batch_idx: int,
                cfg: SearchConfig, loss_fn: Callable, flops: Optional[FlopsTable] = None,
                record: Optional[StepRecord] = None, replicas: Optional[Backend] = None,
                update_board: bool = True) -> StepOutput:
    """One iteration of the official ``train_epoch`` loop for path ``cand`` (model in train mode):
    :func:`cream_core.search.step.search_step` with :class:`SearchOps`."""
    return core_step.search_step(SearchOps, model, optimizer, board, x, y, cand, epoch, batch_idx,
                                 cfg, loss_fn, flops, record, replicas, update_board)
