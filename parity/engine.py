"""What the two ``parity run`` engines share: the Cream preset (:mod:`parity.runner`) and any model
pair (:mod:`parity.generic`).

Both capture a torch and a Paddle pass (:mod:`parity.capture`) and judge them under the named
tolerances of :mod:`parity.tolerances`. What does not depend on how the two models were built or
matched lives here, once: the per-precision casts (with the float64 reference's BN constants
rounded as Paddle rounds them), the gradient comparisons (module outputs in backward order, every
parameter, the input), a stage that raised recorded as a failed comparison, and the torch thread
count of a run. Where the engines differ they say so: Cream's two trees have the same names and
its forward comparison also blames tensors computed inline; a generic pair is compared through
its matching (fused activations, containers that end at different points).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .capture import Capture
from .tolerances import GRAD_CONTEXT_FLOOR, Comparison, compare_arrays, compare_named

__all__ = ["CurvePoint", "owner", "grouped", "grad_context", "curve_point",
           "align_bn_constants_to_paddle", "torch_at", "paddle_at", "compare_out_grads",
           "param_and_input_grads", "stage_error", "torch_threads", "with_threads"]

#: One point of the depth plot: (module, max abs error / scale, excess over the bound).
CurvePoint = Tuple[str, float, float]


def owner(key: str) -> str:
    """The module that owns a parameter or buffer (``a.b.weight`` -> ``a.b``)."""
    return key.rsplit(".", 1)[0] if "." in key else key


def grouped(items: Iterable[Tuple[str, np.ndarray]]) -> Dict[str, List[np.ndarray]]:
    """``(name, array)`` pairs as name -> arrays in arrival order (a module called twice has two)."""
    out: Dict[str, List[np.ndarray]] = {}
    for n, a in items:
        out.setdefault(n, []).append(a)
    return out


def grad_context(t: Capture) -> float:
    """The scale gradients are at least compared on: :data:`GRAD_CONTEXT_FLOOR` of the largest
    parameter gradient of the reference pass ``t``."""
    gscale = max((float(np.abs(v).max()) for v in t.param_grads.values() if v.size), default=0.0)
    return GRAD_CONTEXT_FLOOR * gscale


def curve_point(module: str, c: Comparison) -> CurvePoint:
    """The depth plot's point of one comparison."""
    return (module, c.max_abs / c.ref_scale if c.ref_scale else 0.0, c.excess)


def align_bn_constants_to_paddle(model: Any) -> Any:
    """Round every BatchNorm's epsilon and momentum to the float32 values Paddle computes with.

    Paddle stores BN ``epsilon`` and ``momentum`` as float32 attributes even for float64 tensors
    (1e-5 -> 9.99999975e-06, 0.9 -> 0.89999998; pinned by ``parity/test_ops.py``). In float64 that
    representational difference alone moves a BN output by up to ~1e-8 of its scale where a channel's
    running variance is ~0, enough to hide a semantic one. The float64 reference therefore uses the
    same rounded constants; the float32 stages use the reference untouched.
    """
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eps = float(np.float32(m.eps))
            if m.momentum is not None:
                m.momentum = 1.0 - float(np.float32(1.0 - m.momentum))
    return model


def torch_at(model: Any, precision: str) -> Any:
    """The torch reference cast in place to ``precision``; in fp64 with Paddle's BN constants."""
    return align_bn_constants_to_paddle(model.double()) if precision == "fp64" else model.float()


def paddle_at(model: Any, precision: str) -> Any:
    """The Paddle port cast in place to ``precision``."""
    model.to(dtype="float64" if precision == "fp64" else "float32")
    return model


