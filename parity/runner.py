"""The parity run: both frameworks, identical weights and inputs, every comparison, one verdict.

:func:`run_parity` is what ``parity run`` and ``pytest parity/`` call. Stages, in order (each
compared under the named tolerances of :mod:`parity.tolerances`):

1. ``forward/eval/fp64``, ``forward/train/fp64``, ``bn_stats/fp64``, ``loss/fp64``,
   ``backward/fp64`` — the semantic check: in float64 rounding cannot hide a wrong constant, so the
   first module whose output differs is where the port computes something else.
2. The same five in float32, the precision the models run in, with fp32 bounds.
3. ``loss/shared/fp32`` — the loss twins on the *same* logits (values and gradients w.r.t. logits).
4. ``optim/sgd/fp64`` and ``optim/rmsproptf/fp64`` — k steps of the search's Nesterov SGD +
   per-iteration LambdaLR and of the retraining's RMSpropTF + epoch schedule, both frameworks'
   optimizers fed the same k reference gradients (k batches, the official loss); the LR of every
   step and every parameter after the last. Always in float64: it checks the update rule.
5. ``lr/schedules`` — the whole retrain step and cosine schedules and the search schedule's start.
6. ``x2paddle/eval/fp32`` — a third opinion: the torch model traced by x2paddle, run in Paddle.

Weights: the torch reference loads an official-format checkpoint (the one given, or one generated from
a seed); the Paddle port loads the ``.pdparams`` that ``convert-ckpt``'s converter makes from it, so
the converter is part of what is checked. Gradient and statistic names are mapped with the
converter's rules (:mod:`cream_core.rules`), never with a second table.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from cream_core.arch import child_spec, seeded_input
from cream_core.io.atomic import atomic_write, replaced_folder

from .capture import Capture, Event, capture_paddle, capture_torch
from .engine import (CurvePoint, compare_out_grads, curve_point, grad_context, owner, paddle_at,
                     param_and_input_grads, stage_error, torch_at, torch_threads)
from .tolerances import Comparison, compare_arrays, compare_named, first_divergence

__all__ = ["ParityConfig", "ParityResult", "run_parity", "make_seeded_checkpoint", "STAGES",
           "PRECISIONS"]

#: Stage groups a run can be limited to (``ParityConfig.stages``).
STAGES: Tuple[str, ...] = ("eval", "train", "losses", "optim", "lr", "x2paddle")
PRECISIONS: Tuple[str, ...] = ("fp64", "fp32")


@dataclass
class ParityConfig:
    """What to compare; defaults are what ``parity run --model NAME`` does."""

    model: str
    ckpt: Optional[str] = None  # official-format .pth.tar; None: generate one from ``weights_seed``
    batch: int = 2
    seed: int = 0  # inputs and targets
    weights_seed: int = 1  # seeded checkpoint: raw weights from this seed, EMA from seed + 1
    resolution: Optional[int] = None  # None: the model's test resolution
    report_dir: Optional[str] = None  # converted weights and the x2paddle cache go here
    stages: Tuple[str, ...] = STAGES
    precisions: Tuple[str, ...] = PRECISIONS
    optim_steps: int = 3
    threads: int = 1  # torch intra-op threads; small batches run fastest (and steadiest) on one
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
        if self.optim_steps < 1 or self.batch < 1:
            raise ValueError("batch and optim_steps must be >= 1")


@dataclass
class ParityResult:
    """Every comparison of a run, the first divergence, timings and where the inputs came from."""

    config: ParityConfig
    comparisons: List[Comparison] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)
    curves: Dict[str, List[CurvePoint]] = field(default_factory=dict)  # for the plot

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    @property
    def first(self) -> Optional[Comparison]:
        return first_divergence(self.comparisons)

    def as_dict(self) -> Dict[str, Any]:
        first = self.first
        return {
            "ok": self.ok,
            "model": self.config.model,
            "config": asdict(self.config),
            "compared": len(self.comparisons),
            "failed": sum(not c.ok for c in self.comparisons),
            "first_divergence": first.as_dict() if first else None,
            "timings_s": self.timings,
            "info": self.info,
            "comparisons": [c.as_dict() for c in self.comparisons],
        }


PaddleMutator = Callable[[Any], None]


# ------------------------------------------------------------------------------------------------
# models and weights


@dataclass
class _Models:
    """The reference (fp32, eval) and the port, each handed out per precision in its loaded state.

    One copy per framework and precision is made (the Paddle port loaded once through its own
    loader, ``mutate`` applied, both cast); every later request restores the loaded weights and
    statistics and drops gradients, so each stage starts from the same state without a new copy.
    """

    name: str
    torch_model: Any
    pdparams: str
    num_classes: int
    mutate: Optional[PaddleMutator]
    weights_sha256: str = ""
    _paddle: Any = None
    _layout: Optional[Dict[str, Any]] = None
    _copies: Dict[Tuple[str, str], Tuple[Any, Dict[str, Any]]] = field(default_factory=dict)

    def torch(self, dtype: str) -> Any:
        key = ("torch", dtype)
        if key not in self._copies:
            m = torch_at(copy.deepcopy(self.torch_model), dtype)
            self._copies[key] = (m, {k: v.detach().clone() for k, v in m.state_dict().items()})
        m, init = self._copies[key]
        m.load_state_dict(init)
        for p in m.parameters():
            p.grad = None
        return m.eval()

    def _loaded_paddle(self) -> Any:
        """The port, loaded once through its own loader (never handed out: copies are)."""
        if self._paddle is None:
            import cream_paddle

            self._paddle = cream_paddle.create_model(self.name, num_classes=self.num_classes,
                                                     checkpoint=self.pdparams)
        return self._paddle

    def to_torch(self, paddle_values: Mapping[str, np.ndarray], like: Iterable[str]
                 ) -> Dict[str, np.ndarray]:
        """Paddle-named arrays (gradients, statistics, parameters) in torch's names and layouts
        by the converter's rules (:func:`cream_core.rules.paddle_to_torch_names`), for the torch
        keys ``like``; a key the port lacks is left out (compared as missing)."""
        from cream_core.rules import paddle_to_torch_names

        mapped = paddle_to_torch_names(paddle_values, self.layout())
        return {k: mapped[k] for k in like if k in mapped}

    def layout(self) -> Dict[str, Any]:
        """The port's keys and layer kinds (:func:`cream_core.rules.paddle_layout`)."""
        if self._layout is None:
            from cream_core.rules import paddle_layout

            self._layout = paddle_layout(self._loaded_paddle())
        return self._layout

    def paddle(self, dtype: str) -> Any:
        key = ("paddle", dtype)
        if key not in self._copies:
            m = copy.deepcopy(self._loaded_paddle())
            if self.mutate is not None:
                self.mutate(m)
            paddle_at(m, dtype)
            self._copies[key] = (m, {k: v.detach().clone() for k, v in m.state_dict().items()})
        m, init = self._copies[key]
        m.set_state_dict(init)
        m.clear_gradients(set_to_zero=False)
        m.eval()
        return m


