"""The generic engine (``parity run --torch/--paddle``, ``parity.compare``) on torchvision and
paddle.vision pairs: verdicts of the acceptance pairs, injected faults located on both sides, the
configuration diff, and the command line's exit codes (nothing written on bad input)."""
from __future__ import annotations

import json
from typing import Any, Callable, Dict

import numpy as np
import pytest

from parity.generic_cli import ModelPair, build_pair
from parity.generic_faults import GENERIC_FAULTS, exact_hardsigmoid

pytestmark = pytest.mark.paddle

#: Small inputs keep the suite fast; every pair below runs at this size.
SHAPE = (2, 3, 64, 64)
#: Equivalent ports among the acceptance pairs (PASS in float64 and float32).
PASSING = ("resnet18", "mobilenet_v2", "shufflenet_v2_x1_0")


@pytest.fixture(scope="module")
def pairs() -> Callable[[str], ModelPair]:
    """``name -> ModelPair`` (torchvision vs paddle.vision, seeded calibrated weights), built once."""
    cache: Dict[str, ModelPair] = {}

    def get(name: str) -> ModelPair:
        if name not in cache:
            cache[name] = build_pair(f"torchvision.models:{name}", f"paddle.vision.models:{name}",
                                     SHAPE)
        return cache[name]
    return get


def _run(pair: ModelPair, **kwargs: Any) -> Any:
    from parity.generic import compare

    return compare(pair.torch_model, pair.paddle_model, pair.inputs, matching=pair.matching,
                   label=pair.label, **kwargs)


def _assert_pass_in_both_precisions(result: Any, batchnorm: bool = True) -> None:
    assert result.ok, result.verdict()
    assert result.first_divergence is None and not result.config_diffs
    for prec in ("fp64", "fp32"):
        stages = {c.stage for c in result.comparisons if c.stage.endswith(prec)}
        assert {f"forward/eval/{prec}", f"forward/train/{prec}", f"loss/{prec}",
                f"backward/{prec}"} <= stages, stages
        assert (f"bn_stats/{prec}" in stages) == batchnorm, stages
    assert any(c.stage == "optim/sgd/fp64" for c in result.comparisons)


@pytest.mark.parametrize("name", PASSING)
def test_equivalent_pair_passes_in_fp64_and_fp32(pairs, name: str) -> None:  # noqa: ANN001
    _assert_pass_in_both_precisions(_run(pairs(name)))


@pytest.mark.slow
def test_vgg11_passes(pairs) -> None:  # noqa: ANN001
    _assert_pass_in_both_precisions(_run(pairs("vgg11")), batchnorm=False)  # VGG has no BN


def test_mobilenet_v3_large_fails_at_the_hardsigmoid_slope(pairs) -> None:  # noqa: ANN001
    """paddle.vision's squeeze-excite gates use Paddle's default slope 0.1666667, not 1/6."""
    result = _run(pairs("mobilenet_v3_large"), precisions=("fp64",), optimizer=False)
    fd = result.first_divergence
    assert not result.ok and fd is not None
    assert fd["module"] == "features.4.block.2.scale_activation"
    assert fd["paddle_module"] == "blocks.3.mid_se.scale_activation"
    assert fd["stage"] == "forward/eval/fp64"
    assert [(d["field"], d["paddle_value"]) for d in fd["config_diff"]] == [("slope", 0.1666667)]
    assert {d.field for d in result.config_diffs} == {"slope"}  # one per gate, nothing else


def test_mobilenet_v3_large_with_exact_hardsigmoid_passes(pairs) -> None:  # noqa: ANN001
    """The false-alarm side: with torch's hard-sigmoid put in, nothing else differs."""
    _assert_pass_in_both_precisions(_run(pairs("mobilenet_v3_large"),
                                         mutate_paddle=exact_hardsigmoid))


@pytest.mark.parametrize("fault", GENERIC_FAULTS, ids=lambda f: f"{f.pair}-{f.name}")
def test_injected_fault_is_located_on_both_sides(pairs, fault) -> None:  # noqa: ANN001
    result = _run(pairs(fault.pair), precisions=("fp64",), optimizer=False,
                  mutate_paddle=fault.apply)
    fd = result.first_divergence
    assert not result.ok and fd is not None
    assert (fd["module"], fd["paddle_module"]) == (fault.torch_module, fault.paddle_module), fd
    assert fd["stage"] == fault.stage, fd
    assert bool(fd["config_diff"]) == fault.config, fd
    if fault.config:
        assert all(d.module == fault.torch_module for d in result.config_diffs)


