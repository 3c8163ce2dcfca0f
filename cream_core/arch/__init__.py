"""Framework-free definition of the Cream search space and child nets, shared by both packages."""
from cream_core.arch.flops import count_flops_params, model_flops_params
from cream_core.arch.plan import BlockPlan, NetPlan, decode_block_str, make_divisible, plan_network
from cream_core.arch.numpy_ref import ChildCalibration, calibrate_child, child_keys_shapes, forward_child
from cream_core.arch.seeded import CALIBRATION_BATCH, seeded_array, seeded_child_state, seeded_input, seeded_state
from cream_core.arch.space import (CHILD_NETS, CHOICE_BLOCK_POOL, CHOICES, EXP_RATIOS, HEAD_BLOCK, KERNEL_SIZES,
                    NUM_FEATURES, STEM_BLOCK, STEM_SIZE, SUPERNET_ARCH_DEF, ChildSpec,
                    child_arch_def, child_spec, model_names)

__all__ = [
    "BlockPlan", "NetPlan", "decode_block_str", "make_divisible", "plan_network",
    "CALIBRATION_BATCH", "seeded_array", "seeded_child_state", "seeded_input", "seeded_state",
    "ChildCalibration", "calibrate_child", "child_keys_shapes", "forward_child",
    "CHILD_NETS", "CHOICE_BLOCK_POOL", "CHOICES", "EXP_RATIOS", "HEAD_BLOCK", "KERNEL_SIZES",
    "NUM_FEATURES", "STEM_BLOCK", "STEM_SIZE", "SUPERNET_ARCH_DEF", "ChildSpec",
    "child_arch_def", "child_spec", "model_names",
    "count_flops_params", "model_flops_params",
]
