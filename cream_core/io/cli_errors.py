"""One error convention for every console script: exit codes, one-line errors, argparse validators.

Every tool (``cream-models``, ``cream-demo``, ``cream-eval``, ``cream-search``, ``cream-train``,
``convert-ckpt``, ``parity run|eval|train-step|search-step``) exits with

* :data:`EXIT_OK` (0): done, every check passed;
* :data:`EXIT_CHECK_FAILED` (1): the work ran but a check failed (a divergence beyond tolerance,
  a demo check, a training loss that became NaN/inf), or it could not finish for a reason outside
  its input (:class:`~cream_core.io.errors.RunAborted`: a worker process killed); one line;
* :data:`EXIT_BAD_INPUT` (2): bad input or usage (a bad or missing file, bad data, a bad config, an
  output that cannot be placed, wrong options); one line ``prog: error: ...`` naming the file and
  the problem, no traceback, nothing written;
* :data:`EXIT_INTERRUPTED` (130): Ctrl-C.

``convert-ckpt`` alone also reports :data:`EXIT_INTERNAL` (3) for a bug (``--debug`` shows it).
Kept free of any deep-learning import: the lowest layer every command line may import.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from cream_core.io.errors import OutputError, RunAborted

__all__ = ["EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_INTERNAL",
           "UsageError", "exit_help", "BAD_INPUT_ERRORS", "CHECK_FAILED_ERRORS", "error", "run_cli",
           "run_body", "safe_streams", "int_at_least", "float_in", "module_callable", "input_shape",
           "json_kwargs"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: ``convert-ckpt``: an unexpected exception (a bug), shown in full with ``--debug``.
EXIT_INTERNAL = 3

#: Exceptions that mean bad input: every project error (checkpoint, config, data, output) is a
#: ``ValueError`` whose message names the file and the problem.
BAD_INPUT_ERRORS: Tuple[type, ...] = (ValueError,)
#: Exceptions that mean the work ran and failed its check (a loss that became NaN or inf) or could
#: not finish (a worker process died).
CHECK_FAILED_ERRORS: Tuple[type, ...] = (FloatingPointError, RunAborted)


def exit_help(check_failed: str = "") -> str:
    """The ``exit status`` line of a tool's ``--help`` (``check_failed``: what exit 1 means there;
    empty: the tool has no check that can fail)."""
    failed = f"1 {check_failed}, " if check_failed else ""
    return (f"exit status: 0 ok, {failed}2 bad input or usage (one line naming the file), "
            "130 interrupted")


class UsageError(ValueError):
    """A bad combination of options; printed as the usage and one line (exit 2)."""


def error(prog: str, message: object, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``prog: error: message`` on stderr (first line only) and return ``code``."""
    line = str(message).splitlines()[0] if str(message) else type(message).__name__
    print(f"{prog}: error: {line}", file=sys.stderr)
    return code


def safe_streams() -> None:
    """Let stdout/stderr print any file name: bytes that are not UTF-8 (``surrogateescape`` names
    from ``os.listdir``) appear as ``\\xNN`` escapes instead of raising ``UnicodeEncodeError``."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            reconfigure(errors="backslashreplace")


def run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
            body: Callable[[argparse.Namespace], int],
            hint: Optional[Callable[[argparse.Namespace, Exception], Optional[str]]] = None,
            prog: Optional[str] = None) -> int:
    """Parse ``argv`` (None: the process's) and return ``body(args)`` with the exit codes above.

    Argparse's own errors (a validator's, a bad choice) already exit 2 with the usage; a
    :class:`UsageError` prints the usage and the reason (2); any other bad-input error prints
    ``prog: error: ...`` (2) plus ``hint(args, error)`` when it returns a line; a
    :data:`CHECK_FAILED_ERRORS` one line (1); Ctrl-C exits 130. No traceback for any of them.
    """
    safe_streams()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse printed the usage and the reason (or --help)
        return int(e.code or 0)
    return run_body(parser, args, body, hint, prog)


def run_body(parser: Optional[argparse.ArgumentParser], args: argparse.Namespace,
             body: Callable[[argparse.Namespace], int],
             hint: Optional[Callable[[argparse.Namespace, Exception], Optional[str]]] = None,
             prog: Optional[str] = None) -> int:
    """:func:`run_cli` after parsing: a subcommand's handler (``parser`` None: no usage printed
    for a :class:`UsageError`, ``prog`` names the command)."""
    prog = prog or (parser.prog if parser is not None else sys.argv[0])
    try:
        return int(body(args) or 0)
    except UsageError as e:
        if parser is not None:
            parser.print_usage(sys.stderr)
        return error(prog, e)
    except OutputError as e:
        return error(prog, e)
    except BAD_INPUT_ERRORS as e:
        code = error(prog, e)
        extra = hint(args, e) if hint is not None else None
        if extra:
            print(f"{prog}: {extra}", file=sys.stderr)
        return code
    except CHECK_FAILED_ERRORS as e:
        return error(prog, e, EXIT_CHECK_FAILED)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- argparse validators (``type=``): a bad value is a usage error before any work ---------------
def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """``type=`` for an integer option of at least ``minimum`` (``why``: the reason, shown)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be at least {minimum}{f' ({why})' if why else ''}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float, high_open: bool = True) -> Callable[[str], float]:
    """``type=`` for a number in ``[low, high)`` (``high_open`` False: ``[low, high]``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (low <= value and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(
                f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {value:g}")
        return value
    parse.__name__ = "number"
    return parse


def module_callable(text: str) -> str:
    """``type=`` for ``MODULE:CALLABLE`` (syntax only; importing it is the command's work)."""
    module, sep, name = text.partition(":")
    if not sep or not module.strip() or not name.strip() or ":" in name:
        raise argparse.ArgumentTypeError(f"expected MODULE:CALLABLE, e.g. "
                                         f"torchvision.models:resnet18, got {text!r}")
    return text


module_callable.__name__ = "MODULE:CALLABLE"


def input_shape(min_rank: int = 2, max_rank: int = 8) -> Callable[[str], str]:
    """``type=`` for a shape like ``N,C,H,W``: ``min_rank``..``max_rank`` positive integers.

    Returns the text unchanged (the commands parse it again, with their default for no option)."""
    def parse(text: str) -> str:
        try:
            dims = tuple(int(p) for p in text.split(","))
        except ValueError:
            dims = ()
        if not min_rank <= len(dims) <= max_rank or min(dims) < 1:
            count = (str(min_rank) if min_rank == max_rank else f"{min_rank} or more")
            raise argparse.ArgumentTypeError(
                f"expected {count} positive integers like N,C,H,W (1,3,224,224), got {text!r}")
        return text
    parse.__name__ = "shape"
    return parse


def json_kwargs(text: str) -> Dict[str, Any]:
    """``type=`` for keyword arguments given as a JSON object, e.g. ``{"num_classes": 10}``
    (data only: nothing in it is ever executed)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_classes\": 10}}', "
                                         f"got {text!r}")
    return value


json_kwargs.__name__ = "JSON object"
