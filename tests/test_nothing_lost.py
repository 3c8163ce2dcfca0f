"""Fault injection: nothing is ever lost (issue 15).

Each case of the issue is reproduced and must end with no traceback, a one-line error and the
documented exit code (README "What happens when things go wrong"), inputs byte-identical and a
consistent set of files. Crashes are simulated in-process: ``os.replace`` (or ``os.fsync``) is
patched to fail, or to "kill" the process (a ``BaseException`` after which, as after SIGKILL,
none of the tool's clean-up runs), at its k-th call. Tests run as root, so read-only folders are
simulated with ``EROFS`` from the write path, not with ``chmod``.

Tiny data: Cream-14 (64 px) on 4 of the bundled photos; the training cases take 8 photos in 2
classes, batch 4, 2 epochs.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

import cream_core.data as cd

from cream_core.io import outputs

MODEL = "cream-14"


class Killed(BaseException):
    """The process died here: nothing after it runs (its handlers are disabled by :func:`kill_at`)."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_at(monkeypatch: pytest.MonkeyPatch, k: int = 0,
            name: str = "") -> List[str]:
    """Make the ``k``-th ``os.replace`` (1-based), or the one onto a file called ``name``, kill the
    process; returns the renames done."""
    real = os.replace
    done: List[str] = []

    def replace(src: Any, dst: Any) -> None:
        if len(done) + 1 == k or os.path.basename(str(dst)) == name:
            raise Killed(f"killed at rename {k} ({os.path.basename(str(dst))})")
        real(src, dst)
        done.append(os.path.basename(str(dst)))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(outputs, "_after_failure", lambda *a: None)  # a killed process cleans nothing up
    return done


def _one_line_error(err: str, prog: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip() and ": note: " not in ln]
    errors = [ln for ln in lines if ln.startswith(f"{prog}: error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    for w in words:
        assert w in errors[0], (w, err)


# --- the core: a set of files after a crash ----------------------------------------------------------

def _writers(tag: bytes) -> Dict[str, Callable[[Any], Any]]:
    return {name: (lambda f, n=name: f.write(tag + n.encode())) for name in ("a.bin", "b.bin", "c.csv")}


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_set_commit_killed_at_each_rename_is_old_or_new(tmp_path: Path, monkeypatch, k: int) -> None:
    from cream_core.io.outputs import commit_files, prepare_outputs

    commit_files({tmp_path / n: w for n, w in _writers(b"old-").items()})
    kill_at(monkeypatch, k)
    with pytest.raises(Killed):
        commit_files({tmp_path / n: w for n, w in _writers(b"new-").items()})
    monkeypatch.undo()
    monkeypatch.setattr(outputs, "_pid_alive", lambda pid: False)  # the killed run is gone
    prepare_outputs({n: str(tmp_path / n) for n in ("a.bin", "b.bin", "c.csv")})  # the next run
    contents = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(contents) == ["a.bin", "b.bin", "c.csv"], contents  # no temporary, no journal
    tags = {v.split(b"-")[0] for v in contents.values()}
    assert tags == ({b"old"} if k == 1 else {b"new"}), (k, contents)  # k=1: before the journal


def test_set_with_a_non_utf8_name_recovers(tmp_path: Path, monkeypatch) -> None:
    from cream_core.io.outputs import commit_files, recover_commits

    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"r\xe9sum\xe9.csv"))
    kill_at(monkeypatch, 3)  # journal, first member, killed before the second
    with pytest.raises(Killed):
        commit_files({tmp_path / "a.bin": lambda f: f.write(b"a"), odd: lambda f: f.write(b"b")})
    monkeypatch.undo()
    assert recover_commits([str(tmp_path)]) == [odd]
    assert Path(odd).read_bytes() == b"b" and (tmp_path / "a.bin").read_bytes() == b"a"