def test_parity_compare_is_a_plain_function(pairs) -> None:  # noqa: ANN001
    import inspect

    import parity
    from parity.generic import compare

    pair = pairs("resnet18")
    result = parity.compare(pair.torch_model, pair.paddle_model, pair.inputs[:1],
                            precisions=("fp64",), optimizer=False)
    assert result.ok and result.to_json()["first_divergence"] is None
    assert inspect.isfunction(parity.compare) and parity.compare is compare


# --------------------------------------------------------------------------------------------
# configuration diff


def test_config_diff_reads_constants_and_conventions() -> None:
    import paddle
    import torch

    from parity.layer_config import FIELDS, diff_configs

    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                            torch.nn.AvgPool2d(3, 1, 1), torch.nn.Dropout(0.5),
                            torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    same = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, padding=1), paddle.nn.BatchNorm2D(4),
                                paddle.nn.AvgPool2D(3, 1, 1, exclusive=False),
                                paddle.nn.Dropout(0.5), paddle.nn.MaxPool2D(3, 2, 1, ceil_mode=True))
    pairs = [(str(i), str(i)) for i in range(5)]
    assert diff_configs(t, same, pairs)[0] == []  # momentum 0.1 vs Paddle's 0.9: a convention
    other = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, padding="SAME"),
                                 paddle.nn.BatchNorm2D(4, epsilon=1e-3, momentum=0.99),
                                 paddle.nn.AvgPool2D(3, 1, 1),
                                 paddle.nn.Dropout(0.5, mode="downscale_in_infer"),
                                 paddle.nn.MaxPool2D(3, 2, 1))
    diffs = {(d.module, d.field) for d in diff_configs(t, other, pairs)[0]}
    momentum = next(f.name for f in FIELDS["batchnorm2d"] if f.name.startswith("momentum"))
    assert diffs == {("0", "padding"), ("1", "eps"), ("1", momentum), ("2", "count_include_pad"),
                     ("3", "mode"), ("4", "ceil_mode")}


# --------------------------------------------------------------------------------------------
# command line


def _cli(args: list) -> int:
    from parity.cli import main

    return main(["run", *args])


def test_cli_pass_writes_matching_json_and_plot_and_accepts_an_edited_map(tmp_path) -> None:  # noqa: ANN001
    base = ["--torch", "torchvision.models:resnet18", "--paddle", "paddle.vision.models:resnet18",
            "--input-shape", "1,3,64,64", "--precision", "fp64"]
    rep = tmp_path / "r"
    assert _cli(base + ["--report", str(rep)]) == 0
    data = json.loads((rep / "parity.json").read_text())
    assert data["ok"] is True and data["first_divergence"] is None and data["matching"]
    assert (rep / "parity.png").stat().st_size > 10000
    m = json.loads((rep / "matching.json").read_text())
    layers = m["layers"]
    kept = [entry for entry in layers if "relu" not in json.dumps(entry)]
    assert len(kept) < len(layers)
    m["layers"] = kept  # a user drops the ReLU boundaries from the comparison
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(m))
    rep2 = tmp_path / "r2"
    assert _cli(base + ["--map", str(edited), "--report", str(rep2)]) == 0
    data2 = json.loads((rep2 / "parity.json").read_text())
    assert data2["info"]["matched_layers"] == len(kept)


def test_cli_fail_names_both_sides(tmp_path, capsys) -> None:  # noqa: ANN001
    rep = tmp_path / "r"
    code = _cli(["--torch", "torchvision.models:resnet18", "--paddle",
                 "paddle.vision.models:resnet18", "--input-shape", "1,3,64,64", "--precision",
                 "fp64", "--inject-fault", "bn-epsilon", "--report", str(rep)])
    out = capsys.readouterr().out
    assert code == 1
    assert "torch layer2.0.bn1  <->  paddle layer2.0.bn1" in out and "eps" in out
    fd = json.loads((rep / "parity.json").read_text())["first_divergence"]
    assert (fd["module"], fd["paddle_module"]) == ("layer2.0.bn1", "layer2.0.bn1")


def _wrong_ckpt(tmp_path: Any) -> str:
    import torch
    import torchvision

    path = tmp_path / "mv2.pth"
    torch.save({"state_dict": torchvision.models.mobilenet_v2().state_dict()}, path)
    return str(path)


