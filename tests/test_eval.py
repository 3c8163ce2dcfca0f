"""ImageNet-style evaluation in both frameworks: cream-eval, parity eval, and the acceptance run.

Acceptance (issue 6): on real photos labelled with the reference model's own predictions, the torch
reference (from an official-format ``.pth.tar``) and the Paddle port (after ``convert-ckpt``) both
score exactly 100 / 100 through ``cream-eval``, from an ImageNet folder and from a list file.

The checkpoint is seeded (no real weights ship with the project) in the official format
(``cream_torch_ref.models.seeded_official_checkpoint``, BatchNorm statistics calibrated so that the
output depends on the input). The photos get several different classes from it, so "100 %" means
the port predicts every photo's class, and a port that gets anything wrong fails visibly (see the
fault-injection tests).
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest

import cream_core.data as cd
from cream_core.arch import child_spec
from cream_cli.eval import main as cream_eval

MODEL = "cream-14"
RES = child_spec(MODEL).resolution
#: Different top-1 classes the seeded net must give the 8 photos for the 100 % to mean anything.
MIN_DISTINCT_LABELS = 3
#: torch's cross-entropy is fp32 (~1e-7 relative per op; a mean over 8 log-softmax terms), ours is
#: float64 from the same fp32 logits.
FP32_LOSS_RTOL = 1e-6


def _photo_batch() -> np.ndarray:
    t = cd.EvalTransform(RES)
    return cd.normalize(np.stack([t(p) for p in cd.sample_files()]))


@pytest.fixture(scope="module")
def work(module_tmp: Callable[[str], Path], official_cream14: Path) -> Dict[str, Path]:
    """Seeded official-format checkpoint, its Paddle conversion, and the labelled photos."""
    from converters.cli import main as convert_ckpt
    from cream_torch_ref import create_model
    from cream_torch_ref.evaluate import forward_logits

    root = module_tmp("eval")
    ckpt = official_cream14
    ref = create_model(MODEL, checkpoint=ckpt)  # EMA weights, as the official test
    preds = forward_logits(ref, _photo_batch()).argmax(1)
    labels = {p.name: int(c) for p, c in zip(cd.sample_files(), preds)}
    assert len(set(labels.values())) >= MIN_DISTINCT_LABELS, labels

    pdparams = root / "14.pdparams"
    assert convert_ckpt([str(ckpt), "-o", str(pdparams), "--model", MODEL]) == 0
    return {"root": root, "ckpt": ckpt, "pdparams": pdparams,
            "inet": cd.make_imagenet_layout(root / "inet", labels),
            "list": cd.write_list_file(root / "lst" / "val.txt", labels),
            "labels": labels}  # type: ignore[dict-item]


def _run(args, tmp_path: Path, name: str = "r"):
    js, pred = tmp_path / f"{name}.json", tmp_path / f"{name}.csv"
    rc = cream_eval([*map(str, args), "--json", str(js), "--predictions", str(pred),
                     "--no-progress"])
    return rc, js, pred


def _weights(work, framework: str) -> Path:
    return work["ckpt"] if framework == "torch" else work["pdparams"]


# --- acceptance ----------------------------------------------------------------------------------

@pytest.mark.parametrize("data", ["inet", "list"])
@pytest.mark.parametrize("framework", ["torch", pytest.param("paddle", marks=pytest.mark.paddle)])
def test_acceptance_100_percent(work, tmp_path, framework, data):
    rc, js, pred = _run(["--framework", framework, "--model", MODEL, "--weights",
                         _weights(work, framework), "--data", work[data], "--workers", 2,
                         "--batch-size", 3], tmp_path)
    assert rc == 0
    rep = json.loads(js.read_text())
    assert (rep["top1"], rep["top5"], rep["images"], rep["skipped"]) == (100.0, 100.0, 8, [])
    assert math.isfinite(rep["loss"]) and rep["images_per_s"] > 0
    assert rep["layout"] == ("imagenet" if data == "inet" else "list")
    rows = list(csv.DictReader(pred.open()))
    assert {Path(r["path"]).name: int(r["prediction"]) for r in rows} == work["labels"]


@pytest.mark.paddle
def test_acceptance_fails_for_a_wrong_port(work, tmp_path):
    """A classic conversion bug (conv kernels flipped) must not score 100 %."""
    import paddle

    from cream_paddle import create_model

    net = create_model(MODEL, checkpoint=work["pdparams"])
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    for k, v in sd.items():
        if v.ndim == 4 and v.shape[-1] > 1:
            sd[k] = np.ascontiguousarray(v[..., ::-1, ::-1])
    bad = tmp_path / "flipped.pdparams"
    paddle.save(sd, str(bad))
    rc, js, _ = _run(["--framework", "paddle", "--model", MODEL, "--weights", bad,
                      "--data", work["inet"], "--workers", 0], tmp_path)
    assert rc == 0
    assert json.loads(js.read_text())["top1"] < 100.0


def test_labels_follow_the_images(work, tmp_path):
    """Swapping two photos' labels costs exactly those two images (the 100 % is per image)."""
    labels = dict(work["labels"])
    a, b = next((x, y) for x in labels for y in labels if labels[x] != labels[y])
    labels[a], labels[b] = labels[b], labels[a]
    lst = cd.write_list_file(tmp_path / "swap" / "val.txt", labels)
    rc, js, _ = _run(["--framework", "torch", "--model", MODEL, "--weights", work["ckpt"],
                      "--data", lst, "--workers", 0], tmp_path)
    assert rc == 0 and json.loads(js.read_text())["top1"] == 100.0 * 6 / 8