def make_seeded_checkpoint(name: str, path: str, seed: int = 1, resolution: Optional[int] = None
                           ) -> None:
    """An official-format checkpoint (torch 1.2 legacy layout) of ``name`` with seeded weights.

    ``state_dict_ema`` (what the harness loads) holds :func:`cream_core.arch.seeded_child_state`: seeded
    weights with BN statistics calibrated on a batch at ``resolution``, so activations and logits
    are as input-dependent as a trained net's. ``state_dict`` holds plain :func:`seeded_state`
    values (the file needs it; nothing reads it). Calibration runs a float64 numpy forward pass, so
    it is done at the run's resolution and the file is kept in the report folder for the next run.
    """
    import torch

    from cream_core.arch import seeded_child_state, seeded_state
    from cream_torch_ref import save_official_checkpoint

    arch = child_spec(name).arch_list
    ema = seeded_child_state(arch, seed + 1, resolution=resolution or child_spec(name).resolution)
    raw = seeded_state([(k, v.shape) for k, v in ema.items()], seed)
    atomic_write(path, lambda f: save_official_checkpoint(
        f, {k: torch.from_numpy(v) for k, v in raw.items()},
        {k: torch.from_numpy(v) for k, v in ema.items()}, arch=name))


def _prepare_models(cfg: ParityConfig, work: str, mutate: Optional[PaddleMutator],
                    info: Dict[str, Any]) -> _Models:
    from converters.convert import convert_checkpoint
    from cream_torch_ref import create_model as torch_create
    from cream_torch_ref.checkpoint import load_checkpoint

    ckpt = cfg.ckpt
    if ckpt is None:
        res = cfg.resolution or child_spec(cfg.model).resolution
        ckpt = os.path.join(work, f"{cfg.model}-seed{cfg.weights_seed}-cal{res}.pth.tar")
        if not os.path.isfile(ckpt):
            make_seeded_checkpoint(cfg.model, ckpt, cfg.weights_seed, res)
        info["weights"] = f"seeded official-format checkpoint (EMA: seed {cfg.weights_seed + 1}, " \
                          f"BN statistics calibrated at {res} px), EMA weights used"
    else:
        info["weights"] = f"{ckpt} (EMA weights when present)"
    ck = load_checkpoint(ckpt, use_ema=True)
    num_classes = int(ck.state_dict["classifier.bias"].shape[0]) \
        if "classifier.bias" in ck.state_dict else 1000
    torch_model = torch_create(cfg.model, num_classes=num_classes, checkpoint=ckpt)
    pdparams = os.path.join(work, f"{cfg.model}.pdparams")
    conv = convert_checkpoint(ckpt, pdparams, model=cfg.model, weights="ema", force=True)
    info["checkpoint"] = os.fspath(ckpt)
    info["converted"] = conv.summary()
    info["num_classes"] = num_classes
    return _Models(cfg.model, torch_model, pdparams, num_classes, mutate, conv.source_sha256)