BAD_INPUTS = {
    "missing-callable": (["--torch", "torchvision.models:resnet18", "--paddle",
                          "paddle.vision.models:no_such_net"], "has no attribute"),
    "missing-module": (["--torch", "no_such_pkg.models:x", "--paddle",
                        "paddle.vision.models:resnet18"], "cannot import module"),
    "unmatched-models": (["--torch", "torchvision.models:resnet18", "--paddle",
                          "paddle.vision.models:mobilenet_v2"], "cannot be matched"),
    "wrong-checkpoint": (["--torch", "torchvision.models:resnet18", "--paddle",
                          "paddle.vision.models:resnet18", "--ckpt", "{ckpt}"], "does not fit"),
    # BatchNorm in train mode with one value per channel: torch itself refuses, not the port
    "input-too-small": (["--torch", "torchvision.models:resnet18", "--paddle",
                         "paddle.vision.models:resnet18", "--input-shape", "1,3,8,8"],
                        "the torch model itself fails"),
    "kwargs-not-accepted": (["--torch", "torchvision.models:resnet18", "--paddle",
                             "paddle.vision.models:resnet18", "--torch-kwargs",
                             '{"no_such_arg": 1}'], "calling it failed"),
}

#: Options an argparse validator refuses before any work: exit 2, the usage, then the reason.
BAD_OPTIONS = {
    "bad-shape": (["--input-shape", "1,3,64"], "argument --input-shape: expected 4 positive"),
    "bad-callable": (["--paddle", "paddle.vision.models.resnet18"],
                     "argument --paddle: expected MODULE:CALLABLE"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_is_one_line_exit_2_nothing_written(case: str, tmp_path, capsys) -> None:  # noqa: ANN001
    args, words = BAD_INPUTS[case]
    if "{ckpt}" in args:
        args = [a.replace("{ckpt}", _wrong_ckpt(tmp_path)) for a in args]
    rep = tmp_path / "report"
    if "--input-shape" not in args:
        args = args + ["--input-shape", "1,3,64,64"]
    code = _cli(args + ["--report", str(rep)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("parity run: error:") and words in err[0], err
    assert not rep.exists()


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_cli_bad_option_exits_2_before_any_work(case: str, tmp_path, capsys) -> None:  # noqa: ANN001
    extra, words = BAD_OPTIONS[case]
    args = ["--torch", "torchvision.models:resnet18", "--paddle", "paddle.vision.models:resnet18"]
    rep = tmp_path / "report"
    code = _cli(args + extra + ["--report", str(rep)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[0].startswith("usage: parity run") and words in err[-1], err
    assert "Traceback" not in "\n".join(err) and not rep.exists()


def test_seeded_weights_are_deterministic(pairs) -> None:  # noqa: ANN001
    """The same command builds the same weights: results are reproducible run to run."""
    again = build_pair("torchvision.models:resnet18", "paddle.vision.models:resnet18", SHAPE)
    first = pairs("resnet18")
    a, b = first.torch_model.state_dict(), again.torch_model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_fp32_kink_crossing_is_detected_and_explained_only_within_the_noise() -> None:
    """An activation input on different sides of ReLU's kink in the two frameworks is found with
    its elements; it is explained by the noise only when the port's values are within the noise
    bound of torch's."""
    from parity.capture import Capture, Event
    from parity.generic import KINKS
    from parity.generic_noise import kink_crossings

    def capture(x_in: np.ndarray) -> Capture:
        c = Capture("x")
        c.arrays = [np.zeros((1, 2)), x_in, np.maximum(x_in, 0), np.ones((1, 2))]
        c.events = [Event("out", "conv", 0, "conv", 0), Event("in", "act", 0, "(input)", 1),
                    Event("out", "act", 0, "act", 2), Event("out", "fc", 0, "fc", 3)]
        return c

    kinds = {"conv": "conv2d", "act": "relu", "fc": "linear"}
    pairs = {"conv": "conv", "act": "act", "fc": "fc"}
    t = capture(np.array([[-1e-7, 1.0]], np.float32))
    near, far = capture(np.array([[1e-7, 1.0]], np.float32)), capture(np.array([[0.5, 1.0]],
                                                                               np.float32))
    [(module, call, mask, values, explained)] = kink_crossings(t, near, kinds, pairs, KINKS,
                                                               {("act", 0): 1e-8})
    assert (module, call, mask.tolist(), explained) == ("act", 0, [[True, False]], True)
    assert values.tolist() == [np.float32(1e-7)]
    [(*_, explained)] = kink_crossings(t, far, kinds, pairs, KINKS, {("act", 0): 1e-8})
    assert not explained  # 0.5 away from torch's value: no rounding explains that
    assert kink_crossings(t, t, kinds, pairs, KINKS, {}) == []


def _cross_kink(path: str, kinks: tuple) -> Callable[[Any], None]:
    """A kink crossing as fp32 rounding makes one: in train mode, the input element of Paddle
    layer ``path`` nearest a kink is mirrored to the other side (a constant offset, gradients flow
    unchanged). At the layers used below it moves by 3e-5 to 3.4e-4 of a ~5 scale: within the
    named train-mode layer bound (1e-4 of scale)."""
    import paddle

    def flip(layer: Any, inputs: Any) -> Any:
        x = inputs[0]
        if not layer.training:
            return None
        a = x.detach().numpy()
        ks = np.array(kinks, dtype=a.dtype)
        d = a[..., None] - ks
        dist = np.abs(d).min(axis=-1)
        i = np.unravel_index(dist.argmin(), a.shape)
        offset = np.zeros_like(a)
        offset[i] = -2 * d[i][np.abs(d[i]).argmin()]
        return (x + paddle.to_tensor(offset),)

    def apply(model: Any) -> None:
        from parity.faults import get_sublayer

        get_sublayer(model, path).register_forward_pre_hook(flip)
    return apply


def _scale_gradient(path: str) -> Callable[[Any], None]:
    """An fp32 gradient-only fault: the gradient reaching Paddle layer ``path`` scaled by
    1 + 1e-3 (forward unchanged)."""
    import paddle

    class GradScale(paddle.autograd.PyLayer):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return x * 1.0

        @staticmethod
        def backward(ctx: Any, dy: Any) -> Any:
            return dy * (1.0 + 1e-3)

    def apply(model: Any) -> None:
        from parity.faults import get_sublayer

        get_sublayer(model, path).register_forward_post_hook(
            lambda layer, inputs, out: GradScale.apply(out))
    return apply


def _then(*mutators: Callable[[Any], None]) -> Callable[[Any], None]:
    def apply(model: Any) -> None:
        for m in mutators:
            m(model)
    return apply


#: (pair, Paddle activation crossed, its kinks, torch path of it, Paddle conv whose gradient is
#: scaled (upstream of the crossing), its torch path, whether the crossing's own effect on the
#: gradients exceeds the noise bound, so that the kink twin must account for it)
KINK_CASES = {
    "resnet18-relu": ("resnet18", "relu", (0.0,), "relu", "conv1", "conv1", False),
    "mobilenet_v3_large-hardswish": ("mobilenet_v3_large", "blocks.6.expand_conv.2", (-3.0, 3.0),
                                     "features.7.block.0.2", "blocks.6.expand_conv.0",
                                     "features.7.block.0.0", True),
}


@pytest.mark.parametrize("case", list(KINK_CASES))
def test_kink_crossing_within_noise_passes_and_a_gradient_fault_upstream_is_caught(
        pairs, case: str) -> None:  # noqa: ANN001
    """fp32 only (the fault is not left to fp64). A one-element crossing within the noise bound is
    no false alarm (where its effect on the gradients exceeds the noise, the kink twin accounts
    for it); with it, a 1e-3 gradient fault upstream of the crossing — which the former KINKS
    rule excused (measured: resnet18 conv1.weight 'not judged', ok) — still fails, first at its
    layer."""
    name, act, kinks, torch_act, conv, torch_conv, twin = KINK_CASES[case]
    base = [exact_hardsigmoid] if name == "mobilenet_v3_large" else []
    crossing = _cross_kink(act, kinks)
    pair = pairs(name)
    crossed = _run(pair, precisions=("fp32",), optimizer=False,
                   mutate_paddle=_then(*base, crossing))
    assert crossed.ok, crossed.verdict()
    noise = crossed.info["noise"]
    assert noise["crossings"] == [{"module": torch_act, "call": 0, "elements": 1,
                                   "explained_by_noise": True}]
    assert (noise.get("accepted_by_kink_twin", 0) > 0) == twin, noise
    faulty = _run(pair, precisions=("fp32",), optimizer=False,
                  mutate_paddle=_then(*base, crossing, _scale_gradient(conv)))
    fd = faulty.first_divergence
    assert not faulty.ok and fd is not None
    assert (fd["module"], fd["paddle_module"], fd["stage"]) == (torch_conv, conv, "backward/fp32")
    assert faulty.info["noise"]["crossings"] == noise["crossings"]
    worst = next(c for c in faulty.comparisons if c.name == f"{torch_conv}.weight")
    assert not worst.ok and worst.noise_ratio > faulty.info["noise"]["factor"]  # measured: 127


def test_cli_noise_members_in_json_and_negative_is_usage_error(tmp_path, capsys) -> None:  # noqa: ANN001
    base = ["--torch", "torchvision.models:resnet18", "--paddle", "paddle.vision.models:resnet18",
            "--input-shape", "2,3,64,64", "--precision", "fp32"]
    assert _cli(base + ["--noise-members", "1", "--report", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "parity.json").read_text())
    assert data["info"]["noise"]["members"] == 1
    row = next(c for c in data["comparisons"] if c["name"] == "conv1.weight")
    assert float(row["noise"]) > 0 and float(row["noise_ratio"]) >= 0
    capsys.readouterr()
    assert _cli(base + ["--noise-members", "-1", "--report", str(tmp_path / "bad")]) == 2
    assert "--noise-members: must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("fault", GENERIC_FAULTS, ids=lambda f: f"{f.pair}-{f.name}")
def test_injected_fault_fails_the_fp32_stages_under_the_noise_model(pairs, fault) -> None:  # noqa: ANN001
    """The noise model raises no fp32 bound over a real fault: float32 alone (noise measured,
    fp64 not run) still fails each fault numerically, first at its layer — except the
    hard-sigmoid slope (0.1666667 vs 1/6: 3e-8, below float32's resolution; the configuration
    diff names it, and fp64 fails it, see above)."""
    result = _run(pairs(fault.pair), precisions=("fp32",), optimizer=False,
                  mutate_paddle=fault.apply)
    first = result.first
    if fault.name == "hardsigmoid-slope":
        assert first is None and [d.field for d in result.config_diffs] == ["slope"]
        return
    assert first is not None and first.stage.endswith("fp32"), first
    assert first.module == fault.torch_module, (first.stage, first.name, first.module)
    assert first.noise_ratio > result.info["noise"]["factor"] or first.note.startswith(("missing",
                                                                                      "shape"))


def test_apply_noise_raises_a_bound_to_the_noise_never_beyond() -> None:
    """A fixed-bound failure within NOISE_FACTOR x its noise passes; beyond, or without a noise
    measurement, or missing in the port, it stays failing; rows of one name keep their own noise."""
    import math

    from parity.tolerances import Comparison
    from parity.generic_noise import apply_noise, noise_keys
    from parity.noise import NOISE_FACTOR

    def row(err: float, note: str = "") -> Comparison:  # fixed bound 1e-6 (excess = err / 1e-6)
        return Comparison("out_grad", "backward/fp32", "d/d relu", 0, max_abs=err,
                          excess=err / 1e-6, ok=err <= 1e-6, note=note)

    rows = [row(1e-7), row(3e-5), row(3e-5), row(math.inf, "missing in the port")]
    keys = noise_keys(rows)
    assert [k[3] for k in keys] == [0, 1, 2, 3]
    noise = {keys[0]: 1e-7, keys[1]: 1e-6, keys[2]: 1e-7, keys[3]: 1.0}
    apply_noise(rows, noise)
    assert [r.ok for r in rows] == [True, True, False, False]
    assert rows[1].noise_ratio == pytest.approx(30) and rows[1].excess == pytest.approx(
        30 / NOISE_FACTOR)
    assert rows[2].noise_ratio == pytest.approx(300) and rows[2].excess > 1
    lone = row(3e-5)
    apply_noise([lone], {})
    assert not lone.ok and math.isnan(lone.noise)


def test_cli_cream_only_options_are_refused_not_ignored(tmp_path, capsys) -> None:  # noqa: ANN001
    rep = tmp_path / "report"
    code = _cli(["--torch", "torchvision.models:resnet18", "--paddle",
                 "paddle.vision.models:resnet18", "--batch", "4", "--report", str(rep)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--batch apply to --model runs only" in err[-1] and not rep.exists()


def test_cli_json_onto_the_checkpoint_is_refused_before_the_work(tmp_path, capsys) -> None:  # noqa: ANN001
    import torch
    import torchvision

    ckpt = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    before = ckpt.read_bytes()
    code = _cli(["--torch", "torchvision.models:resnet18", "--paddle",
                 "paddle.vision.models:resnet18", "--input-shape", "1,3,64,64", "--ckpt", str(ckpt),
                 "--json", str(ckpt), "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "would overwrite an input" in err[0], err
    assert ckpt.read_bytes() == before
