"""``convert-ckpt``: accepted forms, exact round trips, architecture detection, rules, output safety."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import paddle

import cream_paddle
import cream_torch_ref
from cream_core.arch import CHILD_NETS, child_spec, seeded_input, seeded_state
from cream_core.arch.detect import arch_label, detect_arch
from cream_core.io.errors import CheckpointError
from cream_torch_ref.checkpoint import read_checkpoint
from cream_torch_ref.models import seeded_official_checkpoint
from converters import convert_checkpoint, pdparams_to_pth
from converters.cli import main
from converters.files import default_output, sidecar_path

pytestmark = pytest.mark.paddle

#: as in tests/test_paddle_childnet.py: max |logit difference|, compared in float64 (both models
#: cast exactly from the converted float32 weights) so float32 rounding plays no part
LOGIT_ATOL = 1e-5
NAME = "cream-14"


def _diff64(tm: torch.nn.Module, pm: "paddle.nn.Layer", x: np.ndarray) -> float:
    """Max |logit difference| of a torch and a Paddle model, both cast to float64, on ``x``."""
    tm.double().eval()
    pm.to(dtype="float64")
    pm.eval()
    x64 = x.astype(np.float64)
    with torch.no_grad():
        t = tm(torch.from_numpy(x64)).numpy()
    with paddle.no_grad():
        p = pm(paddle.to_tensor(x64)).numpy()
    assert t.dtype == p.dtype == np.float64 and t.shape == p.shape
    return float(np.abs(t - p).max())


def sha(p: "str | Path") -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path: Path, official_cream14: Path) -> Path:
    """A private copy of the official checkpoint in an empty folder."""
    dst = tmp_path / "cream-14.pth.tar"
    dst.write_bytes(official_cream14.read_bytes())
    return dst


def _state(obj) -> Dict[str, torch.Tensor]:
    return obj["state_dict"] if "state_dict" in obj else obj


def _assert_bitwise(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k  # bit pattern, -0.0 and NaN too


# ------------------------------------------------------------------ forms and round trips


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("weights", ["ema", "model"])
def test_round_trip_bit_exact(tmp_path: Path, legacy: bool, weights: str) -> None:
    src = Path(seeded_official_checkpoint(NAME, tmp_path / "a.pth.tar", legacy=legacy))
    before = sha(src)
    fwd = convert_checkpoint(src, weights=weights)
    assert fwd.dst == str(tmp_path / "a.pdparams") and Path(fwd.sidecar).is_file()
    back = pdparams_to_pth(fwd.dst, tmp_path / "b.pth.tar")
    assert "num_batches_tracked restored from the sidecar" in back.notes
    orig = read_checkpoint(src)["state_dict_ema" if weights == "ema" else "state_dict"]
    again = read_checkpoint(back.dst)
    assert set(again) >= {"state_dict", "epoch", "arch", "args", "optimizer", "version"}
    assert again["epoch"] == 7 and again["arch"] == NAME
    _assert_bitwise(orig, again["state_dict"])
    assert sha(src) == before
    # and the .pdparams holds the same bits, in Paddle's names and layout
    pd = cream_paddle.load_checkpoint(fwd.dst).state_dict
    assert np.array_equal(pd["classifier.weight"], orig["classifier.weight"].numpy().T)
    assert np.array_equal(pd["bn1._variance"], orig["bn1.running_var"].numpy())
    # the round-tripped file loads into the reference with the same logits
    x = seeded_input(2, 64, 0)
    m1 = cream_torch_ref.create_model(NAME, checkpoint=src, use_ema=weights == "ema")
    m2 = cream_torch_ref.create_model(NAME, checkpoint=back.dst)
    with torch.no_grad():
        assert torch.equal(m1(torch.from_numpy(x)), m2(torch.from_numpy(x)))


def test_sidecar_contents(work: Path) -> None:
    res = convert_checkpoint(work)
    umask = os.umask(0)
    os.umask(umask)
    for out in (res.dst, res.sidecar):  # the usual mode, not tempfile's private 0600
        assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask
    side = json.loads(Path(sidecar_path(res.dst)).read_text())
    assert side["model"] == NAME and side["resolution"] == 64 and side["num_classes"] == 1000
    assert side["weights"] == "state_dict_ema" and side["direction"] == "torch->paddle"
    assert side["source_sha256"] == sha(work) and side["output_sha256"] == sha(res.dst)
    assert side["tool"] == "convert-ckpt" and side["tool_version"]
    assert side["arch_list"] == [list(s) for s in child_spec(NAME).arch_list]
    assert isinstance(side["num_batches_tracked"], dict) and len(side["num_batches_tracked"]) == 25


def test_reverse_without_sidecar_zero_counters(work: Path) -> None:
    fwd = convert_checkpoint(work)
    os.remove(fwd.sidecar)
    with pytest.raises(CheckpointError, match="already exists"):  # default name = the original
        pdparams_to_pth(fwd.dst)
    back = pdparams_to_pth(fwd.dst, work.parent / "back.pth.tar")
    assert any("set to 0" in n for n in back.notes)
    sd = read_checkpoint(back.dst)["state_dict"]
    nbt = [v for k, v in sd.items() if k.endswith("num_batches_tracked")]
    assert nbt and all(int(v) == 0 and v.dtype == torch.int64 for v in nbt)


def test_reverse_ignores_sidecar_of_another_file(work: Path, tmp_path: Path) -> None:
    fwd = convert_checkpoint(work)
    side = json.loads(Path(fwd.sidecar).read_text())
    side["output_sha256"] = "0" * 64
    Path(fwd.sidecar).write_text(json.dumps(side))
    back = pdparams_to_pth(fwd.dst, tmp_path / "back.pth.tar")
    assert any("describes another version" in n for n in back.notes)


def test_default_output_names() -> None:
    assert default_output("x/cream-14.pth.tar") == "x/cream-14.pdparams"
    assert default_output("m.pth") == "m.pdparams"
    assert default_output("m.weights") == "m.weights.pdparams"
    assert default_output("a/m.pdparams", reverse=True) == "a/m.pth.tar"


@pytest.mark.parametrize("form", ["bare", "module_prefix", "namespace_args", "no_ema", "classes10"])
def test_accepted_forms(tmp_path: Path, form: str) -> None:
    src = tmp_path / f"{form}.pth.tar"
    nc = 10 if form == "classes10" else 1000
    if form == "bare":
        m = cream_torch_ref.ChildNet(child_spec(NAME).arch_list)
        shapes = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
        torch.save({k: torch.from_numpy(v) for k, v in seeded_state(shapes, 5).items()}, src)
    else:
        seeded_official_checkpoint(NAME, src, num_classes=nc,
                                   module_prefix=form == "module_prefix",
                                   args="namespace" if form == "namespace_args" else "yacs",
                                   seed_ema=None if form == "no_ema" else 2)
    res = convert_checkpoint(src)
    assert res.model == NAME and res.num_classes == nc
    if form in ("bare", "no_ema"):
        assert res.notes and "no EMA weights" in res.notes[0]
    ref = cream_torch_ref.create_model(NAME, num_classes=nc, checkpoint=src)
    got = cream_paddle.create_model(NAME, num_classes=nc, checkpoint=res.dst)
    assert _diff64(ref, got, seeded_input(2, 64, 1)) <= LOGIT_ATOL


def test_unreleased_child_architecture(tmp_path: Path) -> None:
    """Any child of the search space is recognised from its shapes, converted and runs the same."""
    arch = [[0], [1, 5, 2], [4, 0], [2, 3, 5, 1], [0, 4], [5, 2, 1], [0]]
    tm = cream_torch_ref.ChildNet(arch, num_classes=7).eval()
    shapes = [(k, tuple(v.shape)) for k, v in tm.state_dict().items()]
    sd = {k: torch.from_numpy(v) for k, v in seeded_state(shapes, 9).items()}
    tm.load_state_dict(sd)
    src = tmp_path / "child.pth.tar"
    torch.save({"state_dict": sd, "epoch": 1}, src)
    res = convert_checkpoint(src)
    assert res.model == arch_label(arch) and res.resolution is None and res.num_classes == 7
    assert res.arch_list == arch
    pm = cream_paddle.ChildNet(arch, num_classes=7)
    cream_paddle.load_weights(pm, res.dst)
    back = pdparams_to_pth(res.dst, tmp_path / "back.pth.tar")
    assert _diff64(tm, pm, seeded_input(2, 96, 2)) <= LOGIT_ATOL
    _assert_bitwise(sd, read_checkpoint(back.dst)["state_dict"])


# ------------------------------------------------------------------ detection


@pytest.mark.parametrize("name", list(CHILD_NETS))
def test_detect_released_nets(name: str) -> None:
    from cream_core.arch import child_arch_def, plan_network

    tm = cream_torch_ref.ChildNet(child_spec(name).arch_list)
    shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    det = detect_arch(shapes)
    assert (det.name, det.resolution, det.num_classes) == (name, child_spec(name).resolution, 1000)
    paddle_shapes = {k.replace("running_mean", "_mean"): s for k, s in shapes.items()}
    paddle_shapes["classifier.weight"] = shapes["classifier.weight"][::-1]
    del paddle_shapes["classifier.bias"]
    assert detect_arch(paddle_shapes, layout="paddle").num_classes == 1000
    assert plan_network(child_arch_def(det.arch_list)) == plan_network(
        child_arch_def(child_spec(name).arch_list))


def test_detect_refusals() -> None:
    tm = cream_torch_ref.ChildNet(child_spec("cream-43").arch_list)
    shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    with pytest.raises(ValueError, match="no 'blocks"):
        detect_arch({"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 512)})
    bad = dict(shapes)
    bad["blocks.2.0.conv_dw.weight"] = (144, 1, 9, 9)
    with pytest.raises(ValueError, match="kernel 9"):
        detect_arch(bad)
    one = dict(shapes)  # one-block stage 1 with kernel 5: the official decoder never builds it
    one["blocks.1.0.conv_dw.weight"] = (64, 1, 5, 5)
    with pytest.raises(ValueError, match="one-block stage 1"):
        detect_arch(one)
    gap = {k: v for k, v in shapes.items() if not k.startswith("blocks.6.")}
    with pytest.raises(ValueError, match="stages"):
        detect_arch(gap)


# ------------------------------------------------------------------ rules as data


def test_removing_a_rule_fails_with_a_report(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cream_core.rules as rules

    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r.torch_leaf != "running_var"))
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(work)
    msg = str(e.value)
    assert "25 missing key(s): bn1._variance" in msg and "25 unexpected key(s): bn1.running_var" in msg
    assert "\n" not in msg
    assert sorted(os.listdir(work.parent)) == [work.name]  # nothing written


def test_explicit_model_must_fit(work: Path) -> None:
    with pytest.raises(CheckpointError, match="does not fit Paddle ChildNet cream-43.*missing"):
        convert_checkpoint(work, model="cream-43")
    assert convert_checkpoint(work, model=NAME).model == NAME


def test_wrong_dtype_refused(tmp_path: Path) -> None:
    m = cream_torch_ref.ChildNet(child_spec(NAME).arch_list)
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    src = tmp_path / "f64.pth"
    torch.save(sd, src)
    with pytest.raises(CheckpointError, match="float64.*expects float32"):
        convert_checkpoint(src)
    assert sorted(os.listdir(tmp_path)) == ["f64.pth"]


# ------------------------------------------------------------------ output safety


def test_no_overwrite_without_force(work: Path) -> None:
    first = convert_checkpoint(work)
    stamp = sha(first.dst)
    with pytest.raises(CheckpointError, match="already exists; pass --force"):
        convert_checkpoint(work)
    assert sha(first.dst) == stamp
    again = convert_checkpoint(work, weights="model", force=True)
    assert sha(again.dst) != stamp and json.loads(Path(again.sidecar).read_text())["weights"] == \
        "state_dict"


def test_existing_sidecar_alone_blocks(work: Path) -> None:
    Path(sidecar_path(default_output(str(work)))).write_text("{}")
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(work)
    assert not Path(default_output(str(work))).exists()


def test_destination_never_the_source(work: Path) -> None:
    before = sha(work)
    with pytest.raises(CheckpointError, match="is the source file"):
        convert_checkpoint(work, work, force=True)
    fwd = convert_checkpoint(work)
    with pytest.raises(CheckpointError, match="is the source file"):
        pdparams_to_pth(fwd.dst, fwd.dst, force=True)
    link = work.parent / "link.pdparams"
    os.symlink(fwd.dst, link)
    with pytest.raises(CheckpointError, match="is the source file"):
        pdparams_to_pth(link, fwd.dst, force=True)
    assert sha(work) == before


def test_no_temp_files_left_on_failure(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import converters.convert as conv

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conv.os, "replace", boom)
    with pytest.raises(CheckpointError, match="could not be written.*No space"):
        convert_checkpoint(work)
    assert sorted(os.listdir(work.parent)) == [work.name]


# ------------------------------------------------------------------ command line


def test_cli_forward_reverse_json(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(work), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == NAME and out["direction"] == "torch->paddle"
    back = work.parent / "back.pth.tar"
    assert main([out["dst"], "-o", str(back)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "back.pth.tar" in line and NAME in line
    _assert_bitwise(read_checkpoint(work)["state_dict_ema"], read_checkpoint(back)["state_dict"])
    assert main([out["dst"], "--weights", "model", "-o", str(work.parent / "z.pth.tar")]) == 2
    assert "--weights applies" in capsys.readouterr().err


def test_cli_usage_errors(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert main(["x.pth", "--model", "cream-999"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_model_trained_in_paddle_goes_back(tmp_path: Path) -> None:
    """A state dict saved by Paddle itself (``paddle.save(layer.state_dict())``) converts to the
    official layout and loads into the reference with exactly Paddle's values."""
    pm = cream_paddle.create_model(NAME, num_classes=10)
    pm.train()
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=pm.parameters())
    loss = pm(paddle.to_tensor(seeded_input(4, 64, 8))).mean()  # one step: BN stats and weights move
    loss.backward()
    opt.step()
    path = tmp_path / "trained.pdparams"
    paddle.save(pm.state_dict(), str(path))
    res = pdparams_to_pth(path)
    assert res.model == NAME and res.num_classes == 10
    tm = cream_torch_ref.create_model(NAME, num_classes=10, checkpoint=res.dst)
    tsd = tm.state_dict()
    for k, v in pm.state_dict().items():
        tk = k.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        want = v.numpy().T if k == "classifier.weight" else v.numpy()
        assert np.array_equal(tsd[tk].numpy(), want), k
