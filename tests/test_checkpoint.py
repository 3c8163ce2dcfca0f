"""The official-checkpoint loader: every accepted form, every refusal, and that nothing in a file runs."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from cream_torch_ref import CheckpointError, create_model, load_checkpoint, read_checkpoint
from cream_torch_ref.checkpoint import CfgNodeStandIn, NamespaceStandIn, save_official_checkpoint
from cream_torch_ref.models import seeded_official_checkpoint

MODEL = "cream-14"


def _logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.from_numpy(np.random.RandomState(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        return model(x)


def test_legacy_format_with_yacs_args(official_cream14: Path) -> None:
    with open(official_cream14, "rb") as f:
        assert f.read(2) != b"PK", "fixture must be the legacy (non-zip) format"
    ck = load_checkpoint(official_cream14)
    assert ck.source == "state_dict_ema"
    assert isinstance(ck.meta["args"], CfgNodeStandIn)
    assert ck.meta["args"].NET.SELECTION == 14 and ck.meta["epoch"] == 7


def test_ema_default_and_raw_on_request(official_cream14: Path) -> None:
    ema, raw = load_checkpoint(official_cream14), load_checkpoint(official_cream14, use_ema=False)
    assert raw.source == "state_dict"
    k = "conv_stem.weight"
    assert not torch.equal(ema.state_dict[k], raw.state_dict[k])
    obj = read_checkpoint(official_cream14)
    assert torch.equal(ema.state_dict[k], obj["state_dict_ema"][k])
    assert torch.equal(raw.state_dict[k], obj["state_dict"][k])


def test_loads_with_yacs_absent(official_cream14: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yacs", None)  # `import yacs` now raises ImportError
    monkeypatch.setitem(sys.modules, "yacs.config", None)
    with pytest.raises(ImportError):
        import yacs.config  # noqa: F401
    ck = load_checkpoint(official_cream14)
    assert ck.meta["args"]["DATASET"]["IMAGE_SIZE"] == 64


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("prefix", [False, True], ids=["plain", "module."])
def test_formats_and_prefix_give_same_model(official_cream14: Path, tmp_path: Path, legacy: bool,
                                            prefix: bool) -> None:
    other = seeded_official_checkpoint(MODEL, tmp_path / "x.pth.tar", legacy=legacy,
                                       module_prefix=prefix, args="namespace")
    ck = load_checkpoint(other)
    assert isinstance(ck.meta["args"], NamespaceStandIn) and ck.meta["args"].lr == 0.064
    assert not any(k.startswith("module.") for k in ck.state_dict)
    ref = _logits(create_model(MODEL, checkpoint=official_cream14))
    assert torch.equal(_logits(create_model(MODEL, checkpoint=other)), ref)


def test_bare_state_dict(official_cream14: Path, tmp_path: Path) -> None:
    sd = read_checkpoint(official_cream14)["state_dict"]
    bare = tmp_path / "bare.pth"
    torch.save(OrderedDict(sd), bare)
    a = _logits(create_model(MODEL, checkpoint=bare))
    b = _logits(create_model(MODEL, checkpoint=official_cream14, use_ema=False))
    assert torch.equal(a, b)


def _expect(path: Path, fragment: str) -> str:
    with pytest.raises(CheckpointError) as ei:
        create_model(MODEL, checkpoint=path)
    msg = str(ei.value)
    assert msg.startswith(str(path)), msg
    assert fragment in msg, msg
    assert "\n" not in msg
    return msg


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    _expect(tmp_path / "empty.pth", "empty")
    (tmp_path / "noise.pth").write_bytes(np.random.RandomState(1).bytes(4096))
    _expect(tmp_path / "noise.pth", "not a")
    (tmp_path / "cfg.json").write_text(json.dumps({"state_dict": {}}))
    _expect(tmp_path / "cfg.json", "not a torch checkpoint")
    _expect(tmp_path, "directory")
    _expect(tmp_path / "missing.pth", "no such file")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    _expect(tmp_path / "list.pth", "holds a list")
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "nostate.pth")
    _expect(tmp_path / "nostate.pth", "no 'state_dict'")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_truncated(official_cream14: Path, tmp_path: Path, legacy: bool, fraction: float) -> None:
    src = official_cream14 if legacy else seeded_official_checkpoint(
        MODEL, tmp_path / "z.pth.tar", legacy=False, seed_ema=None)
    data = Path(src).read_bytes()
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(data[: int(len(data) * fraction)])
    _expect(cut, "truncated or corrupt")


def test_key_problems_are_named(official_cream14: Path, tmp_path: Path) -> None:
    sd = OrderedDict(read_checkpoint(official_cream14)["state_dict"])
    missing = OrderedDict(sd)
    del missing["blocks.2.1.conv_dw.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    _expect(tmp_path / "missing.pth", "1 missing key(s): blocks.2.1.conv_dw.weight")

    extra = OrderedDict(sd, **{"blocks.9.0.conv.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    _expect(tmp_path / "extra.pth", "1 unexpected key(s): blocks.9.0.conv.weight")

    wrong = OrderedDict(sd)
    wrong["classifier.weight"] = torch.zeros(10, 1280)
    torch.save(wrong, tmp_path / "wrong.pth")
    _expect(tmp_path / "wrong.pth", "classifier.weight expects [1000, 1280] but has [10, 1280]")


def test_other_architecture_is_refused(official_cream14: Path) -> None:
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("cream-43", checkpoint=official_cream14)


class _RunsCode:
    """Pickles to a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_without_running(official_cream14: Path,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sd = read_checkpoint(official_cream14)["state_dict"]
    evil = tmp_path / "evil.pth.tar"
    save_official_checkpoint(evil, sd, args=_RunsCode(marker), legacy=True)
    msg = _expect(evil, "refused")
    assert "system" in msg
    assert not marker.exists()
    # control: the same file *does* run code under an unrestricted load, so the test means something
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.cli
def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint at all")
    code = ("import sys\nfrom cream_torch_ref import CheckpointError, create_model\n"
            "try:\n    create_model('cream-14', checkpoint=sys.argv[1])\n"
            "except CheckpointError as e:\n    print(e); sys.exit(2)\n")
    r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout.strip().splitlines() == [f"{bad}: is not a torch checkpoint (neither a zip "
                                             "archive nor a pickle)"]


def test_namespace_standin_keeps_attributes() -> None:
    ns = NamespaceStandIn()
    ns.__dict__.update(vars(argparse.Namespace(lr=0.1)))
    assert "lr=0.1" in repr(ns)
