"""The framework-free training augmentation against timm's, under identical random decisions.

timm draws from Python's ``random`` module (and ``np.random.choice`` for RandAugment's op choice);
the project's :class:`cream_core.data.train_transforms.Rng` exposes the same call signatures on a numpy
Generator. Each test hands one ``Rng`` to the project's transform and an identically seeded one to
timm's (patched in place of ``random``), so both make the same decisions and must produce the same
pixels. timm 1.0's code for these transforms computes what timm 0.1.20's did (the differences are
clamps that cannot trigger at magnitudes <= 10; see the module docstring).
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import timm.data.auto_augment as timm_aa
import timm.data.random_erasing as timm_re
import timm.data.transforms as timm_tf
import torch
from PIL import Image, ImageEnhance

from cream_core.data import open_image, sample_files
from cream_core.data.train_transforms import (MAX_LEVEL, RAND_INCREASING_OPS, RAND_OPS, AugmentOp,
                                         ColorJitter, RandAugment, RandomErasing,
                                         RandomResizedCrop, Rng, TrainTransform, fill_color,
                                         horizontal_flip, parse_rand_augment, sample_rng)


FILL = fill_color()  # (124, 116, 104)
HPARAMS = dict(translate_const=int(64 * 0.45), img_mean=FILL)


def _photo(size: int = 96) -> Image.Image:
    img = open_image(sample_files()[0])  # a colour photo, so every op changes something
    img = img.resize((size, int(size * 0.8)), Image.Resampling.BICUBIC)
    return ImageEnhance.Contrast(img).enhance(0.7)  # not full range, so AutoContrast acts


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def _patch_timm_random(monkeypatch: pytest.MonkeyPatch, rng: Rng) -> None:
    """Make timm's augmentation modules draw from ``rng`` (same call order as the project's)."""
    fake_np = types.SimpleNamespace(random=types.SimpleNamespace(
        choice=lambda a, size, replace=True, p=None: rng.choices(list(a), size)))
    for mod in (timm_aa, timm_tf, timm_re):
        monkeypatch.setattr(mod, "random", rng)
    monkeypatch.setattr(timm_aa, "np", fake_np)
    monkeypatch.setattr(timm_re, "_get_pixels",
                        lambda per_pixel, rand_color, shape, dtype=None, device=None:
                        torch.from_numpy(rng.standard_normal(shape) if per_pixel else
                                         rng.standard_normal((shape[0], 1, 1)) if rand_color
                                         else np.zeros((shape[0], 1, 1), np.float32)))


@pytest.mark.parametrize("name", sorted(set(RAND_OPS) | set(RAND_INCREASING_OPS)))
@pytest.mark.parametrize("magnitude", [0.0, 5.0, 9.0, 10.0])
def test_each_op_matches_timm(monkeypatch: pytest.MonkeyPatch, name: str, magnitude: float) -> None:
    img = _photo()
    if name.startswith("Posterize") and int((4 - int(magnitude / MAX_LEVEL * 4)) if
                                            name.endswith("Increasing") else
                                            int(magnitude / MAX_LEVEL * 4)) == 0:
        # Pillow >= 10 refuses 0 bits (timm 1.0 crashes); Pillow 6.1 of the official run gave black
        out = AugmentOp(name, prob=1.0, magnitude=magnitude, fill=FILL)(img, Rng(0))
        assert out.size == img.size and not _arr(out).any()
        return
    for seed in range(3):  # covers both signs and both resampling filters
        ours = AugmentOp(name, prob=1.0, magnitude=magnitude, fill=FILL)(img, Rng(seed))
        _patch_timm_random(monkeypatch, Rng(seed))
        theirs = timm_aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=dict(HPARAMS))(img)
        assert ours.mode == theirs.mode and ours.size == theirs.size
        np.testing.assert_array_equal(_arr(ours), _arr(theirs), err_msg=f"{name} m={magnitude}")


def test_ops_do_something() -> None:
    """Guard against a vacuous comparison: at m=3 every op changes the photo (at m=5 the enhance ops are the identity)."""
    img = _photo()
    changed = {n for n in RAND_OPS
               if not np.array_equal(_arr(AugmentOp(n, 1.0, 3.0, fill=FILL)(img, Rng(0))), _arr(img))}
    assert changed == set(RAND_OPS)


def test_rand_augment_string() -> None:
    assert parse_rand_augment("rand-m9-mstd0.5") == {
        "magnitude": 9.0, "num_layers": 2, "magnitude_std": 0.5, "increasing": False}
    assert parse_rand_augment("rand-m7-n3-inc1")["increasing"] is True
    with pytest.raises(ValueError, match="unsupported"):
        parse_rand_augment("rand-m9-w0")
    with pytest.raises(ValueError, match="must start"):
        parse_rand_augment("original-mstd0.5")
    ra = RandAugment.from_string("rand-m9-mstd0.5")
    assert [op.name for op in ra.ops] == list(RAND_OPS) and ra.num_layers == 2
    assert {(op.prob, op.magnitude, op.magnitude_std, op.fill) for op in ra.ops} == {
        (0.5, 9.0, 0.5, (124, 116, 104))}


def test_rand_augment_matches_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    img = _photo()
    ours_t = RandAugment.from_string("rand-m9-mstd0.5", FILL)
    timm_t = timm_aa.rand_augment_transform("rand-m9-mstd0.5", dict(HPARAMS))
    n_changed = 0
    for seed in range(40):
        ours = ours_t(img, Rng(seed))
        _patch_timm_random(monkeypatch, Rng(seed))
        theirs = timm_t(img)
        np.testing.assert_array_equal(_arr(ours), _arr(theirs), err_msg=f"seed {seed}")
        n_changed += not np.array_equal(_arr(ours), _arr(img))
    assert n_changed > 20  # two ops at p=0.5 each: ~3/4 of the images change


@pytest.mark.parametrize("size", [(96, 77), (500, 20), (20, 500), (64, 64)])
def test_random_resized_crop_matches_timm(monkeypatch: pytest.MonkeyPatch, size) -> None:
    """Crop boxes (incl. the central fallback of extreme aspect ratios) and resampled pixels."""
    img = _photo().resize(size)
    ours_t = RandomResizedCrop(64, interpolation="random")
    timm_t = timm_tf.RandomResizedCropAndInterpolation(64, interpolation="random")
    for seed in range(10):
        ours_box = ours_t.params(*img.size, Rng(seed))
        _patch_timm_random(monkeypatch, Rng(seed))
        assert ours_box == timm_t.get_params(img, timm_t.scale, timm_t.ratio)
        _patch_timm_random(monkeypatch, Rng(seed))
        np.testing.assert_array_equal(_arr(ours_t(img, Rng(seed))), _arr(timm_t(img)))


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_random_erasing_matches_timm(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    base = np.random.default_rng(0).standard_normal((3, 64, 64)).astype(np.float32)
    erased = 0
    for seed in range(30):
        ours = RandomErasing(0.5, mode)(base.copy(), Rng(seed))
        _patch_timm_random(monkeypatch, Rng(seed))
        theirs = timm_re.RandomErasing(0.5, mode=mode, device="cpu")(torch.from_numpy(base.copy()))
        np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=f"seed {seed}")
        erased += not np.array_equal(ours, base)
    assert 5 < erased < 25  # probability 0.5


def test_full_pipeline_matches_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Crop, flip, RandAugment, uint8 CHW, prefetcher normalisation, erasing: timm's parts, same draws."""
    tt = TrainTransform(64, re_prob=0.5)  # higher erasing probability than 0.2, to exercise it
    mean = torch.tensor([x * 255 for x in tt.mean]).view(3, 1, 1)
    std = torch.tensor([x * 255 for x in tt.std]).view(3, 1, 1)
    timm_crop = timm_tf.RandomResizedCropAndInterpolation(64, interpolation="random")
    timm_ra = timm_aa.rand_augment_transform("rand-m9-mstd0.5", dict(HPARAMS))
    timm_erase = timm_re.RandomErasing(0.5, mode="pixel", device="cpu")
    for path in sample_files()[:4]:
        img = open_image(path)
        for epoch in range(3):
            ours = tt(img, seed=7, epoch=epoch, index=5)
            aug = sample_rng(7, epoch, 5, 0)
            _patch_timm_random(monkeypatch, aug)
            x = timm_crop(img)
            if aug.random() < 0.5:  # torchvision's flip decides with torch.rand; same rule
                x = x.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = timm_ra(x)
            chw = torch.from_numpy(timm_tf.ToNumpy()(x))
            t = chw.float().sub_(mean).div_(std)
            _patch_timm_random(monkeypatch, sample_rng(7, epoch, 5, 1))
            t = timm_erase(t[None])[0]
            np.testing.assert_array_equal(ours, t.numpy(), err_msg=f"{path.name} epoch {epoch}")


