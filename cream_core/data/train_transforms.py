"""The official retraining augmentation, with PIL and numpy only, driven by explicit random streams.

What ``Cream/tools/retrain.py`` ran (timm 0.1.20 ``create_loader(is_training=True,
interpolation='random', auto_augment='rand-m9-mstd0.5', re_prob=0.2, re_mode='pixel')`` with the
prefetcher on):

1. ``RandomResizedCropAndInterpolation(S, scale=(0.08, 1), ratio=(3/4, 4/3), interpolation='random')``:
   up to 10 tries of an area fraction ``uniform(*scale)`` and a log-uniform aspect ratio, else a
   central fallback crop; the crop is resized to ``S x S`` with bilinear or bicubic, chosen at random
   per image (:class:`RandomResizedCrop`).
2. ``RandomHorizontalFlip()`` with probability 0.5.
3. ``RandAugment`` ``rand-m9-mstd0.5``: two of 15 PIL ops picked uniformly *with replacement*, each
   applied with probability 0.5 at magnitude ``gauss(9, 0.5)`` clipped to [0, 10]; geometric ops fill
   with the mean colour (124, 116, 104) and resample bilinear or bicubic at random
   (:class:`RandAugment`, :data:`RAND_OPS`). Colour jitter is *not* applied when an auto-augment
   policy is set (timm 0.1.20 ``transforms_imagenet_train``); without one, :class:`ColorJitter` is.
4. ``ToNumpy``: uint8 CHW. Batches are collated as uint8 and the prefetcher normalises them in
   float32 as ``(x - mean*255) / (std*255)`` (:func:`cream_core.data.transforms.normalize`).
5. ``RandomErasing(0.2, mode='pixel')`` on each *normalised* image of the batch: with probability
   0.2 one rectangle of area ``uniform(0.02, 1/3)`` of the image and log-uniform aspect in
   [0.3, 1/0.3] (10 tries) is filled with standard-normal noise per pixel (:class:`RandomErasing`).

The official code drew from Python's global ``random``, numpy's global state and torch's RNG, in
worker processes. Here every decision comes from an :class:`Rng` (a numpy ``Generator`` with the
Python ``random`` call signatures), created per image from ``(seed, epoch, image index, stream)``
(:func:`sample_rng`): the augmentation of an image never depends on worker count, batch split or
framework, so both frameworks (and every data-parallel rank) get bit-identical batches.

Given the same random decisions, the result is pixel-identical to timm's implementation (timm 1.0,
whose code for these transforms computes what 0.1.20 did); ``tests/test_augment.py`` checks it by
driving timm's transforms with the same :class:`Rng`. Deliberate differences: the random streams
(above); the pixel-mode noise is drawn in numpy (the official one came from ``torch.normal_`` on
the GPU), both standard normal; ``Posterize`` to 0 bits (magnitude < 2.5, never reached by
``m9-mstd0.5``) gives a black image as the official Pillow 6.1 did, where current Pillow raises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from cream_core.data.rand_augment import MAX_LEVEL, parse_rand_augment

from cream_core.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, normalize, to_chw_uint8

__all__ = [
    "Rng", "sample_rng", "STREAM_AUGMENT", "STREAM_ERASE",
    "RandomResizedCrop", "horizontal_flip", "ColorJitter",
    "AugmentOp", "RAND_OPS", "RAND_INCREASING_OPS", "RandAugment", "parse_rand_augment",
    "RandomErasing", "TrainTransform", "MAX_LEVEL", "fill_color",
]

#: Per-image random streams: the PIL augmentation and the random erasing draw from separate ones.
STREAM_AUGMENT: int = 0
STREAM_ERASE: int = 1

_BILINEAR = Image.Resampling.BILINEAR
_BICUBIC = Image.Resampling.BICUBIC
#: timm's ``'random'`` interpolation: one of these, picked uniformly (order matters for the draw).
RANDOM_INTERPOLATION: Tuple[int, int] = (_BILINEAR, _BICUBIC)
_INTERP = {"bilinear": _BILINEAR, "bicubic": _BICUBIC}


class Rng:
    """Python ``random``-style draws (``random``, ``uniform``, ``randint``, ``gauss``, ``choice``)
    from a numpy ``Generator``, plus float32 standard-normal arrays.

    The formulas are Python's: ``uniform(a, b) = a + (b - a) * random()``, ``randint`` inclusive of
    both ends. Exposing these names lets a test hand the same object to timm's transforms (which
    call the ``random`` module) and compare outputs under identical decisions.
    """

    def __init__(self, seed: Any) -> None:
        self.gen = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def random(self) -> float:
        """A float in [0, 1)."""
        return float(self.gen.random())

    def uniform(self, a: float, b: float) -> float:
        """A float between ``a`` and ``b``."""
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:
        """An integer in ``[a, b]`` (both included)."""
        return int(a) + int(self.gen.integers(0, int(b) - int(a) + 1))

    def gauss(self, mu: float, sigma: float) -> float:
        """A normal draw with mean ``mu`` and deviation ``sigma``."""
        return mu + sigma * float(self.gen.standard_normal())

    def choice(self, seq: Sequence[Any]) -> Any:
        """One element of ``seq``, uniformly."""
        return seq[self.randint(0, len(seq) - 1)]

    def choices(self, seq: Sequence[Any], n: int) -> List[Any]:
        """``n`` elements of ``seq``, uniformly with replacement (``np.random.choice(seq, n)``)."""
        return [self.choice(seq) for _ in range(n)]

    def standard_normal(self, shape: Sequence[int]) -> np.ndarray:
        """float32 standard-normal array of ``shape``."""
        return self.gen.standard_normal(tuple(shape), dtype=np.float32)


def sample_rng(seed: int, epoch: int, index: int, stream: int = STREAM_AUGMENT) -> Rng:
    """The random stream of image ``index`` in ``epoch`` of a run seeded ``seed``."""
    return Rng(np.random.default_rng([int(seed), int(epoch), int(index), int(stream)]))


def fill_color(mean: Sequence[float] = IMAGENET_DEFAULT_MEAN) -> Tuple[int, ...]:
    """The fill of geometric ops: the mean colour in 0..255 (timm ``img_mean``), (124, 116, 104)."""
    return tuple(min(255, round(255 * m)) for m in mean)


# --- 1. random resized crop -------------------------------------------------------------------

@dataclass(frozen=True)
class RandomResizedCrop:
    """timm's ``RandomResizedCropAndInterpolation``: random area/aspect crop, resized to ``size``."""

    size: int
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "random"

    def params(self, width: int, height: int, rng: Rng) -> Tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop: 10 random tries, then the central fallback."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= width and h <= height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w = width
            h = int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h = height
            w = int(round(h * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image, rng: Rng) -> Image.Image:
        top, left, h, w = self.params(img.size[0], img.size[1], rng)
        resample = rng.choice(RANDOM_INTERPOLATION) if self.interpolation == "random" \
            else _INTERP[self.interpolation]
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), resample)


