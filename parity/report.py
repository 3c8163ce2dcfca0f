"""Reports of a parity run: the terminal table, the JSON with every comparison, the depth plot."""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cream_core.io.atomic import atomic_write

from .tolerances import CATEGORIES, Comparison, tolerance_for
from .runner import ParityResult

__all__ = ["summary_rows", "format_table", "format_first_divergence", "write_json", "write_plot"]


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.2e}"


def summary_rows(result: ParityResult) -> List[List[str]]:
    """One row per (stage, category): counts, the worst tensor, its errors and the bound."""
    groups: Dict[Tuple[str, str], List[Comparison]] = {}
    for c in result.comparisons:
        groups.setdefault((c.stage, c.category), []).append(c)

    def rank(key: Tuple[str, str]) -> Tuple[int, int]:
        cat = key[1]
        return (groups[key][0].stage_rank,
                CATEGORIES.index(cat) if cat in CATEGORIES else len(CATEGORIES))

    rows = []
    for key in sorted(groups, key=rank):
        cs = groups[key]
        worst = max(cs, key=lambda c: math.inf if math.isnan(c.excess) else c.excess)
        failed = sum(not c.ok for c in cs)
        err = worst.note.startswith("error")
        rows.append([key[0], key[1], str(len(cs)), str(failed) if failed else "",
                     worst.name if len(worst.name) <= 44 else "..." + worst.name[-41:],
                     "-" if err else _fmt(worst.max_abs), "-" if err else _fmt(worst.max_rel),
                     "(raised)" if err else worst.tolerance, "ok" if not failed else "FAIL"])
    return rows


def format_table(result: ParityResult) -> str:
    """The terminal table (tabulate) by stage and category, worst tensor of each."""
    from tabulate import tabulate

    headers = ["stage", "category", "n", "failed", "worst tensor", "max abs", "max rel",
               "tolerance", ""]
    return tabulate(summary_rows(result), headers=headers, tablefmt="simple")


def format_first_divergence(result: ParityResult) -> str:
    """Where the port first stops agreeing (or that it never does)."""
    first = result.first
    n = len(result.comparisons)
    if first is None:
        return f"PASS: all {n} comparisons within tolerance."
    failed = sum(not c.ok for c in result.comparisons)
    tol = ""
    try:
        tol = tolerance_for(first.category, first.precision).describe()
    except ValueError:
        pass
    head = f"FAIL: {failed} of {n} comparisons beyond tolerance.\n"
    if first.note.startswith("error"):
        return head + f"First divergence: stage {first.stage} could not run: {first.note[7:]}"
    where = first.module if first.module == first.name else f"{first.module} ({first.name})"
    if first.note.startswith(("missing", "shape")):
        return head + f"First divergence: {where} [{first.category}, {first.stage}]: {first.note}"
    note = f"; {first.note}" if first.note else ""
    return (head + f"First divergence: {where} [{first.category}, {first.stage}]: "
            f"max abs {_fmt(first.max_abs)}, max rel {_fmt(first.max_rel)} "
            f"(bound {first.tolerance}: {tol}){note}")


def write_json(result: ParityResult, path: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """Every comparison, the verdict, the first divergence, timings and inputs; written atomically."""
    data = result.as_dict()
    data["tolerances"] = _tolerance_table(result.comparisons)
    if extra:
        data.update(extra)
    atomic_write(path, lambda f: json.dump(data, f, indent=1), mode="w")


def _tolerance_table(comparisons: Sequence[Comparison]) -> Dict[str, Dict[str, Any]]:
    from . import tolerances

    out: Dict[str, Dict[str, Any]] = {}
    for c in comparisons:
        t = getattr(tolerances, c.tolerance, None)
        if t is not None and c.tolerance not in out:
            out[c.tolerance] = {"atol": t.atol, "rtol": t.rtol, "floor": t.floor,
                                "reason": t.reason}
    return out


def write_plot(result: ParityResult, path: str) -> None:
    """PNG: per-module error along depth, forward (each stage) and backward, with the bounds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fwd = [k for k in result.curves if k.startswith("forward/")]
    bwd = [k for k in result.curves if k.startswith("backward/")]
    fig = Figure(figsize=(12, 8))  # no pyplot: nothing global, nothing to close
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.92, bottom=0.07, hspace=0.3)
    first = result.first
    for ax, keys, title in ((axes[0], fwd, "forward: module outputs in execution order"),
                            (axes[1], bwd, "backward: gradients w.r.t. module outputs, "
                                           "in the order backward delivers them")):
        for k in keys:
            pts = result.curves[k]
            ys = [max(v, 1e-17) for _, v, _ in pts]  # exact agreement drawn at the floor
            line, = ax.semilogy(range(len(ys)), ys, lw=1, label=k)
            cat = ("out_grad" if k.startswith("backward") else
                   "layer_train" if "/train/" in k else "layer")
            prec = k.rsplit("/", 1)[-1]
            try:
                tol = tolerance_for(cat, prec)
                ax.axhline(tol.rtol, color=line.get_color(), ls="--", lw=0.8, alpha=0.7)
            except ValueError:
                pass
            if first is not None and first.stage == k:
                for i, (name, v, _) in enumerate(pts):
                    if name == first.module or name == first.name:
                        ax.plot([i], [max(v, 1e-17)], "rx", ms=10, mew=2)
                        ax.annotate(f"first divergence: {first.module}", (i, max(v, 1e-17)),
                                    textcoords="offset points", xytext=(8, 8), color="red")
                        break
        if not keys:
            ax.text(0.5, 0.5, "no data: the stage did not run or could not run",
                    transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_title(title)
        ax.set_xlabel("module (execution order)")
        ax.set_ylabel("max |port - reference| / tensor scale")
        if keys:
            ax.legend(loc="lower right", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    verdict = "PASS" if result.ok else "FAIL"
    fig.suptitle(f"parity {result.config.model}: {verdict} (dashed: tolerance of each stage)")

    def save(f: Any) -> None:
        fig.savefig(f, format="png", dpi=100)

    atomic_write(path, save, mode="wb")
