"""The per-image predictions file, written as the evaluation goes, and resuming from it.

``--predictions FILE`` is a CSV (``path, label, prediction[, prediction_name], top5, correct1,
correct5, loss``). While the run goes, it is appended to ``FILE.partial`` one *chunk* at a time:
the rows of one step (one batch per process), in dataset order, written with one ``write`` and
flushed to disk. Next to it, ``FILE.resume.json`` (replaced atomically after each chunk) records
how many of the evaluation's batches are done, how many bytes of ``FILE.partial`` hold them, the
items skipped so far, and a fingerprint of the run (model, weights, data, labels, preprocessing,
batch size). The committed part is always whole chunks: after a kill, ``--resume`` cuts
``FILE.partial`` back to the recorded length (dropping a chunk caught mid-write), reads the
finished rows back — the loss column holds each image's float64 cross-entropy exactly (``repr``)
— and continues with the next batch, so the final numbers are those of an uninterrupted run. When
the run completes, ``FILE.partial`` is renamed to ``FILE`` and the state file removed: ``FILE``
only ever holds a complete result.

A run stopped by a bad image keeps its finished part too: ``--resume --skip-bad`` continues it
(``--skip-bad`` is not part of the fingerprint: the finished batches had no bad image, so they are
what a ``--skip-bad`` run computes).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cream_core.io.atomic import atomic_write_text

from cream_core.data.datasets import ImageDataset
from cream_core.data.errors import BadDataError, BadItem

__all__ = ["PARTIAL_SUFFIX", "RESUME_SUFFIX", "JOURNAL_VERSION", "ResumeError", "BatchRecord", "PredictionJournal",
           "csv_header", "record_rows", "run_fingerprint"]

PARTIAL_SUFFIX = ".partial"
RESUME_SUFFIX = ".resume.json"
JOURNAL_VERSION = 1
#: Paths are written with the bytes they have on disk (names need not be UTF-8).
PATH_ERRORS = "surrogateescape"


def run_fingerprint(dataset: ImageDataset, **settings: Any) -> Dict[str, Any]:
    """What must not change between an interrupted run and its resumption: ``settings`` (model,
    weights digest, preprocessing, batch size...) and the data's images and labels, in order."""
    h = hashlib.sha256()
    for s in dataset.samples:
        h.update(f"{s.path}\t{s.label}\n".encode("utf-8", errors=PATH_ERRORS))
    out = dict(settings, layout=dataset.layout, images=len(dataset), samples_sha256=h.hexdigest())
    return json.loads(json.dumps(out))  # JSON-comparable (tuples become lists)


class ResumeError(BadDataError):
    """``--resume`` impossible: nothing to resume, or a run with other settings (one line)."""


@dataclass
class BatchRecord:
    """What one process found for one batch: per image, in dataset order."""

    batch_id: int
    indices: np.ndarray  # int64 (N,)
    paths: List[str]
    labels: np.ndarray  # int64 (N,)
    top5: np.ndarray  # int64 (N, 5)
    losses: np.ndarray  # float64 (N,)
    skipped: List[BadItem] = field(default_factory=list)
    model_seconds: float = 0.0
    error: Optional[BadItem] = None  # a bad item that stops the run (not skipping)
    logits: Optional[np.ndarray] = None  # float32 (N, C), only when asked for


def csv_header(class_names: Optional[Sequence[str]]) -> List[str]:
    """Column names of the predictions file."""
    header = ["path", "label", "prediction", "top5", "correct1", "correct5", "loss"]
    if class_names is not None:
        header.insert(3, "prediction_name")
    return header


def record_rows(rec: BatchRecord, class_names: Optional[Sequence[str]]) -> List[List[Any]]:
    """The CSV rows of one batch."""
    rows = []
    for path, label, top, loss in zip(rec.paths, rec.labels.tolist(), rec.top5.tolist(),
                                      rec.losses.tolist()):
        row: List[Any] = [path, label, top[0], " ".join(map(str, top)), int(top[0] == label),
                          int(label in top), repr(float(loss))]
        if class_names is not None:
            row.insert(3, class_names[top[0]].split(",")[0].strip()
                       if top[0] < len(class_names) else "")
        rows.append(row)
    return rows


