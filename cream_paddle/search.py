"""One Cream search iteration in Paddle, twin of :mod:`cream_torch_ref.search` (same names, same steps).

Read the torch twin's docstring for the algorithm and for why the official numbers depend on torch
1.2's optimizer writing weights *in place without telling autograd*. Paddle has the same
mechanism: ``Tensor.set_value`` writes into the parameter's memory without bumping its inplace
version, and Paddle's autograd keeps the parameter tensor itself (not a copy) for backward, so after
:class:`LegacySGD` updates the student the second backward reads the updated weights exactly as
torch 1.2 did. Every twice-differentiated op keeps reading the layer's own weight tensor; the
replacement formulations of :mod:`cream_paddle.second_order` are chosen so (the depthwise conv runs
the grouped ``conv2d`` kernel on the layer's weight instead of building a new weight tensor).

Paddle specifics, all confined here and in :mod:`cream_paddle.second_order`:

* the meta step's forward passes that get differentiated twice run inside
  :func:`~cream_paddle.second_order.second_order_mode`, and its softmax / distillation loss use the
  double-grad-capable formulations;
* Paddle keeps BatchNorm running statistics as non-trainable parameters; only trainable ones take
  part in :meth:`SuperNet.rand_parameters` and the optimizer;
* Linear weights are ``[in, out]``; records are converted to torch's layout by
  :class:`~cream_paddle.backend.Backend` (the shared rules).

The control flow of the iteration is :mod:`cream_core.search.step`, shared with the torch twin;
:class:`SearchOps` is its Paddle half.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from cream_core.search import step as core_step
from cream_core.search.board import PrioritizedBoard
from cream_core.search.legacy_sgd import LegacySGDBase
from cream_core.search.records import StepOutput, StepRecord, should_meta_update
from cream_core.search.step import FirstOrder
from cream_core.config.search import SearchConfig
from cream_core.arch.supernet import FlopsTable

from . import second_order
from .backend import FRAMEWORK, Backend
from .checkpoint import read_checkpoint, save_checkpoint
from .losses import cross_entropy, cross_entropy_loss_with_soft_target, training_loss
from .supernet import SuperNet, create_supernet

__all__ = ["LegacySGD", "clip_grad_norm_legacy", "StepRecord", "StepOutput", "select_teacher",
           "meta_matching_update", "should_meta_update", "search_step", "accuracy", "make_loss_fn",
           "SearchOps"]


# ---- torch 1.2 optimizer semantics --------------------------------------------------------------
class LegacySGD(LegacySGDBase):
    """SGD with momentum as torch 1.2 ran it, over the official four parameter groups
    (:class:`~cream_core.search.legacy_sgd.LegacySGDBase`; see the torch twin)."""

    def __init__(self, model: nn.Layer, lr: float, meta_lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4, nesterov: bool = True) -> None:
        super().__init__(Backend.trainable(model), lr, meta_lr, momentum, weight_decay, nesterov)

    def step(self, grads: Mapping[str, paddle.Tensor]) -> None:
        """One torch 1.2 ``SGD.step``; the new weights are written with ``set_value`` (in place,
        no inplace-version bump: the second backward sees them, as it saw torch 1.2's ``.data``)."""
        with paddle.no_grad():
            for group, name, p, d_p in self._gradients(grads, paddle.zeros_like):
                wd = group["weight_decay"]
                if wd != 0:
                    d_p = d_p + p.detach() * wd
                if self.momentum != 0:
                    if name not in self.state:
                        buf = self.state[name] = d_p.clone()
                    else:
                        buf = self.state[name] = (self.state[name] * self.momentum
                                                  + d_p * (1 - self.dampening))
                    d_p = d_p + buf * self.momentum if self.nesterov else buf
                p.set_value(p.detach() + d_p * (-group["lr"]))
        self.live.update(grads)

    def _buffer_to_numpy(self, buf: paddle.Tensor) -> np.ndarray:
        return Backend.to_numpy(buf)

    def _buffer_from_numpy(self, value: Any, like: paddle.Tensor) -> paddle.Tensor:
        return paddle.to_tensor(np.asarray(value), dtype=like.dtype)


def clip_grad_norm_legacy(grads: Sequence[paddle.Tensor], max_norm: float = 1.0
                          ) -> Tuple[List[paddle.Tensor], float]:
    """torch 1.2 ``clip_grad_norm_``: Python-float sum of per-tensor norms; returns clipped grads
    (:func:`cream_core.search.step.clip_grad_norm_legacy`)."""
    return core_step.clip_grad_norm_legacy(
        grads, max_norm, lambda g: float(paddle.linalg.norm(g.detach().reshape([-1]), p=2)))


def accuracy(output: paddle.Tensor, target: paddle.Tensor, topk: Tuple[int, ...] = (1, 5)
             ) -> List[float]:
    """timm 0.1.20 ``accuracy`` in float32 (``correct * 100. / batch``), ``k`` capped at the classes."""
    maxk = min(max(topk), int(output.shape[1]))
    _, pred = paddle.topk(output, maxk, axis=1)
    correct = (pred.t() == target.reshape([1, -1]).astype(pred.dtype).expand([maxk, -1]))
    res = []
    for k in topk:
        c = np.float32(correct[:min(k, maxk)].astype("float32").sum().numpy())
        res.append(float(np.float32(c * np.float32(100.0)) / np.float32(target.shape[0])))
    return res


#: The training loss of the official search, ``make_loss_fn(smoothing)``: the retraining's
#: (:func:`.losses.training_loss`).
make_loss_fn = training_loss


# ---- the algorithm -----------------------------------------------------------------------------
def select_teacher(model: SuperNet, board: PrioritizedBoard, cand: Sequence[Sequence[int]],
                   pick_method: str, fix_meta_value: bool = False
                   ) -> Tuple[Any, List[List[int]]]:
    """The official ``select_teacher`` (see the torch twin)."""
    return _select_teacher(model, board, cand, pick_method, fix_meta_value, None)


def _select_teacher(model: SuperNet, board: PrioritizedBoard, cand: Sequence[Sequence[int]],
                    pick_method: str, fix_meta_value: bool,
                    second_inputs: Optional[List[paddle.Tensor]]) -> Tuple[Any, List[List[int]]]:
    """:func:`select_teacher`; ``second_inputs`` (a list) selects the second-order path: the
    twice-differentiable softmax, and each entry's images enter as a copy that requires grad,
    appended to the list (see :func:`_meta_first_order` for why)."""
    second = second_inputs is not None
    smax = second_order.softmax if second else (lambda t, axis: F.softmax(t, axis=axis))

    def score(entry: Any) -> paddle.Tensor:
        data = entry.data
        if second:
            data = entry.data.detach().clone()
            data.stop_gradient = False
            second_inputs.append(data)
        return model.forward_meta(smax(model(data, cand), axis=1) - entry.feat)

    return core_step.pick_teacher(board, pick_method, fix_meta_value, score, Backend.item,
                                  F.sigmoid)


def _meta_first_order(model: SuperNet, board: PrioritizedBoard, x: paddle.Tensor,
                      cand: Sequence[Sequence[int]], cfg: SearchConfig) -> FirstOrder:
    """The meta step's first half (see the torch twin), in Paddle's second-order mode.

    Paddle's ``conv2d`` double grad links a weight gradient to the incoming gradient only when the
    input gradient is computed too; for the stem convolution the input is data, so the images of
    this step (and the board entries' copies) are marked as requiring grad and their gradients are
    requested with the first-order gradient and dropped. Values are unaffected.
    """
    xs = x[:cfg.slice].clone().detach()
    xs.stop_gradient = False
    names = model.rand_parameter_names(cand)
    params = list(model.rand_parameters(cand))
    data_inputs: List[paddle.Tensor] = []
    with second_order.second_order_mode(model):
        meta_value, teacher_cand = _select_teacher(model, board, cand, cfg.pick_method,
                                                   cfg.fix_meta_value, data_inputs)
        output = model(xs, cand)
        with paddle.no_grad():
            soft_label = F.softmax(model(xs, teacher_cand), axis=1)
        kd_loss = meta_value * second_order.soft_target_cross_entropy(output, soft_label)
    data_inputs.append(xs)
    # allow_unused: the official meta value comes from the last board entry only, so the images of
    # the other entries do not reach the loss (parameters always do; checked below)
    grads = paddle.grad(kd_loss, params + data_inputs, create_graph=True,
                        allow_unused=True)[:len(params)]
    unused = [n for n, g in zip(names, grads) if g is None]
    if unused:
        raise RuntimeError(f"path parameters without gradient in the meta step: {unused[:3]}")
    return FirstOrder(meta_value, teacher_cand, kd_loss, names, params, list(grads))


class SearchOps:
    """The Paddle half of :mod:`cream_core.search` (twin of the torch class)."""

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
    grad = staticmethod(paddle.grad)
    no_grad = staticmethod(paddle.no_grad)

    @staticmethod
    def softmax(logits: paddle.Tensor) -> paddle.Tensor:
        """Softmax over the classes (axis 1)."""
        return F.softmax(logits, axis=1)

    @staticmethod
    def checkpoint_writer(model_state: Mapping[str, np.ndarray], search_state: Dict[str, Any],
                          epoch: int, arch: str, args: Dict[str, Any]) -> Callable[[Any], None]:
        """``write(f)`` of a search checkpoint as a ``.pdparams`` pickle (Paddle layout; the search
        state under ``'search'``)."""
        ck = {"epoch": epoch, "arch": arch, "state_dict": dict(model_state), "args": args,
              "search": search_state}
        return lambda f: pickle.dump(ck, f, protocol=4)

    read_checkpoint = staticmethod(read_checkpoint)

    @staticmethod
    def child_writer(state: Mapping[str, np.ndarray], label: str) -> Callable[[Any], None]:
        """``write(f)`` of a child net's weights as a ``.pdparams`` file."""
        return lambda f: save_checkpoint(f, state)


def meta_matching_update(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard,
                         x: paddle.Tensor, y: paddle.Tensor, cand: Sequence[Sequence[int]],
                         loss_fn: Callable, cfg: SearchConfig, record: Optional[StepRecord] = None,
                         replicas: Optional[Backend] = None) -> None:
    """The official second-order meta-matching update (:func:`cream_core.search.step.meta_matching_update`)."""
    core_step.meta_matching_update(SearchOps, model, optimizer, board, x, y, cand, loss_fn, cfg,
                                   record, replicas)


def search_step(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard, x: paddle.Tensor,
                y: paddle.Tensor, cand: Sequence[Sequence[int]], epoch: int, batch_idx: int,
                cfg: SearchConfig, loss_fn: Callable, flops: Optional[FlopsTable] = None,
                record: Optional[StepRecord] = None, replicas: Optional[Backend] = None,
                update_board: bool = True) -> StepOutput:
    """One iteration of the official ``train_epoch`` loop for path ``cand`` (model in train mode):
    :func:`cream_core.search.step.search_step` with :class:`SearchOps`."""
    return core_step.search_step(SearchOps, model, optimizer, board, x, y, cand, epoch, batch_idx,
                                 cfg, loss_fn, flops, record, replicas, update_board)