def horizontal_flip(img: Image.Image, rng: Rng, p: float = 0.5) -> Image.Image:
    """Mirror left-right with probability ``p`` (torchvision ``RandomHorizontalFlip``)."""
    if p > 0 and rng.random() < p:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


@dataclass(frozen=True)
class ColorJitter:
    """torchvision ``ColorJitter(b, c, s)`` on PIL images: random factors, applied in random order.

    Used only when no auto-augment policy is configured (timm 0.1.20 skips it otherwise).
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __call__(self, img: Image.Image, rng: Rng) -> Image.Image:
        ops = []
        for amount, enhancer in ((self.brightness, ImageEnhance.Brightness),
                                 (self.contrast, ImageEnhance.Contrast),
                                 (self.saturation, ImageEnhance.Color)):
            if amount > 0:
                ops.append((enhancer, rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)))
        order = rng.gen.permutation(len(ops)) if ops else []
        for i in order:
            enhancer, factor = ops[int(i)]
            img = enhancer(img).enhance(factor)
        return img


# --- 3. RandAugment ---------------------------------------------------------------------------
# Each op: (name, level -> argument(s), image function). Argument functions receive the clipped
# magnitude and the Rng (for the random sign of symmetric ops), in the order timm draws.

def _negate(v: float, rng: Rng) -> float:
    return -v if rng.random() > 0.5 else v


def _affine(img: Image.Image, matrix: Tuple[float, ...], fill: Tuple[int, ...],
            resample: int) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample,
                         fillcolor=fill)


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    if img.mode == "RGB":
        return img.point(lut * 3)
    if img.mode == "L":
        return img.point(lut)
    return img


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep ``bits`` most significant bits. 0 bits gives black, as Pillow 6.1 (the official run's)
    did; current Pillow refuses 0, which timm 1.0 would pass it at magnitudes below 2.5."""
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


