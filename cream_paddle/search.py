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
* Linear weights are ``[in, out]``; records are converted to torch's layout (see :func:`_torch_layout_grads`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from cream_core.search.board import BoardEntry, PrioritizedBoard
from cream_core.training.schedules import SupernetLinearSchedule, supernet_iters
from cream_core.config.search import SearchConfig
from cream_core.arch.supernet import FlopsTable

from . import second_order
from .losses import LabelSmoothingCrossEntropy, cross_entropy, cross_entropy_loss_with_soft_target
from .supernet import SuperNet

__all__ = ["LegacySGD", "clip_grad_norm_legacy", "StepRecord", "StepOutput", "Replicas",
           "select_teacher", "meta_matching_update", "should_meta_update", "search_step",
           "accuracy", "make_loss_fn", "Searcher", "torch_state"]


def _trainable(model: nn.Layer) -> List[Tuple[str, paddle.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]


def _linear_weights(model: nn.Layer) -> set:
    return {f"{name}.weight" if name else "weight" for name, layer in
            model.named_sublayers(include_self=True) if isinstance(layer, nn.Linear)}


# ---- torch 1.2 optimizer semantics --------------------------------------------------------------
class LegacySGD:
    """SGD with momentum as torch 1.2 ran it, over the official four parameter groups (see torch twin)."""

    def __init__(self, model: nn.Layer, lr: float, meta_lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4, nesterov: bool = True) -> None:
        groups: List[Dict[str, Any]] = [
            {"params": [], "weight_decay": 0.0, "lr": lr},
            {"params": [], "weight_decay": weight_decay, "lr": lr},
            {"params": [], "weight_decay": 0.0, "lr": meta_lr},
            {"params": [], "weight_decay": 0.0, "lr": meta_lr},
        ]
        for name, p in _trainable(model):
            meta = "meta_layer" in name
            if p.ndim == 1 or name.endswith(".bias"):
                groups[2 if meta else 0]["params"].append((name, p))
            else:
                groups[3 if meta else 1]["params"].append((name, p))
        self.param_groups = groups
        self.momentum = momentum
        self.nesterov = nesterov
        self.dampening = 0.0
        self.state: Dict[str, paddle.Tensor] = {}
        self.live: set = set()

    def set_lr(self, lr: float, meta_lr: float) -> None:
        """Learning rates of the student groups and the meta groups."""
        for i, g in enumerate(self.param_groups):
            g["lr"] = lr if i < 2 else meta_lr

    @property
    def meta_lr(self) -> float:
        """``param_groups[-1]['lr']``: what the official simulated update multiplies by."""
        return self.param_groups[-1]["lr"]

    def step(self, grads: Mapping[str, paddle.Tensor]) -> None:
        """One torch 1.2 ``SGD.step``; the new weights are written with ``set_value`` (in place,
        no inplace-version bump: the second backward sees them, as it saw torch 1.2's ``.data``)."""
        with paddle.no_grad():
            for group in self.param_groups:
                wd, lr = group["weight_decay"], group["lr"]
                for name, p in group["params"]:
                    if name in grads:
                        d_p = grads[name].detach().clone()
                    elif name in self.live:
                        d_p = paddle.zeros_like(p)
                    else:
                        continue
                    if wd != 0:
                        d_p = d_p + p.detach() * wd
                    if self.momentum != 0:
                        if name not in self.state:
                            buf = self.state[name] = d_p.clone()
                        else:
                            buf = self.state[name] = (self.state[name] * self.momentum
                                                      + d_p * (1 - self.dampening))
                        d_p = d_p + buf * self.momentum if self.nesterov else buf
                    p.set_value(p.detach() + d_p * (-lr))
        self.live.update(grads)

    def release(self, names: Iterable[str]) -> None:
        """Forget the gradients of ``names`` (the official meta step's ``del weight.grad``)."""
        self.live.difference_update(names)

    def state_dict(self) -> Dict[str, Any]:
        """Momentum buffers by parameter name (Paddle layout, numpy), the live set and the lrs."""
        return {"momentum_buffer": {k: np.asarray(v.numpy()).copy() for k, v in self.state.items()},
                "live": sorted(self.live), "lr": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore momentum buffers (Paddle layout), the live set and the lrs."""
        params = {n: p for g in self.param_groups for n, p in g["params"]}
        unknown = set(state["momentum_buffer"]) - set(params)
        if unknown:
            raise ValueError(f"optimizer state names unknown parameters: {sorted(unknown)[:3]}")
        self.state = {k: paddle.to_tensor(np.asarray(v), dtype=params[k].dtype)
                      for k, v in state["momentum_buffer"].items()}
        self.live = set(state["live"])
        for g, lr in zip(self.param_groups, state["lr"]):
            g["lr"] = float(lr)


def clip_grad_norm_legacy(grads: Sequence[paddle.Tensor], max_norm: float = 1.0
                          ) -> Tuple[List[paddle.Tensor], float]:
    """torch 1.2 ``clip_grad_norm_``: Python-float sum of per-tensor norms; returns clipped grads."""
    total = 0.0
    for g in grads:
        total += float(paddle.linalg.norm(g.detach().reshape([-1]), p=2)) ** 2.0
    total = total ** (1.0 / 2.0)
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1:
        return [g.detach() * coef for g in grads], total
    return [g.detach() for g in grads], total


# ---- records -----------------------------------------------------------------------------------
@dataclass
class StepRecord:
    """What one iteration computed, in torch's names and layouts (see the torch twin)."""

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


@dataclass
class Replicas:
    """Data-parallel context (``paddle.distributed.init_parallel_env`` called by the caller)."""

    world_size: int
    rank: int

    def mean_(self, tensors: Sequence[paddle.Tensor]) -> List[paddle.Tensor]:
        """Averages of ``tensors`` over processes (one flat all-reduce), as new tensors."""
        if self.world_size == 1 or not tensors:
            return list(tensors)
        flat = paddle.concat([t.reshape([-1]) for t in tensors])
        paddle.distributed.all_reduce(flat)
        flat = flat / self.world_size
        out, offset = [], 0
        for t in tensors:
            n = int(np.prod(t.shape)) if t.ndim else 1
            out.append(flat[offset:offset + n].reshape(t.shape))
            offset += n
        return out


def torch_state(model: nn.Layer) -> Dict[str, np.ndarray]:
    """``model``'s state in torch's names and layouts (BN buffers renamed, Linear weights transposed;
    no ``num_batches_tracked``, which Paddle does not keep)."""
    lin = _linear_weights(model)
    out: Dict[str, np.ndarray] = {}
    for k, v in model.state_dict().items():
        a = np.asarray(v.numpy()).copy()
        if k in lin:
            a = np.ascontiguousarray(a.T)
        if k.endswith("._mean"):
            k = k[:-len("._mean")] + ".running_mean"
        elif k.endswith("._variance"):
            k = k[:-len("._variance")] + ".running_var"
        out[k] = a
    return out


def _torch_layout_grads(model: nn.Layer, prefix: str, pairs: Iterable[Tuple[str, paddle.Tensor]]
                        ) -> Dict[str, np.ndarray]:
    lin = _linear_weights(model)
    out = {}
    for n, g in pairs:
        a = np.asarray(g.detach().numpy()).copy()
        out[prefix + n] = np.ascontiguousarray(a.T) if n in lin else a
    return out


def _item(v: Any) -> float:
    return float(v.detach().reshape([-1])[0]) if isinstance(v, paddle.Tensor) else float(v)


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


def make_loss_fn(smoothing: float) -> Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]:
    """The training loss of the official search: label smoothing if ``smoothing > 0``, else CE."""
    return LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing > 0 else cross_entropy


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
    appended to the list (see :func:`meta_matching_update` for why)."""
    second = second_inputs is not None
    if pick_method == "top1":
        return 0.5, board.top1().cand
    if pick_method != "meta":
        raise ValueError(f"pick method {pick_method!r} is not supported")
    smax = second_order.softmax if second else (lambda t, axis: F.softmax(t, axis=axis))
    best: Any = -1000000000
    best_weight = None
    teacher = None
    weight = None
    for entry in board.entries():
        data = entry.data
        if second:
            data = entry.data.detach().clone()
            data.stop_gradient = False
            second_inputs.append(data)
        output = smax(model(data, cand), axis=1)
        weight = model.forward_meta(output - entry.feat)
        if _item(weight) > (_item(best) if isinstance(best, paddle.Tensor) else best):
            best = weight
            best_weight = weight
            teacher = entry.cand
    if teacher is None:
        raise ValueError("no board entry scored above -1e9; the meta layer produced NaN")
    return F.sigmoid(-(best_weight if fix_meta_value else weight)), teacher


def should_meta_update(epoch: int, batch_idx: int, board: PrioritizedBoard, cfg: SearchConfig) -> bool:
    """The official ``MetaMatchingNetwork.isUpdate``."""
    return (epoch > cfg.meta_sta_epoch and batch_idx > 0 and batch_idx % cfg.update_iter == 0
            and board.board_size() > 0)


def meta_matching_update(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard,
                         x: paddle.Tensor, y: paddle.Tensor, cand: Sequence[Sequence[int]],
                         loss_fn: Callable, cfg: SearchConfig, record: Optional[StepRecord] = None,
                         replicas: Optional[Replicas] = None) -> None:
    """The official second-order meta-matching update (see the torch twin).

    Paddle's ``conv2d`` double grad links a weight gradient to the incoming gradient only when the
    input gradient is computed too; for the stem convolution the input is data, so the images of
    this step (and the board entries' copies) are marked as requiring grad and their gradients are
    requested with the first-order gradient and dropped. Values are unaffected.
    """
    sl = cfg.slice
    xs = x[:sl].clone().detach()
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
    grad_1st = paddle.grad(kd_loss, params + data_inputs, create_graph=True,
                           allow_unused=True)[:len(params)]
    unused = [n for n, g in zip(names, grad_1st) if g is None]
    if unused:
        raise RuntimeError(f"path parameters without gradient in the meta step: {unused[:3]}")
    student_weight0 = -grad_1st[0] * optimizer.meta_lr + params[0]
    first = [g.detach() for g in grad_1st]
    if cfg.sync_meta_step and replicas is not None:
        first = replicas.mean_(first)
    clipped, _ = clip_grad_norm_legacy(first, 1.0)
    optimizer.step(dict(zip(names, clipped)))  # overwrites the graph's saved weights, as in 2020
    optimizer.release(names)
    xv = x[sl:sl * 2].clone()
    valid_loss = loss_fn(model(xv, cand), y[sl:sl * 2])
    grad_val = paddle.grad(valid_loss, list(model.rand_parameters(cand)), retain_graph=True)
    meta = cfg.pick_method == "meta"
    t_names = model.rand_parameter_names(teacher_cand, meta)
    t_params = list(model.rand_parameters(teacher_cand, meta))
    grad_teacher = paddle.grad(student_weight0, t_params, grad_outputs=grad_val[0],
                               allow_unused=not meta)
    used = [(n, g) for n, g in zip(t_names, grad_teacher) if g is not None]
    t_grads = [g.detach() for _, g in used]
    if cfg.sync_meta_step and replicas is not None:
        t_grads = replicas.mean_(t_grads)
    clipped_t, _ = clip_grad_norm_legacy(t_grads, 1.0)
    optimizer.step(dict(zip([n for n, _ in used], clipped_t)))
    optimizer.release(t_names)
    if record is not None:
        record.meta_ran = True
        record.meta_value_meta_update = _item(meta_value)
        record.meta_kd_loss = _item(kd_loss)
        record.meta_valid_loss = _item(valid_loss)
        record.grads.update(_torch_layout_grads(model, "meta_first/", zip(names, grad_1st)))
        record.grads.update(_torch_layout_grads(model, "meta_val/", zip(names, grad_val)))
        record.grads.update(_torch_layout_grads(model, "meta_teacher/", used))


def search_step(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard, x: paddle.Tensor,
                y: paddle.Tensor, cand: Sequence[Sequence[int]], epoch: int, batch_idx: int,
                cfg: SearchConfig, loss_fn: Callable, flops: Optional[FlopsTable] = None,
                record: Optional[StepRecord] = None, replicas: Optional[Replicas] = None,
                update_board: bool = True) -> StepOutput:
    """One iteration of the official ``train_epoch`` loop for path ``cand`` (model in train mode)."""
    cand = [list(s) for s in cand]
    cand_flops = flops.get_flops(cand) if flops is not None else 0.0
    meta_ran = should_meta_update(epoch, batch_idx, board, cfg)
    if meta_ran:
        meta_matching_update(model, optimizer, board, x, y, cand, loss_fn, cfg, record, replicas)
        if record is not None:
            record.after_meta_update = torch_state(model)
    meta_value: Any = None
    teacher_cand = None
    if board.board_size() > 0:
        meta_value, teacher_cand = select_teacher(model, board, cand, cfg.pick_method,
                                                  cfg.fix_meta_value)
    teacher_output = None
    kd_loss = valid_loss = None
    if board.board_size() == 0 or epoch <= cfg.meta_sta_epoch:
        output = model(x, cand)
        loss = loss_fn(output, y)
        teacher_cand = None
    else:
        output = model(x, cand)
        valid_loss = loss_fn(output, y)
        with paddle.no_grad():
            teacher_output = model(x, teacher_cand).detach()
            soft_label = F.softmax(teacher_output, axis=1)
        kd_loss = cross_entropy_loss_with_soft_target(output, soft_label)
        loss = (meta_value * kd_loss + (2 - meta_value) * valid_loss) / 2
    named = _trainable(model)
    grads = paddle.grad(loss, [p for _, p in named], allow_unused=True)
    step_grads = {n: g for (n, _), g in zip(named, grads) if g is not None}
    if replicas is not None and replicas.world_size > 1:
        keys = sorted(step_grads)
        step_grads = dict(zip(keys, replicas.mean_([step_grads[k] for k in keys])))
    optimizer.step(step_grads)
    prec1, prec5 = accuracy(output.detach(), y)
    loss_value = _item(loss)
    if replicas is not None and replicas.world_size > 1:
        red = replicas.mean_([paddle.to_tensor([prec1, prec5, loss_value], dtype="float32")])[0]
        prec1, prec5, loss_value = (float(v) for v in red.numpy())
    if update_board:
        if board.should_add(epoch, prec1, cand_flops):
            features = output if board.board_size() == 0 else teacher_output
            board.add(prec1, cand_flops, cand, x[:cfg.slice].detach().clone(),
                      F.softmax(features[:cfg.slice].detach(), axis=1))
        board.trim()
    if record is not None:
        record.meta_ran = meta_ran
        record.meta_value = None if kd_loss is None else _item(meta_value)
        record.loss = _item(loss)
        record.kd_loss = None if kd_loss is None else _item(kd_loss)
        record.valid_loss = None if valid_loss is None else _item(valid_loss)
        record.grads.update(_torch_layout_grads(model, "step/", step_grads.items()))
        record.after_step = torch_state(model)
    return StepOutput(loss_value, None if kd_loss is None else _item(kd_loss), prec1, prec5, cand,
                      cand_flops, meta_ran, teacher_cand)


# ---- the training loop's state ------------------------------------------------------------------
class Searcher:
    """Supernet, optimizer, schedule, board and sampler of one search run (see the torch twin).

    :meth:`state_dict` holds the model in Paddle's layout under ``"model"`` plus the same
    framework-free entries as the torch twin (momentum in Paddle layout).
    """

    def __init__(self, model: SuperNet, cfg: SearchConfig, flops: FlopsTable,
                 replicas: Optional[Replicas] = None) -> None:
        self.model = model
        self.cfg = cfg
        self.flops = flops
        self.replicas = replicas
        self.board: PrioritizedBoard = PrioritizedBoard(
            model.plan.sta_num, choice_num=model.plan.choice_num, pool_size=cfg.pool_size,
            meta_sta_epoch=cfg.meta_sta_epoch, pick_method=cfg.pick_method,
            how_to_prob=cfg.how_to_prob, pre_prob=cfg.pre_prob)
        self.optimizer = LegacySGD(model, cfg.lr, cfg.meta_lr, cfg.momentum, cfg.weight_decay,
                                   cfg.nesterov)
        self.schedule = SupernetLinearSchedule(
            lr=cfg.lr, iters=supernet_iters(cfg.epochs, cfg.num_gpu, cfg.batch_size))
        self.loss_fn = make_loss_fn(cfg.smoothing)
        self.rng = np.random.RandomState(cfg.seed)
        self.iteration = 0

    def train_batch(self, x: np.ndarray, y: np.ndarray, epoch: int, batch_idx: int) -> StepOutput:
        """Sample a path and run one iteration on a numpy batch; the LR follows the official schedule."""
        factor = self.schedule.factor(self.iteration)
        self.optimizer.set_lr(self.cfg.lr * factor, self.cfg.meta_lr * factor)
        cand = self.board.sample(self.rng, self.board.get_prob())
        self.model.train()
        out = search_step(self.model, self.optimizer, self.board, paddle.to_tensor(x),
                          paddle.to_tensor(y.astype(np.int64)), cand, epoch, batch_idx, self.cfg,
                          self.loss_fn, self.flops, replicas=self.replicas)
        self.iteration += 1
        return out

    def current_lr(self) -> float:
        """Mean lr over the parameter groups, as the official log prints it."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    def eval_batch(self, x: np.ndarray, y: np.ndarray, cand: Sequence[Sequence[int]]
                   ) -> Tuple[float, float, float]:
        """(loss, prec1, prec5) of path ``cand`` in eval mode (the official ``validate``)."""
        self.model.eval()
        with paddle.no_grad():
            out = self.model(paddle.to_tensor(x), cand)
            t = paddle.to_tensor(y.astype(np.int64))
            loss = float(cross_entropy(out, t))
            p1, p5 = accuracy(out, t)
        return loss, p1, p5

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (numpy arrays, plain Python values; Paddle layout)."""
        return {
            "model": {k: np.asarray(v.numpy()) for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "board": [{"prec1": e.prec1, "flops": e.flops, "cand": e.cand,
                       "data": np.asarray(e.data.numpy()), "feat": np.asarray(e.feat.numpy())}
                      for e in self.board.board],
            "rng": self.rng.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state["model"]))
        unexpected = sorted(set(state["model"]) - set(own))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit this supernet: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        self.model.set_state_dict({k: np.asarray(v) for k, v in state["model"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.board.board = [BoardEntry(float(e["prec1"]), float(e["flops"]), [list(s) for s in e["cand"]],
                                       paddle.to_tensor(np.asarray(e["data"])),
                                       paddle.to_tensor(np.asarray(e["feat"])))
                            for e in state["board"]]
        self.rng.set_state(state["rng"])
        self.iteration = int(state["iteration"])
