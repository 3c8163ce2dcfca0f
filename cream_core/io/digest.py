"""Compact, checkable fingerprints of large tensors, for golden files that must stay under 1 MB.

A supernet search step touches millions of values (the 320x1280 head conv alone has 410k weights), so
a golden file cannot hold every gradient and updated weight in full. For tensors with more than
:data:`FULL_LIMIT` elements it holds a *digest* instead:

* ``numel``, ``sum``, ``l2`` (Euclidean norm), ``absmax`` -- float64 over the whole tensor;
* ``val`` -- :data:`SAMPLES` elements at positions drawn from a seed derived from the entry's name
  and size (the same positions on every machine, so they are not stored), as float32;
* ``proj`` -- :data:`PROJECTIONS` inner products with random +-1 vectors (Rademacher) drawn from
  a seed derived from the name and size, float64.

A wrong implementation cannot hide from a digest: an error ``e`` changes each projection by an
amount of mean 0 and variance |e|^2 (about normal for large tensors), so with eight projections an
error of three times the tolerance (relative to the norm) goes unnoticed with probability below
1e-4, and the sampled values, sum and norm catch localised or systematic differences directly. :func:`digest_errors` gives the relative errors that
``parity search-step`` judges with its tolerances.
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Dict, Mapping

import numpy as np

__all__ = ["sha256_file", "FULL_LIMIT", "SAMPLES", "PROJECTIONS", "DIGEST_TAG", "is_digest", "sample_positions",
           "tensor_digest", "digest_errors"]


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoint sidecars, evaluation journals)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

#: Tensors with at most this many elements are stored in full.
FULL_LIMIT: int = 256
#: Sampled elements per digest.
SAMPLES: int = 128
#: Random projections per digest.
PROJECTIONS: int = 8
#: Marker key of a digest dict.
DIGEST_TAG: str = "__digest__"


def _rng(name: str, numel: int) -> np.random.RandomState:
    return np.random.RandomState((zlib.crc32(name.encode("utf-8")) ^ (numel * 40503)) % (2 ** 32))


def is_digest(value: object) -> bool:
    """True for a digest dict (as produced by :func:`tensor_digest`, possibly with tensor values)."""
    return isinstance(value, Mapping) and DIGEST_TAG in value


def sample_positions(name: str, numel: int) -> np.ndarray:
    """The flat positions a digest of a ``numel``-element tensor named ``name`` samples."""
    rng = _rng(name, numel)
    return np.sort(rng.choice(numel, min(SAMPLES, numel), replace=False)).astype(np.int64)


def tensor_digest(name: str, array: np.ndarray) -> Dict[str, object]:
    """The digest of ``array`` stored under ``name`` (numpy values; callers may convert to tensors)."""
    a = np.asarray(array, dtype=np.float64).ravel()
    n = a.size
    idx = sample_positions(name, n)
    seed = (zlib.crc32((name + "/proj").encode("utf-8")) ^ (n * 40503)) % (2 ** 32)
    bits = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    proj = np.array([(((bits >> p) & 1).astype(np.float64) * 2.0 - 1.0) @ a
                     for p in range(PROJECTIONS)], dtype=np.float64)
    return {DIGEST_TAG: 1, "shape": [int(s) for s in np.shape(array)], "numel": int(n),
            "sum": float(a.sum()), "l2": float(np.sqrt((a * a).sum())), "absmax": float(np.abs(a).max()),
            "val": a[idx].astype(np.float32), "proj": proj}


def _num(v: object) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float64)


def digest_errors(name: str, got: np.ndarray, ref: Mapping[str, object]) -> Dict[str, float]:
    """Relative errors of ``got`` against the digest ``ref``.

    ``sampled``: max over sampled elements of |diff| / max(|ref elem|, 1e-3 * absmax) (the floor of
    ``parity.tolerances``); ``norm``/``sum``/``proj``: differences divided by the reference norm.
    A shape mismatch gives ``inf`` everywhere.
    """
    g = np.asarray(got, dtype=np.float64)
    shape = tuple(int(s) for s in ref["shape"])
    if tuple(g.shape) != shape:
        return {"sampled": float("inf"), "norm": float("inf"), "sum": float("inf"),
                "proj": float("inf")}
    mine = tensor_digest(name, g)
    scale = max(float(_num(ref["l2"])), 1e-30)
    absmax = float(_num(ref["absmax"]))
    ref_val = _num(ref["val"])
    if ref_val.size != mine["val"].size:
        raise ValueError(f"digest of {name} holds {ref_val.size} samples, expected {mine['val'].size}")
    denom = np.maximum(np.abs(ref_val), max(1e-3 * absmax, 1e-30))
    return {
        "sampled": float(np.max(np.abs(np.asarray(mine["val"], np.float64) - ref_val) / denom)),
        "norm": abs(mine["l2"] - float(_num(ref["l2"]))) / scale,
        "sum": abs(mine["sum"] - float(_num(ref["sum"]))) / scale,
        "proj": float(np.max(np.abs(mine["proj"] - _num(ref["proj"])))) / scale,
    }
