"""Convert Cream checkpoints between PyTorch (``.pth.tar``) and Paddle (``.pdparams``), exactly or not at all.

torch -> Paddle (:func:`convert_checkpoint`): read the checkpoint with the project's safe loader
(:mod:`cream_torch_ref.checkpoint`, no code from the file runs), pick the EMA or raw weights,
recognise the architecture from the shapes (:func:`cream_core.arch.detect.detect_arch`) or take the one
named, build the Paddle model, map every entry with the rules of :mod:`cream_core.rules` onto the
model's keys, and write a ``.pdparams`` (what ``paddle.save`` writes) plus a JSON sidecar.

Paddle -> torch (:func:`pdparams_to_pth`): the same in reverse, into the official training's
checkpoint layout. ``num_batches_tracked`` (which Paddle lacks) is restored from the sidecar of the
``.pdparams`` when that sidecar belongs to exactly this file (its recorded sha256 matches), else set
to 0 (the value of a fresh BatchNorm; unused with a fixed momentum). A ``.pth.tar`` -> ``.pdparams``
-> ``.pth.tar`` round trip is therefore bit-exact.

Output safety (:mod:`converters.files`, shared by every converter): the destination and its sidecar
are written to temporary files in the destination folder and moved into place with ``os.replace``
only after everything succeeded; an existing file is replaced only with ``force``; the destination
may never be the source; the source is only read. Every failure is a :class:`~cream_core.io.errors.CheckpointError` naming the file at fault.

Heavy imports (torch, Paddle, timm) happen inside the functions, so that importing this module and
parsing the command line stay cheap.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from cream_core.arch.detect import DetectedArch, detect_arch, detect_num_classes
from cream_core.io.errors import CheckpointError
from cream_core.arch.supernet import SupernetArch, detect_supernet, plan_supernet
from cream_core.arch.space import CHILD_NETS, child_spec

from cream_core.rules import Mapped, RuleError, TargetKey, apply_rules

from .files import (SIDECAR_TOOL, BackgroundHash, check_destination, check_source, counters_record,
                    default_output, pdparams_writer, read_own_sidecar, recorded_counters,
                    sha256_file, sidecar_path, tool_version, torch_state_to_numpy, write_outputs)

__all__ = ["ConversionResult", "convert_checkpoint", "pdparams_to_pth", "result_as_dict", "resolve_arch",
           "WEIGHTS"]

#: ``--weights`` choices: the EMA weights (what the official test evaluates) or the raw ones.
WEIGHTS = ("ema", "model")


@dataclass
class ConversionResult:
    """What a conversion did: files, model, weights used and the key check."""

    direction: str  # 'torch->paddle' or 'paddle->torch'
    src: str
    dst: str
    sidecar: str
    model: str  # released name or cream-child[...]
    arch_list: List[List[int]]
    num_classes: int
    resolution: Optional[int]
    weights: str  # which entry of the source was converted
    source_sha256: str
    output_sha256: str
    keys: int
    seconds: float
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console."""
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (f"{self.src} -> {self.dst}: {self.model}, {self.num_classes} classes, "
                f"{self.keys} entries from {self.weights}, {self.seconds:.2f} s{notes}")


# --------------------------------------------------------------------------------------------
# architecture


def resolve_arch(shapes: Mapping[str, Sequence[int]], model: str, layout: str, src: str
                 ) -> DetectedArch:
    """The Cream architecture to build: detected from the shapes (``'auto'``) or the released net
    named; a :class:`CheckpointError` naming ``src`` otherwise (also used by the x2paddle engine)."""
    if model == "auto":
        try:
            return detect_arch(shapes, layout=layout)
        except ValueError as e:
            raise CheckpointError(src, str(e)) from None
    if model not in CHILD_NETS:
        raise CheckpointError(src, f"unknown --model {model!r}; choose auto or one of "
                                   f"{', '.join(CHILD_NETS)}")
    spec = child_spec(model)
    return DetectedArch(spec.arch_list, detect_num_classes(shapes, layout), spec.name,
                        spec.resolution)


