"""What the command-line tools share: framework names, threads, the output guard; the error
convention (exit codes, one-line errors, validators) is :mod:`cream_core.io.cli_errors`."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Iterable, Optional

from cream_core.arch import model_names
from cream_core.io.cli_errors import UsageError, int_at_least, run_cli, safe_streams
from cream_core.io.outputs import prepare_outputs

__all__ = ["FRAMEWORKS", "UsageError", "set_threads", "run_cli", "guard_outputs", "safe_streams",
           "add_framework_and_model", "add_run_options"]

#: The implementations every tool can run.
FRAMEWORKS = ("torch", "paddle")


def set_threads(framework: str, threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads in ``framework`` (``None``/0: the framework's default),
    through that framework's backend (``cream_torch_ref.backend`` / ``cream_paddle.backend``)."""
    if framework not in FRAMEWORKS:
        raise UsageError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    if threads is not None and threads < 0:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if not threads:
        return
    if framework == "paddle":  # before Paddle's first import: its OpenMP reads it when it loads
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if framework == "torch":
        from cream_torch_ref.backend import set_threads as set_framework_threads
    else:
        from cream_paddle.backend import set_threads as set_framework_threads
    set_framework_threads(threads)


def guard_outputs(prog: str, files: Dict[str, Optional[str]], inputs: Iterable[Optional[str]],
                  folders: Optional[Dict[str, Optional[str]]] = None) -> None:
    """:func:`cream_core.io.outputs.prepare_outputs` for a tool, telling clean-ups on stderr."""
    prepare_outputs(files, inputs, folders,
                    log=lambda msg: print(f"{prog}: note: {msg}", file=sys.stderr))


def add_framework_and_model(parser: argparse.ArgumentParser, does: str, nets: str) -> None:
    """``--framework`` (the implementation that ``does`` the work) and ``--model`` (one of the
    ``nets``: the six child nets, listed in the help)."""
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS,
                        help=f"which implementation {does}")
    parser.add_argument("--model", required=True, choices=model_names(), metavar="NAME",
                        help=f"{nets}: {', '.join(model_names())}")


def add_run_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    """The options of the training tools (``cream-train``, ``cream-search``) that say how a run
    goes, not what it computes: augmentation processes, framework threads, JSON, progress bar."""
    parser.add_argument("--workers", type=int_at_least(0), metavar="N",
                        help="augmentation processes (0: none)")
    parser.add_argument("--threads", type=int_at_least(1), metavar="N",
                        help="intra-op threads of the framework")
    parser.add_argument("--json", metavar="FILE", help=json_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
