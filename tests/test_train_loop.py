"""The retraining loop in both frameworks: checkpoints, resume, data order, mask injection, CLI errors.

Tiny runs: Cream-14 at 64 px on the 8 bundled photos sorted into 2 class folders, batch 4.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from cream_core.config.retrain import load_retrain_config
from cream_core.data import open_dataset, sample_files
from cream_core.data.train_loader import TrainLoader, epoch_order
from cream_core.training.masks import StepMasks
from cream_core.data.train_transforms import TrainTransform


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_data(module_tmp: Callable[[str], Path]) -> Path:
    """``root/train/{a,b}`` and ``root/val/{a,b}`` with the bundled photos (4 per class)."""
    root = module_tmp("photos")
    for split in ("train", "val"):
        for i, p in enumerate(sample_files()):
            d = root / split / "ab"[i % 2]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / p.name)
    return root


def _cfg(**kw):
    base = dict(num_classes=2, batch_size=4, eval_batch_size=8, epochs=2, drop_path_rate=0.1)
    base.update(kw)
    return load_retrain_config("cream-14", **base)


def _sets(root: Path):
    return open_dataset(root / "train", "folder"), open_dataset(root / "val", "folder")


# --- data order ---------------------------------------------------------------------------------

def test_batches_do_not_depend_on_workers_or_ranks(photo_data) -> None:
    ds, _ = _sets(photo_data)
    tt = TrainTransform(64)
    one = list(TrainLoader(ds, tt, 4, seed=3, workers=0).epoch_batches(1))
    two = list(TrainLoader(ds, tt, 4, seed=3, workers=2).epoch_batches(1))
    ranks = [list(TrainLoader(ds, tt, 2, seed=3, rank=r, world_size=2, workers=0).epoch_batches(1))
             for r in (0, 1)]
    assert len(one) == 2
    for k, b in enumerate(one):
        np.testing.assert_array_equal(b.images, two[k].images)
        np.testing.assert_array_equal(b.images, np.concatenate([ranks[0][k].images,
                                                                ranks[1][k].images]))
        np.testing.assert_array_equal(b.labels, np.concatenate([ranks[0][k].labels,
                                                                ranks[1][k].labels]))
        assert ranks[1][k].rows == (2, 4) and ranks[1][k].global_size == 4
    assert sorted(np.concatenate([b.indices for b in one]).tolist()) == list(range(8))
    assert not np.array_equal(epoch_order(8, 3, 0), epoch_order(8, 3, 1))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainLoader(ds, tt, 8, world_size=2, workers=0)


# --- mask injection -------------------------------------------------------------------------

def _injector_checks(mod, model, to_numpy, make_input) -> None:
    inj = mod.MaskInjector(model)
    spec = inj.spec()
    assert len(spec.drop_path) > 0 and spec.dropout == 0.2 and spec.features == 1280
    model.train()
    x = make_input()
    n = 2
    zero = StepMasks([np.zeros(n, np.float32) for _ in spec.drop_path],
                     np.zeros((n, spec.features), np.float32))
    inj.set(zero)
    out_zero = to_numpy(model(x))
    bias = to_numpy(model.get_classifier().bias)
    np.testing.assert_allclose(out_zero, np.broadcast_to(bias, out_zero.shape), atol=1e-6)
    ones = StepMasks([np.ones(n, np.float32) for _ in spec.drop_path],
                     np.ones((n, spec.features), np.float32))
    inj.set(ones)
    a = to_numpy(model(x))
    inj.set(ones)
    np.testing.assert_array_equal(a, to_numpy(model(x)))  # given masks: deterministic
    assert not np.allclose(a, out_zero)
    inj.remove()
    assert model.drop_rate == 0.2 and not any(isinstance(m, mod.MaskedDropPath)
                                              for m in _layers(model))


def _layers(model):
    return list(model.modules()) if hasattr(model, "modules") else model.sublayers()


def test_mask_injector_torch() -> None:
    from cream_torch_ref import train as T

    model = T.build_model(_cfg())
    _injector_checks(T, model, lambda t: t.detach().numpy(),
                     lambda: torch.from_numpy(np.random.default_rng(0).standard_normal(
                         (2, 3, 64, 64)).astype(np.float32)))


@pytest.mark.paddle
def test_mask_injector_paddle() -> None:
    import paddle

    from cream_paddle import train as P

    model = P.build_model(_cfg())
    _injector_checks(P, model, lambda t: np.asarray(t.numpy()),
                     lambda: paddle.to_tensor(np.random.default_rng(0).standard_normal(
                         (2, 3, 64, 64)).astype(np.float32)))


def _train_module(framework: str):
    if framework == "torch":
        from cream_torch_ref import train as T
        return T
    from cream_paddle import train as P
    return P


@pytest.mark.paddle
@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_step_ops_fill_the_core_protocol_and_refuse_bad_shards(framework: str) -> None:
    """Each framework's ``TrainStepOps`` has every member of the core protocol; the one core step
    refuses a batch that does not split into equal shards, and the injector refuses masks for
    another number of layers, with the same messages in both frameworks."""
    from cream_core.training.step import TrainStepOps

    mod = _train_module(framework)
    members = {n for n in vars(TrainStepOps) if not n.startswith("_")}
    assert {"tensor", "zero_grad", "bn_buffers", "assign", "no_grad"} <= members
    assert not sorted(n for n in members if not hasattr(mod.TrainStepOps, n))
    cfg = _cfg()
    model = mod.build_model(cfg)
    opt, loss_fn = mod.create_optimizer(model, cfg), mod.create_loss(cfg)
    images, labels = np.zeros((3, 3, 64, 64), np.float32), np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="batch of 3 cannot be split into 2 equal shards"):
        mod.train_step(model, opt, loss_fn, images, labels, shards=2)
    inj = mod.MaskInjector(model)
    with pytest.raises(ValueError, match="0 drop-path masks for"):
        inj.set(StepMasks([], None))
    inj.remove()


# --- resume, checkpoints ----------------------------------------------------------------------

def _resume_equal(framework: str, data: Path, tmp: Path):
    from cream_cli.train import run_train

    tr, va = _sets(data)
    cfg = _cfg()
    a = run_train(framework, cfg, tr, va, str(tmp / "a"), workers=0, progress=False,
                  log=lambda s: None)
    run_train(framework, cfg.replace(epochs=1), tr, va, str(tmp / "b"), workers=0,
              progress=False, log=lambda s: None)
    b = run_train(framework, cfg, tr, va, str(tmp / "b"), workers=0, progress=False,
                  resume=str(tmp / "b" / os.path.basename(a.last_checkpoint)), log=lambda s: None)
    assert a.epochs_run == [0, 1] and b.epochs_run == [1]
    return a, b


def _rows(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_torch_resume_is_bit_exact_and_official_layout(photo_data, tmp_path) -> None:
    from cream_torch_ref.checkpoint import read_checkpoint

    a, b = _resume_equal("torch", photo_data, tmp_path)
    A, B = read_checkpoint(a.last_checkpoint), read_checkpoint(b.last_checkpoint)
    assert set(A) == {"epoch", "arch", "state_dict", "state_dict_ema", "optimizer", "args",
                      "version"}
    assert A["epoch"] == B["epoch"] == 1 and A["arch"] == "14m_retrain" and A["version"] == 2
    assert A["args"]["model"] == "cream-14" and A["args"]["augment"]["re_mode"] == "pixel"
    for key in ("state_dict", "state_dict_ema"):
        for k, v in A[key].items():
            assert torch.equal(v, B[key][k]), f"{key}.{k} differs after resume"
    assert not torch.equal(A["state_dict"]["conv_stem.weight"],
                           A["state_dict_ema"]["conv_stem.weight"])
    assert [r["epoch"] for r in _rows(tmp_path / "b" / "summary.csv")] == ["0", "1"]
    assert _rows(tmp_path / "a" / "summary.csv") [1]["train_loss"] == \
        _rows(tmp_path / "b" / "summary.csv")[1]["train_loss"]
    assert os.path.exists(a.best_checkpoint)
    # the official-layout file loads into the reference model (EMA weights, as the official test)
    from cream_torch_ref import create_model
    m = create_model("cream-14", num_classes=2, checkpoint=a.last_checkpoint)
    assert torch.equal(m.state_dict()["conv_stem.weight"], A["state_dict_ema"]["conv_stem.weight"])
    assert oct(os.stat(a.last_checkpoint).st_mode & 0o777) != oct(0o600)


@pytest.mark.paddle
def test_paddle_resume_is_bit_exact_and_pdparams_usable(photo_data, tmp_path) -> None:
    from cream_paddle import create_model
    from cream_paddle.checkpoint import load_checkpoint, read_checkpoint

    a, b = _resume_equal("paddle", photo_data, tmp_path)
    A, B = read_checkpoint(a.last_checkpoint), read_checkpoint(b.last_checkpoint)
    assert {"epoch", "state_dict", "state_dict_ema", "optimizer", "args"} <= set(A)
    for key in ("state_dict", "state_dict_ema"):
        for k, v in A[key].items():
            np.testing.assert_array_equal(v, B[key][k], err_msg=f"{key}.{k} differs after resume")
    acc = A["optimizer"]["accumulators"]
    assert "conv_stem.weight" in acc and set(acc["conv_stem.weight"]) >= {"_mean_square_0",
                                                                          "_momentum_0"}
    assert load_checkpoint(a.last_checkpoint).source == "state_dict_ema"
    m = create_model("cream-14", num_classes=2, checkpoint=a.last_checkpoint)
    np.testing.assert_array_equal(m.state_dict()["conv_stem.weight"].numpy(),
                                  A["state_dict_ema"]["conv_stem.weight"])
    from converters.convert import pdparams_to_pth
    res = pdparams_to_pth(a.last_checkpoint, str(tmp_path / "back.pth.tar"), model="cream-14")
    assert res.weights == "state_dict_ema"


def test_resume_refuses_checkpoint_of_another_model(photo_data, tmp_path) -> None:
    from cream_core.io.errors import CheckpointError
    from cream_cli.train import run_train
    from cream_torch_ref import seeded_official_checkpoint

    tr, va = _sets(photo_data)
    other = tmp_path / "c43.pth.tar"
    seeded_official_checkpoint("cream-43", other, args="none", num_classes=2)
    with pytest.raises(CheckpointError, match="no optimizer state|does not fit") as e:
        run_train("torch", _cfg(epochs=1), tr, va, str(tmp_path / "o"), workers=0, progress=False,
                  resume=str(other))
    assert str(other) in str(e.value)


# --- command line ------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path):
    return subprocess.run([sys.executable, "-m", "cream_cli.train", "--threads", "1", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.mark.cli
def test_cli_trains_and_refuses_bad_input(photo_data, tmp_path) -> None:
    out = tmp_path / "run"
    ok = _cli("--framework", "torch", "--model", "cream-14", "--data", str(photo_data),
              "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress",
              "--output", str(out), "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (out / "last.pth.tar").exists() and "EMA top-1" in ok.stdout
    again = _cli("--framework", "torch", "--model", "cream-14", "--data", str(photo_data),
                 "--output", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("lr: fast\n")
    cases = [
        (["--data", str(tmp_path / "nowhere")], "does not exist"),
        (["--data", str(photo_data), "--config", str(bad_cfg)], "lr must be a number"),
        (["--data", str(photo_data), "--resume", str(tmp_path / "none.pth.tar")],
         "no such checkpoint"),
        (["--data", str(photo_data), "--epochs", "0"], "--epochs: must be at least 1"),
    ]
    for extra, msg in cases:
        r = _cli("--framework", "torch", "--model", "cream-14", "--output", str(tmp_path / "x"),
                 *extra, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x" / "last.pth.tar").exists()
