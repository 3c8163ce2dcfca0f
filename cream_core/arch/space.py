"""The Cream search space, the supernet definition and the six released child nets, as plain data.

Nothing here imports a deep-learning framework: ``cream_torch_ref`` and ``cream_paddle`` both read
these tables, so an architecture is defined exactly once.

Block strings use the EfficientNet/timm notation (``ir_r1_k3_s2_e4_c24_se0.25`` = inverted residual,
1 repeat, kernel 3, stride 2, expansion 4, 24 output channels, squeeze-excite ratio 0.25).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "KERNEL_SIZES",
    "EXP_RATIOS",
    "CHOICES",
    "STEM_BLOCK",
    "HEAD_BLOCK",
    "CHOICE_BLOCK_POOL",
    "SUPERNET_ARCH_DEF",
    "STEM_SIZE",
    "NUM_FEATURES",
    "ChildSpec",
    "CHILD_NETS",
    "child_arch_def",
    "child_spec",
    "model_names",
]

#: Candidate operations of every searchable slot: kernel 3/5/7 x expansion 4/6, in the order the
#: official code enumerates them (kernel-major), so that choice index ``i`` means ``CHOICES[i]``.
KERNEL_SIZES: Tuple[int, ...] = (3, 5, 7)
EXP_RATIOS: Tuple[int, ...] = (4, 6)
CHOICES: Tuple[Tuple[int, int], ...] = tuple((k, e) for k in KERNEL_SIZES for e in EXP_RATIOS)

STEM_SIZE: int = 16
NUM_FEATURES: int = 1280

#: Fixed first and last stage of every Cream network.
STEM_BLOCK: str = "ds_r1_k3_s1_e1_c16_se0.25"
HEAD_BLOCK: str = "cn_r1_k1_s1_c320_se0.25"

#: The default block of each searchable stage (stages 1..5) that a child net's choices rewrite.
CHOICE_BLOCK_POOL: Tuple[str, ...] = (
    "ir_r1_k3_s2_e4_c24_se0.25",
    "ir_r1_k5_s2_e4_c40_se0.25",
    "ir_r1_k3_s2_e6_c80_se0.25",
    "ir_r1_k3_s1_e6_c96_se0.25",
    "ir_r1_k5_s2_e6_c192_se0.25",
)

#: The supernet before the FLOPs-constrained layer search trims stage depths.
SUPERNET_ARCH_DEF: Tuple[Tuple[str, ...], ...] = (
    (STEM_BLOCK,),
    ("ir_r1_k3_s2_e4_c24_se0.25", "ir_r1_k3_s1_e4_c24_se0.25", "ir_r1_k3_s1_e4_c24_se0.25",
     "ir_r1_k3_s1_e4_c24_se0.25"),
    ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r1_k5_s1_e4_c40_se0.25", "ir_r1_k5_s2_e4_c40_se0.25",
     "ir_r1_k5_s2_e4_c40_se0.25"),
    ("ir_r1_k3_s2_e6_c80_se0.25", "ir_r1_k3_s1_e4_c80_se0.25", "ir_r1_k3_s1_e4_c80_se0.25",
     "ir_r2_k3_s1_e4_c80_se0.25"),
    ("ir_r1_k3_s1_e6_c96_se0.25", "ir_r1_k3_s1_e6_c96_se0.25", "ir_r1_k3_s1_e6_c96_se0.25",
     "ir_r1_k3_s1_e6_c96_se0.25"),
    ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k5_s2_e6_c192_se0.25",
     "ir_r1_k5_s2_e6_c192_se0.25"),
    (HEAD_BLOCK,),
)


@dataclass(frozen=True)
class ChildSpec:
    """A released child net: its choice list (one index into ``CHOICES`` per block) and test size."""

    name: str
    arch_list: Tuple[Tuple[int, ...], ...]
    resolution: int
    top1: float
    top5: float


def _spec(name: str, arch: Sequence[Sequence[int]], res: int, top1: float, top5: float) -> ChildSpec:
    return ChildSpec(name, tuple(tuple(s) for s in arch), res, top1, top5)


#: The six released child nets (choice lists and resolutions as the official test script defines
#: them; ImageNet top-1/top-5 as the official README reports them).
CHILD_NETS: Dict[str, ChildSpec] = {
    s.name: s
    for s in (
        _spec("cream-14", [[0], [3], [3, 3], [3, 3], [3], [3], [0]], 64, 53.8, 77.2),
        _spec("cream-43", [[0], [3], [3, 1], [3, 1], [3, 3, 3], [3, 3], [0]], 96, 66.3, 86.7),
        _spec("cream-114", [[0], [3], [3, 3], [3, 3], [3, 3, 3], [3, 3], [0]], 160, 72.8, 90.8),
        _spec("cream-287", [[0], [3], [3, 3], [3, 1, 3], [3, 3, 3, 3], [3, 3, 3], [0]], 224, 77.6, 93.3),
        _spec("cream-481", [[0], [3, 4, 3, 1], [3, 2, 3, 0], [3, 3, 3, 1, 1], [3, 3, 3, 3],
                            [3, 3, 3, 3], [0]], 224, 79.2, 94.2),
        _spec("cream-604", [[0], [3, 3, 2, 3, 3], [3, 2, 3, 2, 3], [3, 2, 3, 2, 3],
                            [3, 3, 2, 2, 3, 3], [3, 3, 2, 3, 3, 3], [0]], 224, 80.0, 94.7),
    )
}


def model_names() -> List[str]:
    """Names of the released child nets, smallest first."""
    return list(CHILD_NETS)


def child_spec(name: str) -> ChildSpec:
    """The spec of a released child net; ``ValueError`` naming the choices for an unknown name."""
    try:
        return CHILD_NETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(CHILD_NETS)}") from None


def _set_field(block: str, prefix: str, value: int) -> str:
    parts = block.split("_")
    for i, p in enumerate(parts):
        if p.startswith(prefix) and p[len(prefix):].isdigit():
            parts[i] = f"{prefix}{value}"
    return "_".join(parts)


def child_arch_def(arch_list: Sequence[Sequence[int]]) -> List[List[str]]:
    """Block strings of the child net chosen by ``arch_list``, decoded as the official ``gen_childnet``.

    Two behaviours of the official decoder are reproduced on purpose, because the released weights
    were trained with them:

    * Stage ``i`` (1..5) is built from ``len(arch_list[i])`` copies of ``CHOICE_BLOCK_POOL[i-1]``,
      so only its first block may have stride 2 (the supernet's extra stride-2 blocks in stages 2
      and 5 never reach a child net).
    * **A stage with a single block ignores its choice.** The official code copies one-block stages
      unchanged (it only rewrites stages with more than one block), so e.g. Cream-14's stage 1
      (choice 3 = k5/e6) is built as the pool default ``k3/e4``. The released checkpoints have the
      default shapes there; honouring the choice would not load them.
    """
    if len(arch_list) != len(CHOICE_BLOCK_POOL) + 2:
        raise ValueError(
            f"arch_list needs {len(CHOICE_BLOCK_POOL) + 2} stages (stem, 5 searchable, head), "
            f"got {len(arch_list)}")
    arch_def: List[List[str]] = [[STEM_BLOCK]]
    for stage, choices in enumerate(arch_list[1:-1]):
        if not choices:
            raise ValueError(f"stage {stage + 1} of arch_list is empty; every stage needs a block")
        pool_block = CHOICE_BLOCK_POOL[stage]
        if len(choices) == 1:  # the official decoder keeps one-block stages as they are
            arch_def.append([pool_block])
            continue
        blocks = []
        for c in choices:
            if not 0 <= c < len(CHOICES):
                raise ValueError(f"choice {c} in stage {stage + 1} is outside 0..{len(CHOICES) - 1}")
            k, e = CHOICES[c]
            blocks.append(_set_field(_set_field(pool_block, "k", k), "e", e))
        arch_def.append(blocks)
    arch_def.append([HEAD_BLOCK])
    return arch_def
