"""``parity run --torch MODULE:CALLABLE --paddle MODULE:CALLABLE``: any model pair, from the shell.

Everything that can be wrong with the input is checked before anything is written: the two
callables (importable, callable, returning a ``torch.nn.Module`` / ``paddle.nn.Layer``), the input
shape, the checkpoint (read with the project's safe loader and checked against the torch model),
the matching of the two trees (or the ``--map`` file) and the weight transfer. Any of these failing
is one line on stderr and exit 2, with nothing written. Then :func:`parity.generic.compare` runs,
and the report folder gets ``matching.json`` (editable, for ``--map``), ``parity.json`` and
``parity.png``. Exit 0 iff equivalent, 1 if not.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from cream_core.io.cli_errors import UsageError
from cream_core.io.outputs import prepare_outputs

__all__ = ["PairError", "ModelPair", "parse_input_shape", "build_pair",
           "run_generic", "DEFAULT_INPUT_SHAPE", "INPUT_SEED", "WEIGHTS_SEED"]

#: The issue's default input: a batch of 2 ImageNet-sized images.
DEFAULT_INPUT_SHAPE: Tuple[int, int, int, int] = (2, 3, 224, 224)
#: Seed of the input batch (standard normal, like normalised images).
INPUT_SEED: int = 0
#: Seed of the weights when no checkpoint is given (then BN statistics calibrated on the photos).
WEIGHTS_SEED: int = 1


class PairError(ValueError):
    """Bad input for a generic run: printed as one line, exit 2."""


@dataclass
class ModelPair:
    """Two models with identical weights, their matching, the input, and where weights came from."""

    label: str
    torch_model: Any
    paddle_model: Any
    matching: Any
    inputs: np.ndarray
    weights: str


def parse_input_shape(text: Optional[str]) -> Tuple[int, ...]:
    """``'N,C,H,W'`` -> a tuple of 4 positive ints (None: :data:`DEFAULT_INPUT_SHAPE`)."""
    if text is None:
        return DEFAULT_INPUT_SHAPE
    from converters.generic import parse_shape

    shape = parse_shape(text)  # positive integers, or a one-line error
    if len(shape) != 4:
        raise PairError(f"--input-shape {text!r}: expected four positive integers N,C,H,W")
    return shape


def _load_ckpt(path: str, torch_model: Any) -> None:
    """Load a plain state dict or ``{'state_dict': ...}`` safely into ``torch_model``."""
    from cream_core.io.errors import CheckpointError
    from cream_torch_ref.checkpoint import check_state_dict, load_checkpoint

    try:
        ck = load_checkpoint(path, use_ema=False)
        expected = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
        check_state_dict(expected, ck.state_dict, path, what=type(torch_model).__name__)
    except CheckpointError as e:
        raise PairError(str(e)) from None
    torch_model.load_state_dict(ck.state_dict)


def _seed_weights(torch_model: Any, shape: Tuple[int, ...]) -> str:
    from converters import weights as W

    photos = W.bundled_photos(shape[2], shape[3]) if shape[1] == 3 else \
        np.random.RandomState(INPUT_SEED + 1).standard_normal((8,) + tuple(shape[1:])).astype(
            np.float32)
    W.seed_and_calibrate(torch_model, WEIGHTS_SEED, photos)
    return (f"seeded (seed {WEIGHTS_SEED}), BatchNorm statistics calibrated on "
            f"{len(photos)} {'bundled photos' if shape[1] == 3 else 'seeded images'}")


def build_pair(torch_spec: str, paddle_spec: str,
               input_shape: Tuple[int, ...] = DEFAULT_INPUT_SHAPE, ckpt: Optional[str] = None,
               map_file: Optional[str] = None,
               torch_kwargs: Optional[Mapping[str, Any]] = None,
               paddle_kwargs: Optional[Mapping[str, Any]] = None) -> ModelPair:
    """Build (the callables called with their ``*_kwargs``, as ``convert-ckpt`` does), match and
    load both models; every problem is a one-line ``ValueError`` (:class:`PairError`, or
    :class:`converters.generic.GenericInputError` for a callable that cannot be built)."""
    for path, opt in ((ckpt, "--ckpt"), (map_file, "--map")):
        if path is not None and not os.path.isfile(path):
            raise PairError(f"{path}: no such file ({opt})")
    import paddle
    import torch

    from converters.generic import build_model
    from converters.matching import MatchError, load_matching, match_models, torch_to_paddle_state

    torch.manual_seed(WEIGHTS_SEED)
    paddle.seed(WEIGHTS_SEED)
    tm = build_model(torch_spec, "--torch", "torch", torch_kwargs).eval()
    pm = build_model(paddle_spec, "--paddle", "paddle", paddle_kwargs)
    pm.eval()
    x = np.random.RandomState(INPUT_SEED).standard_normal(input_shape).astype(np.float32)
    try:
        matching = (load_matching(map_file, tm, pm) if map_file
                    else match_models(tm, pm, x))
    except MatchError as e:
        raise PairError(f"{map_file + ': ' if map_file else ''}the models cannot be matched: "
                        f"{str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - the models cannot even run on this input
        raise PairError(f"the models cannot run on input {list(input_shape)}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    from .generic import reference_problem

    problem = reference_problem(tm, x)  # before any output exists: the input is the problem
    if problem is not None:
        raise PairError(f"input {list(input_shape)}: the torch model itself fails in train mode "
                        f"({problem}); give another --input-shape")
    if ckpt is not None:
        _load_ckpt(ckpt, tm)
        weights = f"{ckpt} (torch state dict)"
    else:
        weights = _seed_weights(tm, input_shape)
    try:
        state = torch_to_paddle_state({k: v.detach().cpu().numpy() for k, v in
                                       tm.state_dict().items()}, matching, pm)
    except Exception as e:  # noqa: BLE001 - the matching does not carry the weights
        raise PairError(f"weights do not transfer through the matching: "
                        f"{str(e).splitlines()[0][:300]}") from None
    pm.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    label = f"{torch_spec.rpartition(':')[2]}-vs-{paddle_spec.rpartition(':')[2]}"
    if label.split("-vs-")[0] == label.split("-vs-")[1]:
        label = label.split("-vs-")[0]
    return ModelPair(label, tm, pm, matching, x, weights)


def _outputs(args: argparse.Namespace, label: str) -> Dict[str, str]:
    report = args.report or os.path.join("out", "parity", label)
    return {"report": report, "json": args.json or os.path.join(report, "parity.json"),
            "plot": os.path.join(report, "parity.png"),
            "matching": os.path.join(report, "matching.json")}


def run_generic(args: argparse.Namespace) -> int:
    """``parity run --torch ... --paddle ...``: 0 equivalent, 1 not; bad input raises a
    ``ValueError`` (:class:`PairError`, ...) that :func:`parity.cli.run_command` prints (exit 2)."""
    if not args.torch or not args.paddle:
        raise UsageError("give both --torch MODULE:CALLABLE and --paddle MODULE:CALLABLE")
    from .generic_noise import GENERIC_NOISE_MEMBERS

    members = getattr(args, "noise_members", None)
    members = GENERIC_NOISE_MEMBERS if members is None else members
    shape = parse_input_shape(args.input_shape)
    label = (f"{args.torch.rpartition(':')[2]}-vs-{args.paddle.rpartition(':')[2]}")
    out = _outputs(args, label)
    mutate = _fault(args)
    pair = build_pair(args.torch, args.paddle, shape, args.ckpt, args.map,
                      args.torch_kwargs, args.paddle_kwargs)
    # the output guard of every tool, once the inputs are known good and before the work: real
    # paths, never onto an input, outputs distinct, folders created and writable
    prepare_outputs({"--json": out["json"], "plot": out["plot"], "matching": out["matching"]},
                    [args.ckpt, args.map], {"--report": out["report"]})
    from cream_core.io.atomic import atomic_write
    from converters.matching import save_matching

    from .generic import compare

    precisions = ("fp64", "fp32") if args.precision == "both" else (args.precision,)
    result = compare(pair.torch_model, pair.paddle_model, pair.inputs, matching=pair.matching,
                     precisions=precisions, label=pair.label, mutate_paddle=mutate,
                     noise_members=members)
    result.info["weights"] = pair.weights
    print(result.table())
    print(f"\n{len(result.comparisons)} comparisons in {result.timings.get('total', 0):.1f} s "
          f"({pair.label}, input {list(shape)}, {len(pair.matching.layers)} matched layers, "
          f"weights: {pair.weights})")
    for note in result.notes:
        print(f"note: {note}")
    os.makedirs(out["report"], exist_ok=True)
    save_matching(pair.matching, out["matching"])
    import json

    data = result.to_json()
    if args.inject_fault:
        data["injected_fault"] = args.inject_fault
    atomic_write(out["json"], lambda f: json.dump(data, f, indent=1, default=str), mode="w")
    result.plot(out["plot"])
    print(f"matching: {out['matching']}\nJSON: {out['json']}\nplot: {out['plot']}")
    print(result.verdict())
    return 0 if result.ok else 1


def _fault(args: argparse.Namespace) -> Optional[Callable[[Any], None]]:
    if not getattr(args, "inject_fault", None):
        return None
    from .generic_faults import GENERIC_FAULTS

    label = args.paddle.rpartition(":")[2]
    faults = {f.name: f for f in GENERIC_FAULTS if f.pair == label}
    if args.inject_fault not in faults:
        raise PairError(f"--inject-fault {args.inject_fault!r}: no such fault for {label}; "
                        f"choose from {', '.join(faults) or '(none for this pair)'}")
    f = faults[args.inject_fault]
    print(f"injecting fault {f.name!r} into the Paddle model: {f.description} "
          f"(expect the first divergence at torch {f.torch_module} / paddle {f.paddle_module})")
    return f.apply
