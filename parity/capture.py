"""Record what a model computes, module by module, in torch and in Paddle, as numpy arrays.

A forward pass is recorded as a sequence of **events** in the order they happen:

* ``out`` — a module returned a tensor (torch forward hook / Paddle forward post-hook). Modules
  finish after their children, so a sub-module's output precedes its parent's.
* ``in`` — a module received a tensor. When no earlier event had that tensor (``inline``), it was
  computed *inline* by the module that was running at that moment (the BN arithmetic of
  ``BatchNormAct2d`` before it calls ``drop``/``act``, the mean of a squeeze-excite before
  ``conv_reduce``). Such an event carries the
  name of that enclosing module, so a divergence there is blamed on the code that computed it.

Both frameworks' trees have the same module names, so events pair up by ``(kind, module, call #)``.
With ``grads=True`` the pass is a training step: a loss on the logits, backward, and then the
gradient w.r.t. every module output (in the order backward delivers them), every parameter and the
input are recorded, plus the whole state dict (so the BN running statistics) after the pass.

Framework specifics are kept to the two adapters, :func:`capture_torch` and :func:`capture_paddle`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["Event", "Capture", "capture_torch", "capture_paddle", "LossSpec", "main_output"]


@dataclass
class Event:
    """One tensor seen during a forward pass."""

    kind: str  # "out" or "in"
    module: str  # the module whose output/input it is
    call: int  # how many times this module ran before (0 for the first call)
    culprit: str  # the module whose code computed it (== module for "out"; the caller for "in")
    slot: int  # index into Capture.arrays (tensors seen twice share a slot)
    inline: bool = False  # "in" only: no earlier event had this tensor (computed by the caller)

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.kind, self.module, self.call)

    @property
    def label(self) -> str:
        return self.module if self.kind == "out" else f"{self.module} (input)"


@dataclass
class Capture:
    """Everything recorded from one pass of one model."""

    framework: str
    events: List[Event] = field(default_factory=list)
    arrays: List[np.ndarray] = field(default_factory=list)
    logits: Optional[np.ndarray] = None
    loss: Optional[float] = None
    out_grads: List[Tuple[str, np.ndarray]] = field(default_factory=list)  # backward arrival order
    param_grads: Dict[str, np.ndarray] = field(default_factory=dict)  # framework's own names
    input_grad: Optional[np.ndarray] = None
    state: Dict[str, np.ndarray] = field(default_factory=dict)  # whole state dict after the pass

    def array(self, ev: Event) -> np.ndarray:
        return self.arrays[ev.slot]


#: ``(framework module, logits, target) -> scalar loss`` builder; the harness passes the twins of
#: :mod:`cream_torch_ref.losses` / :mod:`cream_paddle.losses`.
LossSpec = Callable[[Any, Any], Any]


class _Recorder:
    """Shared bookkeeping of the hooks: event list, open-module stack, tensor de-duplication."""

    def __init__(self, framework: str, to_numpy: Callable[[Any], np.ndarray],
                 version: Callable[[Any], int] = lambda t: 0) -> None:
        self.cap = Capture(framework)
        self.to_numpy = to_numpy
        self.version = version  # in-place modification counter: a modified tensor is a new value
        self.stack: List[str] = []
        self.calls: Dict[str, int] = {}
        self.slots: Dict[Tuple[int, int], int] = {}
        self.pinned: List[Any] = []  # keep tensors alive so their id() is not reused mid-pass

    def _slot(self, t: Any) -> Tuple[int, bool]:
        k = (id(t), self.version(t))  # ``out += x`` returns the same object with a new value
        if k in self.slots:
            return self.slots[k], False
        self.pinned.append(t)
        self.cap.arrays.append(self.to_numpy(t))
        self.slots[k] = len(self.cap.arrays) - 1
        return self.slots[k], True

    def pre(self, name: str, t: Any) -> None:
        call = self.calls.get(name, 0)
        if t is not None:
            slot, new = self._slot(t)
            culprit = self.stack[-1] if self.stack else "(input)"
            # new: produced inline by the module that is running now
            self.cap.events.append(Event("in", name, call, culprit, slot, inline=new))
        self.stack.append(name)

    def post(self, name: str, t: Any) -> None:
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        if self.stack and self.stack[-1] == name:
            self.stack.pop()
        if t is not None:
            slot, _ = self._slot(t)
            self.cap.events.append(Event("out", name, call, name, slot))


def main_output(out: Any) -> Any:
    """The logits of a model's output: the output itself, or the first element of a tuple/list
    (models with auxiliary heads, e.g. GoogLeNet, return several tensors in train mode)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _first_tensor(args: Any, is_tensor: Callable[[Any], bool]) -> Any:
    if is_tensor(args):
        return args
    if isinstance(args, (tuple, list)) and args and is_tensor(args[0]):
        return args[0]
    return None


Register = Callable[[Any, Callable[..., None], Callable[..., None]], List[Any]]