# ------------------------------------------------------------------------------------------------
# comparisons of captures


def _compare_forward(t: Capture, p: Capture, stage: str, precision: str, category: str,
                     truth: Optional[Capture] = None
                     ) -> Tuple[List[Comparison], List[CurvePoint]]:
    """Module outputs (and inline-computed inputs) paired by name and call, then the logits.

    ``truth``: the reference's fp64 capture of the same pass (fp32 stages; see
    :data:`parity.tolerances.FP32_ACCURACY_FACTOR`).
    """
    out: List[Comparison] = []
    curve: List[CurvePoint] = []
    pev: Dict[Tuple[str, str, int], Event] = {e.key: e for e in p.events}
    tru: Dict[Tuple[str, str, int], Event] = {e.key: e for e in truth.events} if truth else {}
    tkeys = {e.key for e in t.events}
    done: Dict[Tuple[int, int, int], Comparison] = {}  # a tensor several modules return: once
    for i, e in enumerate(t.events):
        if e.kind == "in" and not e.inline:
            continue
        pe = pev.get(e.key)
        te = tru.get(e.key)
        slots = (e.slot, pe.slot if pe is not None else -1, te.slot if te is not None else -1)
        if slots in done and pe is not None:
            c = dataclasses.replace(done[slots], name=e.label, order=i, module=e.culprit, note="")
            if not c.ok and done[slots].note.startswith("worst"):
                c.note = done[slots].note.split(";")[0]
        else:
            got = p.array(pe) if pe is not None else None
            c = compare_arrays(got, t.array(e), category=category, stage=stage, name=e.label,
                               order=i, precision=precision, module=e.culprit,
                               truth=truth.array(te) if (truth is not None and te is not None)
                               else None)
            done[slots] = c
        if e.kind == "in":
            c.note = (c.note + "; " if c.note else "") + f"computed inline in {e.culprit}"
        out.append(c)
        if e.kind == "out":
            curve.append(curve_point(e.module, c))
    for j, e in enumerate(p.events):  # modules the port runs that the reference does not
        if e.key not in tkeys and (e.kind == "out" or e.inline):
            out.append(compare_arrays(p.array(e), None, category=category, stage=stage,
                                      name=e.label, order=len(t.events) + j, precision=precision))
    out.append(compare_arrays(p.logits, t.logits, category="logits", stage=stage, name="logits",
                              order=len(t.events), precision=precision, module="classifier",
                              truth=truth.logits if truth is not None else None))
    return out, curve


