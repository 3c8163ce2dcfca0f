"""Resolve block strings into a concrete, framework-free plan of every block of a Cream network.

``cream_paddle`` builds its layers from this plan (it has no timm); ``cream_torch_ref`` builds with
timm's own ``decode_arch_def`` / ``EfficientNetBuilder`` and a test checks both agree. The FLOPs
counter reads the same plan. Channel rounding follows timm's ``make_divisible`` (divisor 8, never
more than 10 % below the request), as both timm 0.1.20 and timm 1.0 do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Union

from cream_core.arch.space import NUM_FEATURES, STEM_SIZE

__all__ = ["BlockPlan", "NetPlan", "make_divisible", "decode_block_str", "plan_network"]


def make_divisible(v: float, divisor: int = 8, min_value: Union[int, None] = None,
                   round_limit: float = 0.9) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10 % below it (timm rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def decode_block_str(block_str: str) -> Dict[str, Union[str, int, float]]:
    """Fields of one block string, e.g. ``ir_r1_k3_s2_e4_c24_se0.25`` -> type/r/k/s/e/c/se."""
    parts = block_str.split("_")
    out: Dict[str, Union[str, int, float]] = {"block_type": parts[0], "noskip": False}
    for op in parts[1:]:
        if op == "noskip":
            out["noskip"] = True
        elif op.startswith("se"):
            out["se"] = float(op[2:])
        elif op[0] in "rksec" and op[1:].isdigit():
            out[op[0]] = int(op[1:])
        else:
            raise ValueError(f"unsupported field {op!r} in block string {block_str!r}")
    if out["block_type"] not in ("ds", "ir", "cn"):
        raise ValueError(f"unsupported block type in {block_str!r}")
    return out


@dataclass(frozen=True)
class BlockPlan:
    """One block with every size resolved: what the builders of both frameworks instantiate."""

    block_type: str  # 'ds' depthwise-separable, 'ir' inverted residual, 'cn' conv-bn-act
    in_chs: int
    out_chs: int
    mid_chs: int  # expanded width (== in_chs for 'ds', == out_chs for 'cn')
    kernel_size: int
    stride: int
    exp_ratio: float
    se_chs: int  # squeeze-excite reduced width; 0 = no SE
    has_skip: bool
    drop_path_rate: float


@dataclass(frozen=True)
class NetPlan:
    """Stem width, the blocks stage by stage, and the head width."""

    stem_size: int
    stages: List[List[BlockPlan]]
    num_features: int

    @property
    def out_chs(self) -> int:
        return self.stages[-1][-1].out_chs


def plan_network(arch_def: Sequence[Sequence[str]], drop_path_rate: float = 0.0,
                 stem_size: int = STEM_SIZE, num_features: int = NUM_FEATURES) -> NetPlan:
    """Plan every block of ``arch_def`` as timm's EfficientNetBuilder would build it.

    SE widths are ``make_divisible(block_width * se_ratio, 8)`` of the expanded width (MobileNetV3
    style, the official ``reduce_mid=True, divisor=8``); only a stage's first block keeps stride 2.
    """
    expanded: List[List[Dict]] = []
    for stage in arch_def:
        rows = []
        for s in stage:
            f = decode_block_str(s)
            rows.extend([f] * int(f.get("r", 1)))
        expanded.append(rows)
    total = sum(len(s) for s in expanded)
    in_chs = make_divisible(stem_size)
    idx = 0
    stages: List[List[BlockPlan]] = []
    for rows in expanded:
        blocks = []
        for j, f in enumerate(rows):
            bt = str(f["block_type"])
            stride = int(f["s"]) if j == 0 else 1
            out_chs = make_divisible(int(f["c"]))
            k = int(f["k"])
            se = float(f.get("se", 0.0) or 0.0)
            exp = float(f.get("e", 1))
            if bt == "ir":
                mid = make_divisible(in_chs * exp)
            elif bt == "ds":
                mid = in_chs
            else:
                mid = out_chs
            se_chs = make_divisible(mid * se) if (se > 0 and bt != "cn") else 0
            skip = bt != "cn" and stride == 1 and in_chs == out_chs and not f["noskip"]
            blocks.append(BlockPlan(bt, in_chs, out_chs, mid, k, stride, exp, se_chs, skip,
                                    drop_path_rate * idx / total))
            in_chs = out_chs
            idx += 1
        stages.append(blocks)
    return NetPlan(make_divisible(stem_size), stages, num_features)
