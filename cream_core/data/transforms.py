"""The official Cream evaluation preprocessing, re-implemented with PIL and numpy only.

What the official test ran (read from the 2020 sources, and checked against them by the golden test
``tests/test_data.py::test_preprocessing_matches_official``):

* ``Cream/tools/test.py`` builds ``timm.data.Dataset(<DATA_DIR>/val)`` and calls timm 0.1.20's
  ``create_loader(dataset, input_size=(3, S, S), is_training=False, interpolation='bicubic',
  crop_pct=DEFAULT_CROP_PCT, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, ...)`` with
  ``S`` = 64/96/160/224 per model and, from ``Cream/lib/config.py``, ``DEFAULT_CROP_PCT = 0.875``,
  mean ``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``. ``use_prefetcher`` is not passed,
  so it keeps its default ``True``.
* The dataset opens every file as ``Image.open(path).convert('RGB')`` (no EXIF rotation, alpha
  dropped, CMYK/grayscale/palette converted by PIL).
* ``transforms_imagenet_eval`` with a square ``(S, S)`` size resizes the *shorter side* to
  ``floor(S / crop_pct)`` with PIL bicubic (torchvision 0.2.1 ``Resize(int)``: the longer side
  becomes ``int(size * long / short)``, truncated; an image whose shorter side already has that
  length is left untouched), then ``CenterCrop(S)`` (offsets ``int(round((h - S) / 2))``, Python 3
  rounding), then — because of the prefetcher — ``ToNumpy``: the crop stays **uint8**, CHW.
* ``fast_collate`` stacks the uint8 crops; ``PrefetchLoader`` then computes, in float32,
  ``(x.float() - mean*255) / (std*255)`` with ``mean*255`` and ``std*255`` rounded to float32 once.
  This differs in the last bits from ``ToTensor`` + ``Normalize`` (``(x/255 - mean) / std``), so
  :func:`normalize` uses the prefetcher's arithmetic; both frameworks are fed the same float32
  array from it.

Residual environment difference: the official run used Pillow 6.1; resampling and JPEG decoding come
from whatever Pillow is installed here (the golden data record the Pillow version they were made with).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from cream_core.data.errors import BadDataError

__all__ = [
    "DEFAULT_CROP_PCT", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "DEFAULT_INTERPOLATION",
    "INTERPOLATIONS", "open_image", "open_image_bytes", "scale_size", "resize_shorter", "center_crop", "to_chw_uint8",
    "eval_crop", "normalize", "EvalTransform",
]

#: ``Cream/lib/config.py``: the fraction of the resized image kept by the center crop.
DEFAULT_CROP_PCT: float = 0.875
#: ``Cream/lib/config.py`` (the usual ImageNet statistics, RGB, on a 0..1 scale).
IMAGENET_DEFAULT_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
#: ``Cream/tools/test.py`` passes ``interpolation='bicubic'`` explicitly.
DEFAULT_INTERPOLATION: str = "bicubic"
#: timm 0.1.20 ``_pil_interp``: anything else falls back to bilinear there; here it is an error.
INTERPOLATIONS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "lanczos": Image.LANCZOS,
    "hamming": Image.HAMMING,
}


def open_image(path: "os.PathLike[str] | str") -> Image.Image:
    """Open ``path`` as the official loader did (``Image.open(path).convert('RGB')``), fully decoded.

    Raises :class:`~cream_core.data.errors.BadDataError` naming the file for an empty, truncated,
    unreadable or non-image file.
    """
    p = os.fspath(path)
    try:
        if os.path.getsize(p) == 0:
            raise BadDataError(p, "empty file (0 bytes)")
    except FileNotFoundError:
        raise BadDataError(p, "file not found") from None
    except OSError as e:
        raise BadDataError(p, f"cannot read file ({e.strerror or e})") from None
    return _decode(p, p)


def open_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an image held in memory (e.g. a tar member) exactly as :func:`open_image` decodes a
    file; errors name ``name``."""
    if not data:
        raise BadDataError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name)


def _decode(source: "str | io.BytesIO", name: str) -> Image.Image:
    """``Image.open(source).convert('RGB')``, every failure a one-line error naming ``name``."""
    try:
        with warnings.catch_warnings():
            # Palette PNGs with a transparency chunk warn on convert(); the official loader
            # converted them all the same.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(source) as img:
                rgb = img.convert("RGB")  # forces the full decode
        return rgb
    except UnidentifiedImageError:
        raise BadDataError(name, "not an image (PIL cannot identify the file format)") from None
    except FileNotFoundError:
        raise BadDataError(name, "file not found") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg:
            raise BadDataError(name, f"truncated image ({msg})") from None
        raise BadDataError(name, f"cannot decode image ({msg or type(e).__name__})") from None
    except Exception as e:  # PIL raises SyntaxError/ValueError/... for corrupt headers
        raise BadDataError(name, f"cannot decode image ({type(e).__name__}: {e})") from None


def scale_size(img_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Shorter-side length before the center crop: ``floor(img_size / crop_pct)`` (73 for 64 px)."""
    return int(math.floor(img_size / crop_pct))


def _interp(interpolation: str) -> int:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of "
                         f"{', '.join(INTERPOLATIONS)}") from None


def resize_shorter(img: Image.Image, size: int, interpolation: str = DEFAULT_INTERPOLATION
                   ) -> Image.Image:
    """Resize so the shorter side is ``size``; the longer side is ``int(size * long / short)``.

    This is torchvision 0.2.1's ``Resize(int)`` rule, including returning the image unchanged when
    its shorter side already equals ``size``.
    """
    w, h = img.size
    if (w <= h and w == size) or (h <= w and h == size):
        return img
    if w < h:
        ow, oh = size, int(size * h / w)
    else:
        ow, oh = int(size * w / h), size
    return img.resize((ow, oh), _interp(interpolation))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` window, offsets rounded as torchvision 0.2.1 does."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_chw_uint8(img: Image.Image) -> np.ndarray:
    """A PIL image as a contiguous uint8 CHW array (timm's ``ToNumpy``)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim < 3:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def eval_crop(img: Image.Image, img_size: int, crop_pct: float = DEFAULT_CROP_PCT,
              interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """The official eval transform of an RGB image: resize shorter side, center crop, uint8 CHW."""
    resized = resize_shorter(img, scale_size(img_size, crop_pct), interpolation)
    return to_chw_uint8(center_crop(resized, img_size))


def normalize(batch: np.ndarray, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
              std: Sequence[float] = IMAGENET_DEFAULT_STD) -> np.ndarray:
    """uint8 NCHW (or CHW) -> float32 ``(x - mean*255) / (std*255)``, bit for bit the prefetcher's."""
    if batch.dtype != np.uint8:
        raise TypeError(f"normalize expects uint8 images, got {batch.dtype}")
    m = np.array([v * 255 for v in mean], dtype=np.float32).reshape(-1, 1, 1)
    s = np.array([v * 255 for v in std], dtype=np.float32).reshape(-1, 1, 1)
    out = batch.astype(np.float32)
    out -= m
    out /= s
    return out


@dataclass(frozen=True)
class EvalTransform:
    """Path -> uint8 CHW crop, the official eval preprocessing (picklable, for worker processes)."""

    img_size: int
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        if self.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {self.img_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        _interp(self.interpolation)

    def __call__(self, path: "os.PathLike[str] | str") -> np.ndarray:
        return self.crop(open_image(path))

    def crop(self, img: Image.Image) -> np.ndarray:
        """The transform of an already decoded RGB image."""
        return eval_crop(img, self.img_size, self.crop_pct, self.interpolation)