def _level_args(name: str, m: float, rng: Rng, translate_pct: float) -> Tuple[Any, ...]:
    f = m / MAX_LEVEL
    if name == "Rotate":
        return (_negate(f * 30.0, rng),)
    if name in ("ShearX", "ShearY"):
        return (_negate(f * 0.3, rng),)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (_negate(f * translate_pct, rng),)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (f * 1.8 + 0.1,)
    if name.endswith("Increasing") and name[:-len("Increasing")] in (
            "Color", "Contrast", "Brightness", "Sharpness"):
        return (1.0 + _negate(f * 0.9, rng),)
    if name == "Posterize":
        return (int(f * 4),)
    if name == "PosterizeIncreasing":
        return (4 - int(f * 4),)
    if name == "Solarize":
        return (int(f * 256),)
    if name == "SolarizeIncreasing":
        return (256 - int(f * 256),)
    if name == "SolarizeAdd":
        return (int(f * 110),)
    return ()


def _apply(name: str, img: Image.Image, args: Tuple[Any, ...], fill: Tuple[int, ...],
           resample: int) -> Image.Image:
    base = name[:-len("Increasing")] if name.endswith("Increasing") else name
    if base == "AutoContrast":
        return ImageOps.autocontrast(img)
    if base == "Equalize":
        return ImageOps.equalize(img)
    if base == "Invert":
        return ImageOps.invert(img)
    if base == "Rotate":
        return img.rotate(args[0], resample=resample, fillcolor=fill)
    if base == "Posterize":
        return _posterize(img, args[0])
    if base == "Solarize":
        return ImageOps.solarize(img, args[0])
    if base == "SolarizeAdd":
        return _solarize_add(img, args[0])
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        enhancer = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                    "Brightness": ImageEnhance.Brightness,
                    "Sharpness": ImageEnhance.Sharpness}[base]
        return enhancer(img).enhance(args[0])
    if base == "ShearX":
        return _affine(img, (1, args[0], 0, 0, 1, 0), fill, resample)
    if base == "ShearY":
        return _affine(img, (1, 0, 0, args[0], 1, 0), fill, resample)
    if base == "TranslateXRel":
        return _affine(img, (1, 0, args[0] * img.size[0], 0, 1, 0), fill, resample)
    if base == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, args[0] * img.size[1]), fill, resample)
    raise ValueError(f"unknown augmentation op {name!r}")


#: timm's ``_RAND_TRANSFORMS`` (the order is part of the random choice).
RAND_OPS: Tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")
#: timm's ``_RAND_INCREASING_TRANSFORMS`` (``inc1``).
RAND_INCREASING_OPS: Tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@dataclass(frozen=True)
class AugmentOp:
    """One RandAugment op: applied with ``prob``, at ``gauss(magnitude, magnitude_std)`` in [0, 10].

    Draw order (timm's): apply?, magnitude noise, sign of the argument, resampling filter.
    """

    name: str
    prob: float = 0.5
    magnitude: float = 10.0
    magnitude_std: float = 0.0
    fill: Tuple[int, ...] = (128, 128, 128)
    interpolation: str = "random"
    translate_pct: float = 0.45

    def level_args(self, magnitude: float, rng: Rng) -> Tuple[Any, ...]:
        """The op's argument(s) at (already clipped) ``magnitude``."""
        return _level_args(self.name, magnitude, rng, self.translate_pct)

    def __call__(self, img: Image.Image, rng: Rng) -> Image.Image:
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        m = self.magnitude
        if self.magnitude_std > 0:
            m = rng.gauss(m, self.magnitude_std)
        m = min(MAX_LEVEL, max(0.0, m))
        args = self.level_args(m, rng)
        resample = _BILINEAR
        if self.name in _GEOMETRIC:
            resample = rng.choice(RANDOM_INTERPOLATION) if self.interpolation == "random" \
                else _INTERP[self.interpolation]
        return _apply(self.name, img, args, self.fill, resample)


@dataclass(frozen=True)
class RandAugment:
    """``num_layers`` ops chosen uniformly with replacement from :data:`RAND_OPS`, applied in turn."""

    ops: Tuple[AugmentOp, ...]
    num_layers: int = 2

    @classmethod
    def from_string(cls, spec: str, fill: Tuple[int, ...] = (124, 116, 104),
                    interpolation: str = "random") -> "RandAugment":
        """Build from a timm RandAugment string, e.g. ``'rand-m9-mstd0.5'``."""
        p = parse_rand_augment(spec)
        names = RAND_INCREASING_OPS if p["increasing"] else RAND_OPS
        ops = tuple(AugmentOp(n, 0.5, p["magnitude"], p["magnitude_std"], tuple(fill),
                              interpolation) for n in names)
        return cls(ops, p["num_layers"])

    def __call__(self, img: Image.Image, rng: Rng) -> Image.Image:
        for op in rng.choices(self.ops, self.num_layers):
            img = op(img, rng)
        return img


# --- 5. random erasing on the normalised image ----------------------------------------------

