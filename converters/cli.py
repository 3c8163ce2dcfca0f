"""Command line of ``convert-ckpt``: parse arguments, call :mod:`converters.convert`, print one line.

Exit status (:mod:`cream_core.io.cli_errors`), for Cream checkpoints (``--model``, default
auto-detection) and any other pair (``--torch MODULE:CALLABLE --paddle MODULE:CALLABLE``, both
directions, :mod:`converters.generic`) alike: 0 converted; 2 refused, bad input or usage (a bad or
foreign checkpoint, an output on an input, a callable that does not exist, models that cannot be
matched, a bad ``--map``; the one-line reason names the file); 3 internal error (``--debug`` shows
the traceback); 130 interrupted. Nothing is written unless the whole conversion succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import List, Optional

from cream_core.io.cli_errors import (EXIT_INTERNAL, EXIT_OK, UsageError, exit_help, input_shape,
                                   run_cli)
from cream_core.io.errors import CheckpointError, OutputError
from cream_core.arch.space import model_names

from .files import is_paddle_file
from .generic import GenericInputError, add_model_pair_arguments

__all__ = ["main", "build_parser"]

PROG = "convert-ckpt"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog=PROG, epilog=exit_help() + "; 3 internal error (a bug; --debug shows it)",
        description="Convert a Cream checkpoint between PyTorch (.pth.tar) and Paddle (.pdparams), "
                    "exactly or not at all. The direction follows SRC's extension (.pdparams: to "
                    "PyTorch) unless --reverse is given. A JSON sidecar DST.json records model, "
                    "resolution, classes, weights used and the source's sha256. With --torch "
                    "and --paddle: any model pair, its layers matched automatically (the "
                    "matching goes in the sidecar; --map gives an edited one).")
    p.add_argument("src", metavar="SRC", help="checkpoint to convert")
    p.add_argument("-o", "--output", metavar="DST",
                   help="output file (default: SRC's name with .pdparams, or .pth.tar on the way "
                        "back); with --engine x2paddle an output folder")
    p.add_argument("--model", default="auto", choices=["auto", *model_names()],
                   help="architecture: recognise it from the weights' shapes (auto, default) or "
                        "a released child net")
    p.add_argument("--weights", default="ema", choices=["ema", "model"],
                   help="which weights of a training checkpoint: the EMA ones (default, as the "
                        "official test) or the raw model's")
    p.add_argument("--force", action="store_true", help="overwrite existing output")
    p.add_argument("--reverse", action="store_true",
                   help="convert .pdparams -> .pth.tar (automatic for a .pdparams SRC)")
    p.add_argument("--engine", default="native", choices=["native", "x2paddle"],
                   help="native: weight conversion (default); x2paddle: trace the reference model "
                        "into a Paddle inference model with x2paddle, as a third opinion")
    g = p.add_argument_group("any model pair (instead of --model)")
    add_model_pair_arguments(g)
    g.add_argument("--input-shape", metavar="N,C,H,W", type=input_shape(2),
                   help="example input the layers are matched at (default 1,3,224,224)")
    g.add_argument("--map", metavar="FILE",
                   help="a layer matching (JSON or .yaml, as in the sidecar's 'matching') to "
                        "use instead of matching automatically")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


_CREAM_ONLY = (("model", "auto", "--model"), ("weights", "ema", "--weights"),
               ("engine", "native", "--engine"))


def _generic_usage(args: argparse.Namespace) -> Optional[str]:
    """Why the options do not make a generic conversion (None: they do, or are not one)."""
    generic = [o for o, v in (("--torch", args.torch), ("--paddle", args.paddle),
                              ("--torch-kwargs", args.torch_kwargs),
                              ("--paddle-kwargs", args.paddle_kwargs),
                              ("--input-shape", args.input_shape), ("--map", args.map)) if v]
    if not generic:
        return None
    if not (args.torch and args.paddle):
        return f"{', '.join(generic)}: give both --torch and --paddle"
    clash = [opt for name, default, opt in _CREAM_ONLY if getattr(args, name) != default]
    if clash:
        return f"{', '.join(clash)} apply to Cream checkpoints only, not with --torch/--paddle"
    return None


def _run_generic(args: argparse.Namespace) -> str:
    from .generic import convert_generic, parse_shape, pdparams_to_torch_generic

    back = args.reverse or is_paddle_file(args.src)
    res = (pdparams_to_torch_generic if back else convert_generic)(
        args.src, args.torch, args.paddle, args.output, input_shape=parse_shape(args.input_shape),
        map_file=args.map, force=args.force, torch_kwargs=args.torch_kwargs,
        paddle_kwargs=args.paddle_kwargs)
    return json.dumps(res.as_dict(), indent=2) if args.json else res.summary()


def _run(args: argparse.Namespace) -> str:
    src = args.src
    if args.engine == "x2paddle":
        from .x2paddle_engine import convert_with_x2paddle

        res = convert_with_x2paddle(src, args.output, model=args.model, weights=args.weights,
                                    force=args.force)
        return json.dumps(res.as_dict(), indent=2) if args.json else res.summary()
    from .convert import convert_checkpoint, pdparams_to_pth, result_as_dict

    if args.reverse or is_paddle_file(src):
        if args.weights != "ema":
            raise CheckpointError(src, "--weights applies to torch training checkpoints only; "
                                       "a .pdparams holds one set of weights")
        result = pdparams_to_pth(src, args.output, model=args.model, force=args.force)
    else:
        result = convert_checkpoint(src, args.output, model=args.model, weights=args.weights,
                                    force=args.force)
    return json.dumps(result_as_dict(result), indent=2) if args.json else result.summary()


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``convert-ckpt``; returns the exit status (:mod:`cream_core.io.cli_errors`)."""
    return run_cli(build_parser(), argv, _convert)


def _convert(args: argparse.Namespace) -> int:
    """Convert and print one line; a project error (bad input, exit 2) goes up to :func:`run_cli`,
    any other exception is a bug: one line and :data:`EXIT_INTERNAL` (``--debug``: the traceback)."""
    problem = _generic_usage(args)
    if problem:
        raise UsageError(problem)
    try:
        with warnings.catch_warnings():  # library chatter (Paddle's ccache note, ...) is not for users
            warnings.simplefilter("ignore")
            line = _run_generic(args) if args.torch else _run(args)
    except (CheckpointError, GenericInputError, OutputError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a bug must still not dump a traceback on users
        if args.debug:
            raise
        return _internal(args, e)
    print(line)
    return EXIT_OK


def _internal(args: argparse.Namespace, e: BaseException) -> int:
    msg = str(e).splitlines()[0] if str(e) else ""
    print(f"{PROG}: internal error on {os.fspath(args.src)}: {type(e).__name__}: {msg[:200]} "
          "(rerun with --debug for details; nothing was written)", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
