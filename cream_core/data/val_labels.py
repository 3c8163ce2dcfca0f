"""Labels of the flat ImageNet val images, from the files users have: the ILSVRC2012 devkit archive
or Kaggle's ``LOC_val_solution.csv``, mapped to the canonical 1000-class order.

* **Devkit** ``ILSVRC2012_devkit_t12.tar.gz``: parsed as torchvision's
  ``torchvision.datasets.imagenet.parse_devkit_archive`` parses it — ``data/meta.mat`` (``synsets``
  struct array; the leaf synsets, ``num_children == 0``, give ``ILSVRC2012_ID -> wnid``) and
  ``data/ILSVRC2012_validation_ground_truth.txt`` (line ``i`` = the ILSVRC2012_ID of
  ``ILSVRC2012_val_%08d.JPEG`` with number ``i``, from 1). torchvision's function itself is not
  called: it checks the archive's MD5 against the real download's, extracts it into a temporary
  folder, writes ``meta.bin`` next to the archive, and its two parsers are private nested functions.
  Here both members are read from the archive in memory (``scipy.io.loadmat`` on the member bytes);
  ``tests/test_eval_layouts.py`` checks the result equals torchvision's on the same archive.
* **Kaggle** ``LOC_val_solution.csv``: ``ImageId,PredictionString`` with the prediction string
  ``wnid x0 y0 x1 y1 wnid ...``; an image's class is the first wnid (all boxes of a val image
  carry its one class).

The result is ``{image id: class index}``, the image id being the file name without extension
(``ILSVRC2012_val_00000001``), the class index the wnid's position in
:func:`cream_core.data.imagenet.imagenet_wnids`. Any problem — unreadable file, another data set's
classes, unknown wnids or ids, duplicate ids — is a :class:`LabelFileError` naming the file.
"""
from __future__ import annotations

import csv
import io
import os
import tarfile
from typing import Dict, List, Tuple

from cream_core.io.cli_errors import EXIT_BAD_INPUT

from cream_core.data.errors import BadDataError
from cream_core.data.imagenet import IMAGENET_NUM_CLASSES, wnid_to_index

__all__ = ["LabelFileError", "LABEL_ERROR_EXIT", "DEVKIT_META", "DEVKIT_GROUND_TRUTH", "VAL_ID_FORMAT", "val_image_id",
           "read_labels", "read_devkit_labels", "read_loc_csv_labels", "parse_meta_mat",
           "parse_ground_truth"]

#: Members of the devkit archive (under its top folder ``ILSVRC2012_devkit_t12/``).
DEVKIT_META = "data/meta.mat"
DEVKIT_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
#: File stem of val image number ``i`` (from 1).
VAL_ID_FORMAT = "ILSVRC2012_val_{:08d}"
#: ``cream-eval`` exit status for a label file that does not fit: bad input, as every bad input
#: (:mod:`cream_core.io.cli_errors`).
LABEL_ERROR_EXIT = EXIT_BAD_INPUT


class LabelFileError(BadDataError):
    """A label file that is missing, unreadable or does not belong to the data (one line)."""


def val_image_id(name: str) -> str:
    """The image id of a file name or path: its base name without extension."""
    return os.path.splitext(os.path.basename(name))[0]


def _canonical(wnid: str, where: str) -> int:
    index = wnid_to_index().get(wnid)
    if index is None:
        raise LabelFileError(where, f"{wnid!r} is no ImageNet-1k class (wnid); is this the label "
                                    "file of another data set?")
    return index


