"""Recognise a Cream child architecture from the shapes of a state dict, framework-free.

A child net of the search space is fixed by, for each searchable block, its depthwise kernel size and
its expansion ratio, and by the number of blocks per stage. All three are visible in the weights:
``blocks.<stage>.<block>.conv_dw.weight`` is ``[mid, 1, k, k]`` and ``...conv_pw.weight`` is
``[mid, in, 1, 1]`` (expansion ``mid / in``); both have the same shape in PyTorch and in Paddle, so
``convert-ckpt`` uses this in either direction. The decoded choice list is then matched against the
six released nets; anything else in the search space is still a valid child (``name=None``).

This only *proposes* an architecture: the caller builds it and checks every key and shape strictly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from cream_core.arch.plan import decode_block_str
from cream_core.arch.space import CHILD_NETS, CHOICE_BLOCK_POOL, CHOICES, child_arch_def

__all__ = ["DetectedArch", "detect_arch", "detect_num_classes", "arch_label"]

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


@dataclass(frozen=True)
class DetectedArch:
    """A child architecture read off a state dict."""

    arch_list: Tuple[Tuple[int, ...], ...]
    num_classes: int
    name: Optional[str]  # the released net with this architecture, if any
    resolution: Optional[int]  # its test resolution (None for an unreleased architecture)

    @property
    def label(self) -> str:
        """The released name, or ``cream-child[...]`` with the choice list."""
        return self.name or arch_label(self.arch_list)


def arch_label(arch_list: Sequence[Sequence[int]]) -> str:
    """A compact name for an unreleased child architecture, e.g. ``cream-child[0|3|3.1|...]``."""
    return "cream-child[" + "|".join(".".join(str(c) for c in s) for s in arch_list) + "]"


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> Tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"not a Cream child net: {key!r} is missing")
    return tuple(int(s) for s in shapes[key])


def detect_arch(shapes: Mapping[str, Sequence[int]], layout: str = "torch") -> DetectedArch:
    """The child architecture whose weights have these ``key -> shape`` entries.

    ``layout`` ('torch' or 'paddle') only matters for reading the class count from a classifier
    without bias. Raises ``ValueError`` with a one-line reason when the shapes are no child net of
    the Cream search space (another architecture, a stage missing, a kernel/expansion that is no
    candidate, a one-block stage the official decoder could not have produced).
    """
    if layout not in ("torch", "paddle"):
        raise ValueError(f"layout must be 'torch' or 'paddle', got {layout!r}")
    stages: Dict[int, set] = {}
    for key in shapes:
        m = _BLOCK_KEY.match(key)
        if m:
            stages.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not stages:
        some = ", ".join(list(shapes)[:3])
        raise ValueError(f"not a Cream child net: no 'blocks.<stage>.<block>' weights (keys begin "
                         f"{some}{', ...' if len(shapes) > 3 else ''})")
    n_stages = len(CHOICE_BLOCK_POOL) + 2
    if sorted(stages) != list(range(n_stages)):
        raise ValueError(f"not a Cream child net: stages {sorted(stages)} instead of "
                         f"0..{n_stages - 1}")
    for s, blocks in stages.items():
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(f"not a Cream child net: stage {s} has blocks {sorted(blocks)}")
    for s in (0, n_stages - 1):
        if len(stages[s]) != 1:
            raise ValueError(f"not a Cream child net: stage {s} has {len(stages[s])} blocks, "
                             "the fixed first/last stage has one")
    arch: List[Tuple[int, ...]] = [(0,)]
    for s in range(1, n_stages - 1):
        choices = []
        for b in range(len(stages[s])):
            dw = _shape(shapes, f"blocks.{s}.{b}.conv_dw.weight")
            pw = _shape(shapes, f"blocks.{s}.{b}.conv_pw.weight")
            if len(dw) != 4 or len(pw) != 4 or dw[2] != dw[3] or pw[1] == 0:
                raise ValueError(f"not a Cream child net: block blocks.{s}.{b} has conv shapes "
                                 f"{list(dw)} / {list(pw)}")
            k, mid, inc = dw[2], dw[0], pw[1]
            exp = mid / inc
            match = [i for i, (ck, ce) in enumerate(CHOICES) if ck == k and abs(ce - exp) < 1e-6]
            if not match:
                raise ValueError(f"not a Cream child net: block blocks.{s}.{b} has kernel {k} and "
                                 f"expansion {exp:g}, which is no candidate "
                                 f"(kernels 3/5/7 x expansions 4/6)")
            choices.append(match[0])
        if len(choices) == 1:  # the official decoder builds one-block stages as the pool default
            f = decode_block_str(CHOICE_BLOCK_POOL[s - 1])
            k, e = CHOICES[choices[0]]
            if (k, e) != (f["k"], f["e"]):
                raise ValueError(f"not a Cream child net: one-block stage {s} has kernel {k}, "
                                 f"expansion {e}, but the official decoder always builds it as "
                                 f"kernel {f['k']}, expansion {f['e']}")
        arch.append(tuple(choices))
    arch.append((0,))
    num_classes = detect_num_classes(shapes, layout)
    own = child_arch_def(arch)
    for spec in CHILD_NETS.values():
        if child_arch_def(spec.arch_list) == own:
            return DetectedArch(spec.arch_list, num_classes, spec.name, spec.resolution)
    return DetectedArch(tuple(arch), num_classes, None, None)


def detect_num_classes(shapes: Mapping[str, Sequence[int]], layout: str = "torch") -> int:
    """Classifier width from ``classifier.bias`` (or the weight in ``layout``); 0 without classifier."""
    if "classifier.bias" in shapes:
        return int(shapes["classifier.bias"][0])
    if "classifier.weight" in shapes:
        w = shapes["classifier.weight"]
        return int(w[0] if layout == "torch" else w[1])
    return 0  # a headless net (num_classes=0): the classifier is an Identity
