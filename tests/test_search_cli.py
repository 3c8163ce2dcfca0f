"""``cream-search`` end to end on tiny data: both frameworks, one and two processes, resume, outputs.

The answer of a search (``best_arch.json`` + ``best_child``) must be usable downstream: the child
checkpoint converts with ``convert-ckpt`` and the converted model gives the logits the source gives.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from cream_cli.search import BEST_ARCH, LOG_NAME, checkpoint_path, main

pytestmark = pytest.mark.cli
#: logits of a converted child net against its source: fp32 kernels of two frameworks.
CONVERTED_LOGITS_ABS = 1e-4
#: A tiny search: smallest supernet, 32 px, lr 0.01 (the official lr 1.0 diverges on 8-image
#: batches), board from epoch 1, a meta-matching update at every 2nd batch.
ARGS = ["--num-classes", "4", "--image-size", "32", "--batch-size", "8", "--flops-max", "20",
        "--meta-sta-epoch", "0", "--update-iter", "2", "--epochs", "2", "--workers", "0",
        "--threads", "1", "--no-progress", "--lr", "0.01", "--log-interval", "1"]


@pytest.fixture(scope="module")
def data(module_tmp: Callable[[str], Path]) -> Path:
    root = module_tmp("search_data")
    rng = np.random.RandomState(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in range(4):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.zeros((40, 40, 3))
                img[..., c % 3] = 120 + 40 * (c // 3)
                img = np.clip(img + rng.randint(0, 100, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def _run(framework: str, data: Path, out: Path, *extra: str) -> int:
    return main(["--framework", framework, "--data", str(data), "--output", str(out), *ARGS, *extra])


def _weights(framework: str, path: Path):
    if framework == "torch":
        from cream_torch_ref.checkpoint import read_checkpoint
        return {k: v.numpy() for k, v in read_checkpoint(str(path))["state_dict"].items()}
    from cream_paddle.checkpoint import read_checkpoint
    return dict(read_checkpoint(str(path))["state_dict"])


def _converted_child_agrees(framework: str, out: Path, data: Path, tmp: Path) -> None:
    """convert-ckpt the best child to the other framework; both give the same logits on val."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddle
    from converters.convert import convert_checkpoint, pdparams_to_pth
    from cream_core.data import EvalLoader, normalize, open_dataset
    from cream_paddle.childnet import ChildNet as PChild
    from cream_paddle.checkpoint import load_checkpoint as load_pd
    from cream_torch_ref.checkpoint import load_checkpoint as load_pt
    from cream_torch_ref.childnet import ChildNet as TChild

    arch = json.loads((out / BEST_ARCH).read_text())
    assert arch["source"] == "board" and len(arch["arch_list"]) == 7
    src = out / arch["child_weights"]
    if framework == "torch":
        pt_file, pd_file = src, tmp / f"{framework}_child.pdparams"
        convert_checkpoint(str(pt_file), str(pd_file))
    else:
        pd_file, pt_file = src, tmp / f"{framework}_child.pth.tar"
        pdparams_to_pth(str(pd_file), str(pt_file))
    tm = TChild(arch["arch_list"], num_classes=4).eval()
    tm.load_state_dict(load_pt(str(pt_file)).state_dict)
    pm = PChild(arch["arch_list"], num_classes=4)
    pm.set_state_dict(dict(load_pd(str(pd_file)).state_dict))
    pm.eval()
    batch = next(iter(EvalLoader(open_dataset(data / "val", num_classes=4), 32, 8, workers=0)))
    x = normalize(batch.images)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    got = pm(paddle.to_tensor(x)).numpy()
    assert np.abs(got - ref).max() <= CONVERTED_LOGITS_ABS
    top1 = float((ref.argmax(1) == batch.labels).mean())  # it evaluates: a number in [0, 1]
    assert 0.0 <= top1 <= 1.0


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_search_end_to_end(framework: str, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _run(framework, data, out) == 0
    log = (out / LOG_NAME).read_text()
    assert "(meta-matching update)" in log and "No.0 (prec1" in log and "Test: epoch 1" in log
    assert Path(checkpoint_path(str(out), framework)).is_file()
    _converted_child_agrees(framework, out, data, tmp_path)


def test_resume_is_exact(data: Path, tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run("torch", data, full) == 0
    assert _run("torch", data, part, "--max-iters", "5") == 0  # stops inside epoch 1
    assert _run("torch", data, part) == 2  # refuses to start over a search silently
    assert _run("torch", data, part, "--resume", "auto") == 0
    assert "resumed from" in (part / LOG_NAME).read_text()
    a = _weights("torch", Path(checkpoint_path(str(full), "torch")))
    b = _weights("torch", Path(checkpoint_path(str(part), "torch")))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((full / BEST_ARCH).read_text())["board"] == \
        json.loads((part / BEST_ARCH).read_text())["board"]


def test_bad_input(data: Path, tmp_path: Path, capsys) -> None:
    assert main(["--framework", "torch", "--data", str(tmp_path / "nothing"), "--output",
                 str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("SUPERNET:\n  PICK: meta\n")
    assert main(["--framework", "paddle", "--data", str(data), "--config", str(cfg), "--output",
                 str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: unknown key SUPERNET.PICK" in err and "Traceback" not in err
    assert main(["--framework", "torch", "--data", str(data), "--output", str(tmp_path / "o2"),
                 *ARGS, "--num-classes", "3"]) == 2
    assert "4 class folders" in capsys.readouterr().err
    assert not (tmp_path / "o2" / BEST_ARCH).exists()


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_two_processes(framework: str, data: Path, tmp_path: Path, launch_two) -> None:
    out = tmp_path / "run"
    launch_two(framework, "search", ["--framework", framework, "--data", str(data), "--output",
                                      str(out), *ARGS, "--update-iter", "1"], out.parent,
               tmp_path / "logs")
    log = (out / LOG_NAME).read_text()
    assert "2 process(es)" in log and "(meta-matching update)" in log
    _converted_child_agrees(framework, out, data, tmp_path)


def test_help_texts(capsys) -> None:
    from parity.search_step import main as parity_main

    assert main(["--help"]) == 0
    assert "--resume" in capsys.readouterr().out
    assert parity_main(["--help"]) == 0  # the one CLI convention: a code, not SystemExit
    assert "--inject-fault" in capsys.readouterr().out
