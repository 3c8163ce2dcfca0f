"""The framework-free evaluation data pipeline (cream_core.data): official preprocessing, layouts, bad data.

The golden data in tests/data/golden_eval were made by running timm 0.1.20's ``create_loader``
(prefetcher on, as the official ``Cream/tools/test.py``) with the real torchvision 0.2.1 transforms
on the bundled photos and on derived images in every PIL mode (see the README there).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
from PIL import Image

import cream_core.data as cd
from cream_core.data import BadDataError

GOLDEN = Path(__file__).parent / "data" / "golden_eval"
SIZES = (64, 96, 160, 224)
FIRST, LAST = "n01440764", "n15075141"  # ImageNet-1k class 0 and class 999


def _golden() -> Dict:
    return json.loads((GOLDEN / "eval_transform.json").read_text())


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def golden_root(module_tmp: Callable[[str], Path]) -> Path:
    """The folder the golden data were made from: photos in class 0, mode images in class 999."""
    root = module_tmp("golden") / "val"
    (root / FIRST).mkdir(parents=True)
    (root / LAST).mkdir()
    for p in cd.sample_files():
        shutil.copyfile(p, root / FIRST / p.name)
    for p in sorted((GOLDEN / "modes").iterdir()):
        shutil.copyfile(p, root / LAST / p.name)
    return root


def _crops(ds: cd.ImageDataset, size: int, **kw) -> List[np.ndarray]:
    t = cd.EvalTransform(size, **kw)
    return [t(p) for p in ds.paths]


# --- canonical ImageNet labels ----------------------------------------------------------------

def test_synsets_are_the_canonical_imagenet_1k_order():
    wnids = cd.imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids))
    assert list(wnids) == sorted(wnids)
    assert all(cd.is_wnid_shaped(w) for w in wnids)
    # well-known indices of the standard ImageNet-1k order
    assert (wnids[0], cd.class_name(0)) == ("n01440764", "tench")
    assert (wnids[281], cd.class_name(281)) == ("n02123045", "tabby")
    assert (wnids[999], cd.class_name(999)) == ("n15075141", "toilet tissue")


# --- preprocessing against the official code --------------------------------------------------

@pytest.mark.golden
@pytest.mark.parametrize("size", SIZES)
def test_preprocessing_matches_official(golden_root, size):
    """uint8 crops and float32 network inputs bit-identical to timm 0.1.20 + torchvision 0.2.1."""
    g = _golden()
    entries = g["sizes"][str(size)]
    ds = cd.imagenet_folder(golden_root)
    # same files in the same (natural-key) order as the official Dataset
    assert [os.path.relpath(p, golden_root) for p in ds.paths] == [e["file"] for e in entries]
    crops = _crops(ds, size)
    floats = cd.normalize(np.stack(crops))
    assert floats.dtype == np.float32 and floats.shape == (len(ds), 3, size, size)
    for e, c, f in zip(entries, crops, floats):
        assert _sha(c) == e["uint8_sha256"], f"{e['file']} @ {size}: uint8 crop differs"
        assert _sha(f) == e["float32_sha256"], f"{e['file']} @ {size}: float32 input differs"
        assert int(c.astype(np.int64).sum()) == e["uint8_sum"]


@pytest.mark.golden
def test_normalized_arrays_match_official(golden_root):
    """The two stored float32 inputs (64 px) equal ours exactly (readable diff if not)."""
    ref = np.load(GOLDEN / "normalized_64.npz")
    for name in ("astronaut", "camera"):
        ours = cd.normalize(cd.EvalTransform(64)(golden_root / FIRST / f"{name}.JPEG")[None])[0]
        np.testing.assert_array_equal(ours, ref[name])


@pytest.mark.golden
def test_golden_check_catches_near_misses(golden_root):
    """Plausible re-implementations that are *not* the official pipeline fail the golden check."""
    entries = {e["file"]: e for e in _golden()["sizes"]["96"]}
    ds = cd.imagenet_folder(golden_root)
    names = [os.path.relpath(p, golden_root) for p in ds.paths]
    crops = np.stack(_crops(ds, 96))

    def uint8_mismatches(arrs) -> int:
        return sum(_sha(a) != entries[n]["uint8_sha256"] for n, a in zip(names, arrs))

    def float_mismatches(arrs) -> int:
        return sum(_sha(a) != entries[n]["float32_sha256"] for n, a in zip(names, arrs))

    assert uint8_mismatches(crops) == 0 and float_mismatches(cd.normalize(crops)) == 0
    # ToTensor + Normalize arithmetic instead of the prefetcher's
    mean = np.array(cd.IMAGENET_DEFAULT_MEAN, np.float32).reshape(3, 1, 1)
    std = np.array(cd.IMAGENET_DEFAULT_STD, np.float32).reshape(3, 1, 1)
    assert float_mismatches((crops.astype(np.float32) / 255.0 - mean) / std) > 0
    # bilinear (the config default the official test overrode) instead of bicubic
    assert uint8_mismatches(_crops(ds, 96, interpolation="bilinear")) > 0
    # round() instead of floor() for the resize length (96 / 0.875 = 109.7)
    imgs = [cd.open_image(p) for p in ds.paths]
    rounded = [cd.to_chw_uint8(cd.center_crop(cd.resize_shorter(im, 110), 96)) for im in imgs]
    assert uint8_mismatches(rounded) > 0


@pytest.mark.golden
def test_loader_batches_equal_single_image_transform(golden_root):
    """Worker processes, batching and reassembly change nothing (and keep the order)."""
    entries = _golden()["sizes"]["64"]
    ds = cd.imagenet_folder(golden_root)
    for workers, bs in ((0, 16), (2, 3)):
        batches = list(cd.EvalLoader(ds, 64, batch_size=bs, workers=workers))
        imgs = np.concatenate([b.images for b in batches])
        assert np.concatenate([b.indices for b in batches]).tolist() == list(range(len(ds)))
        assert [_sha(a) for a in imgs] == [e["uint8_sha256"] for e in entries]
        assert [b.images.shape[0] for b in batches] == [min(bs, len(ds) - i)
                                                        for i in range(0, len(ds), bs)]


def test_loader_spawned_workers(golden_root):
    """The spawn start method (macOS, Windows) gives the same batches as fork."""
    ds = cd.imagenet_folder(golden_root)
    a = np.concatenate([b.images for b in cd.EvalLoader(ds, 64, batch_size=8, workers=1,
                                                         start_method="spawn")])
    b = np.concatenate([b.images for b in cd.EvalLoader(ds, 64, batch_size=8, workers=0)])
    assert np.array_equal(a, b)


# --- image modes ------------------------------------------------------------------------------

MODE_FILES = sorted(p.name for p in (GOLDEN / "modes").iterdir())


@pytest.mark.parametrize("name", MODE_FILES)
def test_every_image_mode_opens_as_rgb(name):
    """CMYK JPEG, grayscale, palette (with transparency), RGBA, LA, 1-bit, PNG named .JPEG."""
    path = GOLDEN / "modes" / name
    with Image.open(path) as raw:
        assert raw.mode in {"CMYK", "L", "P", "RGBA", "LA", "1", "RGB"}
    img = cd.open_image(path)
    assert img.mode == "RGB" and img.size == (150, 100)
    crop = cd.EvalTransform(64)(path)
    assert crop.shape == (3, 64, 64) and crop.dtype == np.uint8


def test_mode_files_cover_imagenet_modes():
    modes = {Image.open(GOLDEN / "modes" / n).mode for n in MODE_FILES}
    assert {"CMYK", "L", "P", "RGBA", "LA"} <= modes
    assert any(Image.open(p).mode == "L" for p in cd.sample_files()), "need a grayscale photo"


def test_grayscale_becomes_three_equal_channels():
    gray = next(p for p in cd.sample_files() if Image.open(p).mode == "L")
    crop = cd.EvalTransform(96)(gray)
    assert np.array_equal(crop[0], crop[1]) and np.array_equal(crop[1], crop[2])


def test_alpha_is_dropped_not_composited(tmp_path):
    """convert('RGB') keeps the colour under a fully transparent pixel (no blending onto white)."""
    rgba = Image.new("RGBA", (80, 80), (10, 200, 30, 0))
    rgba.save(tmp_path / "a.png")
    assert cd.open_image(tmp_path / "a.png").getpixel((5, 5)) == (10, 200, 30)


# --- resize and crop rules ---------------------------------------------------------------------

@pytest.mark.parametrize("wh,size,expected", [
    ((500, 375), 73, (97, 73)),     # int(73 * 500 / 375) = int(97.33)
    ((375, 500), 73, (73, 97)),
    ((300, 300), 256, (256, 256)),
    ((640, 427), 182, (272, 182)),  # int(182 * 640 / 427) = int(272.79): truncated, not rounded
])
def test_resize_shorter_side_rule(wh, size, expected):
    assert cd.resize_shorter(Image.new("RGB", wh), size).size == expected


def test_resize_leaves_matching_shorter_side_untouched():
    img = Image.new("RGB", (73, 120))
    assert cd.resize_shorter(img, 73) is img


def test_scale_size_floors():
    assert [cd.scale_size(s) for s in SIZES] == [73, 109, 182, 256]


def test_normalize_requires_uint8():
    with pytest.raises(TypeError):
        cd.normalize(np.zeros((1, 3, 4, 4), np.float32))


# --- layouts -----------------------------------------------------------------------------------

def _photo(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cd.sample_files()[0], dst)
    return dst


def test_imagenet_subset_keeps_canonical_labels(tmp_path):
    _photo(tmp_path / "val" / "n02123045" / "cat.JPEG")      # tabby = 281
    _photo(tmp_path / "val" / "n15075141" / "paper.JPEG")    # 999
    for root in (tmp_path, tmp_path / "val"):                # DATA_DIR or DATA_DIR/val
        ds = cd.open_dataset(root)
        assert ds.layout == "imagenet" and ds.num_classes == 1000
        assert ds.labels == [281, 999]


def test_natural_order_as_official(tmp_path):
    for n in ("img10.JPEG", "img2.JPEG", "IMG1.jpeg"):
        _photo(tmp_path / FIRST / n)
    ds = cd.imagenet_folder(tmp_path)
    assert [Path(p).name for p in ds.paths] == ["IMG1.jpeg", "img2.JPEG", "img10.JPEG"]


def test_class_folder_labels_are_sorted_names(tmp_path):
    for c in ("dog", "cat", "zebra"):
        _photo(tmp_path / c / f"{c}.jpg")
    ds = cd.open_dataset(tmp_path)
    assert ds.layout == "folder" and ds.num_classes == 3
    assert dict(zip((Path(p).parent.name for p in ds.paths), ds.labels)) == \
        {"cat": 0, "dog": 1, "zebra": 2}
    assert cd.open_dataset(tmp_path, num_classes=10).num_classes == 10
    with pytest.raises(BadDataError, match="3 class folders but the model has 2"):
        cd.open_dataset(tmp_path, num_classes=2)


def test_list_file_paths_relative_to_its_folder(tmp_path, monkeypatch):
    _photo(tmp_path / "data" / "imgs" / "a b.jpg")
    _photo(tmp_path / "data" / "imgs" / "c.jpg")
    lst = tmp_path / "data" / "val.txt"
    lst.write_text("imgs/a b.jpg 7\n\nimgs/c.jpg 999\n")
    monkeypatch.chdir(tmp_path)  # not the list file's folder
    ds = cd.open_dataset(lst)
    assert ds.layout == "list" and ds.labels == [7, 999]
    assert all(os.path.isabs(p) and os.path.exists(p) for p in ds.paths)


def test_layout_helpers_round_trip(tmp_path):
    labels = {p.name: i * 100 for i, p in enumerate(cd.sample_files())}
    val = cd.make_imagenet_layout(tmp_path / "inet", labels)
    lst = cd.write_list_file(tmp_path / "lst" / "val.txt", labels)
    a, b = cd.open_dataset(val), cd.open_dataset(lst)
    assert {Path(p).name: lab for p, lab in zip(a.paths, a.labels)} == labels
    assert {Path(p).name: lab for p, lab in zip(b.paths, b.labels)} == labels
    with pytest.raises(FileExistsError):
        cd.write_list_file(lst, labels)


def test_bundled_photos_are_small_and_licensed():
    files = cd.sample_files()
    assert 6 <= len(files) <= 10
    assert sum(p.stat().st_size for p in files) < 1_000_000
    readme = (cd.samples_dir() / "README.md").read_text()
    for p in files:
        assert p.name in readme, f"{p.name} has no licence entry"
        with Image.open(p) as im:
            assert min(im.size) == 256


# --- bad data ----------------------------------------------------------------------------------

def _truncated(dst: Path) -> Path:
    data = cd.sample_files()[2].read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return dst


BAD_FILES = {
    "truncated": (lambda p: _truncated(p), "truncated image"),
    "zero_byte": (lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_bytes(b""), p)[-1],
                  "empty file"),
    "not_image": (lambda p: (p.parent.mkdir(parents=True, exist_ok=True),
                             p.write_text("this is not a JPEG\n" * 20), p)[-1], "not an image"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_image_file_message_names_file(tmp_path, kind):
    make, words = BAD_FILES[kind]
    path = make(tmp_path / FIRST / "bad.JPEG")
    with pytest.raises(BadDataError) as e:
        cd.EvalTransform(64)(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ":") and words in msg and "\n" not in msg


def _bad_tree(root: Path) -> Dict[str, str]:
    """A val folder with good photos and one of every folder-level problem; returns path->words."""
    good = cd.sample_files()[:3]
    for p in good:
        _photo(root / FIRST / p.name)
    shutil.copyfile(good[1], root / FIRST / "zz_copy.JPEG")
    bad = {
        str(_truncated(root / FIRST / "trunc.JPEG")): "truncated image",
        str(BAD_FILES["zero_byte"][0](root / FIRST / "empty.JPEG")): "empty file",
        str(BAD_FILES["not_image"][0](root / FIRST / "text.JPEG")): "not an image",
    }
    (root / FIRST / "notes.txt").write_text("hello")
    bad[str(root / FIRST / "notes.txt")] = "not an image file"
    (root / "n01443537").mkdir()
    bad[str(root / "n01443537")] = "empty folder"
    _photo(root / "cats" / "x.jpg")
    bad[str(root / "cats")] = "no ImageNet-1k wnid"
    (root / FIRST / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, never reported
    return bad


def test_folder_problems_stop_by_default(tmp_path):
    _bad_tree(tmp_path)
    with pytest.raises(BadDataError) as e:
        cd.open_dataset(tmp_path)
    assert e.value.skippable and "\n" not in str(e.value)


def test_skip_bad_collects_every_problem(tmp_path):
    bad = _bad_tree(tmp_path)
    ds = cd.open_dataset(tmp_path, skip_bad=True)
    loader = cd.EvalLoader(ds, 64, batch_size=2, workers=2, skip_bad=True)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 4  # 3 photos + the copy
    got = {b.path: b.problem for b in loader.skipped}
    assert set(got) == set(bad)
    for path, words in bad.items():
        assert words in got[path], (path, got[path])


def test_decode_error_stops_loader_in_order(tmp_path):
    _photo(tmp_path / FIRST / "a.JPEG")
    _truncated(tmp_path / FIRST / "b.JPEG")
    _truncated(tmp_path / FIRST / "c.JPEG")
    ds = cd.open_dataset(tmp_path)
    for workers in (0, 2):
        with pytest.raises(BadDataError, match=r"b\.JPEG: truncated image"):
            list(cd.EvalLoader(ds, 64, batch_size=1, workers=workers))


@pytest.mark.parametrize("line,words", [
    ("imgs/missing.jpg 3", "not found"),
    ("imgs/a.jpg cat", "is not an integer"),
    ("imgs/a.jpg 1000", "out of range for 1000 classes"),
    ("imgs/a.jpg -1", "out of range"),
    ("imgs/a.jpg", "expected '<relative/path> <label>'"),
    ("imgs 4", "is not a file"),
])
def test_list_file_bad_lines(tmp_path, line, words):
    _photo(tmp_path / "imgs" / "a.jpg")
    lst = tmp_path / "val.txt"
    lst.write_text(f"imgs/a.jpg 1\n{line}\n")
    with pytest.raises(BadDataError) as e:
        cd.open_dataset(lst)
    assert str(e.value).startswith(f"{lst}:2:") and words in str(e.value)
    ds = cd.open_dataset(lst, skip_bad=True)
    assert ds.labels == [1] and [b.path for b in ds.problems] == [f"{lst}:2"]


def test_whole_dataset_problems_are_not_skippable(tmp_path):
    with pytest.raises(BadDataError, match="does not exist"):
        cd.open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadDataError, match="no images found") as e:
        cd.open_dataset(tmp_path / "empty", layout="imagenet")
    assert not e.value.skippable
    flat = tmp_path / "flat"
    _photo(flat / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(BadDataError, match="not sorted into class folders"):
        cd.open_dataset(flat, layout="imagenet")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(BadDataError, match="no images listed"):
        cd.open_dataset(tmp_path / "e.txt")
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / FIRST).mkdir()
    with pytest.raises(BadDataError, match=r"no images found \(1 bad item"):
        cd.open_dataset(tmp_path / "only_bad", skip_bad=True)


def test_write_json_leaves_no_temporary(tmp_path):
    lst = tmp_path / "val.txt"
    lst.write_text("x 1\n")
    cd.write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["r.json", "val.txt"]  # no temporary left behind


# --- the worker pool both loaders share: one clean-up however the iteration ends ------------------

def _eval_batches(ds: "cd.ImageDataset", workers: int):
    return iter(cd.EvalLoader(ds, 64, batch_size=1, workers=workers))


def _train_batches(ds: "cd.ImageDataset", workers: int):
    from cream_core.data.train_loader import TrainLoader
    from cream_core.data.train_transforms import TrainTransform

    return TrainLoader(ds, TrainTransform(64), 1, seed=0, workers=workers).epoch_batches(0)


#: Every loader built on cream_core.data.workers, and the function its workers call per image.
LOADERS = {"eval": (_eval_batches, "cream_core.data.loader._crop"),
           "train": (_train_batches, "cream_core.data.train_loader.open_image")}


@pytest.fixture(scope="module")
def photo_classes(module_tmp: Callable[[str], Path]) -> Path:
    """The bundled photos in two class folders."""
    root = module_tmp("classes")
    for i, p in enumerate(cd.sample_files()):
        (root / "ab"[i % 2]).mkdir(exist_ok=True)
        shutil.copy(p, root / "ab"[i % 2] / p.name)
    return root


def _children() -> set:
    import multiprocessing as mp

    return {p.pid for p in mp.active_children()}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_pool_same_batches_and_no_worker_left(photo_classes: Path, kind: str) -> None:
    """Exhausted, stopped early, or stopped by an error of the consumer: the same batches as in
    one process, and every worker process has exited when control comes back."""
    make, _ = LOADERS[kind]
    ds = cd.open_dataset(photo_classes, "folder")
    before = _children()
    inline = [b.images for b in make(ds, 0)]
    pooled = [b.images for b in make(ds, 2)]
    assert len(pooled) == len(inline) == 8
    for a, b in zip(inline, pooled):
        np.testing.assert_array_equal(a, b)
    assert _children() == before
    it = make(ds, 2)
    np.testing.assert_array_equal(next(it).images, inline[0])
    it.close()  # an early break
    assert _children() == before
    with pytest.raises(RuntimeError, match="consumer"):
        for _ in make(ds, 2):
            raise RuntimeError("consumer")
    assert _children() == before


def _sleep_in_task(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_pool_stopped_early_does_not_wait_for_hung_workers() -> None:
    """A consumer that stops while both workers are stuck in long tasks gets control back after the
    grace period, with the busy workers terminated, not after the tasks (the first clean-up of the
    one pool waited for every running and queued task, with Ctrl-C held: 16 s for two 8 s tasks)."""
    import time

    from cream_core.data.workers import ordered_batches

    before = _children()
    batches = [(0, [(0.0,), (0.0,)])] + [(i, [(60.0,), (60.0,)]) for i in range(1, 4)]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="consumer"):
        for key, _ in ordered_batches(_sleep_in_task, batches, workers=2, stop_grace_s=1.0):
            assert key == 0
            time.sleep(0.5)  # the workers have taken the 60 s tasks
            raise RuntimeError("consumer")
    assert time.monotonic() - start < 20.0  # grace 1 s + start-up on a busy machine; not 60 s
    assert _children() == before


def _raise_in_task(*args, **kwargs):
    raise ValueError("a task failed")


def _die_in_task(*args, **kwargs):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_pool_task_error_and_dead_worker(photo_classes: Path, kind: str, monkeypatch) -> None:
    """A task's exception reaches the consumer; a worker killed mid-task (the OOM killer) is an
    error, not a loader waiting forever for its result; no worker is left either way."""
    make, target = LOADERS[kind]
    ds = cd.open_dataset(photo_classes, "folder")
    before = _children()
    monkeypatch.setattr(target, _raise_in_task)
    with pytest.raises(ValueError, match="a task failed"):
        list(make(ds, 2))
    assert _children() == before
    monkeypatch.setattr(target, _die_in_task)
    error = _within(DEAD_WORKER_WAIT_S, lambda: list(make(ds, 2)))
    assert isinstance(error, RuntimeError) and "worker process died" in str(error), error
    assert _children() == before


#: How long a loader may take to notice its dead worker (it takes < 2 s; a pool that loses the
#: task waits forever, and the test must fail rather than hang the suite).
DEAD_WORKER_WAIT_S = 60


def _within(seconds: float, work) -> "BaseException | None":
    """Run ``work`` in a daemon thread; its exception, or a failed test if it is still running
    after ``seconds``."""
    import threading

    caught: List[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            caught.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s for a dead worker's result"
    return caught[0] if caught else None


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_pool_workers_do_not_inherit_the_parents_signal_handlers(photo_classes: Path, kind: str,
                                                                 tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Workers ignore SIGINT (Ctrl-C is the parent's) and die quietly on SIGTERM, whatever the
    parent installed (Paddle's SIGTERM handler prints a "FatalError" report); and no ending of the
    iteration signals them (the parent's handler would otherwise have run in a worker)."""
    import signal

    make, target = LOADERS[kind]
    ds = cd.open_dataset(photo_classes, "folder")
    marker, parent = tmp_path / "ran", os.getpid()
    module, name = target.rsplit(".", 1)
    work = getattr(__import__(module, fromlist=[name]), name)

    def checked(*args, **kwargs):
        if (signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
                or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
            raise ValueError("a worker kept the parent's signal handlers")
        return work(*args, **kwargs)

    def handler(signum, frame) -> None:
        if os.getpid() != parent:
            marker.write_text("a worker ran the parent's SIGTERM handler")
            os._exit(3)

    monkeypatch.setattr(target, checked)
    previous = (signal.signal(signal.SIGTERM, handler),
                signal.signal(signal.SIGINT, signal.default_int_handler))
    try:
        assert len(list(make(ds, 2))) == 8
        it = make(ds, 2)
        next(it)
        it.close()
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert not marker.exists()


_CTRL_C = """
import multiprocessing as mp, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started
import cream_core.data as cd                               # from a job that ignores SIGINT
from test_data import LOADERS                              # tests/ is on PYTHONPATH
ds = cd.open_dataset(sys.argv[1], "folder")
make = LOADERS[sys.argv[2]][0]
print("ready", flush=True)
try:
    while True:
        for b in make(ds, 2):
            time.sleep(0.02)
except KeyboardInterrupt:
    print("children left:", len(mp.active_children()), flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_pool_ctrl_c_is_the_parents_alone(photo_classes: Path, kind: str) -> None:
    """Ctrl-C (SIGINT to the whole process group) mid-iteration: the parent stops cleanly with no
    worker left, and no worker prints a traceback."""
    import signal
    import subprocess
    import sys
    import time

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]),
           "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", _CTRL_C, str(photo_classes), kind], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # several pools started and stopped; one is working now
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 130, err
    assert "children left: 0" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
