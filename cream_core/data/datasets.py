"""Index evaluation data: an ImageNet val folder, a plain class-folder dataset, or a list file.

* **ImageNet** ``<root>/<wnid>/*.JPEG`` (``<root>`` may also be the folder holding ``val/``, as the
  official ``DATA_DIR``): labels from the canonical ImageNet-1k order (:mod:`cream_core.data.imagenet`),
  so a subset of the class folders keeps the right labels.
* **Class folders** ``<root>/<name>/*``: labels are the positions of the folder names in sorted
  order (``--num-classes`` may be larger, e.g. for a model with more outputs).
* **List file** (PaddleClas style): one ``relative/path label`` per line, the path relative to the
  list file's folder and inside it: absolute paths and ``..`` escapes are bad entries (a list
  describes the data set it sits in, moves with it, and a list from elsewhere cannot make the tool
  read arbitrary files). UTF-8, with or without a byte-order mark.

Files inside class folders are taken in the official order (timm 0.1.20 sorts every path with a
"natural" key: digit runs compare as numbers). Image files are recognised as the official loader
did, by extension (``.jpeg``, ``.jpg``, ``.png``, any case); hidden files (``.DS_Store``) are ignored.

Problems found while indexing (a symbolic link loop, an empty class folder, a folder name that is
no ImageNet-1k wnid, a non-image file, a list line with a missing path or a bad label) raise
:class:`~cream_core.data.errors.BadDataError` naming the file; with ``skip_bad=True`` they are recorded
in :attr:`ImageDataset.problems` instead and indexing goes on.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from cream_core.data.errors import BadDataError, BadItem
from cream_core.data.imagenet import IMAGENET_NUM_CLASSES, imagenet_class_names, is_wnid_shaped, wnid_to_index

__all__ = ["IMG_EXTENSIONS", "LAYOUTS", "Sample", "ImageDataset", "BadItemReport", "natural_key",
           "imagenet_folder",
           "class_folder", "list_file", "file_dataset", "open_dataset", "open_train_val",
           "resolve_val_dir"]

#: timm 0.1.20 ``IMG_EXTENSIONS`` (compared case-insensitively).
IMG_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg")
LAYOUTS: Tuple[str, ...] = ("auto", "imagenet", "folder", "list")


@dataclass(frozen=True)
class Sample:
    """One image to evaluate: its path and its class index."""

    path: str
    label: int


@dataclass
class ImageDataset:
    """An indexed evaluation set: samples in evaluation order plus what indexing had to skip."""

    samples: List[Sample]
    num_classes: int
    root: str
    layout: str
    class_names: Optional[Tuple[str, ...]] = None
    problems: List[BadItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def paths(self) -> List[str]:
        """Image paths in evaluation order."""
        return [s.path for s in self.samples]

    @property
    def labels(self) -> List[int]:
        """Class indices in evaluation order."""
        return [s.label for s in self.samples]


def natural_key(text: str) -> list:
    """Sort key comparing digit runs as numbers, case-insensitively (timm 0.1.20's ``natural_key``)."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", text.lower())]


class BadItemReport:
    """Raise the first bad item (skippable), or collect them all when skipping bad data (one policy
    for every data layout)."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.items: List[BadItem] = []

    def __call__(self, path: str, problem: str) -> None:
        err = BadDataError(path, problem, skippable=True)
        if not self.skip_bad:
            raise err
        self.items.append(err.item)


def _visible_entries(folder: str) -> List[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise BadDataError(folder, f"cannot list folder ({e.strerror or e})") from None


def _broken(entry: os.DirEntry) -> Optional[str]:
    """Why an entry cannot be used (a symbolic link to itself or in a loop, a dangling link), or
    ``None``; ``DirEntry.is_dir`` would raise ``OSError`` (ELOOP) for a loop."""
    try:
        entry.stat()
        return None
    except OSError as e:
        if entry.is_symlink():
            return f"broken symbolic link ({e.strerror or e})"
        return f"cannot be read ({e.strerror or e})"


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def _folder_images(folder: str, label: int, report: BadItemReport) -> List[Sample]:
    """Images directly inside one class folder; everything else there is reported."""
    found: List[Sample] = []
    for e in _visible_entries(folder):
        problem = _broken(e)
        if problem:
            report(e.path, problem)
        elif e.is_dir():
            report(e.path, "unexpected sub-folder inside a class folder (class folders hold images only)")
        elif not _is_image_name(e.name):
            ext = os.path.splitext(e.name)[1] or "none"
            report(e.path, f"not an image file (extension {ext!r}; expected "
                           f"{'/'.join(IMG_EXTENSIONS)})")
        else:
            found.append(Sample(e.path, label))
    if not found and not any(it.path.startswith(folder + os.sep) for it in report.items):
        report(folder, "empty folder (no images)")
    return found


def _class_dirs(root: str, report: Optional[BadItemReport] = None
                ) -> Tuple[List[os.DirEntry], List[os.DirEntry]]:
    """Sub-folders and files of ``root``; broken entries (link loops) go to ``report``, if given."""
    entries = []
    for e in _visible_entries(root):
        problem = _broken(e)
        if problem is None:
            entries.append(e)
        elif report is not None:
            report(e.path, problem)
    return [e for e in entries if e.is_dir()], [e for e in entries if e.is_file()]


def resolve_val_dir(root: str) -> str:
    """``root`` itself, or ``root/val`` when ``root`` is the official ``DATA_DIR`` holding ``val/``."""
    val = os.path.join(root, "val")
    if os.path.isdir(val):
        dirs, _ = _class_dirs(root)
        if not any(is_wnid_shaped(d.name) for d in dirs):
            return val
    return root


def _check_root(root: str) -> str:
    if os.path.islink(root) and not os.path.exists(root):
        raise BadDataError(root, "broken symbolic link (dangling, or a loop)")
    if not os.path.exists(root):
        raise BadDataError(root, "data path does not exist")
    if not os.path.isdir(root):
        raise BadDataError(root, "not a folder")
    return root


def _finish(samples: List[Sample], root: str, report: BadItemReport, what: str) -> List[Sample]:
    if not samples:
        skipped = f" ({len(report.items)} bad item(s) skipped)" if report.items else ""
        raise BadDataError(root, f"no images found{skipped}; expected {what}")
    return sorted(samples, key=lambda s: natural_key(os.path.relpath(s.path, root)))


def _loose_images(root: str, files: Sequence[os.DirEntry], report: BadItemReport) -> None:
    for f in files:
        if _is_image_name(f.name):
            report(f.path, "image outside any class folder (no label); expected <root>/<class>/<image>")


def imagenet_folder(root: "os.PathLike[str] | str", *, skip_bad: bool = False) -> ImageDataset:
    """Index an ImageNet val folder ``<root>/<wnid>/*.JPEG`` with canonical ImageNet-1k labels."""
    root = resolve_val_dir(_check_root(os.fspath(root)))
    report = BadItemReport(skip_bad)
    dirs, files = _class_dirs(root, report)
    if not dirs and any(_is_image_name(f.name) for f in files):
        raise BadDataError(root, "images are not sorted into class folders; ImageNet val must be "
                                 "laid out as val/<wnid>/<image>.JPEG")
    _loose_images(root, files, report)
    index = wnid_to_index()
    samples: List[Sample] = []
    for d in dirs:
        if d.name not in index:
            report(d.path, f"folder name {d.name!r} is no ImageNet-1k wnid (e.g. 'n01440764')")
            continue
        samples.extend(_folder_images(d.path, index[d.name], report))
    samples = _finish(samples, root, report, "<root>/<wnid>/<image>.JPEG")
    return ImageDataset(samples, IMAGENET_NUM_CLASSES, root, "imagenet", imagenet_class_names(),
                        report.items)


def class_folder(root: "os.PathLike[str] | str", num_classes: Optional[int] = None, *,
                 skip_bad: bool = False) -> ImageDataset:
    """Index ``<root>/<class>/<image>``: class ``i`` is the ``i``-th folder name in sorted order."""
    root = _check_root(os.fspath(root))
    report = BadItemReport(skip_bad)
    dirs, files = _class_dirs(root, report)
    if not dirs:
        raise BadDataError(root, "no class folders found; expected <root>/<class>/<image>")
    if num_classes is not None and len(dirs) > num_classes:
        raise BadDataError(root, f"has {len(dirs)} class folders but the model has {num_classes} "
                                 "classes (set --num-classes)")
    _loose_images(root, files, report)
    samples: List[Sample] = []
    for label, d in enumerate(dirs):
        samples.extend(_folder_images(d.path, label, report))
    samples = _finish(samples, root, report, "<root>/<class>/<image>")
    return ImageDataset(samples, num_classes if num_classes is not None else len(dirs), root,
                        "folder", tuple(d.name for d in dirs), report.items)


def list_file(path: "os.PathLike[str] | str", num_classes: int = IMAGENET_NUM_CLASSES, *,
              skip_bad: bool = False) -> ImageDataset:
    """Index a PaddleClas-style list file: ``relative/path label`` per line (blank lines ignored)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadDataError(path, "list file does not exist" if not os.path.exists(path)
                           else "not a file")
    try:
        with open(path, "r", encoding="utf-8-sig") as f:  # a BOM (Windows editors) is no path
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadDataError(path, f"cannot read list file ({e})") from None
    base = os.path.dirname(os.path.abspath(path))
    report = BadItemReport(skip_bad)
    samples: List[Sample] = []
    for n, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{path}:{n}"
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            report(where, f"expected '<relative/path> <label>', got {text!r}")
            continue
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            report(where, f"label {label_text!r} is not an integer")
            continue
        if not 0 <= label < num_classes:
            report(where, f"label {label} is out of range for {num_classes} classes")
            continue
        full = os.path.normpath(os.path.join(base, rel))
        if os.path.isabs(rel) or not (full + os.sep).startswith(base.rstrip(os.sep) + os.sep):
            report(where, f"path {rel!r} is outside the list file's folder {base} (entries must be "
                          "relative paths inside it)")
            continue
        if not os.path.exists(full):
            report(where, f"image {rel!r} is a broken symbolic link (dangling, or a loop)"
                   if os.path.islink(full) else f"image {rel!r} not found (looked for {full})")
            continue
        if not os.path.isfile(full):
            report(where, f"{rel!r} is not a file")
            continue
        samples.append(Sample(full, label))
    if not samples:
        skipped = f" ({len(report.items)} bad line(s) skipped)" if report.items else ""
        raise BadDataError(path, f"no images listed{skipped}; expected '<relative/path> <label>' lines")
    names = imagenet_class_names() if num_classes == IMAGENET_NUM_CLASSES else None
    return ImageDataset(samples, num_classes, path, "list", names, report.items)


def file_dataset(paths: Sequence["os.PathLike[str] | str"], labels: Sequence[int],
                 num_classes: int = IMAGENET_NUM_CLASSES) -> ImageDataset:
    """A dataset from explicit paths and labels, in the given order (e.g. the bundled photos)."""
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    samples = [Sample(os.fspath(p), int(lab)) for p, lab in zip(paths, labels)]
    for s in samples:
        if not 0 <= s.label < num_classes:
            raise BadDataError(s.path, f"label {s.label} is out of range for {num_classes} classes")
    root = os.path.commonpath([os.path.dirname(os.path.abspath(s.path)) for s in samples]) \
        if samples else ""
    names = imagenet_class_names() if num_classes == IMAGENET_NUM_CLASSES else None
    return ImageDataset(samples, num_classes, root, "files", names)


def _guess_layout(path: str, num_classes: Optional[int]) -> str:
    if os.path.isfile(path):
        return "list"
    if num_classes is not None and num_classes != IMAGENET_NUM_CLASSES:
        return "folder"
    if not os.path.isdir(path):
        return "imagenet"  # let the indexer report the missing path
    dirs, _ = _class_dirs(resolve_val_dir(path))
    return "imagenet" if any(is_wnid_shaped(d.name) for d in dirs) or not dirs else "folder"


def open_train_val(data: str, val_data: Optional[str], layout: str = "auto",
                   num_classes: Optional[int] = None) -> Tuple[ImageDataset, Optional[ImageDataset]]:
    """The training set (``DATA/train`` or ``DATA``) and the evaluation set (``val_data``,
    ``DATA/val`` next to ``DATA/train``, or none), with the same classes."""
    train_dir = os.path.join(data, "train")
    if os.path.isdir(train_dir):
        train_path = train_dir
        if val_data is None and os.path.isdir(os.path.join(data, "val")):
            val_data = os.path.join(data, "val")
    else:
        train_path = data
    train_set = open_dataset(train_path, layout, num_classes)
    val_set = open_dataset(val_data, layout, train_set.num_classes) if val_data else None
    if val_set is not None and val_set.num_classes != train_set.num_classes:
        raise BadDataError(val_data, f"has {val_set.num_classes} classes, the training set "
                                     f"{train_set.num_classes}")
    return train_set, val_set


def open_dataset(path: "os.PathLike[str] | str", layout: str = "auto",
                 num_classes: Optional[int] = None, *, skip_bad: bool = False) -> ImageDataset:
    """Index ``path`` in the given layout; ``'auto'``: a file is a list file, a folder whose class
    folders look like wnids (``n01440764``) is ImageNet, any other folder is a class-folder dataset.
    """
    p = os.fspath(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = _guess_layout(p, num_classes)
    if layout == "imagenet":
        if num_classes not in (None, IMAGENET_NUM_CLASSES):
            raise BadDataError(p, f"ImageNet layout needs a {IMAGENET_NUM_CLASSES}-class model, "
                                  f"not {num_classes} classes")
        return imagenet_folder(p, skip_bad=skip_bad)
    if layout == "folder":
        return class_folder(p, num_classes, skip_bad=skip_bad)
    return list_file(p, num_classes if num_classes is not None else IMAGENET_NUM_CLASSES,
                     skip_bad=skip_bad)

