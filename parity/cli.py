"""``parity``: show that the Paddle port computes what the PyTorch reference computes.

Subcommands:

* ``parity run``: the strict comparison harness (:mod:`parity.runner`): every module's output in
  eval and train mode, BN statistics, losses, every gradient, optimizer steps, LR schedules and an
  x2paddle third opinion; table, JSON and plot; exit 0 iff everything is within tolerance.
* ``parity eval``: both models on the same images (:mod:`parity.eval_parity`).
* ``parity search-step``: one step of the supernet search in both frameworks
  (:mod:`parity.search_step`).
* ``parity train-step``: k retraining steps in both frameworks (:mod:`parity.train_step`).

Exit status (every subcommand, :mod:`cream_core.io.cli_errors`): 0 pass, 1 divergence beyond
tolerance, 2 bad input or usage (or a subcommand that is not available), 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, List, Optional

from cream_core.arch import model_names
from cream_core.io.cli_errors import (EXIT_BAD_INPUT, UsageError, exit_help, input_shape, int_at_least,
                                   run_body, safe_streams)
from cream_core.io.errors import CheckpointError, OutputError

from converters.generic import add_model_pair_arguments  # cheap: no framework import

from .runner import STAGES  # cheap: torch and Paddle are imported when a run starts

__all__ = ["main", "build_parser", "add_run_parser", "run_command"]

#: ``subcommand -> module`` whose ``register(subparsers)`` adds it (handler in ``func``).
_PLUGINS = (("eval", "parity.eval_parity"), ("search-step", "parity.search_step"),
            ("train-step", "parity.train_step"))


def add_run_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``parity run`` to a subparsers object."""
    p = sub.add_parser(
        "run", help="compare the torch reference and the Paddle port, layer by layer",
        description="Build both models with identical weights (converted from an official-format "
                    "checkpoint, or a seeded one), feed identical inputs, and compare every module "
                    "output (eval and train mode, fp64 and fp32), BN statistics, losses, all "
                    "gradients, k optimizer steps, the LR schedules and the x2paddle-traced logits. "
                    "Exit 0 iff every comparison is within its named tolerance, 1 on a divergence, "
                    "2 on bad input or usage, 130 if interrupted.")
    p.add_argument("--model", choices=model_names(), metavar="NAME",
                   help=f"preset: a released Cream child net ({', '.join(model_names())}); or "
                        "give --torch and --paddle for any other pair")
    g = p.add_argument_group("any model pair (instead of --model)")
    add_model_pair_arguments(g)
    g.add_argument("--input-shape", metavar="N,C,H,W", type=input_shape(4, 4),
                   help="input batch shape (default 2,3,224,224)")
    g.add_argument("--noise-members", type=int_at_least(0), default=None, metavar="N",
                   help="perturbed torch fp32 runs measuring the fp32 noise the fp32 stages are "
                        "judged against (default 2; 0: the named bounds alone)")
    g.add_argument("--map", metavar="FILE",
                   help="use this layer matching (the matching.json a run wrote, possibly edited) "
                        "instead of matching the trees automatically")
    p.add_argument("--ckpt", metavar="FILE",
                   help="--model: official-format .pth.tar (EMA weights used when present); "
                        "--torch/--paddle: a torch state dict (plain or {'state_dict': ...}), "
                        "loaded safely; default: a "
                        "seeded official-format checkpoint generated in the report folder")
    p.add_argument("--batch", type=int_at_least(1), default=2, metavar="N",
                   help="batch size (default 2)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="input/target seed (default 0)")
    p.add_argument("--resolution", type=int_at_least(32, "five stride-2 stages"), metavar="PX",
                   help="input size (default: the model's test resolution)")
    p.add_argument("--report", metavar="DIR",
                   help="folder for parity.json, parity.png, the converted weights and the "
                        "x2paddle cache (default out/parity/NAME)")
    p.add_argument("--json", metavar="FILE", help="write the JSON here instead of DIR/parity.json")
    p.add_argument("--no-x2paddle", action="store_true",
                   help="skip the x2paddle third opinion (saves the tracing time)")
    p.add_argument("--stages", metavar="LIST", default=STAGES, type=stage_list,
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--precision", choices=("both", "fp64", "fp32"), default="both",
                   help="fp64 = semantic check, fp32 = deployed precision (default both)")
    p.add_argument("--steps", type=int_at_least(3, "the comparison needs k >= 3 steps"), default=3,
                   metavar="K",
                   help="optimizer steps to compare (default 3, at least 3)")
    p.add_argument("--threads", type=int_at_least(1), default=1, metavar="N",
                   help="torch CPU threads (default 1: fastest at small batches)")
    p.add_argument("--inject-fault", metavar="FAULT",
                   help="break the Paddle model on purpose to see the run fail and name the place: "
                        "--model: " + ", ".join(_fault_names()) + "; --torch/--paddle: "
                        + _generic_fault_names())
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_command)


def _fault_names() -> List[str]:
    from .faults import FAULTS

    return list(FAULTS)


def _generic_fault_names() -> str:
    from .generic_faults import GENERIC_FAULTS

    pairs: dict = {}
    for f in GENERIC_FAULTS:
        pairs.setdefault(f.pair, []).append(f.name)
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in pairs.items())


