"""Third opinion: trace the PyTorch reference with x2paddle into a Paddle inference model.

``convert-ckpt`` maps weights onto a hand-written Paddle model. x2paddle (Baidu's converter) instead
traces the torch model and generates its own Paddle program, so it shares neither our blocks nor our
rules; when the parity harness finds torch, ``cream_paddle`` and the x2paddle program in agreement,
a mistake common to our two code paths is unlikely.

* :func:`export_with_x2paddle` traces a ``torch.nn.Module`` (``pytorch2paddle(..., jit_type='trace',
  disable_feedback=True)``: x2paddle otherwise phones home) into a folder;
* :func:`run_x2paddle` runs such a folder on a numpy batch with a Paddle Inference predictor;
* :func:`convert_with_x2paddle` is ``convert-ckpt --engine x2paddle``: checkpoint in, folder out,
  with the same safety rules as the native converter (the folder appears complete or not at all).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from cream_core.io.atomic import replaced_folder
from cream_core.io.errors import CheckpointError
from cream_core.io.native_output import redirect_native_output

__all__ = ["X2PaddleExport", "export_with_x2paddle", "run_x2paddle", "load_predictor",
           "convert_with_x2paddle", "inference_files"]

#: What x2paddle leaves in its folder that marks the folder as an export (for --force).
_MARKERS = ("x2paddle_code.py", "inference_model")


@dataclass
class X2PaddleExport:
    """A Paddle inference model produced by x2paddle."""

    save_dir: str
    model_file: str
    params_file: str
    input_shape: Tuple[int, ...]
    seconds: float
    model: str = ""
    src: str = ""

    def summary(self) -> str:
        """One line for the console."""
        what = f"{self.src} -> " if self.src else ""
        return (f"{what}{self.save_dir}: x2paddle inference model of {self.model or 'the module'} "
                f"(input {list(self.input_shape)}), {self.seconds:.2f} s")

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet(log: io.StringIO) -> Iterator[None]:
    """Silence x2paddle's prints and logs and Paddle's C++ glog lines (fd 1/2), keeping the text."""
    logger = logging.getLogger("x2paddle")
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            with redirect_native_output(sink), contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                yield
        finally:
            logger.setLevel(old_level)
            sink.seek(0)
            log.write(sink.read().decode("utf-8", "replace"))


def inference_files(save_dir: str) -> Tuple[str, str]:
    """``(program, params)`` of the inference model in an x2paddle folder (PIR ``.json`` or ``.pdmodel``)."""
    base = os.path.join(save_dir, "inference_model", "model")
    for ext in (".json", ".pdmodel"):
        if os.path.isfile(base + ext) and os.path.isfile(base + ".pdiparams"):
            return base + ext, base + ".pdiparams"
    raise FileNotFoundError(f"{save_dir} holds no x2paddle inference model "
                            "(inference_model/model.json|.pdmodel + .pdiparams)")


def export_with_x2paddle(module: Any, save_dir: Optional[str] = None,
                         input_shape: Sequence[int] = (1, 3, 224, 224), quiet: bool = True
                         ) -> X2PaddleExport:
    """Trace ``module`` (a torch module, put in eval mode) with x2paddle into ``save_dir``.

    ``save_dir`` None: a new temporary folder (the caller removes it). The example input is zeros of
    ``input_shape``; tracing records the operations, not the values.
    """
    import torch
    from x2paddle.convert import pytorch2paddle

    save_dir = save_dir or tempfile.mkdtemp(prefix="cream-x2paddle-")
    module = module.eval()
    example = torch.zeros(tuple(int(s) for s in input_shape))
    log = io.StringIO()
    t0 = time.perf_counter()
    # x2paddle imports its generated code as the top-level module ``x2paddle_code`` from a
    # sys.path entry it adds: drop both afterwards so a second export cannot pick up the first.
    path_before = list(sys.path)
    sys.modules.pop("x2paddle_code", None)
    try:
        with torch.no_grad(), (_quiet(log) if quiet else contextlib.nullcontext()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # x2paddle uses torch.jit.trace
            pytorch2paddle(module, save_dir=save_dir, jit_type="trace", input_examples=[example],
                           disable_feedback=True)
        model_file, params_file = inference_files(save_dir)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - x2paddle raises anything, even exit(0)
        tail = [ln for ln in log.getvalue().splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"x2paddle failed: {type(e).__name__}: {str(e)[:160]}"
                           + (f" (last output: {tail[0][:120]})" if tail else "")) from None
    finally:
        sys.path[:] = path_before
        sys.modules.pop("x2paddle_code", None)
    return X2PaddleExport(save_dir, model_file, params_file, tuple(example.shape),
                          time.perf_counter() - t0)


def load_predictor(save_dir: str, ir_optim: bool = True) -> Any:
    """A Paddle Inference predictor (CPU, oneDNN off for reproducible float32) for an x2paddle folder."""
    from paddle import inference

    model_file, params_file = inference_files(save_dir)
    cfg = inference.Config(model_file, params_file)
    cfg.disable_gpu()
    cfg.disable_glog_info()
    cfg.switch_ir_optim(ir_optim)
    if hasattr(cfg, "disable_mkldnn"):
        cfg.disable_mkldnn()
    return inference.create_predictor(cfg)


def run_x2paddle(export: "X2PaddleExport | str | Any", x: np.ndarray) -> np.ndarray:
    """Logits of the x2paddle model on NCHW float32 ``x``.

    ``export``: an :class:`X2PaddleExport`, its folder, or a predictor from :func:`load_predictor`
    (reuse one for many batches).
    """
    if isinstance(export, X2PaddleExport):
        pred = load_predictor(export.save_dir)
    elif isinstance(export, (str, os.PathLike)):
        pred = load_predictor(os.fspath(export))
    else:
        pred = export
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = pred.get_input_handle(pred.get_input_names()[0])
    h.reshape(list(x.shape))
    h.copy_from_cpu(x)
    pred.run()
    return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()


def _default_dir(src: str) -> str:
    from .files import PADDLE_SUFFIX, default_output

    return default_output(src)[: -len(PADDLE_SUFFIX)] + ".x2paddle"


def convert_with_x2paddle(src: "os.PathLike[str] | str", out_dir: "Optional[os.PathLike[str] | str]" = None,
                          model: str = "auto", weights: str = "ema", force: bool = False,
                          batch: int = 1) -> X2PaddleExport:
    """``convert-ckpt --engine x2paddle``: load a torch checkpoint into the reference and trace it.

    The folder (default: SRC's name with ``.x2paddle``) is built in a temporary sibling and renamed
    into place when complete. An existing folder is replaced only with ``force`` and only if it is an
    earlier x2paddle export. The input resolution is the released net's test resolution (224 for an
    unreleased architecture).
    """
    from cream_torch_ref.checkpoint import load_checkpoint

    from .convert import WEIGHTS, resolve_arch
    from .files import check_source

    src = os.fspath(src)
    out = os.fspath(out_dir) if out_dir is not None else _default_dir(src)
    if weights not in WEIGHTS:
        raise CheckpointError(src, f"--weights must be {' or '.join(WEIGHTS)}, got {weights!r}")
    check_source(src)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CheckpointError(out, f"output folder {parent} does not exist")
    if os.path.exists(out):
        if os.path.realpath(out) == os.path.realpath(src):
            raise CheckpointError(out, "is the source file; choose another output (-o)")
        if not os.path.isdir(out):
            raise CheckpointError(out, "exists and is not a folder; x2paddle writes a folder")
        if os.listdir(out):
            if not force:
                raise CheckpointError(out, "already exists; pass --force to replace it")
            if not any(os.path.exists(os.path.join(out, m)) for m in _MARKERS):
                raise CheckpointError(out, "is a non-empty folder that is no x2paddle export; "
                                           "refusing to replace it even with --force")
    ck = load_checkpoint(src, use_ema=(weights == "ema"))
    arch = resolve_arch({k: tuple(v.shape) for k, v in ck.state_dict.items()}, model, "torch", src)
    from cream_torch_ref.checkpoint import check_state_dict
    from cream_torch_ref.childnet import ChildNet

    net = ChildNet(arch.arch_list, num_classes=arch.num_classes)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    check_state_dict(expected, ck.state_dict, src, what=f"torch ChildNet {arch.label}")
    net.load_state_dict(ck.state_dict, strict=True)
    res = arch.resolution or 224
    with replaced_folder(out, f".{os.path.basename(out)}.") as tmp:
        try:
            exp = export_with_x2paddle(net, tmp, (batch, 3, res, res))
        except RuntimeError as e:
            raise CheckpointError(src, str(e)) from None
    model_file, params_file = inference_files(out)
    return X2PaddleExport(out, model_file, params_file, exp.input_shape, exp.seconds, arch.label, src)
