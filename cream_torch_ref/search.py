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

With the ``top1`` pick the official meta step raises (the teacher-only parameters are unused in
the graph of ``students_weight[0]``); here their gradients are skipped instead (``allow_unused``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cream_core.search.board import BoardEntry, PrioritizedBoard
from cream_core.training.schedules import SupernetLinearSchedule, supernet_iters
from cream_core.config.search import SearchConfig
from cream_core.arch.supernet import FlopsTable

from .losses import LabelSmoothingCrossEntropy, cross_entropy, cross_entropy_loss_with_soft_target
from .supernet import SuperNet

__all__ = ["LegacySGD", "clip_grad_norm_legacy", "StepRecord", "StepOutput", "Replicas",
           "select_teacher", "meta_matching_update", "should_meta_update", "search_step",
           "accuracy", "make_loss_fn", "Searcher", "torch_state"]


# ---- torch 1.2 optimizer semantics --------------------------------------------------------------
class LegacySGD:
    """SGD with momentum as torch 1.2 ran it, over the official four parameter groups.

    Groups as ``add_weight_decay_supernet``: no-decay (1-D and biases, lr), decay (lr, weight decay),
    meta layer without and with decay (``meta_lr``, weight decay 0 for both). Gradients are passed
    to :meth:`step` by parameter name; a parameter not passed but *live* (it had a gradient before and
    torch 1.2's ``zero_grad`` only zeroed it) is stepped with a zero gradient.
    """

    def __init__(self, model: torch.nn.Module, lr: float, meta_lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4, nesterov: bool = True) -> None:
        groups: List[Dict[str, Any]] = [
            {"params": [], "weight_decay": 0.0, "lr": lr},
            {"params": [], "weight_decay": weight_decay, "lr": lr},
            {"params": [], "weight_decay": 0.0, "lr": meta_lr},
            {"params": [], "weight_decay": 0.0, "lr": meta_lr},
        ]
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            meta = "meta_layer" in name
            if p.ndim == 1 or name.endswith(".bias"):
                groups[2 if meta else 0]["params"].append((name, p))
            else:
                groups[3 if meta else 1]["params"].append((name, p))
        self.param_groups = groups
        self.momentum = momentum
        self.nesterov = nesterov
        self.dampening = 0.0
        self.state: Dict[str, torch.Tensor] = {}
        self.live: set = set()

    def set_lr(self, lr: float, meta_lr: float) -> None:
        """Learning rates of the student groups and the meta groups."""
        for i, g in enumerate(self.param_groups):
            g["lr"] = lr if i < 2 else meta_lr

    @property
    def meta_lr(self) -> float:
        """``param_groups[-1]['lr']``: what the official simulated update multiplies by."""
        return self.param_groups[-1]["lr"]

    @torch.no_grad()
    def step(self, grads: Mapping[str, torch.Tensor]) -> None:
        """One torch 1.2 ``SGD.step`` with ``grads`` as the ``.grad`` of the named parameters."""
        for group in self.param_groups:
            wd, lr = group["weight_decay"], group["lr"]
            for name, p in group["params"]:
                if name in grads:
                    d_p = grads[name].detach().clone()
                elif name in self.live:
                    d_p = torch.zeros_like(p)
                else:
                    continue
                if wd != 0:
                    d_p.add_(p.data, alpha=wd)
                if self.momentum != 0:
                    if name not in self.state:
                        buf = self.state[name] = torch.clone(d_p).detach()
                    else:
                        buf = self.state[name]
                        buf.mul_(self.momentum).add_(d_p, alpha=1 - self.dampening)
                    d_p = d_p.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.data.add_(d_p, alpha=-lr)  # through .data: no version bump, as torch 1.2
        self.live.update(grads)

    def release(self, names: Iterable[str]) -> None:
        """Forget the gradients of ``names`` (the official meta step's ``del weight.grad``)."""
        self.live.difference_update(names)

    def state_dict(self) -> Dict[str, Any]:
        """Momentum buffers by parameter name, the live set and the current lrs."""
        return {"momentum_buffer": {k: v.detach().clone() for k, v in self.state.items()},
                "live": sorted(self.live), "lr": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (tensors are copied)."""
        params = {n: p for g in self.param_groups for n, p in g["params"]}
        unknown = set(state["momentum_buffer"]) - set(params)
        if unknown:
            raise ValueError(f"optimizer state names unknown parameters: {sorted(unknown)[:3]}")
        self.state = {k: torch.as_tensor(np.asarray(v)).to(params[k].dtype).clone()
                      if not torch.is_tensor(v) else v.detach().clone().to(params[k].dtype)
                      for k, v in state["momentum_buffer"].items()}
        self.live = set(state["live"])
        for g, lr in zip(self.param_groups, state["lr"]):
            g["lr"] = float(lr)


def clip_grad_norm_legacy(grads: Sequence[torch.Tensor], max_norm: float = 1.0
                          ) -> Tuple[List[torch.Tensor], float]:
    """torch 1.2 ``clip_grad_norm_`` on a list of gradients: returns the clipped list and the norm.

    The total norm is the Python-float sum of per-tensor norms squared, as torch 1.2 computed it.
    """
    total = 0.0
    for g in grads:
        total += float(g.detach().norm(2)) ** 2.0
    total = total ** (1.0 / 2.0)
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1:
        return [g.detach() * coef for g in grads], total
    return [g.detach() for g in grads], total


# ---- records -----------------------------------------------------------------------------------
@dataclass
class StepRecord:
    """What one iteration computed, for the parity harness (filled when passed to :func:`search_step`)."""

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
    """Data-parallel context (``torch.distributed`` initialised by the caller, e.g. torchrun + gloo)."""

    world_size: int
    rank: int

    def mean_(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Average ``tensors`` over processes, in place (one flat all-reduce); returns them."""
        if self.world_size == 1 or not tensors:
            return list(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n
        return list(tensors)


def torch_state(model: torch.nn.Module) -> Dict[str, np.ndarray]:
    """``model``'s state dict as numpy arrays (the Paddle twin converts to these names and layouts)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _item(v: Any) -> float:
    return float(v.detach().reshape(-1)[0]) if torch.is_tensor(v) else float(v)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Tuple[int, ...] = (1, 5)
             ) -> List[float]:
    """timm 0.1.20 ``accuracy`` (float32: ``correct * 100. / batch``), ``k`` capped at the classes."""
    maxk = min(max(topk), output.shape[1])
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand(maxk, -1))
    return [float(correct[:min(k, maxk)].reshape(-1).float().sum(0) * 100. / target.shape[0])
            for k in topk]


def make_loss_fn(smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of the official search: label smoothing if ``smoothing > 0``, else CE."""
    return LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing > 0 else cross_entropy


# ---- the algorithm -----------------------------------------------------------------------------
def select_teacher(model: SuperNet, board: PrioritizedBoard, cand: Sequence[Sequence[int]],
                   pick_method: str, fix_meta_value: bool = False
                   ) -> Tuple[Any, List[List[int]]]:
    """The official ``select_teacher``: ``(meta_value, teacher_cand)``.

    ``top1``: 0.5 and the best entry. ``meta``: every entry's inputs go through the path ``cand``
    (train mode), the meta layer scores ``softmax(output) - entry.feat``, the highest score picks the
    teacher; the meta value is ``sigmoid(-score)`` of the *last* entry scored (official) or of the
    picked one (``fix_meta_value``). The meta value keeps its graph (it is differentiated).
    """
    if pick_method == "top1":
        return 0.5, board.top1().cand
    if pick_method != "meta":
        raise ValueError(f"pick method {pick_method!r} is not supported")
    best: Any = -1000000000
    best_weight = None
    teacher = None
    weight = None
    for entry in board.entries():
        output = F.softmax(model(entry.data, cand), dim=1)
        weight = model.forward_meta(output - entry.feat)
        if weight > best:
            best = weight
            best_weight = weight
            teacher = entry.cand
    if teacher is None:
        raise ValueError("no board entry scored above -1e9; the meta layer produced NaN")
    return torch.sigmoid(-(best_weight if fix_meta_value else weight)), teacher


def should_meta_update(epoch: int, batch_idx: int, board: PrioritizedBoard, cfg: SearchConfig) -> bool:
    """The official ``MetaMatchingNetwork.isUpdate``."""
    return (epoch > cfg.meta_sta_epoch and batch_idx > 0 and batch_idx % cfg.update_iter == 0
            and board.board_size() > 0)


def meta_matching_update(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard,
                         x: torch.Tensor, y: torch.Tensor, cand: Sequence[Sequence[int]],
                         loss_fn: Callable, cfg: SearchConfig, record: Optional[StepRecord] = None,
                         replicas: Optional[Replicas] = None) -> None:
    """The official second-order meta-matching update (``run_update`` once it decided to run)."""
    sl = cfg.slice
    xs = x[:sl].clone().detach()
    meta_value, teacher_cand = select_teacher(model, board, cand, cfg.pick_method, cfg.fix_meta_value)
    output = model(xs, cand)
    with torch.no_grad():
        soft_label = F.softmax(model(xs, teacher_cand), dim=1)
    kd_loss = meta_value * cross_entropy_loss_with_soft_target(output, soft_label)
    names = model.rand_parameter_names(cand)
    params = list(model.rand_parameters(cand))
    grad_1st = torch.autograd.grad(kd_loss, params, create_graph=True)
    # the simulated SGD step; only its first entry is differentiated by the official code
    student_weight0 = -grad_1st[0] * optimizer.meta_lr + params[0]
    first = [g.detach() for g in grad_1st]
    if cfg.sync_meta_step and replicas is not None:
        first = [g.clone() for g in first]
        replicas.mean_(first)
    clipped, _ = clip_grad_norm_legacy(first, 1.0)
    optimizer.step(dict(zip(names, clipped)))  # overwrites the graph's saved weights, as in 2020
    optimizer.release(names)
    xv = x[sl:sl * 2].clone()
    valid_loss = loss_fn(model(xv, cand), y[sl:sl * 2])
    grad_val = torch.autograd.grad(valid_loss, list(model.rand_parameters(cand)), retain_graph=True)
    meta = cfg.pick_method == "meta"
    t_names = model.rand_parameter_names(teacher_cand, meta)
    t_params = list(model.rand_parameters(teacher_cand, meta))
    grad_teacher = torch.autograd.grad(student_weight0, t_params, grad_outputs=grad_val[0],
                                       allow_unused=not meta)
    used = [(n, g) for n, g in zip(t_names, grad_teacher) if g is not None]
    t_grads = [g.detach() for _, g in used]
    if cfg.sync_meta_step and replicas is not None:
        t_grads = [g.clone() for g in t_grads]
        replicas.mean_(t_grads)
    clipped_t, _ = clip_grad_norm_legacy(t_grads, 1.0)
    optimizer.step(dict(zip([n for n, _ in used], clipped_t)))
    optimizer.release(t_names)
    if record is not None:
        record.meta_ran = True
        record.meta_value_meta_update = _item(meta_value)
        record.meta_kd_loss = _item(kd_loss)
        record.meta_valid_loss = _item(valid_loss)
        for n, g in zip(names, grad_1st):
            record.grads["meta_first/" + n] = g.detach().cpu().numpy().copy()
        for n, g in zip(names, grad_val):
            record.grads["meta_val/" + n] = g.detach().cpu().numpy().copy()
        for n, g in used:
            record.grads["meta_teacher/" + n] = g.detach().cpu().numpy().copy()


def search_step(model: SuperNet, optimizer: LegacySGD, board: PrioritizedBoard, x: torch.Tensor,
                y: torch.Tensor, cand: Sequence[Sequence[int]], epoch: int, batch_idx: int,
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
        with torch.no_grad():
            teacher_output = model(x, teacher_cand).detach()
            soft_label = F.softmax(teacher_output, dim=1)
        kd_loss = cross_entropy_loss_with_soft_target(output, soft_label)
        loss = (meta_value * kd_loss + (2 - meta_value) * valid_loss) / 2
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    step_grads = {n: g for (n, _), g in zip(named, grads) if g is not None}
    if replicas is not None and replicas.world_size > 1:
        keys = sorted(step_grads)
        replicas.mean_([step_grads[k] for k in keys])
    optimizer.step(step_grads)
    prec1, prec5 = accuracy(output.detach(), y)
    loss_value = _item(loss)
    if replicas is not None and replicas.world_size > 1:
        red = torch.tensor([prec1, prec5, loss_value], dtype=torch.float32)
        replicas.mean_([red])
        prec1, prec5, loss_value = (float(v) for v in red)
    if update_board:
        if board.should_add(epoch, prec1, cand_flops):
            features = output if board.board_size() == 0 else teacher_output
            board.add(prec1, cand_flops, cand, x[:cfg.slice].detach().clone(),
                      F.softmax(features[:cfg.slice].detach(), dim=1))
        board.trim()
    if record is not None:
        record.meta_ran = meta_ran
        record.meta_value = None if kd_loss is None else _item(meta_value)
        record.loss = _item(loss)
        record.kd_loss = None if kd_loss is None else _item(kd_loss)
        record.valid_loss = None if valid_loss is None else _item(valid_loss)
        for n, g in step_grads.items():
            record.grads["step/" + n] = g.detach().cpu().numpy().copy()
        record.after_step = torch_state(model)
    return StepOutput(loss_value, None if kd_loss is None else _item(kd_loss), prec1, prec5, cand,
                      cand_flops, meta_ran, teacher_cand)


# ---- the training loop's state ------------------------------------------------------------------
class Searcher:
    """Supernet, optimizer, schedule, board and sampler of one search run (one process).

    ``cream_cli.search`` drives it batch by batch; :meth:`state_dict` / :meth:`load_state_dict` make
    checkpoints that resume the run exactly (weights, momentum, live gradients, board with its
    tensors, the sampler's random state, the iteration counter).
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
        out = search_step(self.model, self.optimizer, self.board, torch.from_numpy(x),
                          torch.from_numpy(y.astype(np.int64)), cand, epoch, batch_idx, self.cfg,
                          self.loss_fn, self.flops, replicas=self.replicas)
        self.iteration += 1
        return out

    def current_lr(self) -> float:
        """Mean lr over the parameter groups, as the official log prints it."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    @torch.no_grad()
    def eval_batch(self, x: np.ndarray, y: np.ndarray, cand: Sequence[Sequence[int]]
                   ) -> Tuple[float, float, float]:
        """(loss, prec1, prec5) of path ``cand`` in eval mode (the official ``validate``)."""
        self.model.eval()
        out = self.model(torch.from_numpy(x), cand)
        t = torch.from_numpy(y.astype(np.int64))
        loss = float(cross_entropy(out, t))
        p1, p5 = accuracy(out, t)
        return loss, p1, p5

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume (numpy arrays, plain Python values)."""
        return {
            "model": {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()},
            "optimizer": {**self.optimizer.state_dict(),
                          "momentum_buffer": {k: v.cpu().numpy() for k, v in self.optimizer.state.items()}},
            "board": [{"prec1": e.prec1, "flops": e.flops, "cand": e.cand,
                       "data": e.data.cpu().numpy(), "feat": e.feat.cpu().numpy()}
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
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state["model"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.board.board = [BoardEntry(float(e["prec1"]), float(e["flops"]), [list(s) for s in e["cand"]],
                                       torch.from_numpy(np.asarray(e["data"])),
                                       torch.from_numpy(np.asarray(e["feat"])))
                            for e in state["board"]]
        self.rng.set_state(state["rng"])
        self.iteration = int(state["iteration"])
