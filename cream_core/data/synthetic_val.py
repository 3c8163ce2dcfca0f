"""A small ImageNet val in every form users have it, for tests, benchmarks and demos.

:func:`write_synthetic_val` writes the same images as the val tar (``ILSVRC2012_img_val.tar``
layout: flat members ``ILSVRC2012_val_%08d.JPEG``), as the flat folder, as the sorted
``val/<wnid>/`` folder, plus both label files: a devkit archive (``ILSVRC2012_devkit_t12.tar.gz``
with ``data/meta.mat`` in the layout torchvision's parser reads — 1000 leaf synsets with
``ILSVRC2012_ID`` numbered in a shuffled, non-sorted order like the real devkit's, plus a few
inner synsets — and ``data/ILSVRC2012_validation_ground_truth.txt``) and Kaggle's
``LOC_val_solution.csv`` (rows shuffled, several boxes per image). Images are the bundled photos,
resized and cropped differently for each id; everything is seeded.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from cream_core.data.embedded import sample_files
from cream_core.data.imagenet import imagenet_wnids
from cream_core.data.val_labels import DEVKIT_GROUND_TRUTH, DEVKIT_META, VAL_ID_FORMAT

__all__ = ["SyntheticVal", "write_synthetic_val", "write_val_images", "write_val_tar",
           "write_devkit", "write_loc_csv", "DEVKIT_TOP"]

#: Top folder inside the real devkit archive.
DEVKIT_TOP = "ILSVRC2012_devkit_t12"
#: Inner (non-leaf) synsets added to meta.mat, as the real one has 860 of them.
INNER_SYNSETS = 3


@dataclass
class SyntheticVal:
    """Where everything was written, and the truth: ``{image id: wnid}`` in id order."""

    flat: Path
    tar: Path
    folder: Path  # val/<wnid>/ layout
    devkit: Path
    loc_csv: Path
    wnids: Dict[str, str]


def _image(rng: np.random.Generator, photos: List[Image.Image], size: tuple) -> Image.Image:
    img = photos[int(rng.integers(len(photos)))]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)


def write_val_images(folder: "os.PathLike[str] | str", n: int, seed: int = 0,
                     size: tuple = (80, 60)) -> Dict[str, str]:
    """``n`` JPEGs ``ILSVRC2012_val_%08d.JPEG`` (from 1) in ``folder``; returns ``{id: wnid}``."""
    rng = np.random.default_rng(seed)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(p).convert("RGB") for p in sample_files()]
    wnids = imagenet_wnids()
    truth: Dict[str, str] = {}
    for i in range(1, n + 1):
        image_id = VAL_ID_FORMAT.format(i)
        _image(rng, photos, size).save(out / f"{image_id}.JPEG", quality=90)
        truth[image_id] = wnids[int(rng.integers(len(wnids)))]
    return truth


def write_val_tar(flat: "os.PathLike[str] | str", dst: "os.PathLike[str] | str") -> Path:
    """The flat folder's images as an uncompressed tar of flat members (as the official download)."""
    dst = Path(dst)
    with tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(os.listdir(flat)):
            tar.add(os.path.join(flat, name), arcname=name)
    return dst


def _meta_mat(ids: Dict[str, int]) -> bytes:
    """``meta.mat`` bytes: the ``synsets`` struct array (leaves then inner synsets)."""
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    rows = [(idx, wnid, f"class {wnid}", "a leaf", 0, np.zeros((0,), np.uint16), 0, 1300)
            for wnid, idx in sorted(ids.items(), key=lambda kv: kv[1])]
    for k in range(INNER_SYNSETS):
        rows.append((len(ids) + 1 + k, f"n9999999{k}", f"inner {k}", "an inner node", 2,
                     np.array([1, 2], np.uint16), 1, 0))
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for j, row in enumerate(rows):
        arr[0, j] = row
    buf = io.BytesIO()
    savemat(buf, {"synsets": arr})
    return buf.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_devkit(dst: "os.PathLike[str] | str", truth: Dict[str, str], seed: int = 0,
                 wnids: "List[str] | None" = None) -> Path:
    """A devkit archive labelling ``truth`` (ids must be ``ILSVRC2012_val_1..n``); ``wnids``
    replaces the 1000 leaf classes (to build a devkit of another set)."""
    leaves = list(wnids) if wnids is not None else list(imagenet_wnids())
    order = np.random.default_rng(seed).permutation(len(leaves))
    ids = {leaves[j]: k + 1 for k, j in enumerate(order)}  # ILSVRC2012_ID, not sorted by wnid
    lines = [str(ids[truth[VAL_ID_FORMAT.format(i)]]) for i in range(1, len(truth) + 1)]
    dst = Path(dst)
    with tarfile.open(dst, "w:gz") as tar:
        _add_bytes(tar, f"{DEVKIT_TOP}/{DEVKIT_META}", _meta_mat(ids))
        _add_bytes(tar, f"{DEVKIT_TOP}/{DEVKIT_GROUND_TRUTH}", ("\n".join(lines) + "\n").encode())
        _add_bytes(tar, f"{DEVKIT_TOP}/readme.txt", b"synthetic devkit\n")
    return dst


def write_loc_csv(dst: "os.PathLike[str] | str", truth: Dict[str, str], seed: int = 0) -> Path:
    """Kaggle's ``LOC_val_solution.csv`` for ``truth``: shuffled rows, 1-3 boxes per image."""
    rng = np.random.default_rng(seed)
    ids = list(truth)
    dst = Path(dst)
    with dst.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ImageId", "PredictionString"])
        for k in rng.permutation(len(ids)):
            boxes = int(rng.integers(1, 4))
            parts = []
            for _ in range(boxes):
                parts += [truth[ids[k]], *map(str, sorted(rng.integers(0, 300, 4).tolist()))]
            w.writerow([ids[k], " ".join(parts) + " "])
    return dst


def write_synthetic_val(root: "os.PathLike[str] | str", n: int = 12, seed: int = 0,
                        size: tuple = (80, 60)) -> SyntheticVal:
    """Every form of the same ``n``-image val under ``root`` (see the module docstring)."""
    root = Path(root)
    flat = root / "flat"
    truth = write_val_images(flat, n, seed, size)
    folder = root / "val"
    for image_id, wnid in truth.items():
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(flat / f"{image_id}.JPEG", folder / wnid / f"{image_id}.JPEG")
    return SyntheticVal(flat, write_val_tar(flat, root / "ILSVRC2012_img_val.tar"), folder,
                        write_devkit(root / "ILSVRC2012_devkit_t12.tar.gz", truth, seed),
                        write_loc_csv(root / "LOC_val_solution.csv", truth, seed), truth)