@dataclass(frozen=True)
class RandomErasing:
    """timm's ``RandomErasing`` for one normalised float32 CHW image (in place).

    ``mode``: ``'pixel'`` per-pixel standard normal, ``'rand'`` one normal colour per channel,
    ``'const'`` zeros. ``count`` rectangles (each of ``1/count`` of the area).
    """

    probability: float = 0.5
    mode: str = "const"
    min_area: float = 0.02
    max_area: float = 1.0 / 3.0
    min_aspect: float = 0.3
    max_aspect: Optional[float] = None
    min_count: int = 1
    max_count: Optional[int] = None

    def __call__(self, img: np.ndarray, rng: Rng) -> np.ndarray:
        if img.ndim != 3:
            raise ValueError(f"RandomErasing expects one CHW image, got shape {img.shape}")
        if rng.random() > self.probability:
            return img
        chan, h_img, w_img = img.shape
        area = h_img * w_img
        max_count = self.max_count or self.min_count
        count = self.min_count if self.min_count == max_count else \
            rng.randint(self.min_count, max_count)
        log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect or 1.0 / self.min_aspect))
        for _ in range(count):
            for _attempt in range(10):
                target_area = rng.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(rng.uniform(*log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < w_img and h < h_img:
                    top = rng.randint(0, h_img - h)
                    left = rng.randint(0, w_img - w)
                    img[:, top:top + h, left:left + w] = self._pixels(chan, h, w, rng)
                    break
        return img

    def _pixels(self, chan: int, h: int, w: int, rng: Rng) -> np.ndarray:
        if self.mode == "pixel":
            return rng.standard_normal((chan, h, w))
        if self.mode == "rand":
            return rng.standard_normal((chan, 1, 1))
        return np.zeros((chan, 1, 1), np.float32)


# --- the whole per-image pipeline -------------------------------------------------------------

@dataclass(frozen=True)
class TrainTransform:
    """RGB PIL image -> normalised float32 CHW training input, every draw from per-image streams.

    Picklable (plain fields), so worker processes can run it. Build it from a recipe with
    :meth:`from_config`.
    """

    img_size: int
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "random"
    hflip: float = 0.5
    auto_augment: Optional[str] = "rand-m9-mstd0.5"
    color_jitter: Optional[float] = 0.4
    re_prob: float = 0.2
    re_mode: str = "pixel"
    re_count: int = 1
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD

    @classmethod
    def from_config(cls, img_size: int, augment: Any) -> "TrainTransform":
        """From an :class:`cream_core.config.retrain.AugmentConfig` (or any object with its fields)."""
        return cls(img_size, tuple(augment.scale), tuple(augment.ratio), augment.interpolation,
                   augment.hflip, augment.auto_augment, augment.color_jitter, augment.re_prob,
                   augment.re_mode, augment.re_count, tuple(augment.mean), tuple(augment.std))

    def crop(self) -> RandomResizedCrop:
        return RandomResizedCrop(self.img_size, tuple(self.scale), tuple(self.ratio),
                                 self.interpolation)

    def secondary(self) -> Optional[Callable[[Image.Image, Rng], Image.Image]]:
        """RandAugment when configured, else colour jitter when configured (timm 0.1.20's rule)."""
        if self.auto_augment:
            return RandAugment.from_string(self.auto_augment, fill_color(self.mean),
                                           self.interpolation)
        if self.color_jitter:
            c = float(self.color_jitter)
            return ColorJitter(c, c, c)
        return None

    def erasing(self) -> Optional[RandomErasing]:
        return RandomErasing(self.re_prob, self.re_mode, max_count=self.re_count) \
            if self.re_prob > 0 else None

    def augment_uint8(self, img: Image.Image, rng: Rng) -> np.ndarray:
        """Steps 1-4 before normalisation: crop, flip, RandAugment / jitter -> uint8 CHW."""
        img = self.crop()(img, rng)
        img = horizontal_flip(img, rng, self.hflip)
        extra = self.secondary()
        if extra is not None:
            img = extra(img, rng)
        return to_chw_uint8(img)

    def finish(self, chw: np.ndarray, rng: Rng) -> np.ndarray:
        """Step 5: prefetcher normalisation, then random erasing -> float32 CHW."""
        out = normalize(chw, self.mean, self.std)
        erase = self.erasing()
        if erase is not None:
            erase(out, rng)
        return out

    def __call__(self, img: Image.Image, seed: int, epoch: int, index: int) -> np.ndarray:
        """The training input of image ``index`` in ``epoch`` (deterministic in its arguments)."""
        chw = self.augment_uint8(img, sample_rng(seed, epoch, index, STREAM_AUGMENT))
        return self.finish(chw, sample_rng(seed, epoch, index, STREAM_ERASE))