def _supernet_arch(found: SupernetArch) -> DetectedArch:
    """A supernet (issue 5's search checkpoints) in the shape of a detected architecture: no
    ``arch_list`` (it holds every candidate), its label names the stage depths."""
    return DetectedArch((), found.num_classes, found.label, None)


def _map(src: str, source: Mapping[str, np.ndarray], target: Mapping[str, TargetKey], to: str,
         what: str, fill: Optional[Callable[[str, TargetKey], np.ndarray]] = None) -> Mapped:
    try:
        return apply_rules(source, target, to=to, fill=fill)
    except RuleError as e:
        raise CheckpointError(src, f"does not fit {what}: {e}") from None


def _sidecar(direction: str, src: str, src_sha: str, arch: DetectedArch, weights: str,
             keys: int, extra: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "tool": SIDECAR_TOOL,
        "tool_version": tool_version(),
        "direction": direction,
        "model": arch.label,
        "arch_list": [list(s) for s in arch.arch_list],
        "resolution": arch.resolution,
        "num_classes": arch.num_classes,
        "weights": weights,
        "source": os.path.basename(src),
        "source_sha256": src_sha,
        "keys": keys,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# torch -> Paddle


def convert_checkpoint(src: "os.PathLike[str] | str", dst: "Optional[os.PathLike[str] | str]" = None,
                       model: str = "auto", weights: str = "ema", force: bool = False
                       ) -> ConversionResult:
    """Convert an official Cream ``.pth.tar`` (any form the reference loader accepts) to ``.pdparams``.

    Args:
        src: the torch checkpoint (legacy or zip format; full training checkpoint or bare state dict).
        dst: output path; default SRC's name with ``.pdparams``. A sidecar ``DST.json`` is written too.
        model: ``'auto'`` (recognise the architecture from the shapes) or a released name (``cream-14``).
        weights: ``'ema'`` (``state_dict_ema`` when present, as the official test) or ``'model'``.
        force: replace existing output files.

    Raises :class:`~cream_core.io.errors.CheckpointError` naming the file on any problem; then nothing
    is written.
    """
    t0 = time.perf_counter()
    src = os.fspath(src)
    dst = os.fspath(dst) if dst is not None else default_output(src)
    if weights not in WEIGHTS:
        raise CheckpointError(src, f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    check_source(src)
    check_destination(src, dst, force)
    src_hash = BackgroundHash(src)

    from cream_torch_ref.checkpoint import load_checkpoint  # torch, lazily

    ck = load_checkpoint(src, use_ema=(weights == "ema"))
    notes: List[str] = []
    if weights == "ema" and ck.source != "state_dict_ema":
        notes.append(f"no EMA weights in the file, converted {ck.source}")
    source = torch_state_to_numpy(src, ck.state_dict)
    shapes = {k: v.shape for k, v in source.items()}
    supernet = detect_supernet(shapes, "torch") if model == "auto" else None  # a search checkpoint
    arch = _supernet_arch(supernet) if supernet else resolve_arch(shapes, model, "torch", src)

    import paddle  # lazily

    from cream_paddle.childnet import ChildNet

    from cream_core.rules import paddle_layout

    with paddle.LazyGuard():  # the target's keys, shapes and dtypes; no weights allocated or drawn
        if supernet:
            from cream_paddle.supernet import SuperNet
            net: Any = SuperNet(plan_supernet(supernet.sta_num), supernet.num_classes, supernet.slice)
        else:
            net = ChildNet(arch.arch_list, num_classes=arch.num_classes)
        target = paddle_layout(net)
    mapped = _map(src, source, target, "paddle", f"Paddle {type(net).__name__} {arch.label}")
    nbt = {k: int(v) for k, v in mapped.dropped.items() if k.endswith("num_batches_tracked")}
    extra: Dict[str, Any] = {
        "epoch": ck.meta.get("epoch") if isinstance(ck.meta.get("epoch"), int) else None,
        "num_batches_tracked": counters_record(nbt),
    }
    src_sha = src_hash.result()
    side = _sidecar("torch->paddle", src, src_sha, arch, ck.source, len(mapped.state_dict), extra)

    digest = write_outputs(dst, pdparams_writer(mapped.state_dict), side)
    return ConversionResult("torch->paddle", src, dst, sidecar_path(dst), arch.label,
                            [list(s) for s in arch.arch_list], arch.num_classes, arch.resolution,
                            ck.source, src_sha, digest, len(mapped.state_dict),
                            time.perf_counter() - t0, notes)


# --------------------------------------------------------------------------------------------
# Paddle -> torch


def pdparams_to_pth(src: "os.PathLike[str] | str", dst: "Optional[os.PathLike[str] | str]" = None,
                    model: str = "auto", force: bool = False, legacy: bool = True
                    ) -> ConversionResult:
    """Convert a Cream ``.pdparams`` back to a ``.pth.tar`` in the official training's layout.

    The output holds ``state_dict`` (the converted weights), ``epoch``, ``arch``, ``args`` (None),
    ``optimizer`` (empty) and ``version``, in torch's legacy format by default (readable by the
    official torch 1.2 code). ``num_batches_tracked`` comes from the source's sidecar when it matches
    the file (sha256), else 0. Raises :class:`~cream_core.io.errors.CheckpointError` on any problem;
    then nothing is written.
    """
    t0 = time.perf_counter()
    src = os.fspath(src)
    dst = os.fspath(dst) if dst is not None else default_output(src, reverse=True)
    check_source(src)
    check_destination(src, dst, force)
    src_sha = sha256_file(src)

    from cream_paddle.checkpoint import load_checkpoint as load_pdparams  # numpy only

    ck = load_pdparams(src)
    notes: List[str] = []
    side = read_own_sidecar(src, src_sha, notes)
    shapes = {k: v.shape for k, v in ck.state_dict.items()}
    supernet = detect_supernet(shapes, "paddle") if model == "auto" else None  # a search checkpoint
    arch = _supernet_arch(supernet) if supernet else resolve_arch(shapes, model, "paddle", src)

    import torch  # lazily

    from cream_torch_ref.checkpoint import save_official_checkpoint
    from cream_torch_ref.childnet import ChildNet

    from cream_core.rules import torch_layout

    with torch.device("meta"):  # the target's keys, shapes and dtypes; no weights allocated
        if supernet:
            from cream_torch_ref.supernet import SuperNet
            target = torch_layout(SuperNet(plan_supernet(supernet.sta_num), supernet.num_classes,
                                           supernet.slice))
        else:
            target = torch_layout(ChildNet(arch.arch_list, num_classes=arch.num_classes))
    recorded = recorded_counters(side.get("num_batches_tracked"))
    restored: List[str] = []

    def fill(key: str, tk: TargetKey) -> np.ndarray:
        value = recorded.get(key, recorded.get("*"))
        if value is not None:
            restored.append(key)
            return np.array(value, dtype=tk.dtype)
        return np.zeros(tk.shape, dtype=tk.dtype)

    mapped = _map(src, ck.state_dict, target, "torch", f"torch ChildNet {arch.label}", fill=fill)
    if mapped.filled:
        if len(restored) == len(mapped.filled):
            notes.append("num_batches_tracked restored from the sidecar")
        else:
            notes.append(f"num_batches_tracked set to 0 for {len(mapped.filled) - len(restored)} "
                         "BatchNorm layers (no matching sidecar)")
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in mapped.state_dict.items()}
    epoch = side.get("epoch") if isinstance(side.get("epoch"), int) else 0
    extra = {"epoch": epoch,
             "num_batches_tracked": "sidecar" if restored else "zero"}
    sc = _sidecar("paddle->torch", src, src_sha, arch, ck.source, len(state), extra)

    def write(f: Any) -> None:
        save_official_checkpoint(f, state, epoch=epoch, arch=arch.label, args=None, legacy=legacy)

    digest = write_outputs(dst, write, sc)
    return ConversionResult("paddle->torch", src, dst, sidecar_path(dst), arch.label,
                            [list(s) for s in arch.arch_list], arch.num_classes, arch.resolution,
                            ck.source, src_sha, digest, len(state), time.perf_counter() - t0, notes)


def result_as_dict(result: ConversionResult) -> Dict[str, Any]:
    """A :class:`ConversionResult` as plain JSON-able data."""
    return asdict(result)
