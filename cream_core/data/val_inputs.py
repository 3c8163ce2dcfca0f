"""ImageNet val as users have it: the val tar read in place, or the flat folder, labelled from the
devkit archive or Kaggle's ``LOC_val_solution.csv`` (:mod:`cream_core.data.val_labels`).

* **tar** ``ILSVRC2012_img_val.tar`` (50 000 members ``ILSVRC2012_val_00000001.JPEG`` ...): indexed
  once with :mod:`tarfile` (headers only), then every image is read by its byte offset in the
  archive and decoded from memory — nothing is extracted. The archive must be uncompressed (as the
  official download is): a compressed one cannot be read at random offsets.
* **flat** folder: the same files extracted side by side (Kaggle's ``ILSVRC/Data/CLS-LOC/val``).

Images are taken in natural file-name order; each one's label is looked up by its image id (file
name without extension). An image the label file does not know means the label file belongs to
another set (:class:`~cream_core.data.val_labels.LabelFileError`); two images with the same id are an
error too. A member that is no image (by extension, or undecodable), and a truncated archive, are
bad items: one-line errors, or with ``skip_bad`` listed and skipped.

:func:`open_eval_data` is the one entry for every evaluation layout (these two and those of
:func:`cream_core.data.datasets.open_dataset`).
"""
from __future__ import annotations

import argparse
import os
import tarfile
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

from PIL import Image

from cream_core.data.datasets import (IMG_EXTENSIONS, LAYOUTS, BadItemReport, ImageDataset, Sample, natural_key,
                       open_dataset)
from cream_core.data.errors import BadDataError
from cream_core.data.imagenet import IMAGENET_NUM_CLASSES, imagenet_class_names
from cream_core.data.transforms import open_image_bytes
from cream_core.data.val_labels import LabelFileError, read_labels, val_image_id

__all__ = ["EVAL_LAYOUTS", "LABELLED_LAYOUTS", "TarMember", "tar_dataset", "flat_folder",
           "open_eval_data", "guess_eval_layout", "add_eval_data_arguments"]

#: Layouts that take their labels from ``--labels``.
LABELLED_LAYOUTS: Tuple[str, ...] = ("tar", "flat")
EVAL_LAYOUTS: Tuple[str, ...] = LAYOUTS + LABELLED_LAYOUTS
#: A tar archive ends with (at least) two zero blocks of 512 bytes.
TAR_BLOCK = 512
TAR_END_BLOCKS = 2


@dataclass(frozen=True)
class TarMember(Sample):
    """An image inside an uncompressed tar: ``path`` is ``<archive>/<member name>``."""

    archive: str = ""
    offset: int = 0  # of the member's data
    size: int = 0

    def read_bytes(self) -> bytes:
        """The member's bytes, read at its offset (no tarfile needed, safe in forked workers)."""
        try:
            fd = os.open(self.archive, os.O_RDONLY)
            try:
                data = os.pread(fd, self.size, self.offset)
            finally:
                os.close(fd)
        except OSError as e:
            raise BadDataError(self.path, f"cannot read the archive ({e.strerror or e})") from None
        if len(data) < self.size:
            raise BadDataError(self.path, f"truncated archive: member has {len(data)} of its "
                                          f"{self.size} bytes", skippable=True)
        return data

    def open_image(self) -> Image.Image:
        """Decoded as :func:`cream_core.data.transforms.open_image` decodes a file."""
        return open_image_bytes(self.read_bytes(), self.path)


def _image_name_problem(name: str) -> Optional[str]:
    ext = os.path.splitext(name)[1].lower()
    if ext in IMG_EXTENSIONS:
        return None
    return f"not an image file (extension {ext or 'none'!r}; expected {'/'.join(IMG_EXTENSIONS)})"


def _headers(tar: tarfile.TarFile) -> List[tarfile.TarInfo]:
    """Every member header up to the end, or up to where a truncated archive stops (its missing
    part is found by :func:`_tar_members` from the sizes)."""
    infos: List[tarfile.TarInfo] = []
    try:
        while (info := tar.next()) is not None:
            infos.append(info)
    except tarfile.ReadError:  # "unexpected end of data" after a member cut short
        if not infos:
            raise
    return infos