def _compare_backward(t: Capture, p: Capture, models: _Models, stage: str, precision: str,
                      truth: Optional[Capture] = None
                      ) -> Tuple[List[Comparison], List[CurvePoint]]:
    """Module-output gradients in backward order (the same names on both sides), then parameter
    gradients (mapped by the converter's rules) and the input gradient."""
    ctx = grad_context(t)
    out, curve, first_at = compare_out_grads(t, p, stage, precision, truth, ctx)
    pg = models.to_torch(p.param_grads, t.param_grads)
    out += param_and_input_grads(pg, p.input_grad, t, truth, stage, precision, first_at, ctx,
                                 "conv_stem")
    return out, curve


def _bn_stats(t: Capture, p: Capture, models: _Models, stage: str, precision: str,
              truth: Optional[Capture] = None) -> List[Comparison]:
    keys = [k for k in t.state if k.endswith(("running_mean", "running_var"))]
    ref = {k: t.state[k] for k in keys}
    got = models.to_torch(p.state, keys)
    order = {k: i for i, k in enumerate(keys)}
    return compare_named(got, ref, category="bn_stats", stage=stage, precision=precision,
                         order=order, modules={k: owner(k) for k in keys},
                         truth=truth.state if truth is not None else None)


# ------------------------------------------------------------------------------------------------
# losses


def _soft_target(shape: Tuple[int, int], seed: int, dtype: Any) -> np.ndarray:
    """A teacher distribution for the distillation loss, independent of the student's logits.

    (A teacher close to the student would make the loss gradient ``softmax(z) - soft`` cancel to
    ~0, leaving only rounding noise to compare.)
    """
    z = np.random.RandomState(seed).standard_normal(shape) * 2.0
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(dtype)


def _loss_values(framework: str, logits: np.ndarray, target: np.ndarray, soft: np.ndarray,
                 grad: bool) -> Dict[str, np.ndarray]:
    """Cream's four losses (and with ``grad`` their gradients w.r.t. the logits) computed by one
    framework's twins (:mod:`cream_torch_ref.losses` / :mod:`cream_paddle.losses`)."""
    if framework == "torch":
        import torch
        import cream_torch_ref.losses as L

        tensor: Callable[[np.ndarray], Any] = torch.tensor
        leaf: Callable[[np.ndarray], Any] = lambda a: torch.tensor(a, requires_grad=grad)
    else:
        import paddle
        import cream_paddle.losses as L

        tensor = paddle.to_tensor

        def leaf(a: np.ndarray) -> Any:
            z = paddle.to_tensor(a)
            z.stop_gradient = not grad
            return z
    tgt, sft = tensor(target.astype(np.int64)), tensor(soft)
    fns = {"cross_entropy": lambda z: L.cross_entropy(z, tgt),
           "label_smoothing_cross_entropy": lambda z: L.label_smoothing_cross_entropy(z, tgt, 0.1),
           "cross_entropy_loss_with_soft_target":
               lambda z: L.cross_entropy_loss_with_soft_target(z, sft),
           "cream_distill_loss": lambda z: L.cream_distill_loss(z, tgt, sft, 0.7)}
    out: Dict[str, np.ndarray] = {}
    for n, f in fns.items():
        z = leaf(logits)
        v = f(z)
        out[n] = np.asarray(v.detach().numpy())
        if grad:
            v.backward()
            out[f"d {n} / d logits"] = z.grad.numpy().copy()
    return out


def _compare_losses(t_logits: np.ndarray, p_logits: np.ndarray, target: np.ndarray, stage: str,
                    precision: str, grad: bool, seed: int) -> List[Comparison]:
    soft = _soft_target(t_logits.shape, seed + 2000, t_logits.dtype)
    ref = _loss_values("torch", t_logits, target, soft, grad)
    got = _loss_values("paddle", p_logits, target, soft, grad)
    return compare_named(got, ref, category="loss", stage=stage, precision=precision)


# ------------------------------------------------------------------------------------------------
# optimizers and schedules


