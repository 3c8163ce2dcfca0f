"""The control flow of one Cream search iteration, once, against a small per-framework ops object.

The algorithm (the official ``train_epoch`` iteration) is described in :mod:`cream_torch_ref.search`.
What differs between the frameworks is behind :class:`StepOps`: the optimizer with torch 1.2's
in-place semantics (passed in), the teacher pick, the *first-order* half of the meta step (Paddle
runs it in its second-order mode and marks the images as requiring grad), clipping, accuracy,
softmax, the distillation loss and autograd. Everything else (the order of the forward passes,
the simulated SGD step, the second backward through it, gradient averaging, the board update, the
records) is this module, so the two frameworks run the same sequence of operations; both
``torch.autograd.grad`` and ``paddle.grad`` take the same keywords (``grad_outputs``,
``retain_graph``, ``create_graph``, ``allow_unused``) and tensors of both support the arithmetic
and slicing used here. Framework-free: no torch, no Paddle import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import (Any, Callable, ContextManager, Dict, List, Optional, Protocol, Sequence, Tuple,
                    Type)

from cream_core.backend import BackendBase
from cream_core.search.board import PrioritizedBoard
from cream_core.search.legacy_sgd import LegacySGDBase
from cream_core.search.records import StepOutput, StepRecord, should_meta_update

__all__ = ["FirstOrder", "StepOps", "pick_teacher", "clip_grad_norm_legacy", "meta_matching_update",
           "search_step"]


@dataclass
class FirstOrder:
    """The first half of the meta step: the teacher, the weighted distillation loss on the first
    slice and its gradient over the path's parameters (with its graph, to differentiate again)."""

    meta_value: Any
    teacher_cand: List[List[int]]
    kd_loss: Any
    names: List[str]
    params: List[Any]
    grads: List[Any]


class StepOps(Protocol):
    """The framework half of an iteration (``cream_torch_ref.search.SearchOps`` and its twin)."""

    backend: Type[BackendBase]  # the framework's Backend: item, named_to_torch, trainable

    def select_teacher(self, model: Any, board: PrioritizedBoard, cand: Sequence[Sequence[int]],  # noqa: D102
                       pick_method: str, fix_meta_value: bool = False) -> Tuple[Any, List[List[int]]]: ...  # noqa: E704

    def meta_first_order(self, model: Any, board: PrioritizedBoard, x: Any,  # noqa: D102
                         cand: Sequence[Sequence[int]], cfg: Any) -> FirstOrder: ...  # noqa: E704

    def clip_grad_norm_legacy(self, grads: Sequence[Any], max_norm: float = 1.0  # noqa: D102
                              ) -> Tuple[List[Any], float]: ...  # noqa: E704

    def accuracy(self, output: Any, target: Any) -> List[float]: ...  # noqa: D102,E704

    def softmax(self, logits: Any) -> Any: ...  # noqa: D102,E704  (over the classes, axis 1)

    def soft_target_loss(self, output: Any, soft: Any) -> Any: ...  # noqa: D102,E704

    def grad(self, outputs: Any, inputs: Sequence[Any], **kwargs: Any) -> Sequence[Any]: ...  # noqa: D102,E704

    def no_grad(self) -> ContextManager[Any]: ...  # noqa: D102,E704


def pick_teacher(board: PrioritizedBoard, pick_method: str, fix_meta_value: bool,
                 score: Callable[[Any], Any], item: Callable[[Any], float],
                 sigmoid: Callable[[Any], Any]) -> Tuple[Any, List[List[int]]]:
    """The official ``select_teacher``'s choice: ``(meta_value, teacher_cand)``.

    ``top1``: 0.5 and the best entry. ``meta``: ``score(entry)`` (the meta layer's score of the
    entry through the student path, a tensor with its graph) for every entry in board order, the
    highest picks the teacher; the meta value is ``sigmoid(-score)`` of the *last* entry scored
    (official) or of the picked one (``fix_meta_value``). Scores are compared as Python floats
    (``item``): the same order as comparing the float32 tensors.
    """
    if pick_method == "top1":
        return 0.5, board.top1().cand
    if pick_method != "meta":
        raise ValueError(f"pick method {pick_method!r} is not supported")
    best = -1000000000.0
    best_weight = teacher = weight = None
    for entry in board.entries():
        weight = score(entry)
        value = item(weight)
        if value > best:
            best, best_weight, teacher = value, weight, entry.cand
    if teacher is None:
        raise ValueError("no board entry scored above -1e9; the meta layer produced NaN")
    return sigmoid(-(best_weight if fix_meta_value else weight)), teacher