def _csv_bytes(rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8", errors=PATH_ERRORS)


class PredictionJournal:
    """``FILE.partial`` plus ``FILE.resume.json``, then ``FILE``; see the module docstring. Only
    rank 0 holds one."""

    def __init__(self, path: str, class_names: Optional[Sequence[str]],
                 fingerprint: Dict[str, Any]) -> None:
        self.final = path
        self.path = path + PARTIAL_SUFFIX
        self.sidecar = path + RESUME_SUFFIX
        self.class_names = list(class_names) if class_names is not None else None
        self.fingerprint = fingerprint
        self.done_batches = 0
        self.size = 0
        self.skipped: List[BadItem] = []

    def start(self) -> None:
        """A fresh run: ``FILE.partial`` holds the header only. An interrupted run's state is
        never thrown away silently: without ``--resume`` it is refused (remove it to start anew)."""
        if os.path.exists(self.sidecar):
            raise ResumeError(self.sidecar, "an interrupted run of these predictions is here: "
                                            "--resume continues it; remove this file and "
                                            f"{os.path.basename(self.path)} to start anew")
        atomic_write_text(self.path, _csv_bytes([csv_header(self.class_names)]).decode(
            "utf-8", errors=PATH_ERRORS))
        self.size = os.path.getsize(self.path)
        self._save_state()

    def resume(self) -> List[BatchRecord]:
        """Continue an interrupted run: check it is this run, cut ``FILE.partial`` back to its last
        whole chunk and return the finished images (one record)."""
        state = self._load_state()
        if state["fingerprint"] != self.fingerprint:
            diff = sorted(k for k in set(state["fingerprint"]) | set(self.fingerprint)
                          if state["fingerprint"].get(k) != self.fingerprint.get(k))
            raise ResumeError(self.sidecar, "the interrupted run had other settings ("
                                            f"{', '.join(diff)}); resume with the same ones")
        try:
            have = os.path.getsize(self.path)
            if have < state["bytes"]:
                raise ResumeError(self.path, f"shorter ({have} bytes) than its finished part "
                                             f"({state['bytes']} bytes): not the file of this run")
            with open(self.path, "r+b") as f:
                f.truncate(state["bytes"])  # drop a chunk caught mid-write
                data = f.read()
        except OSError as e:
            raise ResumeError(self.path, f"cannot read the predictions file ({e})") from None
        self.done_batches, self.size = int(state["done_batches"]), len(data)
        self.skipped = [BadItem(**d) for d in state["skipped"]]
        return [self._parse(data)]

    def _parse(self, data: bytes) -> BatchRecord:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors=PATH_ERRORS))))
        if not rows or rows[0] != csv_header(self.class_names):
            raise ResumeError(self.path, "not a predictions file written by cream-eval")
        body = rows[1:]
        col = {name: k for k, name in enumerate(rows[0])}
        try:
            top5 = np.array([[int(v) for v in r[col["top5"]].split()] for r in body], np.int64)
            return BatchRecord(
                -1, np.full(len(body), -1, np.int64), [r[col["path"]] for r in body],
                np.array([int(r[col["label"]]) for r in body], np.int64),
                top5.reshape(len(body), -1), np.array([float(r[col["loss"]]) for r in body]))
        except (ValueError, IndexError) as e:
            raise ResumeError(self.path, f"unreadable row in the predictions file ({e})") from None

    def append(self, records: Sequence[BatchRecord]) -> None:
        """Add one chunk (the step's records, in batch order) and commit it."""
        rows = [row for rec in records for row in record_rows(rec, self.class_names)]
        data = _csv_bytes(rows)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.size += len(data)
        self.done_batches += len(records)
        for rec in records:
            self.skipped.extend(rec.skipped)
        self._save_state()

    def finish(self) -> None:
        """The run is complete: ``FILE.partial`` becomes ``FILE``; the state file goes."""
        os.replace(self.path, self.final)
        self.discard()

    def discard(self) -> None:
        """Forget the run's state (and its partial file, if it still exists)."""
        for p in (self.path, self.sidecar):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass

    def _save_state(self) -> None:
        atomic_write_text(self.sidecar, json.dumps({
            "version": JOURNAL_VERSION, "fingerprint": self.fingerprint,
            "done_batches": self.done_batches, "bytes": self.size,
            "skipped": [b.to_dict() for b in self.skipped]}, indent=1) + "\n")

    def _load_state(self) -> Dict[str, Any]:
        if not os.path.exists(self.sidecar) or not os.path.exists(self.path):
            what = "is complete" if os.path.exists(self.final) else "was never started"
            raise ResumeError(self.final, f"nothing to resume: the run {what} (no "
                                          f"{os.path.basename(self.path)} and "
                                          f"{os.path.basename(self.sidecar)})")
        try:
            with open(self.sidecar, "r", encoding="utf-8") as f:
                state = json.load(f)
            if state.get("version") != JOURNAL_VERSION:
                raise ValueError(f"version {state.get('version')!r}")
            int(state["done_batches"]), int(state["bytes"]), list(state["skipped"])
            dict(state["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ResumeError(self.sidecar, f"unreadable resume state ({e})") from None
        return state