def _gradient_sequence(models: _Models, cfg: ParityConfig, res: int) -> List[Dict[str, np.ndarray]]:
    """The reference's parameter gradients on ``cfg.optim_steps`` different batches (torch names).

    Train mode, label-smoothing loss (the official training loss), at the loaded weights, in
    float32; returned as float64 arrays, the gradients both frameworks' optimizers then consume.
    """
    import torch
    import cream_torch_ref.losses as TL

    tm = models.torch("fp32").train()
    rng = np.random.RandomState(cfg.seed + 1000)
    seq = []
    for step in range(cfg.optim_steps):
        x = seeded_input(cfg.batch, res, cfg.seed + 1 + step)
        y = rng.randint(0, models.num_classes, cfg.batch).astype(np.int64)
        tm.zero_grad()
        TL.label_smoothing_cross_entropy(tm(torch.tensor(x)), torch.tensor(y), 0.1).backward()
        seq.append({n: p.grad.detach().numpy().astype(np.float64)
                    for n, p in tm.named_parameters() if p.grad is not None})
    return seq


def _optimizer_steps(models: _Models, kind: str, grads: List[Dict[str, np.ndarray]]
                     ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], List[float], List[float]]:
    """k steps of the official search (``sgd``) or retrain (``rmsproptf``) optimizer and schedule.

    Both frameworks build their optimizer and scheduler with their own factories
    (``cream_torch_ref.optim`` / ``cream_paddle.optim``) on float64 copies of the loaded weights,
    and step them on the *same* gradients (``grads``, mapped to Paddle with the converter's rules).
    What is compared is then the update rule and its schedule alone: with each framework computing
    its own gradients, lr 1.0 over a batch of 2 would amplify a 3e-8 gradient difference ~500x in
    three steps. (The gradients themselves are compared by the backward stages.) Returns the
    reference's parameters, the port's state (in torch's names and layouts, by its backend) and
    each side's LR of every step.
    """
    import paddle
    import torch
    import cream_paddle.optim as PO
    import cream_torch_ref.optim as TO
    from cream_paddle.backend import Backend as PaddleBackend

    tm, pm = models.torch("fp64"), models.paddle("fp64")
    if kind == "sgd":  # experiments/configs/train/train.yaml and lib/utils/util.py
        to, po = TO.create_search_optimizer(tm), PO.create_search_optimizer(pm)
        # ITERS shortened to 4 (1 epoch, 1 GPU, batch 320000) so the k steps walk down the LR
        ts = TO.create_search_scheduler(to, lr=1.0, epochs=1, num_gpu=1, batch_size=320000)
        ps = PO.create_search_scheduler(po, lr=1.0, epochs=1, num_gpu=1, batch_size=320000)
    else:  # experiments/configs/retrain/*.yaml: RMSpropTF, step schedule with warmup
        to, po = TO.create_retrain_optimizer(tm), PO.create_retrain_optimizer(pm)
        ts, _ = TO.create_retrain_scheduler(to, "step")
        ps, _ = PO.create_retrain_scheduler(po, "step")
    tparams = dict(tm.named_parameters())
    pparams = {n: p for n, p in pm.named_parameters() if not p.stop_gradient}
    # give every Paddle parameter a gradient tensor (zeros) without running the model
    paddle.add_n([(p * 0).sum() for p in pparams.values()]).backward()
    tlr: List[float] = []
    plr: List[float] = []
    for step, g in enumerate(grads):
        tlr.append(float(to.param_groups[0]["lr"]))
        plr.append(float(po.get_lr()))
        for n, v in g.items():
            tparams[n].grad = torch.from_numpy(v.copy())
        for n, v in PaddleBackend.named_from_torch(pm, g).items():  # by the shared rules
            pparams[n].grad.set_value(v)
        to.step()
        po.step()
        if kind == "sgd":  # per iteration
            ts.step()
            ps.step()
        else:  # one "epoch" per step, so the k steps walk through the warmup
            ts.step(step + 1)
            ps.step(step + 1)
    tstate = {k: v.detach().numpy().copy() for k, v in tparams.items()}
    return tstate, PaddleBackend.torch_state(pm), tlr, plr


