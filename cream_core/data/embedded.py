"""The bundled photographs (public domain / CC0, see ``samples/README.md``) and ways to lay them out.

Real ImageNet is not redistributable, so tests and the quickstart use a handful of real photos,
labelled with a model's *own* predictions: a model then scores 100 % on them, and a converted model
that predicts anything else on any image fails visibly. :func:`make_imagenet_layout` puts them in
the ImageNet val layout (``val/<wnid>/<name>``), :func:`write_list_file` writes a list file for them.
"""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import List, Mapping, Optional

from cream_core.io.atomic import atomic_write_text

from cream_core.data.imagenet import IMAGENET_NUM_CLASSES, imagenet_wnids

__all__ = ["samples_dir", "sample_files", "make_imagenet_layout", "write_list_file"]

_SAMPLE_SUFFIX = ".JPEG"


def samples_dir() -> Path:
    """Folder of the bundled photos."""
    return Path(str(resources.files(__package__).joinpath("samples")))


def sample_files(source_dir: "Optional[os.PathLike[str] | str]" = None) -> List[Path]:
    """The bundled photos (or the images of ``source_dir``), sorted by file name."""
    folder = Path(source_dir) if source_dir is not None else samples_dir()
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def _resolve(labels: Mapping[str, int], source_dir: "Optional[os.PathLike[str] | str]"
             ) -> List[tuple]:
    files = {p.name: p for p in sample_files(source_dir)}
    out = []
    for name in sorted(labels):
        if name not in files:
            raise ValueError(f"no image named {name!r} in {source_dir or samples_dir()}; "
                             f"have {', '.join(sorted(files))}")
        label = int(labels[name])
        if not 0 <= label < IMAGENET_NUM_CLASSES:
            raise ValueError(f"label {label} for {name!r} is not an ImageNet-1k class index")
        out.append((files[name], label))
    return out


def make_imagenet_layout(dest: "os.PathLike[str] | str", labels: Mapping[str, int],
                         source_dir: "Optional[os.PathLike[str] | str]" = None) -> Path:
    """Copy the photos named in ``labels`` ({file name: class index}) to ``dest/val/<wnid>/``.

    Returns the ``val`` folder. ``dest`` may exist; an existing file is not overwritten.
    """
    wnids = imagenet_wnids()
    val = Path(dest) / "val"
    for src, label in _resolve(labels, source_dir):
        target = val / wnids[label] / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(f"{target}: already exists; choose an empty destination")
        shutil.copyfile(src, target)
    return val


def write_list_file(list_path: "os.PathLike[str] | str", labels: Mapping[str, int],
                    source_dir: "Optional[os.PathLike[str] | str]" = None,
                    image_dir: str = "images") -> Path:
    """Write a PaddleClas-style list file for the photos in ``labels`` ({file name: class index}).

    The photos are copied to ``<list file's folder>/<image_dir>/`` and listed as
    ``<image_dir>/<name> <label>`` (paths relative to the list file's folder). Returns the list file.
    """
    list_path = Path(list_path)
    if list_path.exists():
        raise FileExistsError(f"{list_path}: already exists; choose a new list file name")
    folder = list_path.parent / image_dir
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for src, label in _resolve(labels, source_dir):
        target = folder / src.name
        if target.exists():
            raise FileExistsError(f"{target}: already exists; choose an empty destination")
        shutil.copyfile(src, target)
        lines.append(f"{image_dir}/{src.name} {label}\n")
    atomic_write_text(list_path, "".join(lines))
    return list_path