# --- parity eval -----------------------------------------------------------------------------------

@pytest.mark.paddle
def test_parity_eval_identical_predictions(work):
    from parity.eval_parity import EVAL_LOGITS, eval_parity

    res = eval_parity(MODEL, work["ckpt"], work["inet"], workers=0)
    assert res.ok and res.images == 8 and res.agreement == 100.0 and not res.disagreements
    assert res.torch.top1 == res.paddle.top1 == 100.0
    assert res.max_logit_diff <= EVAL_LOGITS.atol + EVAL_LOGITS.rtol * res.logit_scale
    assert res.torch.predictions.tolist() == res.paddle.predictions.tolist()


def _parity_parser() -> argparse.ArgumentParser:
    from parity.eval_parity import register

    p = argparse.ArgumentParser(prog="parity")
    register(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.paddle
def test_parity_eval_subcommand_and_failure(work, tmp_path, capsys):
    """``parity eval`` passes on the right weights and exits 1, naming the images, on wrong ones."""
    import paddle

    from cream_paddle import create_model

    p = _parity_parser()
    js = tmp_path / "parity.json"
    args = p.parse_args(["eval", "--model", MODEL, "--ckpt", str(work["ckpt"]), "--data",
                         str(work["list"]), "--paddle-weights", str(work["pdparams"]),
                         "--json", str(js), "--no-progress", "--workers", "0"])
    assert args.func(args) == 0
    rep = json.loads(js.read_text())
    assert rep["ok"] and rep["top1_agreement"] == 100.0 and rep["disagreements"] == []

    net = create_model(MODEL, checkpoint=work["pdparams"])
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    head = next(k for k in sd if k.startswith("classifier") and sd[k].ndim == 2)
    sd[head] = np.ascontiguousarray(sd[head][:, ::-1])  # classifier columns permuted
    bad = tmp_path / "bad.pdparams"
    paddle.save(sd, str(bad))
    args = p.parse_args(["eval", "--model", MODEL, "--ckpt", str(work["ckpt"]), "--data",
                         str(work["inet"]), "--paddle-weights", str(bad), "--json", str(js),
                         "--no-progress", "--workers", "0"])
    assert args.func(args) == 1
    rep = json.loads(js.read_text())
    assert not rep["ok"] and rep["disagreements"] and rep["max_logit_diff"] > 1e-3
    out = capsys.readouterr().out
    assert "FAIL" in out and Path(rep["disagreements"][0]["path"]).name in out


def test_parity_eval_bad_input_exits_2(tmp_path, capsys):
    p = _parity_parser()
    args = p.parse_args(["eval", "--model", MODEL, "--ckpt", str(tmp_path / "x.pth.tar"),
                         "--data", str(tmp_path / "missing"), "--no-progress"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity eval: error: ") and "missing" in err and "Traceback" not in err


# --- bad data and bad arguments through the CLI -------------------------------------------------------

def _bad_folder(root: Path) -> int:
    good = cd.sample_files()
    for p in good[:3]:
        (root / "n01440764").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / "n01440764" / p.name)
    data = good[3].read_bytes()
    (root / "n01440764" / "trunc.JPEG").write_bytes(data[: len(data) // 2])
    (root / "n01440764" / "zero.JPEG").write_bytes(b"")
    (root / "n01440764" / "text.JPEG").write_text("not an image")
    (root / "n01443537").mkdir()
    (root / "holiday").mkdir()
    shutil.copyfile(good[0], root / "holiday" / "x.jpg")
    return 5  # truncated, zero-byte, non-image, empty folder, folder that is no wnid


def test_cli_bad_data_stops_with_one_line(work, tmp_path, capsys):
    _bad_folder(tmp_path / "val")
    rc, js, pred = _run(["--framework", "torch", "--model", MODEL, "--weights", work["ckpt"],
                         "--data", tmp_path / "val"], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and not js.exists() and not pred.exists()
    lines = err.strip().splitlines()
    assert lines[0].startswith("cream-eval: error: ") and str(tmp_path / "val") in lines[0]
    assert "--skip-bad" in lines[1] and "Traceback" not in err


def test_cli_skip_bad_counts_what_it_skipped(work, tmp_path, capsys):
    n_bad = _bad_folder(tmp_path / "val")
    rc, js, _ = _run(["--framework", "torch", "--model", MODEL, "--weights", work["ckpt"],
                      "--data", tmp_path / "val", "--skip-bad", "--workers", 2], tmp_path)
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads(js.read_text())
    assert rep["images"] == 3 and len(rep["skipped"]) == n_bad
    problems = " ".join(s["problem"] for s in rep["skipped"])
    for words in ("truncated image", "empty file", "not an image", "empty folder",
                  "no ImageNet-1k wnid"):
        assert words in problems
    assert f"skipped {n_bad} bad item(s)" in out and "trunc.JPEG" in out


def test_cli_bad_weights_and_outputs(work, tmp_path, capsys):
    base = ["--model", MODEL, "--data", str(work["inet"]), "--no-progress"]
    assert cream_eval(["--framework", "paddle", "--weights", str(work["ckpt"]), *base]) == 2
    assert "convert it first" in capsys.readouterr().err
    assert cream_eval(["--framework", "torch", "--weights", str(tmp_path / "none.pth.tar"),
                       *base]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    assert cream_eval(["--framework", "torch", "--weights", str(junk), *base]) == 2
    err = capsys.readouterr().err
    assert str(junk) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    before = work["ckpt"].read_bytes()
    assert cream_eval(["--framework", "torch", "--weights", str(work["ckpt"]), *base,
                       "--json", str(work["ckpt"])]) == 2  # an output problem: bad input
    assert "would overwrite an input" in capsys.readouterr().err
    assert work["ckpt"].read_bytes() == before
    assert cream_eval(["--framework", "torch", "--model", "cream-9"]) == 2


# --- the evaluation code itself -------------------------------------------------------------------------

def test_evaluate_twins_share_their_api():
    import cream_paddle.evaluate as pe
    import cream_torch_ref.evaluate as te

    for name in ("resolve_mode", "make_forward", "forward_logits", "evaluate"):
        assert str(inspect.signature(getattr(te, name))).replace("torch.nn.Module", "M") == \
            str(inspect.signature(getattr(pe, name))).replace("paddle.nn.Layer", "M"), name
    assert set(te.FORWARD_MODES) <= set(pe.FORWARD_MODES)


def test_loss_and_topk_match_torch(work):
    """Shared metrics equal torch's own cross-entropy and topk on the reference logits."""
    import torch

    from cream_torch_ref import create_model
    from cream_torch_ref.evaluate import forward_logits

    logits = forward_logits(create_model(MODEL, checkpoint=work["ckpt"]), _photo_batch())
    labels = np.arange(len(logits)) * 97 % 1000
    ours = cd.cross_entropy(logits, labels).mean()
    theirs = torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                               torch.from_numpy(labels)).item()
    assert abs(ours - theirs) <= FP32_LOSS_RTOL * max(1.0, abs(theirs))  # torch sums in fp32
    assert cd.topk_indices(logits, 5).tolist() == \
        torch.from_numpy(logits).topk(5, 1, True, True).indices.tolist()


@pytest.mark.paddle
@pytest.mark.slow
def test_paddle_forward_modes_agree(work):
    """to_static and Paddle Inference give eager's predictions (they are used for speed)."""
    from cream_paddle import create_model
    from cream_paddle.evaluate import make_forward
    from parity.eval_parity import EVAL_LOGITS

    net = create_model(MODEL, checkpoint=work["pdparams"])
    x = _photo_batch()
    eager = make_forward(net, "eager", RES)(x)
    for mode in ("static", "inference"):
        out = make_forward(net, mode, RES)(x)
        assert out.argmax(1).tolist() == eager.argmax(1).tolist(), mode
        assert type(net.forward).__name__ == "method", "compiling must not convert the model"
        scale = float(np.abs(eager).max())
        assert np.abs(out - eager).max() <= EVAL_LOGITS.atol + EVAL_LOGITS.rtol * scale, mode
