"""Evaluate a Paddle child net on ImageNet-style data with the official preprocessing.

Twin of ``cream_torch_ref.evaluate`` (same functions, same signatures). Only the forward pass is
framework code; decoding, normalisation, top-k and loss are the shared, framework-free
:func:`cream_core.data.run_evaluation`, so both frameworks see the same float32 input and are scored
by the same arithmetic.

Forward modes (``mode=``):

* ``eager`` — the ``paddle.nn.Layer`` called under ``paddle.no_grad()``;
* ``static`` — the layer compiled with ``paddle.jit.to_static`` (one static program, no Python
  dispatch per op);
* ``inference`` — the compiled program saved and run by a Paddle Inference predictor (CPU,
  IR optimisation and oneDNN on: see :data:`INFERENCE_ONEDNN`);
* ``auto`` — ``inference`` in :func:`make_forward`; in :func:`evaluate`, ``inference`` when the
  data holds at least :data:`AUTO_COMPILE_MIN_IMAGES` images (compiling takes seconds), else
  ``eager``.

All modes give the same top-1 on every image (``tests/test_eval.py``, ``bench/eval_bench.py``).
"""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from typing import Iterator, Optional

import numpy as np
import paddle

from cream_core.data import ForwardFn
from cream_core.data.framework_eval import bind_evaluate
from cream_core.data.sharded_eval import Comm
from cream_core.io.native_output import redirect_native_output

from .backend import init_distributed

__all__ = ["FRAMEWORK", "FORWARD_MODES", "AUTO_MODE", "AUTO_COMPILE_MIN_IMAGES", "INFERENCE_ONEDNN",
           "resolve_mode", "make_forward", "forward_logits", "init_comm", "evaluate"]

FRAMEWORK = "paddle"
FORWARD_MODES = ("auto", "eager", "static", "inference")
#: What ``auto`` means for a long run. Paddle's eager CPU kernels for depthwise convolution and SiLU
#: are slow (bench/eval_bench.py); the Paddle Inference predictor with oneDNN runs the
#: convolutions (BatchNorm folded in) about twice as fast, with the same top-1 on every image.
AUTO_MODE = "inference"
#: Below this many images, :func:`evaluate` stays eager: compiling costs more than it saves.
AUTO_COMPILE_MIN_IMAGES = 512
#: Paddle Inference with oneDNN kernels (faster than its native CPU kernels on these nets).
INFERENCE_ONEDNN = True


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _static_layer(model: paddle.nn.Layer, img_size: Optional[int]) -> paddle.nn.Layer:
    """A compiled *copy* of ``model`` (``paddle.jit.to_static`` converts a layer in place)."""
    if img_size is None:
        raise ValueError("the static and inference modes need img_size (the crop size)")
    # Paddle 3.3's AST translator re-creates converted functions in a fresh module and fails on
    # default arguments that name module constants (compat.batch_norm's momentum/eps defaults:
    # "NameError: TORCH_BN_MOMENTUM is not defined"). Running that one function as written is
    # correct in a static graph too (plain Python on the flags, then F.batch_norm), so it is exempted
    # from translation.
    from . import compat

    paddle.jit.not_to_static(compat.batch_norm)
    spec = [paddle.static.InputSpec([None, 3, img_size, img_size], "float32", name="images")]
    return paddle.jit.to_static(copy.deepcopy(model), input_spec=spec, full_graph=True)


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence what Paddle's C++ side prints while compiling (oneDNN pass notes on stdout, glog on
    stderr); Python exceptions still propagate."""
    with open(os.devnull, "w") as null, redirect_native_output(null):
        yield


def _inference_forward(model: paddle.nn.Layer, img_size: Optional[int], threads: int) -> ForwardFn:
    with _quiet_native_output():
        forward = _build_predictor(model, img_size, threads)
        forward(np.zeros((1, 3, img_size, img_size), np.float32))  # first run prints pass notes
    return forward


def _build_predictor(model: paddle.nn.Layer, img_size: Optional[int], threads: int) -> ForwardFn:
    from paddle import inference

    static = _static_layer(model, img_size)
    with tempfile.TemporaryDirectory(prefix="cream_paddle_infer_") as tmp:
        prefix = os.path.join(tmp, "model")
        paddle.jit.save(static, prefix)
        program = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
        config = inference.Config(program, prefix + ".pdiparams")
        config.disable_gpu()
        config.switch_ir_optim(True)
        config.set_cpu_math_library_num_threads(threads)
        if INFERENCE_ONEDNN:
            config.enable_mkldnn()
        else:
            config.disable_mkldnn()
        config.disable_glog_info()
        predictor = inference.create_predictor(config)  # reads the files now; tmp may go
    inp = predictor.get_input_handle(predictor.get_input_names()[0])
    out = predictor.get_output_handle(predictor.get_output_names()[0])

    def forward(images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        inp.reshape(list(x.shape))
        inp.copy_from_cpu(x)
        predictor.run()
        return out.copy_to_cpu().astype(np.float32, copy=False)

    return forward


def resolve_mode(mode: str, num_images: int) -> str:
    """The forward mode ``mode`` stands for on a run over ``num_images`` images."""
    if mode not in FORWARD_MODES:
        raise ValueError(f"unknown forward mode {mode!r} for paddle; choose one of "
                         f"{', '.join(FORWARD_MODES)}")
    if mode != "auto":
        return mode
    return AUTO_MODE if num_images >= AUTO_COMPILE_MIN_IMAGES else "eager"


def make_forward(model: paddle.nn.Layer, mode: str = "auto", img_size: Optional[int] = None,
                 threads: Optional[int] = None) -> ForwardFn:
    """A function float32 NCHW numpy batch -> float32 logits numpy, running ``model`` in eval mode.

    ``img_size`` fixes the spatial input size of the compiled modes (``static``, ``inference``).
    ``threads``: CPU threads of the Paddle Inference predictor, or of Paddle's math library in the
    other modes (default: one per core).
    """
    resolve_mode(mode, 0)
    if mode == "auto":
        mode = AUTO_MODE
    n_threads = _cores() if threads is None else max(1, int(threads))
    model.eval()
    if mode == "inference":
        return _inference_forward(model, img_size, n_threads)
    if threads is not None:
        paddle.base.core.set_num_threads(n_threads)
    layer = _static_layer(model, img_size) if mode == "static" else model

    def forward(images: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            out = layer(paddle.to_tensor(np.ascontiguousarray(images, dtype=np.float32)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.numpy().astype(np.float32, copy=False)

    if mode == "static":
        with _quiet_native_output():  # to_static compiles on the first call
            forward(np.zeros((1, 3, img_size, img_size), np.float32))
    return forward


def init_comm() -> Comm:
    """This process's place among the ``paddle.distributed.launch`` processes (joins the gloo
    collective group when there are several), with ``all_gather_object`` to merge results."""
    rank, world = init_distributed()
    if world == 1:
        return Comm()
    import paddle.distributed as dist

    def all_gather(obj: object) -> list:
        out: list = []
        dist.all_gather_object(out, obj)
        return out

    return Comm(rank, world, all_gather)


#: ``forward_logits(model, images)`` and ``evaluate(model, loader, *, mode, threads, ...)``: the
#: framework-free pair of :mod:`cream_core.data.framework_eval` around this module's forward.
forward_logits, evaluate = bind_evaluate(FRAMEWORK, make_forward, resolve_mode)
