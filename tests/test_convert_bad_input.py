"""The bad-input corpus of ``convert-ckpt``: each case is refused with one line naming the file and the
problem, a non-zero exit, nothing written, the input intact, and nothing from the input executed."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch

from cream_core.arch import child_spec, seeded_state
from cream_torch_ref.models import seeded_official_checkpoint
from converters.cli import main

pytestmark = pytest.mark.paddle

NAME = "cream-14"


class _RunsCode:
    """Unpickling this would call ``open(marker, 'w')``: the marker's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def good(module_tmp: Callable[[str], Path]) -> Dict[str, bytes]:
    """Bytes of valid inputs the corpus is cut from (made once)."""
    d = module_tmp("good")
    legacy = Path(seeded_official_checkpoint(NAME, d / "l.pth.tar", legacy=True))
    zipped = Path(seeded_official_checkpoint(NAME, d / "z.pth.tar", legacy=False))
    return {"legacy": legacy.read_bytes(), "zip": zipped.read_bytes()}


def _state(seed: int = 1) -> Dict[str, torch.Tensor]:
    from cream_torch_ref import ChildNet

    m = ChildNet(child_spec(NAME).arch_list)
    shapes = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    return {k: torch.from_numpy(v) for k, v in seeded_state(shapes, seed).items()}


def _save(obj, path: Path, zip_format: bool = True) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)


# Each case: name -> builder(folder, good, marker) -> (SRC path, argv after SRC, problem regex). The
# builder writes SRC into the folder (or not).
Case = Callable[[Path, Dict[str, bytes], Path], Tuple[Path, List[str], str]]
#: What every case holding code must be refused with.
_REFUSED_CODE = "refused: the pickle references .*open"


def _file(name: str, data: Callable[[Dict[str, bytes], Path], bytes], problem: str) -> Case:
    """A case whose SRC ``name`` holds ``data(good, marker)``."""
    def build(d: Path, g: Dict[str, bytes], m: Path) -> Tuple[Path, List[str], str]:
        p = d / name
        p.write_bytes(data(g, m))
        return p, [], problem
    return build


def _edited_state(name: str, edit: Callable[[Dict[str, torch.Tensor]], None], problem: str) -> Case:
    """A case whose SRC ``name`` is a torch checkpoint of the seeded weights after ``edit``."""
    def build(d: Path, g: Dict[str, bytes], m: Path) -> Tuple[Path, List[str], str]:
        sd = _state()
        edit(sd)
        p = d / name
        _save({"state_dict": sd}, p)
        return p, [], problem
    return build