def parse_meta_mat(data: bytes, where: str) -> Dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` of the leaf synsets in ``meta.mat`` (torchvision's
    ``parse_meta_mat``), checked to be exactly the 1000 ImageNet-1k classes."""
    import scipy.io as sio

    try:
        meta = sio.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        nums_children = list(zip(*meta))[4]
        leaves = [meta[i] for i, n in enumerate(nums_children) if n == 0]
        idcs, wnids = list(zip(*leaves))[:2]
        idx_to_wnid = {int(i): str(w) for i, w in zip(idcs, wnids)}
    except Exception as e:  # scipy raises many kinds for a corrupt or foreign .mat
        raise LabelFileError(where, f"cannot read the synsets of {DEVKIT_META} "
                                    f"({type(e).__name__}: {e})") from None
    if len(idx_to_wnid) != len(idcs):
        raise LabelFileError(where, f"{DEVKIT_META} has duplicate ILSVRC2012_IDs")
    if sorted(idx_to_wnid.values()) != sorted(wnid_to_index()):
        unknown = sorted(set(idx_to_wnid.values()) - set(wnid_to_index()))
        raise LabelFileError(where, f"{DEVKIT_META} lists {len(idx_to_wnid)} leaf classes, not the "
                                    f"{IMAGENET_NUM_CLASSES} ImageNet-1k ones"
                                    + (f" (e.g. {unknown[0]!r})" if unknown else ""))
    return idx_to_wnid


def parse_ground_truth(text: str, idx_to_wnid: Dict[int, str], where: str) -> Dict[str, int]:
    """``{image id: class index}`` from the ground-truth lines (torchvision's
    ``parse_val_groundtruth_txt`` then ``idx_to_wnid``)."""
    labels: Dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            idx = int(line)
        except ValueError:
            raise LabelFileError(f"{where}:{DEVKIT_GROUND_TRUTH}:{n}",
                                 f"expected an ILSVRC2012_ID, got {line!r}") from None
        if idx not in idx_to_wnid:
            raise LabelFileError(f"{where}:{DEVKIT_GROUND_TRUTH}:{n}",
                                 f"ILSVRC2012_ID {idx} is not in {DEVKIT_META}")
        labels[VAL_ID_FORMAT.format(n)] = _canonical(idx_to_wnid[idx], where)
    if not labels:
        raise LabelFileError(where, f"{DEVKIT_GROUND_TRUTH} is empty")
    return labels


def _devkit_member(tar: tarfile.TarFile, suffix: str, where: str) -> bytes:
    found = [m for m in tar.getmembers()
             if m.isfile() and (m.name.endswith("/" + suffix) or m.name == suffix)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise LabelFileError(where, f"{what} '{suffix}' in the archive; expected the ILSVRC2012 "
                                    "devkit (ILSVRC2012_devkit_t12.tar.gz)")
    f = tar.extractfile(found[0])
    assert f is not None  # a regular file member
    return f.read()


def read_devkit_labels(path: str) -> Dict[str, int]:
    """Val labels from the devkit archive, read in place (no extraction)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            meta = _devkit_member(tar, DEVKIT_META, path)
            truth = _devkit_member(tar, DEVKIT_GROUND_TRUTH, path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LabelFileError(path, f"cannot read the devkit archive ({e})") from None
    try:
        text = truth.decode("ascii")
    except UnicodeDecodeError:
        raise LabelFileError(path, f"{DEVKIT_GROUND_TRUTH} is not a text file") from None
    return parse_ground_truth(text, parse_meta_mat(meta, path), path)


def _csv_rows(path: str) -> List[List[str]]:
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            return list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LabelFileError(path, f"cannot read the CSV file ({e})") from None


def read_loc_csv_labels(path: str) -> Dict[str, int]:
    """Val labels from Kaggle's ``LOC_val_solution.csv`` (first wnid of each prediction string)."""
    rows = _csv_rows(path)
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise LabelFileError(path, "expected Kaggle's header 'ImageId,PredictionString' "
                                   "(LOC_val_solution.csv)")
    labels: Dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        where = f"{path}:{n}"
        if len(row) < 2 or not row[0].strip() or not row[1].split():
            raise LabelFileError(where, f"expected 'ImageId,wnid x0 y0 x1 y1 ...', got {row!r}")
        image_id = row[0].strip()
        if image_id in labels:
            raise LabelFileError(where, f"duplicate image id {image_id!r}")
        labels[image_id] = _canonical(row[1].split()[0], where)
    if not labels:
        raise LabelFileError(path, "no labels in the file")
    return labels


def read_labels(path: "os.PathLike[str] | str") -> Tuple[Dict[str, int], str]:
    """``({image id: class index}, kind)`` from a devkit archive (``'devkit'``) or a
    ``LOC_val_solution.csv`` (``'loc-csv'``), recognised by content."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise LabelFileError(p, "label file does not exist" if not os.path.exists(p)
                             else "label file is not a file")
    if tarfile.is_tarfile(p):
        return read_devkit_labels(p), "devkit"
    if p.lower().endswith((".tar", ".tar.gz", ".tgz")):
        raise LabelFileError(p, "not a readable tar archive (truncated or corrupt download?)")
    return read_loc_csv_labels(p), "loc-csv"
