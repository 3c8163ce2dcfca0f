"""The framework-free FLOPs counter equals what thop reported for the official 2020 models."""
from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from cream_core.arch.golden import GOLDEN_DIR
from cream_core.arch import (child_arch_def, child_spec, count_flops_params, model_flops_params,
                        model_names, plan_network)

GOLDEN = GOLDEN_DIR / "childnets.json"


@pytest.fixture(scope="module")
def golden() -> Dict[str, Any]:
    return json.loads(GOLDEN.read_text())["models"]


@pytest.mark.parametrize("name", model_names())
def test_counts_equal_official_thop(name: str, golden: Dict[str, Any]) -> None:
    g = golden[name]
    assert child_spec(name).resolution == g["resolution"]
    assert model_flops_params(name) == (g["thop_macs"], g["thop_params"])


@pytest.mark.parametrize("name", model_names())
def test_params_equal_official_parameter_tensors(name: str, golden: Dict[str, Any]) -> None:
    """thop's parameter total is every trainable tensor: the state dict minus BN statistics."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    expected = 0
    for key, shape, _ in golden[name]["keys"]:
        if not key.endswith(stats):
            n = 1
            for s in shape:
                n *= s
            expected += n
    assert model_flops_params(name)[1] == expected


def test_counts_match_the_released_names(golden: Dict[str, Any]) -> None:
    """Each model is named after its MACs in millions (Cream-43 measures 42.414 M with thop)."""
    for name in model_names():
        macs, _ = model_flops_params(name)
        assert abs(macs / 1e6 - int(name.split("-")[1])) < 1.0
        assert f"{macs / 1e6:.3f}M" == golden[name]["thop_clever"][0]


def test_resolution_and_classes_scale_the_count() -> None:
    plan = plan_network(child_arch_def(child_spec("cream-14").arch_list))
    macs64, params64 = count_flops_params(plan, 64)
    macs128, params128 = count_flops_params(plan, 128)
    assert params64 == params128 and macs128 > 3 * macs64
    macs10, params10 = count_flops_params(plan, 64, num_classes=10)
    assert macs64 - macs10 == 990 * plan.num_features
    assert params64 - params10 == 990 * (plan.num_features + 1)
    with pytest.raises(ValueError):
        count_flops_params(plan, 0)
