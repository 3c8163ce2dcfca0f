"""How a ``parity`` subcommand plugs in: one description, a subparser of ``parity`` and a stand-alone
``python -m`` entry, both under the one CLI convention (:mod:`cream_core.io.cli_errors`: 0 pass,
1 divergence, 2 bad input or usage, 130 interrupted; one line, no traceback)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, List, Optional

from cream_core.io.cli_errors import run_body, run_cli

__all__ = ["Subcommand"]


@dataclass(frozen=True)
class Subcommand:
    """A ``parity NAME`` subcommand: its options and its work (bad input raises, see
    :func:`cream_core.io.cli_errors.run_body`)."""

    name: str
    description: Optional[str]  # the module's docstring
    add_arguments: Callable[[argparse.ArgumentParser], None]
    work: Callable[[argparse.Namespace], int]
    help: str = ""  # one line in ``parity --help``

    @property
    def prog(self) -> str:
        return f"parity {self.name}"

    def handler(self, args: argparse.Namespace) -> int:
        """The subparser's ``func``: the work under the CLI convention."""
        return run_body(None, args, self.work, prog=self.prog)

    def register(self, subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
        """Add the subcommand to the ``parity`` command line."""
        p = subparsers.add_parser(self.name, help=self.help, description=self.description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_arguments(p)
        p.set_defaults(func=self.handler)

    def main(self, argv: Optional[List[str]] = None) -> int:
        """Stand-alone entry (``python -m parity.MODULE``); the console script is ``parity NAME``."""
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.add_arguments(parser)
        return run_cli(parser, argv, self.work)