def stage_list(text: str) -> tuple:
    """``type=`` of ``--stages``: a comma-separated subset of :data:`STAGES`, in run order."""
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in wanted if t not in STAGES]
    if bad or not wanted:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(bad) or '(empty)'}; choose from "
                                         f"{', '.join(STAGES)}")
    return tuple(t for t in STAGES if t in wanted)


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``parity run``: 0 pass, 1 divergence, 2 bad input, 130 interrupted."""
    return run_body(None, args, _run_command, prog="parity run")


def _check_inputs(args: argparse.Namespace, report: str, json_path: str) -> None:
    """:class:`UsageError`/``CheckpointError`` for what a file system check finds wrong."""
    if args.ckpt is not None and not os.path.isfile(args.ckpt):
        raise CheckpointError(args.ckpt, "no such file" if not os.path.exists(args.ckpt)
                              else "is not a file")
    if os.path.exists(report) and not os.path.isdir(report):
        raise OutputError(report, "exists and is not a folder (--report)")
    if os.path.isdir(json_path):
        raise OutputError(json_path, "is a folder (--json)")


#: Options of the Cream preset that a generic run does not use (name, default, option).
_CREAM_ONLY = (("batch", 2, "--batch"), ("seed", 0, "--seed"), ("resolution", None, "--resolution"),
               ("steps", 3, "--steps"), ("threads", 1, "--threads"),
               ("no_x2paddle", False, "--no-x2paddle"), ("stages", STAGES, "--stages"))


def _run_command(args: argparse.Namespace) -> int:
    """The work of ``parity run``; bad input raises (one line from :func:`run_body`)."""
    if (args.torch or args.paddle or args.input_shape or args.map or args.torch_kwargs
            or args.paddle_kwargs):
        if args.model:
            raise UsageError("give either --model NAME or --torch/--paddle, not both")
        ignored = [opt for name, default, opt in _CREAM_ONLY if getattr(args, name) != default]
        if ignored:  # never ignore an option silently
            raise UsageError(f"{', '.join(ignored)} apply to --model runs only; with --torch/"
                             "--paddle give the batch in --input-shape N,C,H,W")
        from .generic_cli import run_generic

        return run_generic(args)
    if not args.model:
        raise UsageError("give --model NAME (a Cream preset) or --torch MODULE:CALLABLE and "
                         "--paddle MODULE:CALLABLE")
    report = args.report or os.path.join("out", "parity", args.model)
    json_path = args.json or os.path.join(report, "parity.json")
    plot_path = os.path.join(report, "parity.png")
    _check_inputs(args, report, json_path)
    mutate = None
    if args.inject_fault is not None:
        from .faults import FAULTS

        if args.inject_fault not in FAULTS:
            raise UsageError(f"unknown fault {args.inject_fault!r}; choose from {', '.join(FAULTS)}")
        fault = FAULTS[args.inject_fault]
        mutate = fault.apply
        print(f"injecting fault {fault.name!r} into the Paddle model: {fault.description} "
              f"(expect the first divergence at {fault.module})")
    from cream_core.io.outputs import prepare_outputs

    # real paths: never on the checkpoint or in its folder's place; writable; before the work
    prepare_outputs({"--json": json_path, "plot": plot_path}, [args.ckpt], {"--report": report},
                    log=lambda msg: print(f"parity run: note: {msg}", file=sys.stderr))
    from .report import format_first_divergence, format_table, write_json, write_plot
    from .runner import PRECISIONS, ParityConfig, run_parity

    stages = tuple(s for s in args.stages if not (s == "x2paddle" and args.no_x2paddle))
    precisions = PRECISIONS if args.precision == "both" else (args.precision,)
    cfg = ParityConfig(model=args.model, ckpt=args.ckpt, batch=args.batch, seed=args.seed,
                       resolution=args.resolution, report_dir=report, stages=stages,
                       precisions=precisions, optim_steps=args.steps, threads=args.threads,
                       progress=not args.no_progress)
    result = run_parity(cfg, mutate_paddle=mutate)
    print(format_table(result))
    print()
    t = result.timings
    print(f"{len(result.comparisons)} comparisons in {t.get('total', 0):.1f} s "
          f"(model {args.model}, batch {args.batch}, {result.info.get('resolution')} px, "
          f"weights: {result.info.get('weights', '?')})")
    write_json(result, json_path,  # a full or failing disk after the work: OutputError, exit 2
               {"injected_fault": args.inject_fault} if args.inject_fault else None)
    write_plot(result, plot_path)
    print(f"JSON: {json_path}\nplot: {plot_path}")
    print(format_first_divergence(result))
    return 0 if result.ok else 1


def _unavailable(name: str, module: str, exc: BaseException) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(f"parity {name}: not available: {module} could not be imported "
              f"({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_BAD_INPUT
    return handler


def build_parser() -> argparse.ArgumentParser:
    """The ``parity`` parser with ``run`` and every plugin subcommand that imports."""
    parser = argparse.ArgumentParser(
        prog="parity", description="Prove the Paddle port of Cream computes what the PyTorch "
                                   "reference computes.",
        epilog=exit_help("a divergence beyond tolerance") + " (every subcommand)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(sub)
    for name, module in _PLUGINS:
        try:
            mod = importlib.import_module(module)
            mod.register(sub)
        except Exception as e:  # noqa: BLE001 - one broken plugin must not take `parity run` down
            if name in sub.choices:  # it failed half-way through registering
                sub.choices[name].set_defaults(func=_unavailable(name, module, e))
                continue
            p = sub.add_parser(name, help=f"(not available: {type(e).__name__})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_unavailable(name, module, e))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``parity`` console script (``argv`` None: the process's arguments).

    Run as a program (``argv`` None), it leaves with ``os._exit`` once its outputs are written and
    flushed: torch and Paddle otherwise spend several seconds in C++ destructors at interpreter exit.
    Called with an argument list (tests, other code), it returns the exit status.
    """
    parser = build_parser()
    safe_streams()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and the reason (exit 2), or --help (0)
        return int(e.code or 0)
    handler = getattr(args, "func", None)  # plugins register their handler as ``func``
    if handler is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    code = handler(args)  # each handler applies the CLI convention itself (run_body)
    if argv is None and ("torch" in sys.modules or "paddle" in sys.modules):
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
