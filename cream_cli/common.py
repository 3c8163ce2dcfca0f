"""What the command-line tools share: framework names, argument checks, one-line errors, threads."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, Iterable, Optional, Sequence

from cream_arch.errors import EXIT_OUTPUT, OutputError
from cream_arch.outputs import prepare_outputs

__all__ = ["FRAMEWORKS", "UsageError", "set_threads", "check_counts", "run_guarded", "guard_outputs",
           "safe_streams"]

#: The implementations every tool can run.
FRAMEWORKS = ("torch", "paddle")


class UsageError(ValueError):
    """A bad combination of arguments; printed as one line."""


def set_threads(framework: str, threads: Optional[int]) -> None:
    """Use ``threads`` intra-op threads in ``framework`` (``None``/0: the framework's default)."""
    if not threads:
        return
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    elif framework == "paddle":
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by worker processes started later
        import paddle

        core = getattr(getattr(paddle, "base", None), "core", None)
        if core is not None and hasattr(core, "set_num_threads"):
            core.set_num_threads(threads)  # the math libraries' thread count
    else:
        raise UsageError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")


def check_counts(args: argparse.Namespace, at_least_one: Sequence[str] = (),
                 at_least_zero: Sequence[str] = ()) -> None:
    """:class:`UsageError` for a count option below its minimum (options left unset pass)."""
    for minimum, names in ((1, at_least_one), (0, at_least_zero)):
        for name in names:
            v = getattr(args, name)
            if v is not None and v < minimum:
                what = "at least 1" if minimum == 1 else "0 or more"
                raise UsageError(f"--{name.replace('_', '-')} must be {what}, got {v}")


def run_guarded(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                body: Callable[[argparse.Namespace], int],
                hint: Optional[Callable[[argparse.Namespace, Exception], Optional[str]]] = None) -> int:
    """Parse ``argv`` and return ``body(args)``, turning every expected failure into one line.

    A :class:`UsageError` prints the usage and the reason (exit 2, as argparse does), an
    :class:`~cream_arch.errors.OutputError` (an output on an input, a read-only or full folder) the
    reason (exit 2); any other
    ``ValueError`` (bad file, bad data, bad config: they name the file) or ``FloatingPointError``
    prints ``prog: error: ...`` (exit 1, or the error's ``exit_status``), plus ``hint(args, error)`` when it returns a line;
    Ctrl-C exits 130. No traceback for any of them.
    """
    safe_streams()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse printed the usage and the reason (or --help)
        return int(e.code or 0)
    prog = parser.prog
    try:
        return body(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    except (ValueError, FloatingPointError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        extra = hint(args, e) if hint is not None else None
        if extra:
            print(f"{prog}: {extra}", file=sys.stderr)
        return int(getattr(e, "exit_status", 1))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def safe_streams() -> None:
    """Let stdout/stderr print any file name: bytes that are not UTF-8 (``surrogateescape`` names
    from ``os.listdir``) appear as ``\\xNN`` escapes instead of raising ``UnicodeEncodeError``."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            reconfigure(errors="backslashreplace")


def guard_outputs(prog: str, files: Dict[str, Optional[str]], inputs: Iterable[Optional[str]],
                  folders: Optional[Dict[str, Optional[str]]] = None) -> None:
    """:func:`cream_arch.outputs.prepare_outputs` for a tool, telling clean-ups on stderr."""
    prepare_outputs(files, inputs, folders,
                    log=lambda msg: print(f"{prog}: note: {msg}", file=sys.stderr))