def test_sidecar_always_describes_its_file_even_under_a_concurrent_force(tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Run B commits while run A is between its two renames: the set must be A's or B's."""
    from converters.files import sidecar_path, write_outputs

    dst = tmp_path / "x.pdparams"
    real = os.replace
    state = {"inside": False}

    def run_b() -> None:
        write_outputs(str(dst), lambda f: f.write(b"B" * 1000) and None, {"run": "B"})

    def replace(src: Any, dst_: Any) -> None:
        real(src, dst_)
        if str(dst_) == str(dst) and threading.current_thread() is threading.main_thread() \
                and not state["inside"]:
            state["inside"] = True
            t = threading.Thread(target=run_b)
            t.start()
            t.join(timeout=1.0)  # with the folder lock B waits for A; without it B lands in between
            state["thread"] = t

    monkeypatch.setattr(os, "replace", replace)
    write_outputs(str(dst), lambda f: f.write(b"A" * 1000) and None, {"run": "A"})
    state["thread"].join()
    side = json.loads(Path(sidecar_path(str(dst))).read_text())
    assert side["output_sha256"] == _digest(dst), (side["run"], dst.read_bytes()[:1])
    assert dst.read_bytes()[:1] == side["run"].encode()


def test_convert_killed_between_renames_recovers(tmp_path: Path, monkeypatch) -> None:
    from converters.files import sidecar_path, write_outputs

    dst = tmp_path / "x.pdparams"
    write_outputs(str(dst), lambda f: f.write(b"old") and None, {"v": 1})
    kill_at(monkeypatch, name="x.pdparams.json")  # the .pdparams is in place, not yet its sidecar
    with pytest.raises(Killed):
        write_outputs(str(dst), lambda f: f.write(b"new") and None, {"v": 2})
    monkeypatch.undo()
    write_outputs(str(tmp_path / "other.pdparams"), lambda f: f.write(b"o") and None, {})  # next run
    side = json.loads(Path(sidecar_path(str(dst))).read_text())
    assert side["output_sha256"] == _digest(dst) and side["v"] == 2


def test_stale_temporaries_of_killed_runs_are_cleaned_and_only_those(tmp_path: Path) -> None:
    from cream_core.io.outputs import prepare_outputs

    old = time.time() - 3600
    stale = [".x.pdparams.k2j4h5g6.tmp", ".x.pdparams.json.a1b2c3d4.tmp", ".r.json.zz9yy8xx.part",
             f".r.json.{2 ** 22 + 7}-abcdefgh.part"]  # a pid that cannot be alive
    kept = [".x.pdparams.backup.tmp", "x.pdparams.k2j4h5g6.tmp", ".other.bin.k2j4h5g6.part",
            ".r.json.young123.part", f".r.json.{os.getpid()}-abcdefgh.part"]
    for name in stale + kept:
        p = tmp_path / name
        p.write_bytes(b"partial")
        if name != ".r.json.young123.part":
            os.utime(p, (old, old))
    (tmp_path / ".r.json.young123.part").touch()  # newer than the run: maybe a live run's
    notes: List[str] = []
    prepare_outputs({"--json": str(tmp_path / "r.json"), "out": str(tmp_path / "x.pdparams"),
                     "side": str(tmp_path / "x.pdparams.json")}, log=notes.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert len(notes) == len(stale)


def test_symlinked_output_and_the_same_file_twice_are_refused(tmp_path: Path) -> None:
    from cream_core.io.errors import OutputError
    from cream_core.io.outputs import prepare_outputs

    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    img = data / "c" / "i.jpg"
    img.write_bytes(b"image")
    (tmp_path / "link").symlink_to(data / "c")
    with pytest.raises(OutputError, match="lies inside the input folder"):
        prepare_outputs({"--json": str(tmp_path / "link" / "r.json")}, [str(data)])
    with pytest.raises(OutputError, match="would overwrite an input"):
        prepare_outputs({"--predictions": str(tmp_path / "link" / "i.jpg")}, [str(img)])
    with pytest.raises(OutputError, match="name the same file"):
        prepare_outputs({"--json": str(tmp_path / "r.json"),
                         "--predictions": str(tmp_path / "." / "r.json")})
    assert img.read_bytes() == b"image" and not (tmp_path / "r.json").exists()


# --- data: symbolic link loops, list files ------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(module_tmp: Callable[[str], Path]) -> Path:
    """``root/{train,val}/{a,b}/`` with the 8 bundled photos (4 per class) in each split."""
    root = module_tmp("photos")
    for split in ("train", "val"):
        for i, p in enumerate(cd.sample_files()):
            d = root / split / "ab"[i % 2]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / p.name)
    return root


@pytest.mark.parametrize("where", ["class", "root"])
def test_symlink_loops_are_bad_items_not_tracebacks(photos: Path, tmp_path: Path, where: str) -> None:
    data = tmp_path / "d"
    shutil.copytree(photos / "train", data)
    loop = (data / "a" / "loop.JPEG") if where == "class" else (data / "zz")
    loop.symlink_to(loop.name)  # linked to itself
    with pytest.raises(cd.BadDataError, match="symbolic link") as e:
        cd.open_dataset(data, "folder")
    assert str(loop) in str(e.value)
    ds = cd.open_dataset(data, "folder", skip_bad=True)
    assert len(ds) == 8 and [p.path for p in ds.problems] == [str(loop)]


def test_list_files_bom_and_entries_outside_the_folder(photos: Path, tmp_path: Path) -> None:
    lst = tmp_path / "l" / "val.txt"
    (tmp_path / "l" / "img").mkdir(parents=True)
    first = sorted((photos / "train" / "a").iterdir())[0]
    shutil.copy(first, tmp_path / "l" / "img" / first.name)
    lst.write_bytes(b"\xef\xbb\xbf" + f"img/{first.name} 3\n".encode())
    assert [s.label for s in cd.open_dataset(lst)] == [3]
    for entry in (f"../../{first.name}", str(first)):
        lst.write_text(f"img/{first.name} 3\n{entry} 1\n")
        with pytest.raises(cd.BadDataError, match="outside the list file's folder"):
            cd.open_dataset(lst)
        assert len(cd.open_dataset(lst, skip_bad=True)) == 1


# --- cream-eval -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ev(module_tmp: Callable[[str], Path], official_cream14: Path, one_torch_thread: None) -> Dict[str, Path]:
    """A seeded cream-14 checkpoint and an ImageNet layout of 4 photos."""
    root = module_tmp("ev")
    ckpt = official_cream14
    val = cd.make_imagenet_layout(root / "inet", {p.name: i for i, p in
                                                  enumerate(cd.sample_files()[:4])})
    return {"ckpt": ckpt, "val": val, "root": root}


def _eval(ev: Dict[str, Path], *extra: Any) -> int:
    from cream_cli.eval import main

    return main(["--framework", "torch", "--model", MODEL, "--weights", str(ev["ckpt"]),
                 "--data", str(ev["val"]), "--workers", "0", "--threads", "1", "--no-progress",
                 *map(str, extra)])


def test_eval_json_and_predictions_on_one_file_refused(ev, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    assert _eval(ev, "--json", "a/r.json", "--predictions", "./a/r.json") == 2
    _one_line_error(capsys.readouterr().err, "cream-eval", "same file")
    assert not (tmp_path / "a" / "r.json").exists()


def test_eval_predictions_onto_a_dataset_image_refused(ev, tmp_path, capsys) -> None:
    before = _snapshot(ev["val"])
    image = next(ev["val"].rglob("*.JPEG"))
    assert _eval(ev, "--predictions", image) == 2
    _one_line_error(capsys.readouterr().err, "cream-eval", "input", str(image))
    assert _snapshot(ev["val"]) == before


def test_eval_odd_names_and_a_loop_with_skip_bad(ev, tmp_path, capsys) -> None:
    data = tmp_path / "val"
    shutil.copytree(ev["val"], data)
    folder = next(p for p in data.iterdir() if p.is_dir())
    first = next(folder.iterdir())
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.JPEG")  # Latin-1, not UTF-8
    os.rename(os.fsencode(first), odd)
    (folder / "loop.JPEG").symlink_to("loop.JPEG")
    js, pred = tmp_path / "r.json", tmp_path / "p.csv"
    from cream_cli.eval import main

    args = ["--framework", "torch", "--model", MODEL, "--weights", str(ev["ckpt"]), "--data",
            str(data), "--workers", "0", "--no-progress", "--json", str(js), "--predictions", str(pred)]
    assert main(args) == 2  # the loop, without --skip-bad
    _one_line_error(capsys.readouterr().err, "cream-eval", "loop.JPEG", "symbolic link")
    assert main([*args, "--skip-bad"]) == 0, capsys.readouterr().err
    rows = pred.read_bytes().splitlines()
    assert any(r.startswith(odd) for r in rows), rows  # the file's own bytes (surrogateescape)
    rep = json.loads(js.read_text())
    assert rep["images"] == 4 and [os.path.basename(s["path"]) for s in rep["skipped"]] == ["loop.JPEG"]


@pytest.mark.parametrize("failure", [errno.EROFS, errno.ENOSPC])
def test_eval_output_failures_after_the_work(ev, tmp_path, monkeypatch, capsys, failure) -> None:
    js, pred = tmp_path / "r.json", tmp_path / "p.csv"
    js.write_text("previous")
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:  # the probe (first call) passes: the disk fills during the run
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(failure, os.strerror(failure))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert _eval(ev, "--json", js, "--predictions", pred) == 2
    _one_line_error(capsys.readouterr().err, "cream-eval", str(tmp_path), os.strerror(failure))
    assert js.read_text() == "previous" and not pred.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_eval_read_only_output_folder_refused_before_the_work(ev, tmp_path, monkeypatch,
                                                              capsys) -> None:
    import cream_cli.eval as ce

    def erofs(*a: Any, **k: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "fsync", erofs)
    monkeypatch.setattr(ce, "load_model", lambda *a, **k: pytest.fail("worked before checking"))
    assert _eval(ev, "--json", tmp_path / "r.json") == 2
    _one_line_error(capsys.readouterr().err, "cream-eval", "not writable", "Read-only")


@pytest.mark.parametrize("size", ["0", "-3", "100000", "big"])
def test_eval_img_size_is_validated(ev, capsys, size: str) -> None:
    assert _eval(ev, "--img-size", size) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--img-size" in err and err.count("error:") == 1


# --- cream-train: kill at each rename of an epoch's commit --------------------------------------------

def _train(data: Path, out: Path, *extra: str) -> int:
    from cream_cli.train import main

    return main(["--framework", "torch", "--model", MODEL, "--data", str(data), "--output", str(out),
                 "--epochs", "2", "--batch-size", "4", "--workers", "0", "--img-size", "64",
                 "--num-classes", "2", "--threads", "1", "--no-progress", *extra])


def _summary(out: Path) -> List[Dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _weights(path: Path) -> Dict[str, Any]:
    from cream_torch_ref.checkpoint import read_checkpoint

    ck = read_checkpoint(str(path))
    return {"epoch": ck["epoch"], **{f"{k}.{n}": v for k in ("state_dict", "state_dict_ema")
                                     for n, v in ck[k].items()}}


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(
        torch.equal(wa[k], wb[k]) if isinstance(wa[k], torch.Tensor) else wa[k] == wb[k] for k in wa)


@pytest.fixture(scope="module")
def trained(photos: Path, module_tmp: Callable[[str], Path]) -> Path:
    """An uninterrupted 2-epoch run: the reference every interrupted run must end equal to."""
    out = module_tmp("full") / "run"
    assert _train(photos, out) == 0
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
def test_train_killed_in_the_epoch_commit_loses_nothing(photos, trained, tmp_path, monkeypatch,
                                                        capsys, k: int) -> None:
    """Killed at rename k of epoch 0's end (1: journal, 2: last, 3: model_best, 4: summary.csv),
    then resumed: the summary has every epoch and model_best equals the uninterrupted run's."""
    before = _snapshot(photos)
    out = tmp_path / "run"
    kill_at(monkeypatch, k)
    with pytest.raises(Killed):
        _train(photos, out)
    monkeypatch.undo()
    assert _train(photos, out, "--resume", str(out / "last.pth.tar")) == 0, capsys.readouterr().err
    assert [r["epoch"] for r in _summary(out)] == ["0", "1"]
    assert _summary(out) == _summary(trained)
    assert _same_weights(out / "model_best.pth.tar", trained / "model_best.pth.tar")
    assert _same_weights(out / "last.pth.tar", trained / "last.pth.tar")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in trained.iterdir())
    assert _snapshot(photos) == before