def test_pipeline_is_deterministic_and_varies() -> None:
    img = open_image(sample_files()[0])
    tt = TrainTransform(64)
    a = tt(img, 1, 0, 3)
    assert a.dtype == np.float32 and a.shape == (3, 64, 64)
    np.testing.assert_array_equal(a, tt(img, 1, 0, 3))
    assert not np.array_equal(a, tt(img, 1, 1, 3))  # another epoch
    assert not np.array_equal(a, tt(img, 2, 0, 3))  # another seed


def test_flip_and_jitter() -> None:
    img = _photo()
    flips = [not np.array_equal(_arr(horizontal_flip(img, Rng(s))), _arr(img)) for s in range(200)]
    assert 70 < sum(flips) < 130
    assert all(np.array_equal(_arr(horizontal_flip(img, Rng(s), 0.0)), _arr(img)) for s in range(20))
    jit = ColorJitter(0.4, 0.4, 0.4)(img, Rng(0))
    assert jit.size == img.size and not np.array_equal(_arr(jit), _arr(img))
    # timm 0.1.20: colour jitter only without an auto-augment policy
    assert isinstance(TrainTransform(64, auto_augment=None).secondary(), ColorJitter)
    assert isinstance(TrainTransform(64).secondary(), RandAugment)
    assert TrainTransform(64, auto_augment=None, color_jitter=None).secondary() is None


def test_magnitude_clip() -> None:
    """Noise never pushes the magnitude outside [0, MAX_LEVEL] (rotation at most 30 degrees)."""
    op = AugmentOp("Rotate", 1.0, 10.0, magnitude_std=5.0, fill=FILL)
    seen = []
    for s in range(200):
        r = Rng(s)
        r.random()  # the apply draw
        m = min(MAX_LEVEL, max(0.0, r.gauss(10.0, 5.0)))
        seen.append(abs(op.level_args(m, r)[0]))
    assert max(seen) == pytest.approx(30.0) and min(seen) < 30.0
