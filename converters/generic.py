"""``convert-ckpt SRC --torch MODULE:CALLABLE --paddle MODULE:CALLABLE``: any model pair, both ways.

The two callables build the models (``torchvision.models:resnet18`` and
``paddle.vision.models:resnet18``); their layers are paired by :mod:`converters.matching` (or an
edited ``--map`` file), the checkpoint is read with the project's safe loader
(:mod:`cream_torch_ref.checkpoint`: a plain ``state_dict`` file or ``{'state_dict': ...}``; no code
from the file runs), every entry goes through the matching and the shared rules, and the
``.pdparams`` plus its JSON sidecar (which records the matching) are written with the same checks and
atomic writes as the Cream path (:mod:`converters.files`). The way back
(:func:`pdparams_to_torch_generic`, a ``.pdparams`` SRC) writes a plain torch ``state_dict`` file;
``num_batches_tracked`` comes from the source's sidecar when it describes exactly that file, else 0.
Every problem is a :class:`GenericInputError` naming the file or option at fault; then nothing is
written.
"""
from __future__ import annotations

import importlib
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.io.errors import CheckpointError
from cream_core.rules import RuleError

from .files import (SIDECAR_TOOL, BackgroundHash, check_destination, check_source, counters_record,
                    default_output, pdparams_writer, read_own_sidecar, recorded_counters,
                    sha256_file, sidecar_path, tool_version, torch_state_to_numpy, write_outputs)
from .matching import (MatchError, Matching, load_matching, match_models, paddle_to_torch_state,
                       torch_to_paddle_state)

__all__ = ["add_model_pair_arguments", "GenericInputError", "GenericConversion", "DEFAULT_EXAMPLE_SHAPE",
           "resolve_factory", "parse_shape",
           "build_model", "convert_generic", "pdparams_to_torch_generic"]

#: Example input the layers are matched at (one forward pass each side; no values compared).
DEFAULT_EXAMPLE_SHAPE: Tuple[int, ...] = (1, 3, 224, 224)
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class GenericInputError(ValueError):
    """Bad input to a generic conversion (callable, models, checkpoint, map): one line."""


@dataclass
class GenericConversion:
    """What a generic conversion did: files, the two callables, how the layers were paired."""

    src: str
    dst: str
    sidecar: str
    torch: str
    paddle: str
    weights: str  # which entry of the source was converted
    source_sha256: str
    output_sha256: str
    keys: int
    paired_by: List[str]  # 'name' / 'order' / 'file' of the stateful layers
    seconds: float

    def summary(self) -> str:
        """One line for the console."""
        return (f"{self.src} -> {self.dst}: {self.torch} -> {self.paddle}, {self.keys} entries from "
                f"{self.weights}, layers paired by {'+'.join(self.paired_by)}, {self.seconds:.2f} s")

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def add_model_pair_arguments(group: Any) -> None:
    """``--torch``/``--paddle MODULE:CALLABLE`` and their ``--*-kwargs`` (JSON) on an argparse
    group: one definition for every command that takes any model pair."""
    from cream_core.io.cli_errors import json_kwargs, module_callable

    group.add_argument("--torch", metavar="MODULE:CALLABLE", type=module_callable,
                       help="builds the torch model, e.g. torchvision.models:resnet18")
    group.add_argument("--paddle", metavar="MODULE:CALLABLE", type=module_callable,
                       help="builds the Paddle model, e.g. paddle.vision.models:resnet18")
    group.add_argument("--torch-kwargs", metavar="JSON", type=json_kwargs,
                       help="keyword arguments for the torch callable, e.g. "
                            "'{\"num_classes\": 10}' for a fine-tuned model (data, never executed)")
    group.add_argument("--paddle-kwargs", metavar="JSON", type=json_kwargs,
                       help="keyword arguments for the Paddle callable (as --torch-kwargs)")