def _tar_members(path: str, report: BadItemReport) -> List[TarMember]:
    """Image members of an uncompressed tar, by offset; checks the archive is complete."""
    try:
        size = os.path.getsize(path)
        with tarfile.open(path, "r:") as tar:
            infos = _headers(tar)
    except tarfile.ReadError as e:
        raise BadDataError(path, f"not a readable uncompressed tar archive ({e}); the val tar "
                                 "(ILSVRC2012_img_val.tar) is read in place and must not be "
                                 "compressed") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadDataError(path, f"cannot read the tar archive ({e})") from None
    members: List[TarMember] = []
    end = 0
    for m in infos:
        end = max(end, m.offset_data + (m.size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK)
        base = os.path.basename(m.name)
        shown = os.path.join(path, m.name)
        if m.isdir() or not base or base.startswith("."):
            continue
        if not m.isfile():
            report(shown, "tar member is not a regular file")
        elif (problem := _image_name_problem(base)) is not None:
            report(shown, problem)
        elif m.offset_data + m.size > size:
            report(shown, f"truncated archive: member needs {m.offset_data + m.size} bytes, "
                          f"the file has {size}")
        else:
            members.append(TarMember(shown, -1, path, m.offset_data, m.size))
    if size < end + TAR_END_BLOCKS * TAR_BLOCK:
        report(path, "truncated archive: no end-of-archive marker after the last member "
                     "(incomplete download?)")
    return members


def _labelled(samples: List[Sample], labels: Dict[str, int], labels_path: str,
              data: str) -> List[Sample]:
    """Each sample with its label, in natural file-name order; every id known and unique."""
    seen: Dict[str, str] = {}
    missing: List[str] = []
    out: List[Sample] = []
    for s in samples:
        image_id = val_image_id(s.path)
        if image_id in seen:
            raise BadDataError(data, f"two images with id {image_id!r}: {seen[image_id]} and {s.path}")
        seen[image_id] = s.path
        if image_id not in labels:
            missing.append(image_id)
            continue
        out.append(replace(s, label=labels[image_id]))
    if missing:
        raise LabelFileError(labels_path, f"has no label for {len(missing)} of the {len(samples)} "
                                          f"images (e.g. {missing[0]!r} in {data}); is it the "
                                          "label file of another set?")
    return sorted(out, key=lambda s: natural_key(os.path.basename(s.path)))


def _dataset(samples: List[Sample], report: BadItemReport, data: str, layout: str,
             labels: Tuple[Dict[str, int], str], what: str) -> ImageDataset:
    if not samples:
        skipped = f" ({len(report.items)} bad item(s) skipped)" if report.items else ""
        raise BadDataError(data, f"no images found{skipped}; expected {what}")
    return ImageDataset(_labelled(samples, *labels, data), IMAGENET_NUM_CLASSES, data, layout,
                        imagenet_class_names(), report.items)


def tar_dataset(path: "os.PathLike[str] | str", labels: "os.PathLike[str] | str", *,
                skip_bad: bool = False) -> ImageDataset:
    """Index the val tar in place, labelled from ``labels`` (devkit archive or LOC csv)."""
    p, lab = os.fspath(path), os.fspath(labels)
    if not os.path.isfile(p):
        raise BadDataError(p, "data path does not exist" if not os.path.exists(p) else "not a file")
    table = read_labels(lab)[0], lab  # a wrong label file is reported before the archive scan
    report = BadItemReport(skip_bad)
    samples: List[Sample] = list(_tar_members(p, report))
    return _dataset(samples, report, p, "tar", table, "image members (ILSVRC2012_val_*.JPEG)")


def flat_folder(path: "os.PathLike[str] | str", labels: "os.PathLike[str] | str", *,
                skip_bad: bool = False) -> ImageDataset:
    """Index a flat folder of val images, labelled from ``labels``."""
    p, lab = os.fspath(path), os.fspath(labels)
    if not os.path.isdir(p):
        raise BadDataError(p, "data path does not exist" if not os.path.exists(p) else "not a folder")
    table = read_labels(lab)[0], lab
    report = BadItemReport(skip_bad)
    samples: List[Sample] = []
    with os.scandir(p) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            report(e.path, "unexpected sub-folder in a flat val folder")
        elif (problem := _image_name_problem(e.name)) is not None:
            report(e.path, problem)
        else:
            samples.append(Sample(e.path, -1))
    return _dataset(samples, report, p, "flat", table, "<folder>/ILSVRC2012_val_*.JPEG")


def guess_eval_layout(path: str) -> str:
    """``'tar'`` for a tar file, ``'flat'`` for a folder holding images and no sub-folders, else
    ``'auto'`` (left to :func:`cream_core.data.datasets.open_dataset`)."""
    if os.path.isfile(path):
        if path.lower().endswith(".tar") or tarfile.is_tarfile(path):
            return "tar"
        return "auto"
    if os.path.isdir(path):
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
        if not any(e.is_dir() for e in entries) and any(
                _image_name_problem(e.name) is None for e in entries):
            return "flat"
    return "auto"


def open_eval_data(data: "os.PathLike[str] | str", layout: str = "auto",
                   labels: "Optional[os.PathLike[str] | str]" = None,
                   num_classes: Optional[int] = None, *, skip_bad: bool = False) -> ImageDataset:
    """Index evaluation data in any layout of :data:`EVAL_LAYOUTS`; ``labels`` (devkit archive or
    ``LOC_val_solution.csv``) is required by the tar and flat layouts and refused by the others."""
    p = os.fspath(data)
    lab = os.fspath(labels) if labels is not None else None
    if layout not in EVAL_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(EVAL_LAYOUTS)}")
    if layout == "auto":
        layout = guess_eval_layout(p)
    if layout in LABELLED_LAYOUTS:
        if lab is None:
            raise LabelFileError(p, f"the {layout} layout needs labels: add --labels "
                                    "ILSVRC2012_devkit_t12.tar.gz (or LOC_val_solution.csv)")
        if num_classes not in (None, IMAGENET_NUM_CLASSES):
            raise BadDataError(p, f"ImageNet val needs a {IMAGENET_NUM_CLASSES}-class model, "
                                  f"not {num_classes} classes")
        return (tar_dataset if layout == "tar" else flat_folder)(p, lab, skip_bad=skip_bad)
    if lab is not None:
        raise LabelFileError(lab, "--labels is for the flat val folder or the val tar; this data "
                                  "carries its own labels")
    return open_dataset(p, layout, num_classes, skip_bad=skip_bad)


def add_eval_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--labels`` and ``--layout`` of the evaluation commands (``cream-eval``,
    ``parity eval``): what :func:`open_eval_data` reads, said once."""
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="ImageNet val folder (or the folder holding val/), class folders, a "
                             "list file, the val tar (ILSVRC2012_img_val.tar) or the flat val folder")
    parser.add_argument("--labels", metavar="FILE",
                        help="labels of the val tar / flat folder: ILSVRC2012_devkit_t12.tar.gz or "
                             "LOC_val_solution.csv")
    parser.add_argument("--layout", default="auto", choices=EVAL_LAYOUTS,
                        help="data layout (default: auto = tar / flat folder / list file / wnid "
                             "folders / class folders)")