def test_train_full_disk_at_the_epoch_commit_keeps_the_previous_set(photos, tmp_path, monkeypatch,
                                                                    capsys) -> None:
    out = tmp_path / "run"
    assert _train(photos, out, "--epochs", "1") == 0
    kept = _snapshot(out)
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 1:  # the probe passes, the checkpoint's sync fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert _train(photos, out, "--resume", str(out / "last.pth.tar")) == 2
    _one_line_error(capsys.readouterr().err, "cream-train", "No space left")
    assert _snapshot(out) == kept


def test_train_resume_with_other_settings_is_refused(photos, trained, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    kept = _snapshot(out)
    assert _train(photos, out, "--resume", str(out / "last.pth.tar"), "--seed", "7",
                  "--lr", "0.5") == 2
    _one_line_error(capsys.readouterr().err, "cream-train", "--seed 7", "--lr 0.5")
    assert _snapshot(out) == kept


def test_train_and_search_refuse_read_only_outputs_before_the_work(photos, tmp_path, monkeypatch,
                                                                   capsys) -> None:
    from cream_cli.search import main as search

    def erofs(*a: Any, **k: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "fsync", erofs)
    assert _train(photos, tmp_path / "t") == 2
    _one_line_error(capsys.readouterr().err, "cream-train", "not writable")
    assert search(["--framework", "torch", "--data", str(photos), "--output", str(tmp_path / "s"),
                   "--num-classes", "2", "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "cream-search", "not writable")
    assert not list((tmp_path / "t").iterdir()) and not list((tmp_path / "s").iterdir())


def test_train_output_inside_the_data_is_refused(photos, tmp_path, capsys) -> None:
    data = tmp_path / "d"
    shutil.copytree(photos, data)
    before = _snapshot(data)
    assert _train(data, data / "train" / "a" / "run") == 2  # would become a class folder
    _one_line_error(capsys.readouterr().err, "cream-train", "inside the input folder")
    assert _snapshot(data) == before


def test_parity_json_onto_the_checkpoint_is_refused(ev, tmp_path, capsys) -> None:
    from parity.cli import main

    before = _digest(ev["ckpt"])
    link = tmp_path / "same.pth.tar"
    link.symlink_to(ev["ckpt"])
    assert main(["run", "--model", MODEL, "--ckpt", str(ev["ckpt"]), "--json", str(link),
                 "--report", str(tmp_path / "rep"), "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "parity run", "overwrite an input")
    assert _digest(ev["ckpt"]) == before


def test_search_full_disk_is_one_line_and_leaves_no_partial_file(photos, tmp_path, monkeypatch,
                                                                 capsys) -> None:
    from cream_cli.search import main as search

    out = tmp_path / "s"
    args = ["--framework", "torch", "--data", str(photos), "--output", str(out), "--num-classes", "2",
            "--image-size", "32", "--batch-size", "8", "--flops-max", "20", "--epochs", "1",
            "--workers", "0", "--threads", "1", "--no-progress", "--lr", "0.01"]
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 1:  # the probe passes; the disk is full when the checkpoint is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert search([*args, "--max-iters", "1"]) == 2
    _one_line_error(capsys.readouterr().err, "cream-search", "No space left")
    assert sorted(p.name for p in out.iterdir()) == ["search.log"]  # no partial checkpoint


@pytest.mark.cli
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to kill at a rename")
def test_train_sigkill_at_the_second_rename_as_the_issue_did(photos, trained, tmp_path) -> None:
    """The issue's reproduction, a real SIGKILL: ``strace -e inject=rename:signal=SIGKILL:when=2``."""
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cream_cli.train", "--framework", "torch", "--model", MODEL,
           "--data", str(photos), "--output", str(out), "--epochs", "2", "--batch-size", "4",
           "--workers", "0", "--img-size", "64", "--num-classes", "2", "--threads", "1",
           "--no-progress"]
    if shutil.which("strace") is None:  # not a Python dependency; the in-process kills above
        pytest.skip("strace is not installed (the same kill-at-rename runs in-process above)")
    calls = "rename,renameat,renameat2"
    killed = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={calls}", "-e",
                             f"inject={calls}:signal=SIGKILL:when=2", *cmd], env=env,
                            capture_output=True, timeout=600)
    if not out.exists() and b"ptrace" in killed.stderr:
        pytest.skip("strace may not trace here: " + killed.stderr.decode(errors="replace")[:200])
    assert killed.returncode != 0 and not (out / "summary.csv").exists()
    resumed = subprocess.run([*cmd, "--resume", str(out / "last.pth.tar")], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _summary(out) == _summary(trained)
    assert _same_weights(out / "model_best.pth.tar", trained / "model_best.pth.tar")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in trained.iterdir())
