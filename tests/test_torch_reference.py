"""The PyTorch reference against the official 2020 code: keys, shapes, logits; and against cream_core.arch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cream_core.arch import child_arch_def, child_spec, plan_network, seeded_input
from cream_core.arch.golden import golden_childnets, golden_keys, golden_logits
from cream_torch_ref import create_model, list_models
from cream_torch_ref.models import seeded_official_checkpoint

#: fp32 CPU: the official fp32 run and ours differ by float32 rounding accumulated over ~25 layers
#: (about 5e-6 of the largest logit; the seeded logits are of order 0.1-0.5).
LOGITS_ATOL = 1e-5
#: fp64: with rounding out of the way, the same network must agree to the last few digits.
LOGITS_FP64_ATOL = 1e-9

MODELS = list_models()


def test_registry_is_the_six_released_nets() -> None:
    assert MODELS == ["cream-14", "cream-43", "cream-114", "cream-287", "cream-481", "cream-604"]
    assert [child_spec(m).resolution for m in MODELS] == [64, 96, 160, 224, 224, 224]
    assert set(golden_childnets()["models"]) == set(MODELS)


@pytest.mark.golden
@pytest.mark.parametrize("name", MODELS)
def test_keys_and_shapes_equal_official(name: str) -> None:
    sd = create_model(name).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == golden_keys(name)


@pytest.mark.golden
@pytest.mark.parametrize("name", MODELS)
def test_decoded_arch_def_equals_official(name: str) -> None:
    official = golden_childnets()["models"][name]["decoded_arch_def"]
    assert child_arch_def(child_spec(name).arch_list) == official


@pytest.mark.parametrize("name", MODELS)
def test_plan_matches_timm_build(name: str) -> None:
    """The framework-free plan (used by the Paddle builder) equals what timm built for torch."""
    model = create_model(name)
    plan = plan_network(child_arch_def(child_spec(name).arch_list))
    assert [len(s) for s in plan.stages] == [len(s) for s in model.blocks]
    for stage, tstage in zip(plan.stages, model.blocks):
        for b, blk in zip(stage, tstage):
            conv = blk.conv if b.block_type == "cn" else blk.conv_dw
            assert conv.kernel_size == (b.kernel_size,) * 2 and conv.stride == (b.stride,) * 2
            assert conv.out_channels == b.mid_chs
            if b.block_type != "cn":
                assert blk.has_skip == b.has_skip
                assert blk.se.conv_reduce.out_channels == b.se_chs




@pytest.mark.golden
@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_official(name: str, tmp_path: Path) -> None:
    """Seeded legacy-format checkpoint with yacs args -> same logits as the official model, EMA and raw."""
    ck = seeded_official_checkpoint(name, tmp_path / f"{name}.pth.tar", legacy=True, args="yacs")
    gold = golden_logits(name)
    x = torch.from_numpy(seeded_input(2, int(gold["resolution"]), int(gold["input_seed"])))
    for use_ema, key in ((True, "ema"), (False, "raw")):
        with torch.no_grad():
            y = create_model(name, checkpoint=ck, use_ema=use_ema)(x).numpy()
        err = float(np.abs(y - gold[key]).max())
        assert err <= LOGITS_ATOL, f"{name} {key}: max abs {err:.3g}"
        model64 = create_model(name, checkpoint=ck, use_ema=use_ema).double()
        with torch.no_grad():
            y64 = model64(x.double()).numpy()
        err64 = float(np.abs(y64 - gold[key + "64"]).max())
        assert err64 <= LOGITS_FP64_ATOL, f"{name} {key} fp64: max abs {err64:.3g}"
    # the two weight sets are different models: the comparison above can tell them apart
    assert float(np.abs(gold["ema"] - gold["raw"]).max()) > 100 * LOGITS_ATOL