def compare_out_grads(t: Capture, p: Capture, stage: str, precision: str,
                      truth: Optional[Capture], ctx: float,
                      pairs: Optional[Mapping[str, str]] = None,
                      alias_of: Optional[Mapping[str, str]] = None,
                      skip: Iterable[str] = (), containers: Iterable[str] = ()
                      ) -> Tuple[List[Comparison], List[CurvePoint], Dict[str, int]]:
    """Gradients w.r.t. module outputs, in the order backward delivers them to the reference.

    ``pairs``: torch module -> Paddle module (None: the same names, every module). ``alias_of``:
    torch module -> the torch module whose gradient stands for it (a Paddle layer with a fused
    activation is compared with the gradient w.r.t. the torch activation's output). ``skip``:
    modules not compared; ``containers``: matched by structure, skipped where the shapes differ
    (they end at different points). Returns the comparisons, the depth curve and where each
    module's first gradient arrived (to order the parameter gradients after it).
    """
    alias_of = alias_of or {}
    skip, containers = set(skip), set(containers)
    tall, pg = grouped(t.out_grads), grouped(p.out_grads)
    tg = grouped(truth.out_grads if truth is not None else [])
    out: List[Comparison] = []
    curve: List[CurvePoint] = []
    seen: Dict[str, int] = {}
    first_at: Dict[str, int] = {}
    for i, (n, g) in enumerate(t.out_grads):
        if pairs is not None and n not in pairs or n in skip:
            continue
        k = seen.get(n, 0)
        seen[n] = k + 1
        first_at.setdefault(n, i)
        lst, tl = pg.get(pairs[n] if pairs is not None else n, []), tg.get(alias_of.get(n, n), [])
        if n in alias_of:
            ref = tall.get(alias_of[n], [])
            g = ref[k] if k < len(ref) else g
        if n in containers and k < len(lst) and lst[k].shape != g.shape:
            continue  # containers ending at different points of the computation
        c = compare_arrays(lst[k] if k < len(lst) else None, g, category="out_grad", stage=stage,
                           name=f"d/d {n}", order=i, precision=precision, module=n, scale=ctx,
                           truth=tl[k] if k < len(tl) else None)
        out.append(c)
        curve.append(curve_point(n, c))
    return out, curve, first_at


def param_and_input_grads(port_param_grads: Mapping[str, np.ndarray], port_input_grad: Any,
                          t: Any, truth: Any, stage: str, precision: str,
                          first_at: Mapping[str, int], ctx: Optional[float],
                          input_module: str) -> List[Comparison]:
    """Every parameter gradient (in torch names, ordered after the module that owns it) and the
    input gradient (blamed on ``input_module``), compared with the reference capture ``t``."""
    n_out = len(t.out_grads)
    order = {k: first_at.get(owner(k), n_out) + 0.5 for k in t.param_grads}
    out = compare_named(port_param_grads, t.param_grads, category="param_grad", stage=stage,
                        precision=precision, order=order,
                        modules={k: owner(k) for k in t.param_grads}, scale=ctx,
                        truth=truth.param_grads if truth is not None else None)
    out.append(compare_arrays(port_input_grad, t.input_grad, category="input_grad", stage=stage,
                              name="d/d input", order=n_out + 1, precision=precision,
                              module=input_module,
                              truth=truth.input_grad if truth is not None else None))
    return out


def _raising_side(exc: BaseException) -> str:
    """Which side raised, from the innermost project or framework frame of the traceback."""
    files = []
    tb = exc.__traceback__
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    for f in reversed(files):
        if "cream_paddle" in f or f"{os.sep}paddle{os.sep}" in f:
            return "in the Paddle port: "
        if "cream_torch_ref" in f or f"{os.sep}torch{os.sep}" in f:
            return "in the torch reference: "
    return ""


def stage_error(stage: str, category: str, what: str, exc: BaseException) -> Comparison:
    """A stage that raised: a failed comparison at the start of its stage, with the message.

    (A crash in the port is a finding, not a crash of the harness.)
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    c = Comparison(category, stage, f"{what} raised", -1, module=what)
    c.note = (f"error: {_raising_side(exc)}{type(exc).__name__}: "
              f"{lines[0] if lines else ''}")[:300]
    c.max_abs = c.max_rel = c.excess = math.inf
    return c


def with_threads(n: Optional[int]) -> Callable[[], None]:
    """Switch torch to ``n`` intra-op threads (at least 1; ``None``: leave the setting alone);
    returns the restorer (the noise model's ``set_threads``)."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    return lambda: torch.set_num_threads(old)


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (:func:`with_threads`), then restore the
    count."""
    restore = with_threads(n)
    try:
        yield
    finally:
        restore()
