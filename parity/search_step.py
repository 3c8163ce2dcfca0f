"""``parity search-step``: one Cream search iteration in PyTorch and Paddle, against the official code.

A *golden file* (a ``torch.save``-d dict, read with ``weights_only=True``) fixes the starting point of
one iteration of the official search loop: the supernet (``flops_minimum``, ``flops_maximum``,
``num_classes``), its initial state, a batch ``x``/``y``, the sampled path ``random_cand``, one board
entry (``teacher_cand``, ``board_x``, ``board_feat``) and ``cfg`` (``LR``, ``META_LR``,
``MOMENTUM``, ``WEIGHT_DECAY``, ``NESTEROV``, ``SLICE``, ``PICK_METHOD``, ``META_STA_EPOCH``,
``UPDATE_ITER``, ``epoch``, ``batch_idx``; optional ``SMOOTHING``, ``POOL_SIZE``). It may hold the
official results: ``meta_value``, ``loss``, ``kd_loss``, ``valid_loss`` (and the meta step's
``meta_value_meta_update``, ``meta_kd_loss``, ``meta_valid_loss``), ``grads`` (``meta_first/``,
``meta_val/``, ``meta_teacher/`` and ``step/`` + parameter name; a bare parameter name, the
issue-5 format, is the distillation step's gradient ``step/<name>``), and the entries that
changed, ``after_meta_update`` and ``after_step``. Every result is optional: what the file does not
hold is not compared with it (the two frameworks are still compared with each other on it).

Both frameworks run the iteration (``cream_torch_ref.search.search_step`` /
``cream_paddle.search.search_step``): the second-order meta-matching update, then the distillation
step and its optimizer step. Compared are the meta values, the losses, every gradient, and every
parameter and BN statistic after the meta update and after the step: each framework against the
golden results, and the two frameworks against each other (in full). Entries a golden file does not
list as changed must still equal the initial state.

Compact golden files (the ones in ``tests/data/golden_search``) keep the repository small:
``init_seed`` + ``state_keys_shapes`` instead of ``init_state_dict`` (the weights are
``cream_core.arch.seeded``, or with ``init_scheme: "official"`` the official initialisation's rules,
:mod:`cream_core.arch.official_init`), ``x``/``board_x`` in float16 (exactly the values used), and tensors above
``cream_core.io.digest.FULL_LIMIT`` elements as digests (see :mod:`cream_core.io.digest`), which are checked
on sampled elements, norm, sum and random projections.

Tolerances are the named constants below, and in fp32 at least ``NOISE_FACTOR`` times the
quantity's measured noise (:mod:`parity.noise`: three torch fp32 runs with last-bit perturbations
of the weights, images and board entry, one on 2 threads, and the torch fp64 run, against the
unperturbed torch run; ``--noise-members 0`` for the fixed bounds alone). Every row reports its
error, the noise and their ratio. State entries get a context floor
(:data:`STATE_CONTEXT_FLOOR`): the official initialisation starts BN biases and running means at
exactly zero. Exit 0 iff every comparison passes, 1 otherwise, 2 for bad input (one line naming
the file and the problem: mistyped fields, NaN/Inf in inputs, states or learning rates, shapes that
do not fit the supernet, labels out of range, missing state entries). ``--inject-fault`` breaks one thing in the Paddle run to show the harness notices.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cream_core.io.atomic import atomic_write
from cream_core.io.digest import is_digest, sample_positions
from cream_core.io.cli_errors import UsageError, int_at_least
from cream_core.config.search import SearchConfig
from cream_core.arch.supernet import plan_supernet, search_for_layer
from cream_core.arch.official_init import OFFICIAL_INIT, official_init_state
from cream_core.io.outputs import prepare_outputs
from cream_core.arch.seeded import seeded_state

from .engine import with_threads
from .subcommand import Subcommand
from .tolerances import GRAD_CONTEXT_FLOOR, Tolerance
from .noise import NOISE_FACTOR, NOISE_MEMBERS, NoiseModel, Perturbation, measure_noise

__all__ = ["register", "run_search_step", "load_golden", "Golden", "Row", "SearchStepResult",
           "GoldenError", "STATE_CONTEXT_FLOOR", "GRAD_FAMILIES", "compare_to_golden", "compare_runs",
           "record_tensors", "measure_search_noise", "SCALAR_FP32", "GRAD_FP32_SEARCH", "STATE_FP32_SEARCH", "SCALAR_FP64",
           "GRAD_FP64_SEARCH", "STATE_FP64_SEARCH", "BN_FP64_SEARCH", "PROJECTION_SIGMAS",
           "FAULTS", "FRAMEWORKS"]

FRAMEWORKS = ("both", "torch", "paddle")

# --- tolerances -----------------------------------------------------------------------------
#: Meta values and losses (fp32): the issue's bound. Measured against the official golden files:
#: torch 0 to 2.4e-7, Paddle 0 to 1.2e-7.
SCALAR_FP32 = Tolerance(1e-5, 0.0, "issue bound for meta value and losses; measured <= 2.4e-7")
#: Every gradient (fp32): the issue's 1e-4, relative to the tensor's scale, the scale being at least
#: GRAD_CONTEXT_FLOOR of the largest gradient of its family (meta_first, meta_val, meta_teacher,
#: step): biases in front of a convolution and a train-mode BatchNorm have an exactly zero gradient,
#: which both sides return as ~1e-9 of rounding noise. Measured: Paddle vs official 4e-5.
GRAD_FP32_SEARCH = Tolerance(0.0, 1e-4, "issue bound for gradients, of scale (>= 1 % of the "
                                        "family's largest); measured <= 4e-5")
#: Parameters and BN statistics after the meta update and after the step (fp32), of each tensor's
#: scale. Measured: 2e-6.
STATE_FP32_SEARCH = Tolerance(0.0, 1e-4, "issue bound for updated parameters and BN statistics, of "
                                         "scale; measured <= 2e-6")
#: float64 semantic check (Paddle vs torch only; the golden files are fp32). Measured: losses
#: 6e-12, gradients 8e-10 of scale.
SCALAR_FP64 = Tolerance(1e-10, 0.0, "fp64: rounding leaves ~1e-12 on a loss")
GRAD_FP64_SEARCH = Tolerance(0.0, 1e-7, "fp64 gradients through two backward passes; measured 8e-10")
STATE_FP64_SEARCH = Tolerance(0.0, 1e-7, "fp64 weights after two SGD steps at lr up to 1")
#: Paddle's batch_norm op keeps its momentum as a float32 attribute (0.9 -> 0.89999998) even for
#: float64 tensors, which moves running statistics by ~2.4e-8 * |old - batch|: measured 1.4e-7.
BN_FP64_SEARCH = Tolerance(0.0, 1e-5, "Paddle's BN momentum attribute is float32 even in fp64; "
                                      "measured 1.4e-7")
#: State entries (parameters and BN statistics after the meta update and after the step) are
#: compared on a scale of at least this fraction of the largest entry of their kind (same leaf
#: name, per-channel or weight array) in the reference state. Why: the official initialisation
#: starts BN biases and running means at exactly zero, so after one step they hold one small update
#: (``0.1 * batch mean``, ``-lr * grad``) whose rounding error is set by the size of the summands,
#: not by the result: relative to its own tiny value it reaches 1e-1 and more, in every pair (torch
#: vs official too). Measured on the two official-initialisation golden files, without the noise
#: model: the worst entry is 3.4e-5 of its kind's largest (Paddle vs torch; torch vs official:
#: 5.5e-6); on seeded weights 7.8e-7. 0.5 keeps STATE_FP32_SEARCH's 1e-4 above that (1.5x), and the
#: noise model (NOISE_FACTOR x measured noise) covers each entry on its own measured size.
STATE_CONTEXT_FLOOR: float = 0.5
#: Digest projections are random: a tensor whose every element is within the bound shifts a
#: projection by a N(0, |err|^2) amount, held to this many standard deviations.
PROJECTION_SIGMAS: float = 4.0


class GoldenError(ValueError):
    """A golden file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