def _compare_optim(models: _Models, kind: str, grads: List[Dict[str, np.ndarray]]
                   ) -> List[Comparison]:
    stage = f"optim/{kind}/fp64"
    tstate, pstate, tlr, plr = _optimizer_steps(models, kind, grads)
    out = [compare_arrays(np.array(plr), np.array(tlr), category="lr", stage=stage,
                          name=f"lr of steps 1..{len(grads)}", order=-1, precision="fp64",
                          module="scheduler")]
    mapped = {k: pstate[k] for k in tstate if k in pstate}
    out += compare_named(mapped, tstate, category="optim_params", stage=stage, precision="fp64",
                         modules={k: owner(k) for k in tstate})
    return out


def _compare_schedules() -> List[Comparison]:
    """Whole schedules: timm's (torch reference) vs the Paddle port's, value per epoch/iteration."""
    import torch
    import cream_paddle.optim as PO
    import cream_torch_ref.optim as TO

    out: List[Comparison] = []
    for i, sched in enumerate(("step", "cosine")):
        topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.064)
        ts, n = TO.create_retrain_scheduler(topt, sched)
        ps, n2 = PO.create_retrain_scheduler(None, sched, lr=0.064)
        tv, pv = [], []
        for e in range(n):
            tv.append(topt.param_groups[0]["lr"])
            pv.append(ps.last_lr)
            ts.step(e + 1)
            ps.step(e + 1)
        c = compare_arrays(np.array(pv), np.array(tv), category="lr", stage="lr/schedules",
                           name=f"retrain {sched} ({n} epochs)", order=i, precision="fp32",
                           module="scheduler")
        if n != n2:
            c.ok, c.note = False, f"epochs to run differ: port {n2}, reference {n}"
        out.append(c)
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ts = TO.create_search_scheduler(topt)
    ps = PO.create_search_scheduler(None)
    tv, pv = [], []
    for _ in range(2000):
        tv.append(topt.param_groups[0]["lr"])
        pv.append(ps.last_lr)
        ts.step()
        ps.step()
    out.append(compare_arrays(np.array(pv), np.array(tv), category="lr", stage="lr/schedules",
                              name="search LambdaLR (first 2000 iterations)", order=2,
                              precision="fp32", module="scheduler"))
    return out


# ------------------------------------------------------------------------------------------------
# x2paddle


def _x2paddle_export(models: _Models, x: np.ndarray, cache_dir: str) -> Tuple[str, bool]:
    """The x2paddle export of the reference for this input shape and weights, traced once.

    The folder is keyed by the weights' sha256 and the input shape (recorded in ``key.json``); it is
    built in a temporary sibling and renamed into place, so a cache is complete or absent.
    """
    import json

    from converters import x2paddle_engine as X

    key = {"weights_sha256": models.weights_sha256, "input_shape": list(x.shape)}
    stamp = os.path.join(cache_dir, "key.json")
    if os.path.isfile(stamp):
        try:
            with open(stamp) as f:
                if json.load(f) == key:
                    X.inference_files(cache_dir)
                    return cache_dir, True
        except (OSError, ValueError, FileNotFoundError):
            pass
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    with replaced_folder(cache_dir, ".x2paddle-") as tmp:  # the old cache stays until it succeeds
        X.export_with_x2paddle(models.torch("fp32"), tmp, tuple(x.shape))
        with open(os.path.join(tmp, "key.json"), "w") as f:
            json.dump(key, f)
    return cache_dir, False


def _compare_x2paddle(models: _Models, x: np.ndarray, t_logits: np.ndarray, cache_dir: str,
                      info: Dict[str, Any], truth: Optional[np.ndarray] = None) -> List[Comparison]:
    """The x2paddle-traced reference run by Paddle Inference, against the torch logits."""
    from converters import x2paddle_engine as X

    t0 = time.perf_counter()
    folder, cached = _x2paddle_export(models, x, cache_dir)
    logits = X.run_x2paddle(folder, x)
    info["x2paddle"] = {"folder": folder, "cached": cached,
                        "seconds": round(time.perf_counter() - t0, 2)}
    return [compare_arrays(np.asarray(logits), t_logits, category="x2paddle_logits",
                           stage="x2paddle/eval/fp32", name="logits (x2paddle-traced program)",
                           order=0, precision="fp32", module="(traced program)", truth=truth)]


