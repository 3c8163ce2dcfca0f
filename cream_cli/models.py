"""``cream-models``: the released child nets with resolution, FLOPs, parameters and official accuracy."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from cream_core.arch import CHILD_NETS, model_flops_params
from cream_core.io.cli_errors import exit_help, run_cli

__all__ = ["model_table", "main"]


def model_table() -> List[Dict[str, object]]:
    """One row per released model: name, resolution, MACs and params (counted as the official thop)."""
    rows: List[Dict[str, object]] = []
    for name, spec in CHILD_NETS.items():
        macs, params = model_flops_params(name)
        rows.append({"model": name, "resolution": spec.resolution, "flops_M": round(macs / 1e6, 3),
                     "params_M": round(params / 1e6, 3), "top1": spec.top1, "top5": spec.top5,
                     "arch_list": [list(s) for s in spec.arch_list]})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """Print the model table (or JSON with ``--json``); exit codes: :mod:`cream_core.io.cli_errors`."""
    p = argparse.ArgumentParser(prog="cream-models", description=__doc__, epilog=exit_help())
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return run_cli(p, argv, _print_table)


def _print_table(args: argparse.Namespace) -> int:
    rows = model_table()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    from tabulate import tabulate

    print(tabulate([{k: v for k, v in r.items() if k != "arch_list"} for r in rows],
                   headers={"model": "model", "resolution": "px", "flops_M": "FLOPs (M, thop)",
                            "params_M": "params (M)", "top1": "official top-1",
                            "top5": "official top-5"}, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