@dataclass
class Golden:
    """A golden file, parsed: inputs in torch layout (numpy) and the optional expected results."""

    path: str
    num_classes: int
    sta_num: Tuple[int, ...]
    init_state: Dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    random_cand: List[List[int]]
    teacher_cand: List[List[int]]
    board_x: np.ndarray
    board_feat: np.ndarray
    board_prec1: float
    board_flops: float
    cfg: SearchConfig
    epoch: int
    batch_idx: int
    expected: Dict[str, Any] = field(default_factory=dict)


_REQUIRED = ("flops_minimum", "flops_maximum", "num_classes", "x", "y", "random_cand",
             "teacher_cand", "board_x", "board_feat", "cfg")
_CFG_KEYS = ("LR", "META_LR", "MOMENTUM", "WEIGHT_DECAY", "NESTEROV", "SLICE", "PICK_METHOD",
             "META_STA_EPOCH", "UPDATE_ITER", "epoch", "batch_idx")
#: ``init_scheme`` of a compact golden file -> the function giving its initial state from the
#: keys, shapes and ``init_seed``: calibration-free seeded weights (the default) or the official
#: initialisation's rules (BN biases and running means at exactly zero).
_INIT_SCHEMES: Dict[str, Callable[..., Dict[str, np.ndarray]]] = {
    "seeded": lambda ks, seed: seeded_state(ks, seed=seed), OFFICIAL_INIT: official_init_state}
#: Gradient families a golden file's ``grads`` may hold (``<family>/<parameter>``); a bare parameter
#: name (the issue-5 format) is the distillation step's gradient, ``step/<parameter>``.
GRAD_FAMILIES = ("meta_first", "meta_val", "meta_teacher", "step")
#: The name a digest was made under (its sample positions and projections derive from it), kept
#: when a bare gradient name is read as ``step/<name>``.
_DIGEST_NAME = "__name__"
_SCALARS = ("meta_value", "loss", "kd_loss", "valid_loss", "meta_value_meta_update",
            "meta_kd_loss", "meta_valid_loss")