def clip_grad_norm_legacy(grads: Sequence[Any], max_norm: float, norm: Callable[[Any], float]
                          ) -> Tuple[List[Any], float]:
    """torch 1.2 ``clip_grad_norm_`` on a list of gradients: the clipped list and the total norm.

    The total norm is the Python-float sum of the per-tensor 2-norms (``norm(g)``) squared, as
    torch 1.2 computed it.
    """
    total = 0.0
    for g in grads:
        total += norm(g) ** 2.0
    total = total ** (1.0 / 2.0)
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1:
        return [g.detach() * coef for g in grads], total
    return [g.detach() for g in grads], total


def _named_record(ops: StepOps, model: Any, prefix: str, named: Any) -> Dict[str, Any]:
    return {prefix + k: v for k, v in ops.backend.named_to_torch(model, named).items()}


def _synced(replicas: Optional[BackendBase], grads: List[Any], sync: bool) -> List[Any]:
    """``grads`` averaged over processes when ``sync`` and data-parallel, else themselves."""
    return replicas.mean_tensors(grads) if sync and replicas is not None else grads


def meta_matching_update(ops: StepOps, model: Any, optimizer: LegacySGDBase, board: PrioritizedBoard, x: Any,
                         y: Any, cand: Sequence[Sequence[int]], loss_fn: Callable, cfg: Any,
                         record: Optional[StepRecord] = None,
                         replicas: Optional[BackendBase] = None) -> None:
    """The official second-order meta-matching update (``run_update`` once it decided to run).

    ``replicas``: the :class:`Backend` of a data-parallel run (``None``: one process); with
    ``cfg.sync_meta_step`` the meta step's gradients are averaged over its processes.
    """
    sl = cfg.slice
    fo = ops.meta_first_order(model, board, x, cand, cfg)
    # the simulated SGD step; only its first entry is differentiated by the official code
    student_weight0 = -fo.grads[0] * optimizer.meta_lr + fo.params[0]
    first = _synced(replicas, [g.detach() for g in fo.grads], cfg.sync_meta_step)
    clipped, _ = ops.clip_grad_norm_legacy(first, 1.0)
    optimizer.step(dict(zip(fo.names, clipped)))  # overwrites the graph's saved weights, as in 2020
    optimizer.release(fo.names)
    xv = x[sl:sl * 2].clone()
    valid_loss = loss_fn(model(xv, cand), y[sl:sl * 2])
    grad_val = ops.grad(valid_loss, list(model.rand_parameters(cand)), retain_graph=True)
    meta = cfg.pick_method == "meta"
    t_names = model.rand_parameter_names(fo.teacher_cand, meta)
    t_params = list(model.rand_parameters(fo.teacher_cand, meta))
    grad_teacher = ops.grad(student_weight0, t_params, grad_outputs=grad_val[0], allow_unused=not meta)
    used = [(n, g) for n, g in zip(t_names, grad_teacher) if g is not None]
    t_grads = _synced(replicas, [g.detach() for _, g in used], cfg.sync_meta_step)
    clipped_t, _ = ops.clip_grad_norm_legacy(t_grads, 1.0)
    optimizer.step(dict(zip([n for n, _ in used], clipped_t)))
    optimizer.release(t_names)
    if record is not None:
        item = ops.backend.item
        record.meta_ran = True
        record.meta_value_meta_update = item(fo.meta_value)
        record.meta_kd_loss = item(fo.kd_loss)
        record.meta_valid_loss = item(valid_loss)
        record.grads.update(_named_record(ops, model, "meta_first/", zip(fo.names, fo.grads)))
        record.grads.update(_named_record(ops, model, "meta_val/", zip(fo.names, grad_val)))
        record.grads.update(_named_record(ops, model, "meta_teacher/", used))