# ------------------------------------------------------------------------------------------------
# the run: named steps


@dataclass
class _Step:
    """One step of a run: its label (progress, timings) and the stage and category a failure of
    it is recorded under (empty: bad input, raised to the caller)."""

    label: str
    stage: str
    category: str
    run: Callable[[], None]


@dataclass
class _Run:
    """The state one run carries from step to step: models, labels, fp64 captures, logits."""

    cfg: ParityConfig
    result: ParityResult
    work: str
    resolution: int
    mutate: Optional[PaddleMutator]
    x: np.ndarray = field(init=False)
    models: Optional[_Models] = None
    target: Optional[np.ndarray] = None
    truths: Dict[str, Capture] = field(default_factory=dict)  # fp64 torch passes, for fp32
    logits: Dict[str, np.ndarray] = field(default_factory=dict)  # eval logits per precision
    grads: Optional[List[Dict[str, np.ndarray]]] = None

    def __post_init__(self) -> None:
        self.x = seeded_input(self.cfg.batch, self.resolution, self.cfg.seed)

    def prepare(self) -> None:
        """Weights for both frameworks (bad input raises) and the fixed labels."""
        self.models = _prepare_models(self.cfg, self.work, self.mutate, self.result.info)
        self.target = np.random.RandomState(self.cfg.seed).randint(
            0, self.models.num_classes, self.cfg.batch).astype(np.int64)

    def _truth(self, kind: str, prec: str, t: Capture) -> Optional[Capture]:
        """fp64: keep the torch pass as the truth of the fp32 stage; fp32: hand it over once."""
        if prec == "fp64":
            self.truths[kind] = t
            return None
        return self.truths.pop(kind, None)

    def eval_stage(self, prec: str) -> None:
        """Every module output and the logits in eval mode."""
        m = self.models
        stage = f"forward/eval/{prec}"
        t = capture_torch(m.torch(prec), self.x)
        p = capture_paddle(m.paddle(prec), self.x)
        comps, self.result.curves[stage] = _compare_forward(t, p, stage, prec, "layer",
                                                            self._truth("eval", prec, t))
        self.result.comparisons += comps
        self.logits[prec] = t.logits

    def train_stage(self, prec: str) -> None:
        """Train mode with the official loss: outputs, BN statistics, losses, every gradient."""
        import cream_paddle.losses as PL
        import cream_torch_ref.losses as TL

        m, y, res = self.models, self.target, self.result
        t = capture_torch(m.torch(prec), self.x, train=True, grads=True, target=y,
                          loss_fn=lambda z, tgt: TL.label_smoothing_cross_entropy(z, tgt, 0.1))
        p = capture_paddle(m.paddle(prec), self.x, train=True, grads=True, target=y,
                           loss_fn=lambda z, tgt: PL.label_smoothing_cross_entropy(z, tgt, 0.1))
        truth = self._truth("train", prec, t)
        stage = f"forward/train/{prec}"
        comps, res.curves[stage] = _compare_forward(t, p, stage, prec, "layer_train", truth)
        res.comparisons += comps
        res.comparisons += _bn_stats(t, p, m, f"bn_stats/{prec}", prec, truth)
        if "losses" in self.cfg.stages:
            res.comparisons += _compare_losses(t.logits, p.logits, y, f"loss/{prec}", prec,
                                               grad=False, seed=self.cfg.seed)
        comps, res.curves[f"backward/{prec}"] = _compare_backward(t, p, m, f"backward/{prec}",
                                                                  prec, truth)
        res.comparisons += comps

    def optim(self, kind: str) -> None:
        """k optimizer steps of ``kind`` on the reference's gradients (always fp64)."""
        if self.grads is None:
            self.grads = _gradient_sequence(self.models, self.cfg, self.resolution)
        self.result.comparisons += _compare_optim(self.models, kind, self.grads)

    def shared_losses(self) -> None:
        """The loss twins on the same logits (the fp32 eval logits, or seeded ones)."""
        cfg = self.cfg
        logits = self.logits.get("fp32")
        if logits is None:
            logits = seeded_input(cfg.batch, 1, cfg.seed + 7, channels=self.models.num_classes
                                  ).reshape(cfg.batch, -1)
        self.result.comparisons += _compare_losses(logits, logits, self.target,
                                                   "loss/shared/fp32", "fp32", grad=True,
                                                   seed=cfg.seed)

    def schedules(self) -> None:
        """The whole LR schedules, value by value."""
        self.result.comparisons += _compare_schedules()

    def x2paddle(self) -> None:
        """The x2paddle-traced reference against the torch logits."""
        cfg, m = self.cfg, self.models
        logits = self.logits.get("fp32")
        if logits is None:
            logits = capture_torch(m.torch("fp32"), self.x).logits
        cache = os.path.join(self.work, "x2paddle",
                             f"{cfg.model}-b{cfg.batch}-r{self.resolution}")
        self.result.comparisons += _compare_x2paddle(m, self.x, logits, cache, self.result.info,
                                                     self.logits.get("fp64"))


