"""``convert-ckpt SRC --torch MODULE:CALLABLE --paddle MODULE:CALLABLE``: torchvision state dicts
converted for paddle.vision, checked by Paddle itself (``paddle.load`` + ``set_state_dict``) and by
the logits; bad input refused with one line, exit 2 and nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import paddle
import pytest
import torch
import torchvision.models as tvm

from converters.cli import main
from converters.weights import bundled_photos, seed_and_calibrate
from parity.tolerances import LOGITS_FP32

pytestmark = pytest.mark.paddle

REPO = Path(__file__).resolve().parents[1]
#: Side of the photos the weights are calibrated and the logits compared on: the models' own
#: resolution. At 64 px the last feature maps are 2 x 2, BatchNorm calibrated on 8 photos x 4 pixels
#: is ill-conditioned, and torch's *own* fp32 logits are then 1.8e-5 (mobilenet_v2) and 2.0e-5
#: (shufflenet_v2) of scale away from its fp64 ones -- no fp32 port could meet 1e-5 of scale there
#: (measured at 64 px: Paddle vs torch 2.9e-5 / 2.5e-5 in fp32, 1.7e-10 / 8.5e-11 in fp64). At 224
#: px: torch's own error 6.4e-6 / 4.0e-6, Paddle vs torch 8.6e-6 / 4.9e-6 of scale.
SIZE = 224
#: Example input the layers are matched at: small, matching looks at shapes and order only.
SHAPE = "1,3,64,64"
WEIGHTS_SEED = 11
#: torchvision constructor (paddle.vision has the same name) -> whether its test is slow (> ~30 s on
#: 2 busy cores; measured: vgg11 41 s, the others 9-12 s).
PAIRS: Dict[str, bool] = {"resnet18": False, "mobilenet_v2": False, "mobilenet_v3_large": False,
                          "shufflenet_v2_x1_0": False, "vgg11": True}


def _specs(name: str) -> Tuple[str, str]:
    return f"torchvision.models:{name}", f"paddle.vision.models:{name}"


def _seeded_file(name: str, folder: Path, wrapped: bool = False) -> Tuple[Path, "torch.nn.Module"]:
    model = getattr(tvm, name)()
    seed_and_calibrate(model, WEIGHTS_SEED, bundled_photos(SIZE))
    path = folder / f"{name}.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 1} if wrapped else model.state_dict(),
               path)
    return path, model.eval()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "converters.cli", *args], env=env, text=True,
                          capture_output=True, timeout=600)


@pytest.mark.cli
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if slow else n
                                  for n, slow in PAIRS.items()])
def test_torchvision_state_dict_converts_to_paddle_vision(name, tmp_path):
    src, tmodel = _seeded_file(name, tmp_path, wrapped=(name == "mobilenet_v2"))
    dst = tmp_path / f"{name}.pdparams"
    res = _cli(str(src), "--torch", _specs(name)[0], "--paddle", _specs(name)[1], "-o", str(dst),
               "--input-shape", SHAPE)
    assert res.returncode == 0, res.stderr
    side = json.loads((tmp_path / f"{name}.pdparams.json").read_text())
    assert side["torch"] == _specs(name)[0] and side["matching"]["layers"]

    pmodel = getattr(__import__("paddle.vision.models", fromlist=[name]), name)()
    missing, unexpected = pmodel.set_state_dict(paddle.load(str(dst)))
    assert not missing and not unexpected
    pmodel.eval()
    x = bundled_photos(SIZE, count=2)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    got = pmodel(paddle.to_tensor(x)).numpy()
    bound = LOGITS_FP32.atol + LOGITS_FP32.rtol * float(np.abs(want).max())
    assert np.abs(got - want).max() <= bound, (np.abs(got - want).max(), bound)
    assert want.std(axis=0).mean() > 100 * bound  # the logits depend on the image: not a no-op


@pytest.fixture(scope="module")
def resnet18_file(module_tmp: Callable[[str], Path]) -> Path:
    return _seeded_file("resnet18", module_tmp("r18"))[0]


def _convert(src: Path, torch_spec: str, paddle_spec: str, dst: Path, *extra: str) -> int:
    return main([str(src), "--torch", torch_spec, "--paddle", paddle_spec, "-o", str(dst),
                 "--input-shape", SHAPE, *extra])


def test_the_sidecar_matching_works_as_map_and_gives_the_same_file(resnet18_file, tmp_path):
    t, p = _specs("resnet18")
    assert _convert(resnet18_file, t, p, tmp_path / "a.pdparams") == 0
    side = json.loads((tmp_path / "a.pdparams.json").read_text())
    (tmp_path / "map.json").write_text(json.dumps(side["matching"]))
    assert _convert(resnet18_file, t, p, tmp_path / "b.pdparams", "--map",
                    str(tmp_path / "map.json")) == 0
    assert (tmp_path / "a.pdparams").read_bytes() == (tmp_path / "b.pdparams").read_bytes()


@pytest.mark.parametrize("torch_spec, paddle_spec, message", [
    ("torchvision.models:resnet19", "paddle.vision.models:resnet18", "has no attribute 'resnet19'"),
    ("no_such_module:resnet18", "paddle.vision.models:resnet18", "cannot import module"),
    ("torchvision.models:__name__", "paddle.vision.models:resnet18", "is not callable"),
    ("torchvision.models:resnet18", "torchvision.models:resnet18", "not a paddle.Layer"),
    ("torchvision.models:resnet18", "paddle.vision.models:resnet34", "cannot pair the stateful"),
    ("torchvision.models:mobilenet_v2", "paddle.vision.models:mobilenet_v2",
     "does not fit torchvision.models:mobilenet_v2"),  # a resnet18 checkpoint
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(resnet18_file, tmp_path, capsys,
                                                          torch_spec, paddle_spec, message):
    dst = tmp_path / "out.pdparams"
    assert _convert(resnet18_file, torch_spec, paddle_spec, dst) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_the_map_file_is_an_input_never_overwritten(resnet18_file, tmp_path, capsys):
    """``-o x.pdparams --map x.pdparams.json --force``: the sidecar would land on the edited map."""
    t, p = _specs("resnet18")
    assert _convert(resnet18_file, t, p, tmp_path / "a.pdparams") == 0
    side = json.loads((tmp_path / "a.pdparams.json").read_text())
    edited = tmp_path / "x.pdparams.json"
    edited.write_text(json.dumps(side["matching"]))
    before = edited.read_bytes()
    capsys.readouterr()
    assert _convert(resnet18_file, t, p, tmp_path / "x.pdparams", "--map", str(edited),
                    "--force") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(edited) in err
    assert edited.read_bytes() == before and not (tmp_path / "x.pdparams").exists()


def test_a_bad_map_is_refused(resnet18_file, tmp_path, capsys):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"format": "converters.matching/1", "layers": [
        {"torch": "conv1", "paddle": "nope", "kind": "conv2d", "how": "file", "has_params": True}]}))
    assert _convert(resnet18_file, *_specs("resnet18"), tmp_path / "o.pdparams", "--map",
                    str(bad)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'nope' is not in the Paddle model" in err
    assert sorted(os.listdir(tmp_path)) == ["map.json"]


@pytest.mark.parametrize("argv, message", [
    (["--torch", "torchvision.models:resnet18"], "give both --torch and --paddle"),
    (["--torch", "a:b", "--paddle", "c:d", "--model", "cream-14"], "--model apply to Cream"),
    (["--input-shape", "1,3,8,8"], "give both"),
    (["--torch", "torchvision.models", "--paddle", "paddle.vision.models:resnet18"],
     "argument --torch: expected MODULE:CALLABLE"),  # an argparse validator: usage, then the reason
    (["--torch", "a:b", "--paddle", "c:d", "--input-shape", "1,3,0,8"],
     "argument --input-shape: expected 2 or more positive integers"),
])
def test_generic_usage_errors(resnet18_file, tmp_path, capsys, argv, message):
    assert main([str(resnet18_file), "-o", str(tmp_path / "o.pdparams"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_an_existing_output_is_kept_without_force(resnet18_file, tmp_path, capsys):
    dst = tmp_path / "o.pdparams"
    dst.write_bytes(b"previous")
    assert _convert(resnet18_file, *_specs("resnet18"), dst) == 2
    assert "already exists" in capsys.readouterr().err
    assert dst.read_bytes() == b"previous" and sorted(os.listdir(tmp_path)) == ["o.pdparams"]
    assert _convert(resnet18_file, *_specs("resnet18"), dst, "--force") == 0
    assert paddle.load(str(dst))["fc.weight"].shape == [512, 1000]  # Linear stored [in, out]


def test_round_trip_back_to_torch_is_exact(resnet18_file, tmp_path):
    """SRC.pth -> .pdparams -> .pth: every tensor back bit for bit, BN counters from the sidecar."""
    t, p = _specs("resnet18")
    assert _convert(resnet18_file, t, p, tmp_path / "m.pdparams") == 0
    assert _convert(tmp_path / "m.pdparams", t, p, tmp_path / "back.pth") == 0
    before = torch.load(resnet18_file, weights_only=True)
    after = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    (tmp_path / "m.pdparams.json").unlink()  # without its sidecar the counters come back as 0
    assert _convert(tmp_path / "m.pdparams", t, p, tmp_path / "b2.pth") == 0
    counters = [v for k, v in torch.load(tmp_path / "b2.pth", weights_only=True).items()
                if k.endswith("num_batches_tracked")]
    assert counters and all(int(v) == 0 for v in counters)


def test_a_pdparams_of_another_model_is_refused(resnet18_file, tmp_path, capsys):
    assert _convert(resnet18_file, *_specs("resnet18"), tmp_path / "m.pdparams") == 0
    assert _convert(tmp_path / "m.pdparams", *_specs("mobilenet_v2"), tmp_path / "x.pth") == 2
    assert "does not fit paddle.vision.models:mobilenet_v2" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_a_fine_tuned_model_converts_with_constructor_kwargs(tmp_path, capsys):
    """A torchvision resnet18 fine-tuned to 10 classes: the default constructors refuse its
    checkpoint; ``--torch-kwargs``/``--paddle-kwargs`` build the right models and it converts."""
    model = tvm.resnet18(num_classes=10)
    seed_and_calibrate(model, WEIGHTS_SEED, bundled_photos(SIZE))
    src = tmp_path / "ft.pth"
    torch.save(model.state_dict(), src)
    t, p = _specs("resnet18")
    assert _convert(src, t, p, tmp_path / "default.pdparams") == 2
    assert "fc.weight" in capsys.readouterr().err
    ten = json.dumps({"num_classes": 10})
    dst = tmp_path / "ft.pdparams"
    assert _convert(src, t, p, dst, "--torch-kwargs", ten, "--paddle-kwargs", ten) == 0
    side = json.loads((tmp_path / "ft.pdparams.json").read_text())
    assert side["torch_kwargs"] == side["paddle_kwargs"] == {"num_classes": 10}
    pmodel = paddle.vision.models.resnet18(num_classes=10)
    missing, unexpected = pmodel.set_state_dict(paddle.load(str(dst)))
    assert not missing and not unexpected
    pmodel.eval()
    x = bundled_photos(SIZE, count=2)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    got = pmodel(paddle.to_tensor(x)).numpy()
    assert want.shape == (2, 10)
    assert np.abs(got - want).max() <= LOGITS_FP32.atol + LOGITS_FP32.rtol * float(np.abs(want).max())


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", "10"])
def test_kwargs_must_be_a_json_object(resnet18_file, tmp_path, capsys, text):
    assert _convert(resnet18_file, *_specs("resnet18"), tmp_path / "o.pdparams",
                    "--torch-kwargs", text) == 2
    err = capsys.readouterr().err
    assert "--torch-kwargs" in err and "Traceback" not in err and os.listdir(tmp_path) == []