def resolve_factory(spec: str, option: str) -> Callable[..., Any]:
    """``'package.module:name'`` -> the callable it names; GenericInputError otherwise."""
    if not _SPEC.fullmatch(spec or ""):
        raise GenericInputError(f"{option} {spec!r}: expected MODULE:CALLABLE, e.g. "
                                "torchvision.models:resnet18")
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - ImportError or an error in the module: bad input
        raise GenericInputError(f"{option} {spec}: cannot import module {mod_name!r} "
                                f"({type(e).__name__}: {_first_line(e)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise GenericInputError(f"{option} {spec}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise GenericInputError(f"{option} {spec}: {attr!r} is not callable")
    return obj


def parse_shape(text: Optional[str]) -> Tuple[int, ...]:
    """``'N,C,H,W'`` (any rank >= 2) -> a tuple of positive ints; None -> the default."""
    if text is None:
        return DEFAULT_EXAMPLE_SHAPE
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise GenericInputError(f"--input-shape {text!r}: expected positive integers like 1,3,224,224")
    return shape


def build_model(spec: str, option: str, framework: str,
                kwargs: Optional[Mapping[str, Any]] = None) -> Any:
    """Call the factory ``spec`` names with ``kwargs`` (e.g. ``num_classes`` of a fine-tuned model);
    its result must be a ``torch.nn.Module`` / ``paddle.nn.Layer``."""
    factory = resolve_factory(spec, option)
    if framework == "torch":
        import torch
        base: Any = torch.nn.Module
    else:
        import paddle
        base = paddle.nn.Layer
    try:
        model = factory(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - any failure of user code is bad input here
        raise GenericInputError(f"{option} {spec}: calling it failed ({type(e).__name__}: "
                                f"{_first_line(e)})") from None
    if not isinstance(model, base):
        raise GenericInputError(f"{option} {spec}: returned a {type(model).__name__}, not a "
                                f"{base.__module__.split('.')[0]}.{base.__name__}")
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _read_torch_state(src: str) -> Tuple[Dict[str, np.ndarray], str]:
    from cream_torch_ref.checkpoint import load_checkpoint  # the safe loader

    ck = load_checkpoint(src, use_ema=False)
    return torch_state_to_numpy(src, ck.state_dict), ck.source


def _matching(torch_model: Any, paddle_model: Any, shape: Sequence[int], map_file: Optional[str]
              ) -> Matching:
    if map_file is not None:
        return load_matching(map_file, torch_model, paddle_model)
    example = np.random.RandomState(0).standard_normal(tuple(shape)).astype(np.float32)
    return match_models(torch_model, paddle_model, example)


def _check_files(src: str, dst: str, force: bool, map_file: Optional[str]) -> None:
    check_source(src)
    if map_file is not None and not os.path.isfile(map_file):
        raise GenericInputError(f"{map_file}: no such file (--map)")
    check_destination(src, dst, force, [map_file] if map_file is not None else [])


def _pair(torch_spec: str, paddle_spec: str, shape: Sequence[int], map_file: Optional[str],
          kwargs: "Tuple[Optional[Mapping[str, Any]], Optional[Mapping[str, Any]]]" = (None, None)
          ) -> Tuple[Any, Any, Matching]:
    """Both models (built with ``kwargs`` = torch's, Paddle's) and their matching;
    GenericInputError if they cannot be matched."""
    torch_model = build_model(torch_spec, "--torch", "torch", kwargs[0])
    paddle_model = build_model(paddle_spec, "--paddle", "paddle", kwargs[1])
    try:
        return torch_model, paddle_model, _matching(torch_model, paddle_model, shape, map_file)
    except MatchError as e:
        raise GenericInputError(f"{torch_spec} / {paddle_spec}: {e}") from None


def convert_generic(src: "os.PathLike[str] | str", torch_spec: str, paddle_spec: str,
                    dst: "Optional[os.PathLike[str] | str]" = None, *,
                    input_shape: Optional[Sequence[int]] = None, map_file: Optional[str] = None,
                    force: bool = False, torch_kwargs: Optional[Mapping[str, Any]] = None,
                    paddle_kwargs: Optional[Mapping[str, Any]] = None) -> GenericConversion:
    """Convert the torch checkpoint ``src`` of the model ``torch_spec`` builds into a ``.pdparams`` for
    the model ``paddle_spec`` builds, through their layer matching. Raises GenericInputError (bad
    callable, unmatched models, checkpoint not of this model, bad map) or CheckpointError (unreadable
    file, bad destination); in both cases nothing is written."""
    t0 = time.perf_counter()
    src = os.fspath(src)
    dst = os.fspath(dst) if dst is not None else default_output(src)
    shape = tuple(input_shape) if input_shape is not None else DEFAULT_EXAMPLE_SHAPE
    _check_files(src, dst, force, map_file)
    src_hash = BackgroundHash(src)
    kwargs = (torch_kwargs, paddle_kwargs)
    torch_model, paddle_model, matching = _pair(torch_spec, paddle_spec, shape, map_file, kwargs)
    source, entry = _read_torch_state(src)
    try:
        state = torch_to_paddle_state(source, matching, paddle_model)
    except RuleError as e:
        raise GenericInputError(f"{src}: does not fit {torch_spec} (through the matching with "
                                f"{paddle_spec}): {e}") from None
    counters = {k: int(source[k]) for k in matching.dropped if k in source}
    side = _sidecar("torch->paddle", src, src_hash.result(), torch_spec, paddle_spec, shape,
                    map_file, entry, len(state), matching, counters, kwargs)

    digest = write_outputs(dst, pdparams_writer(state), side)
    return GenericConversion(src, dst, sidecar_path(dst), torch_spec, paddle_spec, entry,
                             side["source_sha256"], digest, len(state),
                             sorted({m.how for m in matching.layers if m.has_params}),
                             time.perf_counter() - t0)


def _sidecar(direction: str, src: str, src_sha: str, torch_spec: str, paddle_spec: str,
             shape: Sequence[int], map_file: Optional[str], entry: str, keys: int,
             matching: Matching, counters: Dict[str, int],
             kwargs: "Tuple[Optional[Mapping[str, Any]], Optional[Mapping[str, Any]]]"
             ) -> Dict[str, Any]:
    return {
        "tool": SIDECAR_TOOL,
        "tool_version": tool_version(),
        "direction": direction,
        "torch": torch_spec,
        "paddle": paddle_spec,
        "torch_kwargs": dict(kwargs[0] or {}),
        "paddle_kwargs": dict(kwargs[1] or {}),
        "example_input_shape": list(shape),
        "map_file": os.path.basename(map_file) if map_file else None,
        "weights": entry,
        "source": os.path.basename(src),
        "source_sha256": src_sha,
        "keys": keys,
        "num_batches_tracked": counters_record(counters),
        "matching": matching.to_json(),
    }


def _recorded_counters(src: str, src_sha: str) -> Dict[str, int]:
    """``num_batches_tracked`` values the source's own sidecar recorded (torch key -> value)."""
    return recorded_counters(read_own_sidecar(src, src_sha, []).get("num_batches_tracked"))


def pdparams_to_torch_generic(src: "os.PathLike[str] | str", torch_spec: str, paddle_spec: str,
                              dst: "Optional[os.PathLike[str] | str]" = None, *,
                              input_shape: Optional[Sequence[int]] = None,
                              map_file: Optional[str] = None, force: bool = False,
                              torch_kwargs: Optional[Mapping[str, Any]] = None,
                              paddle_kwargs: Optional[Mapping[str, Any]] = None
                              ) -> GenericConversion:
    """The way back: the ``.pdparams`` ``src`` of the model ``paddle_spec`` builds as a plain torch
    ``state_dict`` file for the model ``torch_spec`` builds (``torch.load(weights_only=True)``
    reads it). Same errors and guarantees as :func:`convert_generic`."""
    t0 = time.perf_counter()
    src = os.fspath(src)
    dst = os.fspath(dst) if dst is not None else default_output(src, reverse=True)
    shape = tuple(input_shape) if input_shape is not None else DEFAULT_EXAMPLE_SHAPE
    _check_files(src, dst, force, map_file)
    src_sha = sha256_file(src)
    kwargs = (torch_kwargs, paddle_kwargs)
    torch_model, paddle_model, matching = _pair(torch_spec, paddle_spec, shape, map_file, kwargs)

    from cream_paddle.checkpoint import load_checkpoint as load_pdparams  # numpy only, safe

    ck = load_pdparams(src)
    recorded = _recorded_counters(src, src_sha)
    counters = {k: recorded.get(k, recorded.get("*", 0)) for k in matching.dropped}
    try:
        state = paddle_to_torch_state(ck.state_dict, matching, torch_model, counters)
    except RuleError as e:
        raise GenericInputError(f"{src}: does not fit {paddle_spec} (through the matching with "
                                f"{torch_spec}): {e}") from None
    side = _sidecar("paddle->torch", src, src_sha, torch_spec, paddle_spec, shape, map_file,
                    ck.source, len(state), matching, counters if recorded else {}, kwargs)

    import torch

    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
    digest = write_outputs(dst, lambda f: torch.save(tensors, f), side)
    return GenericConversion(src, dst, sidecar_path(dst), torch_spec, paddle_spec, ck.source,
                             src_sha, digest, len(state),
                             sorted({m.how for m in matching.layers if m.has_params}),
                             time.perf_counter() - t0)