def _losses(ops: StepOps, model: Any, board: PrioritizedBoard, x: Any, y: Any,
            cand: List[List[int]], epoch: int, cfg: Any, loss_fn: Callable) -> Dict[str, Any]:
    """The distillation step's forward passes and losses (plain CE in the warm-up or with an empty
    board): ``output``, ``loss``, ``kd_loss``, ``valid_loss``, ``meta_value``, ``teacher_cand``,
    ``teacher_output``."""
    meta_value: Any = None
    teacher_cand = None
    if board.board_size() > 0:
        meta_value, teacher_cand = ops.select_teacher(model, board, cand, cfg.pick_method,
                                                      cfg.fix_meta_value)
    output = model(x, cand)
    if board.board_size() == 0 or epoch <= cfg.meta_sta_epoch:
        return {"output": output, "loss": loss_fn(output, y), "kd_loss": None, "valid_loss": None,
                "meta_value": meta_value, "teacher_cand": None, "teacher_output": None}
    valid_loss = loss_fn(output, y)
    with ops.no_grad():
        teacher_output = model(x, teacher_cand).detach()
        soft_label = ops.softmax(teacher_output)
    kd_loss = ops.soft_target_loss(output, soft_label)
    loss = (meta_value * kd_loss + (2 - meta_value) * valid_loss) / 2
    return {"output": output, "loss": loss, "kd_loss": kd_loss, "valid_loss": valid_loss,
            "meta_value": meta_value, "teacher_cand": teacher_cand, "teacher_output": teacher_output}


def _step_grads(ops: StepOps, model: Any, loss: Any, replicas: Optional[BackendBase]) -> Dict[str, Any]:
    """The loss's gradients by parameter name (model order), averaged over processes."""
    named = ops.backend.trainable(model)
    grads = ops.grad(loss, [p for _, p in named], allow_unused=True)
    step_grads = {n: g for (n, _), g in zip(named, grads) if g is not None}
    if replicas is not None and replicas.world_size > 1:
        keys = sorted(step_grads)
        averaged = dict(zip(keys, replicas.mean_tensors([step_grads[k] for k in keys])))
        step_grads = {k: averaged[k] for k in step_grads}
    return step_grads


def search_step(ops: StepOps, model: Any, optimizer: LegacySGDBase, board: PrioritizedBoard, x: Any, y: Any,
                cand: Sequence[Sequence[int]], epoch: int, batch_idx: int, cfg: Any,
                loss_fn: Callable, flops: Any = None, record: Optional[StepRecord] = None,
                replicas: Optional[BackendBase] = None, update_board: bool = True) -> StepOutput:
    """One iteration of the official ``train_epoch`` loop for path ``cand`` (model in train mode).

    ``replicas``: the :class:`Backend` of a data-parallel run (``None``: one process): the
    distillation step's gradients, accuracies and loss are averaged over its processes.
    """
    cand = [list(s) for s in cand]
    cand_flops = flops.get_flops(cand) if flops is not None else 0.0
    meta_ran = should_meta_update(epoch, batch_idx, board, cfg)
    if meta_ran:
        meta_matching_update(ops, model, optimizer, board, x, y, cand, loss_fn, cfg, record, replicas)
        if record is not None:
            record.after_meta_update = ops.backend.torch_state(model)
    r = _losses(ops, model, board, x, y, cand, epoch, cfg, loss_fn)
    step_grads = _step_grads(ops, model, r["loss"], replicas)
    optimizer.step(step_grads)
    output, item = r["output"], ops.backend.item
    prec1, prec5 = ops.accuracy(output.detach(), y)
    loss_value = local_loss = item(r["loss"])
    if replicas is not None and replicas.world_size > 1:
        prec1, prec5, loss_value = replicas.mean_floats([prec1, prec5, loss_value])
    if update_board:
        if board.should_add(epoch, prec1, cand_flops):
            features = output if board.board_size() == 0 else r["teacher_output"]
            board.add(prec1, cand_flops, cand, x[:cfg.slice].detach().clone(),
                      ops.softmax(features[:cfg.slice].detach()))
        board.trim()
    kd = None if r["kd_loss"] is None else item(r["kd_loss"])
    if record is not None:
        record.meta_ran = meta_ran
        record.meta_value = None if kd is None else item(r["meta_value"])
        record.loss = local_loss
        record.kd_loss = kd
        record.valid_loss = None if r["valid_loss"] is None else item(r["valid_loss"])
        record.grads.update(_named_record(ops, model, "step/", step_grads.items()))
        record.after_step = ops.backend.torch_state(model)
    return StepOutput(loss_value, kd, prec1, prec5, cand, cand_flops, meta_ran, r["teacher_cand"])