def _np(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if str(v.dtype) in ("torch.float16", "torch.bfloat16"):
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _read(path: str) -> Mapping[str, Any]:
    """The golden file's dict, read with ``weights_only=True`` (never runs code from it)."""
    import torch

    if not os.path.isfile(path):
        raise GoldenError(path, "no such file" if not os.path.exists(path) else "not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GoldenError(path, f"not a weights-only torch file ({first[:160]})") from None
    if not isinstance(raw, Mapping):
        raise GoldenError(path, f"expected a dict, found {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    if "init_state_dict" not in raw and not ("init_seed" in raw and "state_keys_shapes" in raw):
        missing.append("init_state_dict (or init_seed + state_keys_shapes)")
    if missing:
        raise GoldenError(path, f"missing key(s): {', '.join(missing)}")
    if not isinstance(raw["cfg"], Mapping):
        raise GoldenError(path, "cfg is not a dict")
    missing = [k for k in _CFG_KEYS if k not in raw["cfg"]]
    if missing:
        raise GoldenError(path, f"cfg lacks {', '.join(missing)}")
    return raw


def _field(path: str, what: str, convert: Callable[[], Any]) -> Any:
    """``convert()``, or a :class:`GoldenError` naming ``what`` if the file's value does not fit."""
    try:
        return convert()
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError,
            RuntimeError) as e:
        raise GoldenError(path, f"{what}: wrong type or value ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def _array(path: str, what: str, v: Any, kinds: str = "fiub") -> np.ndarray:
    """``v`` as a numpy array of a numeric dtype (kinds), or a GoldenError naming ``what``."""
    a = _field(path, what, lambda: _np(v))
    if not isinstance(a, np.ndarray) or a.dtype.kind not in kinds:
        raise GoldenError(path, f"{what}: expected a numeric tensor, found "
                                f"{type(v).__name__}{'' if not hasattr(a, 'dtype') else ' of ' + str(a.dtype)}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise GoldenError(path, f"{what}: holds NaN or Inf")
    return a


def _init_state(path: str, raw: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    if "init_state_dict" in raw:
        sd = raw["init_state_dict"]
        if not isinstance(sd, Mapping):
            raise GoldenError(path, "init_state_dict is not a dict")
        return {str(k): _array(path, f"init_state_dict[{k!r}]", v) for k, v in sd.items()}
    entries = _field(path, "state_keys_shapes", lambda: [
        (str(k), tuple(int(s) for s in shape), str(np.dtype(dt)))
        for k, shape, dt in raw["state_keys_shapes"]])
    scheme = raw.get("init_scheme", "seeded")
    if not isinstance(scheme, str) or scheme not in _INIT_SCHEMES:
        raise GoldenError(path, f"init_scheme {scheme!r} is not one of {', '.join(_INIT_SCHEMES)}")
    seed = _field(path, "init_seed", lambda: int(raw["init_seed"]))
    arrays = _field(path, "state_keys_shapes", lambda: _INIT_SCHEMES[scheme](
        [(k, s) for k, s, _ in entries], seed))
    return {k: np.asarray(arrays[k]).astype(dt).reshape(s) for k, s, dt in entries}


def _config(path: str, raw: Mapping[str, Any], batch: int) -> SearchConfig:
    c = raw["cfg"]
    try:
        cfg = SearchConfig(
            lr=float(c["LR"]), meta_lr=float(c["META_LR"]), momentum=float(c["MOMENTUM"]),
            weight_decay=float(c["WEIGHT_DECAY"]), opt="sgd" if bool(c["NESTEROV"]) else "momentum",
            slice=int(c["SLICE"]), pick_method=str(c["PICK_METHOD"]),
            meta_sta_epoch=int(c["META_STA_EPOCH"]), update_iter=int(c["UPDATE_ITER"]),
            smoothing=float(c.get("SMOOTHING", 0.1)), pool_size=int(c.get("POOL_SIZE", 10)),
            num_classes=int(raw["num_classes"]), batch_size=batch)
        cfg.check(path)
    except (TypeError, ValueError, OverflowError) as e:
        raise GoldenError(path, f"bad cfg ({e})") from None
    for key, value in (("LR", cfg.lr), ("META_LR", cfg.meta_lr), ("MOMENTUM", cfg.momentum),
                       ("WEIGHT_DECAY", cfg.weight_decay), ("SMOOTHING", cfg.smoothing)):
        if not math.isfinite(value):
            raise GoldenError(path, f"cfg {key} is {value}: learning rates and optimizer settings "
                                    "must be finite")
    return cfg


def _expected(path: str, raw: Mapping[str, Any], shapes: Mapping[str, Tuple[int, ...]]
              ) -> Dict[str, Any]:
    """The official results the file holds (bare gradient names read as ``step/<name>``), each
    checked against the supernet's keys and ``shapes``."""
    expected: Dict[str, Any] = {}
    for k in _SCALARS:
        if raw.get(k) is not None:
            expected[k] = _field(path, k, lambda k=k: float(_np(raw[k]).reshape(())))
    for k in ("grads", "after_meta_update", "after_step"):
        if k in raw:
            if not isinstance(raw[k], Mapping):
                raise GoldenError(path, f"{k} is not a dict")
            expected[k] = {str(n): v if is_digest(v) else _array(path, f"{k}[{n!r}]", v)
                           for n, v in raw[k].items()}
            for n, v in expected[k].items():
                key = n.split("/", 1)[1] if k == "grads" and n.split("/", 1)[0] in GRAD_FAMILIES else n
                shape = _field(path, f"{k}[{n!r}] shape", lambda v=v: tuple(int(s) for s in v["shape"])
                               ) if is_digest(v) else tuple(np.shape(v))
                if key not in shapes:
                    raise GoldenError(path, f"{k}[{n!r}]: no such entry in the supernet")
                if shape != shapes[key]:
                    raise GoldenError(path, f"{k}[{n!r}]: shape {list(shape)}, the supernet's is "
                                            f"{list(shapes[key])}")
    if "grads" in expected:
        expected["grads"] = {n if n.split("/", 1)[0] in GRAD_FAMILIES else f"step/{n}":
                             dict(v, **{_DIGEST_NAME: n}) if is_digest(v) else v
                             for n, v in expected["grads"].items()}
    return expected


def load_golden(path: str) -> Golden:
    """Read and check a golden file (never runs code from it); :class:`GoldenError` if unusable:
    a missing or mistyped field, NaN/Inf in an input, a state or a learning rate, shapes that do
    not fit the supernet, labels out of range."""
    raw = _read(path)
    flops = _field(path, "flops_minimum/flops_maximum",
                   lambda: (float(raw["flops_minimum"]), float(raw["flops_maximum"])))
    found = search_for_layer(*flops) if all(math.isfinite(f) for f in flops) else None
    if found is None:
        raise GoldenError(path, f"no supernet fits {raw['flops_minimum']}..{raw['flops_maximum']} MFLOPs")
    if "sta_num" in raw and _field(path, "sta_num", lambda: tuple(int(n) for n in raw["sta_num"])
                                   ) != found.sta_num:
        raise GoldenError(path, f"sta_num {list(raw['sta_num'])} is not what the layer search gives "
                                f"({list(found.sta_num)})")
    x = _array(path, "x", raw["x"], "f").astype(np.float32)
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape) < 1:
        raise GoldenError(path, f"x has shape {list(x.shape)}; expected [N, 3, H, W]")
    cfg = _config(path, raw, int(x.shape[0]))
    shapes = _reference_shapes(found.sta_num, cfg)
    g = Golden(path, cfg.num_classes, found.sta_num, _init_state(path, raw), x,
               _array(path, "y", raw["y"], "iu").astype(np.int64),
               _field(path, "random_cand", lambda: [list(map(int, s)) for s in raw["random_cand"]]),
               _field(path, "teacher_cand", lambda: [list(map(int, s)) for s in raw["teacher_cand"]]),
               _array(path, "board_x", raw["board_x"], "f").astype(np.float32),
               _array(path, "board_feat", raw["board_feat"], "f").astype(np.float32),
               _field(path, "board_prec1", lambda: float(raw.get("board_prec1", 0.0))),
               _field(path, "board_flops", lambda: float(raw.get("board_flops", 0.0))), cfg,
               _field(path, "cfg epoch", lambda: int(raw["cfg"]["epoch"])),
               _field(path, "cfg batch_idx", lambda: int(raw["cfg"]["batch_idx"])),
               _expected(path, raw, shapes))
    _check_inputs(g)
    _check_state(g, shapes)
    return g


def _check_inputs(g: Golden) -> None:
    """Shapes and ranges of the batch, the board entry and the paths."""
    from cream_core.arch.supernet import validate_cand

    n = g.x.shape[0]
    if g.y.shape != (n,):
        raise GoldenError(g.path, f"y has shape {list(g.y.shape)}; expected [{n}] (one label per image)")
    if g.y.min() < 0 or g.y.max() >= g.num_classes:
        raise GoldenError(g.path, f"labels out of range: y holds {int(g.y.min())}..{int(g.y.max())}, "
                                  f"num_classes is {g.num_classes}")
    if g.board_x.ndim != 4 or g.board_x.shape[1:] != g.x.shape[1:]:
        raise GoldenError(g.path, f"board_x has shape {list(g.board_x.shape)}; expected "
                                  f"[K, {', '.join(map(str, g.x.shape[1:]))}] like x")
    if g.board_feat.shape != (g.board_x.shape[0], g.num_classes):
        raise GoldenError(g.path, f"board_feat has shape {list(g.board_feat.shape)}; expected "
                                  f"[{g.board_x.shape[0]}, {g.num_classes}]")
    plan = plan_supernet(g.sta_num)
    for what, cand in (("random_cand", g.random_cand), ("teacher_cand", g.teacher_cand)):
        try:
            validate_cand(cand, plan)
        except ValueError as e:
            raise GoldenError(g.path, f"{what}: {e}") from None


def _reference_shapes(sta_num: Tuple[int, ...], cfg: SearchConfig) -> Dict[str, Tuple[int, ...]]:
    """Keys and shapes of the torch reference supernet's state (built on the meta device)."""
    import torch

    from cream_torch_ref.supernet import SuperNet

    with torch.device("meta"):
        model = SuperNet(plan_supernet(sta_num), num_classes=cfg.num_classes, slice=cfg.slice)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_state(g: Golden, shapes: Mapping[str, Tuple[int, ...]]) -> None:
    """The initial state against the supernet's keys and shapes."""
    missing = [k for k in shapes if k not in g.init_state]
    extra = [k for k in g.init_state if k not in shapes]
    if missing or extra:
        what = (f"{len(missing)} missing (first: {missing[0]})" if missing else "") + \
               ("; " if missing and extra else "") + \
               (f"{len(extra)} unknown (first: {extra[0]})" if extra else "")
        raise GoldenError(g.path, f"initial state does not fit the supernet: {what}")
    for k, shape in shapes.items():
        if tuple(g.init_state[k].shape) != shape:
            raise GoldenError(g.path, f"initial state {k}: shape {list(g.init_state[k].shape)}, "
                                      f"the supernet's is {list(shape)}")


# --- running one framework ---------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """A deliberate mistake in the Paddle run."""

    name: str
    description: str
    apply: Callable[[SearchConfig], SearchConfig]


FAULTS: Dict[str, Fault] = {f.name: f for f in (
    Fault("meta-lr", "simulated SGD step with 1 % too large a meta learning rate",
          lambda c: replace(c, meta_lr=c.meta_lr * 1.01)),
    Fault("smoothing", "label smoothing 0.11 instead of 0.1",
          lambda c: replace(c, smoothing=c.smoothing + 0.01)),
    Fault("weight-decay", "weight decay doubled", lambda c: replace(c, weight_decay=c.weight_decay * 2)),
    Fault("fix-meta-value", "the select_teacher bug fix switched on (no effect with one board entry: "
          "expect a pass)", lambda c: replace(c, fix_meta_value=True)),
)}


@dataclass
class RunRecord:
    """One framework's iteration: scalars, gradients and full states, torch names and layouts."""

    framework: str
    precision: str
    scalars: Dict[str, Optional[float]]
    grads: Dict[str, np.ndarray]
    after_meta_update: Dict[str, np.ndarray]
    after_step: Dict[str, np.ndarray]
    meta_ran: bool
    seconds: float


def _record_fields(rec: Any) -> Dict[str, Optional[float]]:
    return {k: getattr(rec, k) for k in _SCALARS}


def run_torch(g: Golden, precision: str = "fp32",
              perturbation: Optional[Perturbation] = None) -> RunRecord:
    """The iteration with :mod:`cream_torch_ref.search` (``perturbation``: a noise-ensemble member,
    whose initial weights, images and board entry are moved by one ulp, see :mod:`parity.noise`)."""
    import torch

    if perturbation is not None:
        g = replace(g, init_state=perturbation.perturb_all(g.init_state),
                    x=perturbation.perturb("x", g.x), board_x=perturbation.perturb("board_x", g.board_x),
                    board_feat=perturbation.perturb("board_feat", g.board_feat))

    from cream_torch_ref import search as S
    from cream_torch_ref.supernet import SuperNet
    from cream_core.search.board import PrioritizedBoard

    dt = torch.float64 if precision == "fp64" else torch.float32
    plan = plan_supernet(g.sta_num)
    model = SuperNet(plan, num_classes=g.num_classes, slice=g.cfg.slice).to(dt)
    state = {k: torch.from_numpy(v.astype(np.float64) if (dt == torch.float64 and v.dtype.kind == "f")
                                 else v) for k, v in g.init_state.items()}
    model.load_state_dict(state)
    model.train()
    opt = S.LegacySGD(model, g.cfg.lr, g.cfg.meta_lr, g.cfg.momentum, g.cfg.weight_decay, g.cfg.nesterov)
    board = PrioritizedBoard(plan.sta_num, pool_size=g.cfg.pool_size, meta_sta_epoch=g.cfg.meta_sta_epoch,
                             pick_method=g.cfg.pick_method)
    board.add(g.board_prec1, g.board_flops, g.teacher_cand, torch.from_numpy(g.board_x).to(dt),
              torch.from_numpy(g.board_feat).to(dt))
    rec = S.StepRecord()
    t = time.perf_counter()
    S.search_step(model, opt, board, torch.from_numpy(g.x).to(dt), torch.from_numpy(g.y),
                  g.random_cand, g.epoch, g.batch_idx, g.cfg, S.make_loss_fn(g.cfg.smoothing), record=rec)
    return RunRecord("torch", precision, _record_fields(rec), rec.grads, rec.after_meta_update,
                     rec.after_step, rec.meta_ran, time.perf_counter() - t)


def run_paddle(g: Golden, precision: str = "fp32", fault: Optional[str] = None) -> RunRecord:
    """The iteration with :mod:`cream_paddle.search` (``fault``: a name from :data:`FAULTS`)."""
    import paddle

    from cream_core.rules import apply_rules, paddle_layout
    from cream_core.search.board import PrioritizedBoard
    from cream_paddle import search as S
    from cream_paddle.supernet import SuperNet

    cfg = FAULTS[fault].apply(g.cfg) if fault else g.cfg
    dtype = "float64" if precision == "fp64" else "float32"
    old_default = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        plan = plan_supernet(g.sta_num)
        model = SuperNet(plan, num_classes=g.num_classes, slice=cfg.slice)
        src = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in g.init_state.items()}
        model.set_state_dict(apply_rules(src, paddle_layout(model), to="paddle").state_dict)
        model.train()
        opt = S.LegacySGD(model, cfg.lr, cfg.meta_lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
        board = PrioritizedBoard(plan.sta_num, pool_size=cfg.pool_size, meta_sta_epoch=cfg.meta_sta_epoch,
                                 pick_method=cfg.pick_method)
        board.add(g.board_prec1, g.board_flops, g.teacher_cand, paddle.to_tensor(g.board_x.astype(dtype)),
                  paddle.to_tensor(g.board_feat.astype(dtype)))
        rec = S.StepRecord()
        t = time.perf_counter()
        S.search_step(model, opt, board, paddle.to_tensor(g.x.astype(dtype)), paddle.to_tensor(g.y),
                      g.random_cand, g.epoch, g.batch_idx, cfg, S.make_loss_fn(cfg.smoothing), record=rec)
        seconds = time.perf_counter() - t
    finally:
        paddle.set_default_dtype(old_default)
    return RunRecord("paddle", precision, _record_fields(rec), rec.grads, rec.after_meta_update,
                     rec.after_step, rec.meta_ran, seconds)


# --- comparing ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One compared quantity."""

    pair: str  # 'torch~golden', 'paddle~golden', 'paddle~torch', 'paddle~torch/fp64'
    group: str  # scalars, grads, after_meta_update, after_step
    name: str
    max_abs: float = math.nan
    rel: float = math.nan  # error over the scale the tolerance refers to
    excess: float = math.nan  # error over the allowed error; <= 1 passes
    tolerance: str = ""
    ok: bool = False
    note: str = ""
    noise: float = math.nan  # measured fp32 noise of the torch reference (parity.noise)
    noise_ratio: float = math.nan  # max_abs / noise

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        return d


def _tol_name(tol: Tolerance) -> str:
    for k, v in globals().items():
        if v is tol and k.isupper():
            return k
    return tol.describe()


def _scalar_row(pair: str, name: str, got: Optional[float], ref: Optional[float], tol: Tolerance,
                min_allowed: float = 0.0) -> Row:
    r = Row(pair, "scalars", name, tolerance=_tol_name(tol))
    if got is None or ref is None:
        r.ok = got is None and ref is None
        r.note = "" if r.ok else ("missing in the run" if got is None else "not expected")
        r.max_abs = r.rel = r.excess = 0.0 if r.ok else math.inf
        return r
    d = abs(float(got) - float(ref))
    allowed = max(tol.atol + tol.rtol * abs(float(ref)), min_allowed)
    r.max_abs, r.rel = d, d / max(abs(float(ref)), 1e-30)
    r.excess = d / allowed if allowed > 0 else (0.0 if d == 0 else math.inf)
    r.ok = bool(r.excess <= 1.0)
    return r


def _tensor_row(pair: str, group: str, name: str, got: Optional[np.ndarray], ref: Any, tol: Tolerance,
                scale_floor: float = 0.0, min_allowed: float = 0.0) -> Row:
    """``got`` against ``ref`` (an array or a digest): |diff| <= max(rtol * scale + atol,
    min_allowed), the scale being at least ``scale_floor``."""
    r = Row(pair, group, name, tolerance=_tol_name(tol))
    if got is None:
        r.note, r.max_abs, r.rel, r.excess = "missing in the run", math.inf, math.inf, math.inf
        return r
    a = np.asarray(got, dtype=np.float64)
    if is_digest(ref):
        shape = tuple(int(s) for s in ref["shape"])
        if a.shape != shape:
            r.note = f"shape {list(a.shape)} vs expected {list(shape)}"
            r.max_abs = r.rel = r.excess = math.inf
            return r
        n = int(ref["numel"])
        name = str(ref.get(_DIGEST_NAME, name))
        scale = max(float(_np(ref["absmax"])), scale_floor, 1e-30)
        allowed = max(tol.atol + tol.rtol * scale, min_allowed)
        val = _np(ref["val"]).astype(np.float64)
        mine = a.ravel()[sample_positions(name, n)]
        d_elem = float(np.abs(mine - val).max()) if val.size else 0.0
        from cream_core.io.digest import tensor_digest

        dig = tensor_digest(name, a)
        d_norm = abs(dig["l2"] - float(_np(ref["l2"])))
        d_sum = abs(dig["sum"] - float(_np(ref["sum"])))
        d_proj = float(np.abs(np.asarray(dig["proj"]) - _np(ref["proj"])).max())
        root = math.sqrt(n)
        excess = max(d_elem / allowed, d_norm / (root * allowed), d_sum / (n * allowed),
                     d_proj / (PROJECTION_SIGMAS * root * allowed))
        r.max_abs, r.rel, r.excess = d_elem, d_elem / scale, excess
        r.note = "digest"
        r.ok = bool(excess <= 1.0)
        return r
    b = _np(ref).astype(np.float64)
    if a.shape != b.shape:
        r.note = f"shape {list(a.shape)} vs expected {list(b.shape)}"
        r.max_abs = r.rel = r.excess = math.inf
        return r
    if a.size == 0:
        r.max_abs = r.rel = r.excess = 0.0
        r.ok = True
        return r
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
        dmax = float(np.nanmax(d)) if not np.isnan(d).all() else math.inf
        if np.isnan(d).any() and not (np.isnan(a) == np.isnan(b)).all():
            dmax = math.inf
    scale = max(float(np.abs(b).max()), scale_floor, 1e-30)
    allowed = max(tol.atol + tol.rtol * scale, min_allowed)
    r.max_abs, r.rel = dmax, dmax / scale
    r.excess = dmax / allowed if allowed > 0 else (0.0 if dmax == 0 else math.inf)
    r.ok = bool(r.excess <= 1.0)
    return r


def _family(name: str) -> str:
    return name.split("/", 1)[0]


def _family_max(grads: Mapping[str, Any]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k, v in grads.items():
        if is_digest(v):
            m = float(_np(v["absmax"]))
        else:
            m = float(np.abs(_np(v)).max()) if np.size(_np(v)) else 0.0
        out[_family(k)] = max(out.get(_family(k), 0.0), m)
    return out


def _state_tol(key: str, fp64: bool) -> Tolerance:
    if fp64:
        return BN_FP64_SEARCH if ("running_" in key) else STATE_FP64_SEARCH
    return STATE_FP32_SEARCH


def _kind(key: str, value: Any) -> Tuple[str, bool]:
    """The kind of a state entry for :data:`STATE_CONTEXT_FLOOR`: its leaf name and whether it is
    per-channel (1-D: BN parameters and statistics, biases) or a weight array."""
    shape = value["shape"] if is_digest(value) else np.shape(_np(value))
    return key.rsplit(".", 1)[-1], len(shape) <= 1


def _absmax(value: Any) -> float:
    if is_digest(value):
        return float(_np(value["absmax"]))
    a = _np(value)
    return float(np.abs(a).max()) if a.size else 0.0


def _state_context(state: Mapping[str, Any]) -> Dict[Tuple[str, bool], float]:
    """The largest magnitude of each kind of entry (see :func:`_kind`) in a reference state."""
    out: Dict[Tuple[str, bool], float] = {}
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            kind = _kind(k, v)
            out[kind] = max(out.get(kind, 0.0), _absmax(v))
    return out


def _noise_bound(noise: Optional[NoiseModel], group: str, name: str) -> float:
    return noise.allowed(f"{group}/{name}") if noise is not None else 0.0


def _with_noise(row: Row, noise: Optional[NoiseModel]) -> Row:
    """Record the measured noise of ``row``'s quantity and the ratio error / noise on it."""
    if noise is not None:
        n = noise.of(f"{row.group}/{row.name}")
        if math.isfinite(n):
            row.noise = n
            row.noise_ratio = row.max_abs / n if n > 0 else (0.0 if row.max_abs == 0 else math.inf)
    return row


def _state_rows(pair: str, group: str, mine: Mapping[str, np.ndarray], ref_state: Mapping[str, Any],
                fp64: bool, noise: Optional[NoiseModel], keys: Sequence[str]) -> List[Row]:
    """Every state entry of ``keys`` after ``group``, with its tolerance, context floor and noise."""
    context = _state_context(ref_state)
    rows: List[Row] = []
    for k in keys:
        if k not in mine:
            if k.endswith("num_batches_tracked") and pair.startswith("paddle"):
                continue  # Paddle keeps no BN step counter
            rows.append(Row(pair, group, k, math.inf, math.inf, math.inf, "", False,
                            "missing in the run"))
            continue
        ref = ref_state[k]
        if k.endswith("num_batches_tracked"):
            same = int(np.asarray(mine[k])) == int(np.asarray(_np(ref)))
            rows.append(Row(pair, group, k, 0.0 if same else math.inf, 0.0 if same else math.inf,
                            0.0 if same else math.inf, "exact", same))
            continue
        floor = STATE_CONTEXT_FLOOR * context.get(_kind(k, ref), 0.0)
        rows.append(_with_noise(_tensor_row(pair, group, k, mine[k], ref, _state_tol(k, fp64), floor,
                                            _noise_bound(noise, group, k)), noise))
    return rows


def compare_to_golden(run: RunRecord, g: Golden, noise: Optional[NoiseModel] = None) -> List[Row]:
    """``run`` against the golden file's expected results. Only what the file holds is compared: a
    scalar, a gradient family (``meta_first``, ``meta_val``, ``meta_teacher``, ``step``) or a state
    group it lacks is left out (the frameworks are still compared with each other on it)."""
    pair = f"{run.framework}~golden"
    rows: List[Row] = []
    exp = g.expected
    for k in _SCALARS:
        if k in exp:
            rows.append(_with_noise(_scalar_row(pair, k, run.scalars.get(k), exp[k], SCALAR_FP32,
                                                _noise_bound(noise, "scalars", k)), noise))
    if "grads" in exp:
        fam = _family_max(exp["grads"])
        for k, ref in exp["grads"].items():
            rows.append(_with_noise(_tensor_row(
                pair, "grads", k, run.grads.get(k), ref, GRAD_FP32_SEARCH,
                GRAD_CONTEXT_FLOOR * fam[_family(k)], _noise_bound(noise, "grads", k)), noise))
        for k in sorted(set(run.grads) - set(exp["grads"])):
            if _family(k) in fam:
                rows.append(Row(pair, "grads", k, math.inf, math.inf, math.inf,
                                _tol_name(GRAD_FP32_SEARCH), False,
                                "gradient the official step did not compute"))
    for group in ("after_meta_update", "after_step"):
        if group not in exp:
            continue
        mine = getattr(run, group)
        if not mine:
            rows.append(Row(pair, group, "(state)", math.inf, math.inf, math.inf, "", False,
                            "the run recorded no state here (no meta update?)"))
            continue
        ref_state = {k: exp[group].get(k, v) for k, v in g.init_state.items()}
        rows += _state_rows(pair, group, mine, ref_state, False, noise, list(g.init_state))
    return rows


def compare_runs(got: RunRecord, ref: RunRecord, noise: Optional[NoiseModel] = None) -> List[Row]:
    """Paddle (``got``) against torch (``ref``), every tensor in full (``noise``: fp32 only)."""
    fp64 = got.precision == "fp64"
    pair = f"{got.framework}~{ref.framework}" + ("/fp64" if fp64 else "")
    scalar_tol = SCALAR_FP64 if fp64 else SCALAR_FP32
    grad_tol = GRAD_FP64_SEARCH if fp64 else GRAD_FP32_SEARCH
    rows = [_with_noise(_scalar_row(pair, k, got.scalars.get(k), ref.scalars.get(k), scalar_tol,
                                    _noise_bound(noise, "scalars", k)), noise) for k in _SCALARS]
    fam = _family_max(ref.grads)
    for k in sorted(set(ref.grads) | set(got.grads)):
        if k not in ref.grads:
            rows.append(Row(pair, "grads", k, math.inf, math.inf, math.inf, "", False,
                            "gradient the reference did not compute"))
            continue
        rows.append(_with_noise(_tensor_row(pair, "grads", k, got.grads.get(k), ref.grads[k], grad_tol,
                                            GRAD_CONTEXT_FLOOR * fam.get(_family(k), 0.0),
                                            _noise_bound(noise, "grads", k)), noise))
    for group in ("after_meta_update", "after_step"):
        a, b = getattr(got, group), getattr(ref, group)
        if bool(a) != bool(b):
            rows.append(Row(pair, group, "(state)", math.inf, math.inf, math.inf, "", False,
                            "only one framework made a meta update"))
            continue
        rows += _state_rows(pair, group, a, b, fp64, noise, list(b))
    return rows


def record_tensors(run: RunRecord) -> Dict[str, np.ndarray]:
    """A run's results as one name -> array map, named as the rows are (``<group>/<name>``)."""
    out = {f"scalars/{k}": np.array([v]) for k, v in run.scalars.items() if v is not None}
    out.update({f"grads/{k}": v for k, v in run.grads.items()})
    for group in ("after_meta_update", "after_step"):
        out.update({f"{group}/{k}": v for k, v in getattr(run, group).items()
                    if not k.endswith("num_batches_tracked")})
    return out


def measure_search_noise(g: Golden, base: RunRecord, members: int = NOISE_MEMBERS,
                         truth: Optional[RunRecord] = None) -> NoiseModel:
    """The fp32 noise of every quantity of the iteration: ``members`` torch fp32 runs with
    last-bit perturbations and other thread counts, and the torch fp64 run ``truth`` (made here if
    not given), against the unperturbed torch run ``base``."""
    model, _ = measure_noise(lambda p: record_tensors(run_torch(g, "fp32", p)), members,
                             base=record_tensors(base), set_threads=with_threads,
                             truth=record_tensors(truth or run_torch(g, "fp64")))
    return model


@dataclass
class SearchStepResult:
    """All rows, the runs' timings, and the verdict."""

    golden: str
    frameworks: List[str]
    rows: List[Row]
    seconds: Dict[str, float]
    fault: Optional[str] = None
    noise: Optional[NoiseModel] = None

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def as_dict(self) -> Dict[str, Any]:
        return {"golden": self.golden, "frameworks": self.frameworks, "ok": self.ok,
                "injected_fault": self.fault, "seconds": self.seconds,
                "tolerances": {n: {"atol": t.atol, "rtol": t.rtol, "reason": t.reason}
                               for n, t in globals().items() if isinstance(t, Tolerance) and n.isupper()},
                "noise_model": None if self.noise is None else {
                    "members": self.noise.members, "factor": self.noise.factor},
                "summary": summarize(self.rows), "rows": [r.as_dict() for r in self.rows]}


def run_search_step(golden: "str | Golden", framework: str = "both", precision: str = "fp32",
                    fault: Optional[str] = None,
                    noise_members: int = NOISE_MEMBERS) -> SearchStepResult:
    """Run the golden iteration in ``framework`` (``'torch'``, ``'paddle'`` or ``'both'``) and compare.

    ``precision='both'`` adds a float64 Paddle-vs-torch run (needs ``framework='both'``).
    ``noise_members`` perturbed torch fp32 runs measure the fp32 noise of every quantity
    (:mod:`parity.noise`); each fp32 bound is at least ``NOISE_FACTOR`` times it (0: fixed bounds only).
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    g = load_golden(golden) if isinstance(golden, str) else golden
    rows: List[Row] = []
    seconds: Dict[str, float] = {}
    runs: Dict[str, RunRecord] = {}
    if framework in ("both", "torch"):
        runs["torch"] = run_torch(g)
        seconds["torch"] = runs["torch"].seconds
    if framework in ("both", "paddle"):
        runs["paddle"] = run_paddle(g, fault=fault)
        seconds["paddle"] = runs["paddle"].seconds
    noise = None
    if noise_members > 0:
        t = time.perf_counter()
        noise = measure_search_noise(g, runs.get("torch") or run_torch(g), noise_members)
        seconds["noise"] = time.perf_counter() - t
    has_expected = any(k in g.expected for k in ("grads", "after_step", "after_meta_update")
                       ) or any(k in g.expected for k in _SCALARS)
    if has_expected:
        for run in runs.values():
            rows += compare_to_golden(run, g, noise)
    if "torch" in runs and "paddle" in runs:
        rows += compare_runs(runs["paddle"], runs["torch"], noise)
        if precision in ("both", "fp64"):
            t64, p64 = run_torch(g, "fp64"), run_paddle(g, "fp64", fault)
            seconds["torch_fp64"], seconds["paddle_fp64"] = t64.seconds, p64.seconds
            rows += compare_runs(p64, t64)
    elif not has_expected:
        raise GoldenError(g.path, "holds no expected results; run --framework both to compare the "
                                  "two frameworks")
    return SearchStepResult(g.path, list(runs), rows, seconds, fault, noise)


def summarize(rows: Sequence[Row]) -> List[Dict[str, Any]]:
    """One line per (pair, group): how many compared, how many failed, the worst entry."""
    out: List[Dict[str, Any]] = []
    keys: List[Tuple[str, str]] = []
    for r in rows:
        if (r.pair, r.group) not in keys:
            keys.append((r.pair, r.group))
    for pair, group in keys:
        sel = [r for r in rows if r.pair == pair and r.group == group]
        worst = max(sel, key=lambda r: r.excess if not math.isnan(r.excess) else math.inf)
        ratios = [r.noise_ratio for r in sel if math.isfinite(r.noise_ratio)]
        out.append({"pair": pair, "group": group, "compared": len(sel),
                    "max_noise_ratio": max(ratios) if ratios else None,
                    "failed": sum(not r.ok for r in sel), "worst": worst.name,
                    "worst_rel": worst.rel, "worst_excess": worst.excess,
                    "tolerance": worst.tolerance})
    return out


def format_table(result: SearchStepResult) -> str:
    """The summary as a table (tabulate)."""
    from tabulate import tabulate

    lines = [[s["pair"], s["group"], s["compared"], s["failed"], s["worst"],
              f"{s['worst_rel']:.2e}" if isinstance(s["worst_rel"], float) else s["worst_rel"],
              f"{s['worst_excess']:.2f}" if isinstance(s["worst_excess"], float) else s["worst_excess"],
              s["tolerance"],
              "-" if s["max_noise_ratio"] is None else f"{s['max_noise_ratio']:.3g}"]
             for s in summarize(result.rows)]
    return tabulate(lines, headers=["pair", "group", "n", "failed", "worst entry", "error",
                                    "of allowed", "tolerance", "max err/noise"])


# --- command line -------------------------------------------------------------------------------
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--golden", required=True, metavar="FILE",
                   help="golden file of one official search iteration (see tests/data/golden_search)")
    p.add_argument("--framework", choices=FRAMEWORKS, default="both",
                   help="which framework(s) to run (default both; both also compares them)")
    p.add_argument("--precision", choices=("fp32", "both"), default="fp32",
                   help="'both' adds a float64 Paddle-vs-torch run, the semantic check (default fp32)")
    p.add_argument("--json", metavar="FILE", help="write every comparison as JSON here")
    p.add_argument("--noise-members", type=int_at_least(0), default=NOISE_MEMBERS, metavar="N",
                   help=f"perturbed torch fp32 runs measuring the fp32 noise of every quantity "
                        f"(default {NOISE_MEMBERS}; each fp32 bound is at least NOISE_FACTOR "
                        f"{NOISE_FACTOR:g} x the noise; 0 = the fixed bounds alone)")
    p.add_argument("--threads", type=int_at_least(1), default=1, metavar="N",
                   help="torch CPU threads (default 1: on a busy machine more threads spin and run "
                        "the meta step many times slower)")
    p.add_argument("--inject-fault", choices=sorted(FAULTS), metavar="FAULT",
                   help="break the Paddle run on purpose: " + ", ".join(
                       f"{n} ({f.description})" for n, f in FAULTS.items()).replace("%", "%%"))



def _run(args: argparse.Namespace) -> int:
    """The work of ``parity search-step``; bad input (golden file, options, output) raises."""
    if args.json:  # the shared guard: real paths, never onto the golden file, folder writable
        prepare_outputs({"--json": args.json}, [args.golden])
    if args.precision == "both" and args.framework != "both":
        raise UsageError("--precision both needs --framework both (fp64 compares the two frameworks)")
    if args.inject_fault and args.framework == "torch":
        raise UsageError("--inject-fault breaks the Paddle run; use --framework paddle or both")
    import torch

    torch.set_num_threads(args.threads)
    g = load_golden(args.golden)
    if args.inject_fault:
        f = FAULTS[args.inject_fault]
        print(f"injecting fault {f.name!r} into the Paddle run: {f.description}")
    result = run_search_step(g, args.framework, args.precision, args.inject_fault,
                             args.noise_members)
    print(format_table(result))
    bad = [r for r in result.rows if not r.ok]
    for r in bad[:10]:
        noise = (f", {r.noise_ratio:.3g}x the measured noise {r.noise:.2e}"
                 if math.isfinite(r.noise_ratio) else "")
        print(f"FAIL {r.pair} {r.group} {r.name}: error {r.rel:.3e} of scale "
              f"({r.excess:.2f}x allowed, {r.tolerance}{noise}) {r.note}".rstrip())
    if len(bad) > 10:
        print(f"... and {len(bad) - 10} more failures")
    t = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
    print(f"{len(result.rows)} comparisons; step time: {t}")
    if result.noise is not None:
        print(f"fp32 bounds: the named tolerance, or NOISE_FACTOR {result.noise.factor:g} x the "
              f"noise measured by {result.noise.members} runs of torch (perturbed fp32 and fp64) "
              "where larger (parity/noise.py)")
    if args.json:
        # a full or failing disk after the work: an OutputError, one line, exit 2
        atomic_write(args.json, lambda fh: json.dump(result.as_dict(), fh, indent=1), mode="w")
        print(f"JSON: {args.json}")
    print("PASS" if result.ok else "FAIL")
    return 0 if result.ok else 1


#: ``parity search-step`` (``register``: into ``parity``; ``main``: ``python -m parity.search_step``).
SUBCOMMAND = Subcommand("search-step", __doc__, _add_arguments, _run, help="one supernet search "
                        "iteration in both frameworks vs the official code")
register, main = SUBCOMMAND.register, SUBCOMMAND.main


if __name__ == "__main__":
    sys.exit(main())