def _plan(run: _Run) -> List[_Step]:
    """The steps of the configured stages, in run order (fp64 first: fp32 is judged against it)."""
    stages = run.cfg.stages
    precs = [p for p in PRECISIONS if p in run.cfg.precisions]
    plan = [_Step("weights", "", "", run.prepare)]
    if "eval" in stages:
        plan += [_Step(f"forward/eval/{p}", f"forward/eval/{p}", "layer",
                       lambda p=p: run.eval_stage(p)) for p in precs]
    if "train" in stages:
        plan += [_Step(f"train+backward/{p}", f"forward/train/{p}", "layer_train",
                       lambda p=p: run.train_stage(p)) for p in precs]
    if "optim" in stages:  # always fp64: a semantic check of the update rule and schedule
        plan += [_Step(f"optim/{k}/fp64", f"optim/{k}/fp64", "optim_params",
                       lambda k=k: run.optim(k)) for k in ("sgd", "rmsproptf")]
    if "losses" in stages:
        plan.append(_Step("loss/shared", "loss/shared/fp32", "loss", run.shared_losses))
    if "lr" in stages:
        plan.append(_Step("lr/schedules", "lr/schedules", "lr", run.schedules))
    if "x2paddle" in stages:
        plan.append(_Step("x2paddle", "x2paddle/eval/fp32", "x2paddle_logits", run.x2paddle))
    return plan


def _execute(plan: List[_Step], result: ParityResult) -> None:
    """Run the steps in order, timing each; a step that raises is a failed comparison of its
    stage (a crash in the port is a finding), except the weights step (bad input: raised)."""
    import warnings

    from tqdm import tqdm

    cfg = result.config
    with torch_threads(cfg.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bar = tqdm(plan, desc=f"parity {cfg.model}", unit="stage", disable=not cfg.progress,
                   leave=False)
        for step in bar:
            bar.set_postfix_str(step.label)
            t0 = time.perf_counter()
            if not step.stage:
                step.run()
            else:
                try:
                    step.run()
                except Exception as e:  # noqa: BLE001 - a crash in the port is a finding
                    result.comparisons.append(stage_error(step.stage, step.category,
                                                          step.label, e))
            result.timings[step.label] = round(time.perf_counter() - t0, 3)


@contextlib.contextmanager
def _work_dir(cfg: ParityConfig) -> Iterator[str]:
    """The report folder (created), or a temporary folder removed after the run."""
    if cfg.report_dir:
        os.makedirs(cfg.report_dir, exist_ok=True)
        yield cfg.report_dir
    else:
        with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
            yield tmp


def run_parity(cfg: ParityConfig, mutate_paddle: Optional[PaddleMutator] = None) -> ParityResult:
    """Run every configured stage; ``mutate_paddle`` edits each fresh Paddle model (fault injection)."""
    result = ParityResult(cfg)
    res = cfg.resolution or child_spec(cfg.model).resolution
    result.info["resolution"] = res
    t_all = time.perf_counter()
    with _work_dir(cfg) as work:
        _execute(_plan(_Run(cfg, result, work, res, mutate_paddle)), result)
    result.timings["total"] = round(time.perf_counter() - t_all, 3)
    return result
