"""Writing evaluation reports: whole files or nothing, never over an input."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterable, Optional

from cream_arch.atomic import atomic_write_text
from cream_arch.errors import OutputError
from cream_arch.outputs import check_output_paths

from .errors import BadDataError
from .evaluation import EvalResult

__all__ = ["atomic_write_text", "check_output_path", "predictions_csv", "write_json"]


def check_output_path(path: "os.PathLike[str] | str",
                      inputs: Iterable["Optional[os.PathLike[str] | str]"]) -> str:
    """``path`` as a string, after checking (:func:`cream_arch.outputs.check_output_paths`: real
    paths) that it is no input, lies in no input folder and its folder exists."""
    p = os.fspath(path)
    try:
        check_output_paths({"output file": p}, inputs)
    except OutputError as e:
        raise BadDataError(p, e.problem) from None
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise BadDataError(p, f"output folder {folder} does not exist")
    return p


def write_json(path: "os.PathLike[str] | str", data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def predictions_csv(result: EvalResult, class_names: Optional[Iterable[str]] = None) -> str:
    """Per-image CSV: path, label, top-1 prediction (and its name), top-5, correctness."""
    names = list(class_names) if class_names is not None else None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["path", "label", "prediction", "top5", "correct1", "correct5"]
    if names is not None:
        header.insert(3, "prediction_name")
    w.writerow(header)
    if result.predictions is None or result.labels is None:
        return buf.getvalue()
    for path, label, top in zip(result.paths, result.labels.tolist(), result.predictions.tolist()):
        row = [path, label, top[0], " ".join(map(str, top)), int(top[0] == label), int(label in top)]
        if names is not None:
            row.insert(3, names[top[0]].split(",")[0].strip() if top[0] < len(names) else "")
        w.writerow(row)
    return buf.getvalue()