def _hook_modules(rec: _Recorder, named: List[Tuple[str, Any]], is_tensor: Callable[[Any], bool],
                  add_grad_hook: Callable[[str, Any], None], register: Register) -> List[Any]:
    """Hooks on every named module recording what it receives and returns (and, through
    ``add_grad_hook``, the gradient w.r.t. its output); ``register(module, pre, post)`` installs
    them the framework's way and returns the handles."""
    handles: List[Any] = []
    for name, mod in named:
        def pre(m: Any, args: Any, n: str = name) -> None:
            rec.pre(n, _first_tensor(args, is_tensor))

        def post(m: Any, args: Any, out: Any, n: str = name) -> None:
            t = out if is_tensor(out) else None
            rec.post(n, t)
            if t is not None:
                add_grad_hook(n, t)

        handles += register(mod, pre, post)
    return handles


def capture_torch(model: Any, x: np.ndarray, *, train: bool = False, grads: bool = False,
                  target: Optional[np.ndarray] = None, loss_fn: Optional[LossSpec] = None,
                  configure: Optional[Callable[[Any], None]] = None,
                  buffers_only: bool = False) -> Capture:
    """Run ``model`` (a ``torch.nn.Module``, already in the wanted dtype) on ``x`` and record it.

    In-place activations are switched off for the pass (and restored), so every recorded tensor and
    every output-gradient hook sees the value the module returned.
    """
    import torch

    rec = _Recorder("torch", lambda t: t.detach().cpu().numpy().copy(), lambda t: t._version)
    dtype = next(model.parameters()).dtype
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in inplace:
        m.inplace = False
    out_grads = rec.cap.out_grads

    def add_grad_hook(name: str, t: Any) -> None:
        if grads and t.requires_grad:
            t.register_hook(lambda g, n=name: out_grads.append((n, g.detach().numpy().copy())))

    handles = _hook_modules(rec, [(n, m) for n, m in model.named_modules() if n], torch.is_tensor,
                            add_grad_hook, lambda mod, pre, post: [
                                mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)])
    try:
        model.train(train)
        if configure is not None:  # e.g. dropout layers back to inference mode
            configure(model)
        xt = torch.tensor(x, dtype=dtype)
        if grads:
            xt.requires_grad_(True)
            for p in model.parameters():
                p.grad = None
            logits = main_output(model(xt))
            loss = loss_fn(logits, torch.tensor(target, dtype=torch.int64))
            loss.backward()
            rec.cap.loss = float(loss.detach())
            rec.cap.input_grad = xt.grad.detach().numpy().copy()
            rec.cap.param_grads = {n: p.grad.detach().numpy().copy()
                                   for n, p in model.named_parameters() if p.grad is not None}
        else:
            with torch.no_grad():
                logits = main_output(model(xt))
        rec.cap.logits = logits.detach().numpy().copy()
        # buffers_only: the BN statistics, not the weights
        params = {n for n, _ in model.named_parameters()} if buffers_only else set()
        rec.cap.state = {n: v.detach().numpy().copy() for n, v in model.state_dict().items()
                         if n not in params}
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
        model.eval()
    return rec.cap


def capture_paddle(model: Any, x: np.ndarray, *, train: bool = False, grads: bool = False,
                   target: Optional[np.ndarray] = None, loss_fn: Optional[LossSpec] = None,
                   configure: Optional[Callable[[Any], None]] = None,
                   buffers_only: bool = False) -> Capture:
    """Run ``model`` (a ``paddle.nn.Layer``, already in the wanted dtype) on ``x`` and record it."""
    import paddle

    rec = _Recorder("paddle", lambda t: t.detach().numpy().copy(),
                    lambda t: t._inplace_version() if hasattr(t, "_inplace_version") else 0)
    dtype = model.parameters()[0].dtype
    out_grads = rec.cap.out_grads

    def is_tensor(t: Any) -> bool:
        return isinstance(t, paddle.Tensor)

    def add_grad_hook(name: str, t: Any) -> None:
        if grads and not t.stop_gradient:
            def hook(g: Any, n: str = name) -> None:
                out_grads.append((n, g.detach().numpy().copy()))
            t.register_hook(hook)

    handles = _hook_modules(rec, list(model.named_sublayers()), is_tensor, add_grad_hook,
                            lambda layer, pre, post: [layer.register_forward_pre_hook(pre),
                                                      layer.register_forward_post_hook(post)])
    try:
        model.train() if train else model.eval()
        if configure is not None:
            configure(model)
        xt = paddle.to_tensor(x).astype(dtype)
        if grads:
            xt.stop_gradient = False
            model.clear_gradients()
            logits = main_output(model(xt))
            loss = loss_fn(logits, paddle.to_tensor(np.asarray(target, dtype=np.int64)))
            loss.backward()
            rec.cap.loss = float(loss.detach())
            rec.cap.input_grad = xt.grad.numpy().copy()
            rec.cap.param_grads = {n: p.grad.numpy().copy()
                                   for n, p in model.named_parameters() if p.grad is not None}
        else:
            with paddle.no_grad():
                logits = main_output(model(xt))
        rec.cap.logits = logits.detach().numpy().copy()
        # Paddle keeps BN statistics as non-trainable parameters, not buffers: take the state dict
        params = {n for n, q in model.named_parameters() if not q.stop_gradient} \
            if buffers_only else set()
        rec.cap.state = {n: v.detach().numpy().copy() for n, v in model.state_dict().items()
                         if n not in params}
    finally:
        for h in handles:
            h.remove()
        model.eval()
    return rec.cap