def _half(kind: str) -> Callable[[Dict[str, bytes], Path], bytes]:
    return lambda g, m: g[kind][: len(g[kind]) // 2]


def _directory(d, g, m):
    p = d / "ckpt_dir.pth.tar"
    p.mkdir()
    return p, [], "is a directory"


def _missing(d, g, m):
    return d / "nowhere.pth.tar", [], "no such file"


def _resnet(d, g, m):
    import torchvision

    p = d / "resnet18.pth"
    _save(torchvision.models.resnet18(weights=None).state_dict(), p)
    return p, [], "not a Cream child net: no 'blocks"


def _resnet_forced_model(d, g, m):
    p, _, _ = _resnet(d, g, m)
    return p, ["--model", NAME], "does not fit Paddle ChildNet cream-14: .*missing.*unexpected"


def _code_in_torch_zip(d, g, m):
    p = d / "evil_zip.pth.tar"
    _save({"state_dict": _state(), "args": _RunsCode(m)}, p)
    return p, [], _REFUSED_CODE


def _pdparams_wrong_shape(d, g, m):
    p = d / "bad_shape.pdparams"
    sd = {k.replace("running_mean", "_mean").replace("running_var", "_variance"): v.numpy()
          for k, v in _state().items() if not k.endswith("num_batches_tracked")}
    sd["classifier.weight"] = np.ascontiguousarray(sd["classifier.weight"])  # not transposed
    with open(p, "wb") as f:
        pickle.dump(sd, f, protocol=4)
    return p, [], "classifier.weight expects \\[1280, 1000\\] but has \\[1000, 1280\\]"


def _good_source(d: Path, g: Dict[str, bytes]) -> Path:
    p = d / "ok.pth.tar"
    p.write_bytes(g["legacy"])
    return p


def _missing_output_folder(d, g, m):
    return _good_source(d, g), ["-o", str(d / "no" / "such" / "dir" / "out.pdparams")], \
        "output folder .* does not exist"


def _existing_output(d, g, m):
    p = _good_source(d, g)
    (d / "ok.pdparams").write_bytes(b"precious")
    return p, [], "ok.pdparams: already exists; pass --force"


def _output_is_source(d, g, m):
    p = _good_source(d, g)
    return p, ["-o", str(p), "--force"], "is the source file"


def _output_is_directory(d, g, m):
    p = _good_source(d, g)
    (d / "outdir").mkdir()
    return p, ["-o", str(d / "outdir"), "--force"], "is a directory; give a file name"


CASES: Dict[str, Case] = {
    "empty": _file("empty.pth.tar", lambda g, m: b"", "empty"),
    "random_bytes": _file("random.pth.tar", lambda g, m: np.random.RandomState(0).bytes(4096),
                          "not a torch checkpoint"),
    "random_after_pickle_header": _file(
        "noise.pth", lambda g, m: b"\x80\x02" + np.random.RandomState(1).bytes(4096),
        "corrupt|not a readable"),
    "truncated_legacy": _file("trunc_legacy.pth.tar", _half("legacy"), "truncated or corrupt"),
    "truncated_zip": _file("trunc_zip.pth.tar", _half("zip"), "truncated or corrupt"),
    "json": _file("model.pth.tar", lambda g, m: json.dumps(
        {"state_dict": {"conv_stem.weight": [1, 2, 3]}}).encode(), "not a torch checkpoint"),
    "text": _file("notes.pth", lambda g, m: b"these are not the weights you are looking for\n",
                  "not a torch checkpoint"),
    "directory": _directory,
    "missing_path": _missing,
    "resnet18": _resnet,
    "resnet18_with_model": _resnet_forced_model,
    "missing_key": _edited_state("missing_key.pth.tar",
                                 lambda sd: sd.pop("blocks.3.1.bn2.running_var"),
                                 "1 missing key\\(s\\): blocks.3.1.bn2.running_var"),
    "unexpected_key": _edited_state("extra_key.pth.tar",
                                    lambda sd: sd.update(
                                        {"blocks.3.1.extra.weight": torch.zeros(3)}),
                                    "1 unexpected key\\(s\\): blocks.3.1.extra.weight"),
    "wrong_shape": _edited_state(
        "wrong_shape.pth.tar",
        lambda sd: sd.update({"blocks.2.1.conv_pwl.weight": torch.zeros(40, 200, 1, 1)}),
        "shape mismatch.*blocks.2.1.conv_pwl.weight expects \\[40, 240, 1, 1\\] but has "
        "\\[40, 200, 1, 1\\]"),
    "code_in_plain_pickle": _file(
        "evil.pth.tar", lambda g, m: pickle.dumps({"state_dict": _RunsCode(m)}, protocol=2),
        _REFUSED_CODE),
    "code_in_torch_zip": _code_in_torch_zip,
    "code_in_pdparams": _file(
        "evil.pdparams", lambda g, m: pickle.dumps({"conv_stem.weight": _RunsCode(m)}, protocol=4),
        _REFUSED_CODE),
    "torch_file_named_pdparams": _file("really_torch.pdparams", lambda g, m: g["zip"],
                                       "not a Paddle .pdparams file \\(a zip archive"),
    "pdparams_wrong_shape": _pdparams_wrong_shape,
    "missing_output_folder": _missing_output_folder,
    "existing_output": _existing_output,
    "output_is_source": _output_is_source,
    "output_is_directory": _output_is_directory,
}


def _snapshot(d: Path) -> Dict[str, Optional[str]]:
    """Every path under ``d`` with the sha256 of its bytes (None for folders)."""
    out: Dict[str, Optional[str]] = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() \
            else None
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_refused_cleanly(case: str, tmp_path: Path, good, capsys: pytest.CaptureFixture) -> None:
    d = tmp_path / "in"
    d.mkdir()
    marker = tmp_path / "CODE_RAN"
    src, extra, problem = CASES[case](d, good, marker)
    before = _snapshot(d)
    rc = main([str(src), *extra])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convert-ckpt: error: ")
    assert "Traceback" not in err
    named = str(src) in lines[0] or (extra and extra[0] == "-o" and extra[1] in lines[0]) or \
        (case == "existing_output" and "ok.pdparams" in lines[0])
    assert named, f"the message must name the file: {lines[0]}"
    import re

    assert re.search(problem, lines[0]), lines[0]
    assert _snapshot(d) == before, "something was written, removed or changed"
    assert not marker.exists(), "code from the input ran"


@pytest.mark.cli
@pytest.mark.parametrize("case", ["random_bytes", "code_in_torch_zip"])
def test_refused_in_a_subprocess(case: str, tmp_path: Path, good) -> None:
    d = tmp_path / "in"
    d.mkdir()
    marker = tmp_path / "CODE_RAN"
    src, extra, problem = CASES[case](d, good, marker)
    before = _snapshot(d)
    proc = subprocess.run([sys.executable, "-m", "converters.cli", str(src), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and str(src) in proc.stderr
    assert _snapshot(d) == before and not marker.exists()


def test_marker_mechanism_really_runs_code(tmp_path: Path) -> None:
    """Control: an unrestricted unpickler does run the payload, so 'marker absent' means something."""
    marker = tmp_path / "CODE_RAN"
    f = pickle.loads(pickle.dumps(_RunsCode(marker), protocol=2))
    f.close()
    assert marker.exists()
    buf = io.BytesIO()
    torch.save({"args": _RunsCode(tmp_path / "CODE_RAN_2")}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)
    assert (tmp_path / "CODE_RAN_2").exists()


def test_bfloat16_checkpoint_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in _state().items()}
    src = tmp_path / "bf16.pth"
    _save(sd, src)
    assert main([str(src)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "bfloat16" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["bf16.pth"]
