"""The canonical ImageNet-1k class order: class index = position of the synset id (wnid) in sorted order.

The official loader (timm 0.1.20 ``Dataset``) numbered the class folders it *found*, in sorted order;
on the full ``val/`` with 1000 folders that is exactly the sorted wnid list, which is what every
released ImageNet classifier (Cream's included) was trained against. Numbering only the folders
present would shift the labels of a subset, so this project always uses the fixed list.

``imagenet1k_synsets.txt`` (``wnid<TAB>WordNet lemmas``, 1000 lines) was generated from timm 1.0's
``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``; it is checked on
load to hold 1000 unique, sorted wnids.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Dict, Tuple

__all__ = ["IMAGENET_NUM_CLASSES", "WNID_PATTERN", "imagenet_wnids", "imagenet_class_names",
           "wnid_to_index", "is_wnid_shaped", "class_name"]

IMAGENET_NUM_CLASSES: int = 1000
#: What a WordNet noun synset id looks like (``n01440764``).
WNID_PATTERN = re.compile(r"n\d{8}")
_SYNSET_FILE = "imagenet1k_synsets.txt"


@lru_cache(maxsize=None)
def _table() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    text = resources.files(__package__).joinpath(_SYNSET_FILE).read_text(encoding="utf-8")
    wnids, names = [], []
    for line in text.splitlines():
        if line.strip():
            wnid, _, name = line.partition("\t")
            wnids.append(wnid)
            names.append(name)
    if (len(wnids) != IMAGENET_NUM_CLASSES or len(set(wnids)) != len(wnids)
            or wnids != sorted(wnids) or not all(WNID_PATTERN.fullmatch(w) for w in wnids)):
        raise RuntimeError(f"{_SYNSET_FILE} in {__package__} is corrupt: expected "
                           f"{IMAGENET_NUM_CLASSES} unique sorted wnids")
    return tuple(wnids), tuple(names)


def imagenet_wnids() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted)."""
    return _table()[0]


def imagenet_class_names() -> Tuple[str, ...]:
    """Human-readable names (WordNet lemmas) in class-index order."""
    return _table()[1]


@lru_cache(maxsize=None)
def wnid_to_index() -> Dict[str, int]:
    """``{wnid: class index}`` for the 1000 ImageNet-1k classes."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


def is_wnid_shaped(name: str) -> bool:
    """True when ``name`` looks like a WordNet synset id (it may still not be an ImageNet-1k class)."""
    return WNID_PATTERN.fullmatch(name) is not None


def class_name(index: int) -> str:
    """Short name of ImageNet-1k class ``index`` (first lemma), e.g. ``281 -> 'tabby'``."""
    return imagenet_class_names()[index].split(",")[0].strip()
