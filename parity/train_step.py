"""``parity train-step``: k retraining steps in PyTorch and Paddle from the same start, compared step by step.

Both frameworks run their own training code (``cream_torch_ref.train`` / ``cream_paddle.train``:
``train_step``, optimizer, schedule, loss, EMA) on:

* identical initial weights (torch's initialisation, mapped to Paddle by the converter's rules),
* identical batches: the bundled photos through the framework-free official augmentation
  (:mod:`cream_core.data.train_transforms`: random-resized crop, flip, RandAugment ``rand-m9-mstd0.5``,
  prefetcher normalisation, random erasing 0.2 pixel), one epoch per step,
* identical drop masks: drop path (rate ``--drop-path-rate``, 0.2 by default so it is exercised; the
  official retraining used none) and dropout 0.2 before the classifier, drawn in numpy
  (:mod:`cream_core.training.masks`) and injected into both models (``MaskInjector``),
* the official recipe (RMSpropTF lr 0.064 eps 1e-3 alpha 0.9 momentum 0.9, weight decay 1e-5 without
  bias/BN decay, label smoothing 0.1, EMA), with the LR schedule stepped after *every* step
  (``step(k)``, one "epoch" per step) so that the k steps walk through the warm-up from 1e-6 and the
  first decays,

and after every step the harness compares: the learning rate used, the loss, every parameter
gradient, every parameter, the optimizer state (RMSprop mean square and momentum), every EMA entry
(parameters and BN statistics) and the model's BN running statistics. Two modes:

* ``synced`` — before each step the Paddle side is set to the torch side's exact state (weights,
  BN statistics, optimizer state, EMA), so step ``k`` is compared from identical states under the
  conditions of step ``k`` (its LR, its optimizer state, its batch and masks). Differences do not
  compound, so the strict per-category tolerances of :mod:`parity.tolerances` apply, in fp32 and fp64.
* ``free`` — both frameworks train on their own for k steps (the end-to-end claim). Training at
  lr 0.064 on batches of 8 is chaotic: any difference grows several-fold per step (measured in
  fp64: torch's float32 hardsigmoid-backward constant, 3e-8, reaches 5e-4 of a gradient's scale by
  step 10), and a ReLU or hard-sigmoid input within rounding of its kink switches in one run and
  not in another. The free run is therefore judged against the **measured noise** of the reference
  (:mod:`parity.noise`): next to the torch fp32 run, :data:`parity.noise.NOISE_MEMBERS` torch fp32
  runs whose initial weights and batches are moved by one ulp (one of them on 2 threads) and a
  torch fp64 run train alongside; per step and tensor, the noise is their largest distance from the
  torch run. Each tensor's bound is its category tolerance, at least ``FP32_ACCURACY_FACTOR`` x
  torch's fp32-vs-fp64 error and at least ``NOISE_FACTOR`` x the noise. Steps are judged while
  every tensor's noise stays below :data:`FREE_HORIZON` of its scale (the predictable horizon); from
  the first step beyond it the reference cannot reproduce its own trajectory, and those steps are
  reported, not judged (the verdict says which steps were judged). The horizon depends on torch's
  runs only. There is no fp64 free run: there the compounded known constants are the whole
  difference, and no reference accuracy bounds it.

Near-zero tensors (gradients that cancel, biases that never move) are compared on a scale of at
least :data:`parity.tolerances.GRAD_CONTEXT_FLOOR` of the largest tensor of their group. fp32 is the
deployed precision; the float64 synced run (default ``--precision both``) is the semantic check: it
alone sees the weight-decay filter (1e-5 on biases/BN) and the EMA of the BN statistics, whose
effects after a step (~1e-5 of a tensor) are below fp32 resolution. Exit 0 iff every comparison
passes.

``--inject-fault NAME`` breaks one thing on the Paddle side (see :data:`FAULTS`) to show that the
harness notices.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import numpy as np

from cream_core.arch import model_names
from cream_core.backend import BackendBase
from cream_core.io.cli_errors import float_in, int_at_least
from cream_core.io.outputs import prepare_outputs

from .engine import torch_threads
from .subcommand import Subcommand
from .tolerances import (BN_STATS_FP32, BN_STATS_FP64, GRAD_CONTEXT_FLOOR, GRAD_FP32, GRAD_FP64,
                      LOSS_FP32, LR_VALUES, OPTIM_PARAMS_FP32, OPTIM_PARAMS_FP64, STRICT_FP64,
                      Comparison, Tolerance, compare_arrays, compare_named)
from .noise import (NOISE_FACTOR, NOISE_MEMBERS, NOISE_THREADS, NoiseAccumulator, NoiseModel,
                    Perturbation, ensemble, judge_with_noise)

__all__ = ["TrainStepConfig", "TrainStepResult", "FAULTS", "MODES", "FREE_HORIZON", "MIN_JUDGED_STEPS",
           "EMA_FP32", "EMA_FP64",
           "OPTIM_STATE_FP32", "OPTIM_STATE_FP64", "SYNCED_TOLERANCES", "FREE_TOLERANCES",
           "run_train_step_parity", "format_steps", "judged_steps", "register"]

#: EMA entries: ``ema = 0.9999 ema + 1e-4 model`` moves each entry by 1e-4 of the weights'
#: difference from it, so the EMA differs by far less than the weights; bounded like them.
EMA_FP32 = OPTIM_PARAMS_FP32
EMA_FP64 = OPTIM_PARAMS_FP64
#: The optimizer state after a step (mean square: ``0.9 ms + 0.1 g^2``; momentum: ``0.9 m + lr g /
#: sqrt(ms + eps)``): as close as the gradients that feed it.
OPTIM_STATE_FP32 = GRAD_FP32
OPTIM_STATE_FP64 = GRAD_FP64

#: ``(category, precision) -> Tolerance`` of the synced comparisons (one step from equal states).
SYNCED_TOLERANCES: Dict[Tuple[str, str], Tolerance] = {
    ("lr", "fp32"): LR_VALUES, ("lr", "fp64"): LR_VALUES,
    ("loss", "fp32"): LOSS_FP32, ("loss", "fp64"): STRICT_FP64,
    ("param_grad", "fp32"): GRAD_FP32, ("param_grad", "fp64"): GRAD_FP64,
    ("optim_params", "fp32"): OPTIM_PARAMS_FP32, ("optim_params", "fp64"): OPTIM_PARAMS_FP64,
    ("optim_state", "fp32"): OPTIM_STATE_FP32, ("optim_state", "fp64"): OPTIM_STATE_FP64,
    ("bn_stats", "fp32"): BN_STATS_FP32, ("bn_stats", "fp64"): BN_STATS_FP64,
    ("ema", "fp32"): EMA_FP32, ("ema", "fp64"): EMA_FP64,
}
#: The free fp32 run: k compounded steps; parameters, state and statistics get the k-step bound
#: (and, always, at least 10x the reference's own fp32 error).
FREE_TOLERANCES: Dict[str, Tolerance] = {
    "lr": LR_VALUES, "loss": LOSS_FP32, "param_grad": GRAD_FP32,
    "optim_params": OPTIM_PARAMS_FP32, "optim_state": OPTIM_PARAMS_FP32,
    "bn_stats": OPTIM_PARAMS_FP32, "ema": EMA_FP32,
}
MODES = ("synced", "free")
#: The free run's predictable horizon: a step is judged while the measured fp32 noise (the spread of
#: the perturbed torch fp32 runs and the fp64 run, :mod:`parity.noise`) of every compared tensor
#: stays below this fraction of the tensor's scale. In that regime the runs respond smoothly to
#: rounding (the spread grows ~2-3x per step from ~1e-5). Past it, ReLU or hard-sigmoid inputs
#: within rounding of their kinks switch in some runs and not in others, and the spread jumps (seed
#: 8 at the defaults: 3e-4 of scale at step 5, 2e-2 at step 6, 0.3 at step 7): the reference cannot
#: reproduce its own trajectory, and a three-run ensemble no longer bounds where a fourth correct
#: run lands (measured: at 1e-2, batch 4 seed 1 failed at step 7 with 1019 tensors already needing
#: the noise bound). Those steps are reported, not judged. The horizon depends on the reference runs
#: only, never on the port. Measured with bench/false_alarm_bench.py: README "Tolerances".
FREE_HORIZON: float = 1e-3
#: A free run must judge at least this many steps to count: a run whose reference spread leaves the
#: horizon before step 1 has proven nothing, and says so (inconclusive, exit 1) instead of passing.
#: Measured with bench/false_alarm_bench.py over seeds 0-19 at batch 8 and 4: 3 to 8 steps judged.
MIN_JUDGED_STEPS: int = 1

#: Faults ``--inject-fault`` can put into the Paddle side; each must make the run fail.
FAULTS: Dict[str, str] = {
    "plain-rmsprop": "Paddle's own RMSProp (mean square starting at 0, not timm's 1)",
    "no-bias-filter": "weight decay on biases and BN parameters too (no filter_bias_and_bn)",
    "ema-params-only": "EMA of the parameters only (timm's ModelEma also averages BN statistics)",
    "smoothing-0.2": "label smoothing 0.2 instead of 0.1",
    "dropout-unscaled": "dropout without the 1/(1-p) scale of kept units",
    "lr-off-by-one": "the schedule one epoch late (warm-up value of the previous step)",
}

_PRECISIONS = ("fp32", "fp64")


@dataclass
class TrainStepConfig:
    """One train-step parity run."""

    model: str = "cream-14"
    steps: int = 10
    batch_size: int = 8
    img_size: Optional[int] = None  # default: the model's resolution
    num_classes: int = 1000
    drop_path_rate: float = 0.2
    seed: int = 0
    precisions: Tuple[str, ...] = ("fp32",)
    modes: Tuple[str, ...] = MODES
    fault: Optional[str] = None
    threads: int = 1
    noise_members: int = NOISE_MEMBERS  # free run: perturbed torch fp32 runs measuring the noise
    noise_threads: Tuple[int, ...] = NOISE_THREADS  # their torch thread counts, cycled


@dataclass
class TrainStepResult:
    """Every comparison, per-step summaries and run information."""

    config: Dict[str, Any]
    comparisons: List[Comparison] = field(default_factory=list)
    steps: List[Dict[str, Any]] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every comparison within its bound, and a free run (if any) judged enough steps."""
        return (bool(self.comparisons) and all(c.ok for c in self.comparisons)
                and not self.inconclusive)

    @property
    def inconclusive(self) -> bool:
        """A free run that judged fewer than :data:`MIN_JUDGED_STEPS` steps."""
        free = [s for s in self.steps if s["mode"] == "free"]
        return bool(free) and sum(bool(s["judged"]) for s in free) < MIN_JUDGED_STEPS

    @property
    def first(self) -> Optional[Comparison]:
        """The first failure: synced runs before the free one, then by step, precision, order."""
        failed = [c for c in self.comparisons if not c.ok]

        def key(c: Comparison) -> Tuple[int, str, str, float]:
            _, mode, prec, step = c.stage.split("/")
            return (MODES.index(mode) if mode in MODES else len(MODES), step, prec, c.order)
        return min(failed, key=key) if failed else None

    def to_dict(self) -> Dict[str, Any]:
        first = self.first
        return {"ok": self.ok, "config": self.config, "info": self.info, "seconds": self.seconds,
                "compared": len(self.comparisons), "inconclusive": self.inconclusive,
                "failed": sum(not c.ok for c in self.comparisons),
                "first_divergence": first.as_dict() if first else None,
                "steps": self.steps, "comparisons": [c.as_dict() for c in self.comparisons]}


# ------------------------------------------------------------------------------------------------

def _recipe(cfg: TrainStepConfig) -> Any:
    from cream_core.config.retrain import load_retrain_config

    return load_retrain_config(cfg.model, num_classes=cfg.num_classes, batch_size=cfg.batch_size,
                               img_size=cfg.img_size or 0, drop_path_rate=cfg.drop_path_rate,
                               seed=cfg.seed, epochs=max(cfg.steps, 10))


def _batches(recipe: Any, steps: int) -> List[Tuple[np.ndarray, np.ndarray, Any]]:
    """``steps`` augmented batches of the bundled photos (one epoch each) with their drop masks."""
    from cream_core.data import file_dataset, sample_files
    from cream_core.data.train_loader import TrainLoader
    from cream_core.data.train_transforms import TrainTransform

    files = sample_files()
    reps = -(-recipe.batch_size // len(files))
    paths = (files * reps)[:max(recipe.batch_size, len(files))]
    labels = [(7 * i + 3) % recipe.num_classes for i in range(len(paths))]
    ds = file_dataset(paths, labels, recipe.num_classes)
    loader = TrainLoader(ds, TrainTransform.from_config(recipe.img_size, recipe.augment),
                         recipe.batch_size, recipe.seed, workers=0)
    out = []
    for step in range(steps):
        b = next(iter(loader.epoch_batches(step)))
        out.append((b.images, b.labels, step))
    return out


class _Side:
    """One framework's model, optimizer, schedule, loss, EMA and injector, ready to step."""

    def __init__(self, framework: str, recipe: Any, state: Dict[str, np.ndarray], dtype: str,
                 fault: Optional[str], perturbation: Optional[Perturbation] = None) -> None:
        self.framework = framework
        self.dtype = dtype
        #: a noise-ensemble member (torch fp32 only): weights and every batch moved by one ulp
        self.perturbation = perturbation
        if perturbation is not None:
            state = perturbation.perturb_all(state)
        if framework == "torch":
            from cream_torch_ref import train as T
            from cream_torch_ref.backend import Backend
        else:
            from cream_paddle import train as T
            from cream_paddle.backend import Backend
        #: state to and from numpy in torch's names and layouts (cream_core.rules for Paddle)
        self.backend: Type[BackendBase] = Backend
        self.mod = T
        model = T.build_model(recipe)
        Backend.load_torch_state(model, state)
        if dtype == "fp64" and framework == "torch":
            model = model.double()
        elif dtype == "fp64":
            model.to(dtype="float64")
        self.model = model
        self.optimizer = T.create_optimizer(model, recipe)
        self.scheduler, _ = T.create_scheduler(self.optimizer, recipe)
        self.loss_fn = T.create_loss(recipe)
        self.ema = T.ModelEma(model, decay=recipe.ema_decay)
        self.injector = T.MaskInjector(model)
        self.lr_shift = 0
        if framework == "paddle" and fault:
            self._inject(fault, recipe)

    def _inject(self, fault: str, recipe: Any) -> None:
        import paddle
        from cream_paddle import losses as PL
        from cream_paddle import optim as PO

        if fault == "plain-rmsprop":
            params = PO.param_groups_weight_decay(self.model, recipe.weight_decay, recipe.lr)
            self.optimizer = paddle.optimizer.RMSProp(
                recipe.lr, rho=recipe.rmsprop_alpha, epsilon=recipe.opt_eps,
                momentum=recipe.momentum, parameters=params)
            self.scheduler, _ = self.mod.create_scheduler(self.optimizer, recipe)
        elif fault == "no-bias-filter":
            # one group: Paddle stores a group's decay on each parameter (param.regularizer),
            # overriding the decay groups of the optimizer made in __init__
            trainable = [p for p in self.model.parameters() if not p.stop_gradient]
            self.optimizer = PO.RMSpropTF([{"params": trainable, "weight_decay": recipe.weight_decay}],
                                          lr=recipe.lr, alpha=recipe.rmsprop_alpha,
                                          eps=recipe.opt_eps, momentum=recipe.momentum)
            self.scheduler, _ = self.mod.create_scheduler(self.optimizer, recipe)
        elif fault == "ema-params-only":
            ema = self.ema
            names = {n for n, p in self.model.named_parameters() if not p.stop_gradient}

            @paddle.no_grad()
            def update(model: Any) -> None:
                msd = model.state_dict()
                for k, v in ema.ema.state_dict().items():
                    if k in names:
                        paddle.assign(v * ema.decay + (1.0 - ema.decay) * msd[k].detach(), output=v)
            ema.update = update  # type: ignore[method-assign]
        elif fault == "smoothing-0.2":
            self.loss_fn = PL.LabelSmoothingCrossEntropy(0.2)
        elif fault == "dropout-unscaled":
            inj = self.injector
            orig = inj.set

            def set_unscaled(masks: Any) -> None:
                if masks is not None and masks.dropout is not None:
                    masks = type(masks)(masks.drop_path, (masks.dropout > 0).astype(np.float32))
                orig(masks)
            inj.set = set_unscaled  # type: ignore[method-assign]
        elif fault == "lr-off-by-one":
            self.lr_shift = -1
        else:
            raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")

    def cast(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64) if self.dtype == "fp64" and a.dtype == np.float32 else a

    def step(self, images: np.ndarray, labels: np.ndarray, masks: Any, k: int) -> Tuple[float, float]:
        """Train on one batch; then step the schedule to ``k + 1``. Returns (lr used, loss)."""
        lr = float(self.mod.current_lr(self.optimizer))
        p = self.perturbation
        if p is not None:
            images = p.perturb(f"images/step{k}", images)
        if masks is not None:
            masks = type(masks)([None if m is None else self.cast(m) for m in masks.drop_path],
                                None if masks.dropout is None else self.cast(masks.dropout))
        with torch_threads(p.threads if p is not None else None):
            loss = self.mod.train_step(self.model, self.optimizer, self.loss_fn, self.cast(images),
                                       labels, injector=self.injector, masks=masks, ema=self.ema)
        self.scheduler.step(max(0, k + 1 + self.lr_shift))
        return lr, loss

    # optimizer state: torch RMSpropTF keeps ``square_avg`` and ``momentum_buffer`` per parameter,
    # Paddle's RMSProp the accumulators ``mean_square`` and ``momentum`` (same quantities).
    _STATE = (("square_avg", "mean_square"), ("momentum_buffer", "momentum"))

    def _paddle_acc(self, acc: str, param: Any) -> Any:
        return self.optimizer._get_accumulator(acc, param)  # Paddle's accessor (private)

    def _optimizer_state(self, trainable: List[Tuple[str, Any]]) -> List[Tuple[str, str, Any]]:
        """``(parameter, torch state name, tensor)`` of the optimizer's state, parameter by
        parameter (entries not created before the first step are absent)."""
        out: List[Tuple[str, str, Any]] = []
        for k, v in trainable:
            for tname, pname in self._STATE:
                if self.framework == "torch":
                    t = self.optimizer.state.get(v, {}).get(tname)
                else:
                    try:
                        t = self._paddle_acc(pname, v)
                    except Exception:  # noqa: BLE001 - not created before the first step
                        t = None
                if t is not None:
                    out.append((k, tname, t))
        return out

    def _bn_buffers(self) -> List[Tuple[str, Any]]:
        if self.framework == "torch":
            return [(k, v) for k, v in self.model.named_buffers()
                    if not k.endswith("num_batches_tracked")]
        return list(self.mod.bn_buffers(self.model).items())

    def snapshot(self) -> Dict[str, Dict[str, np.ndarray]]:
        """Parameters, gradients, optimizer state (as ``<param>.<torch state name>``), BN
        statistics and EMA entries, as numpy copies in torch's names and layouts (the backend's
        conversion, :mod:`cream_core.rules` for Paddle)."""
        b, m = self.backend, self.model
        trainable = b.trainable(m)
        entries = self._optimizer_state(trainable)
        by_name = {tname: b.named_to_torch(m, [(k, t) for k, tn, t in entries if tn == tname])
                   for tname, _ in self._STATE}
        state = {f"{k}.{tn}": by_name[tn][k] for k, tn, _ in entries}  # trainable names agree
        ema = [(k, v) for k, v in self.ema.ema.state_dict().items()
               if not k.endswith("num_batches_tracked")]
        return {"params": b.named_to_torch(m, trainable),
                "grads": b.named_to_torch(m, [(k, v.grad) for k, v in trainable
                                              if v.grad is not None]),
                "state": state, "buffers": b.named_to_torch(m, self._bn_buffers()),
                "ema": b.named_to_torch(self.ema.ema, ema)}

    def load_from_torch(self, snap: Dict[str, Dict[str, np.ndarray]]) -> None:
        """Set this (Paddle) side to a torch snapshot: weights, BN statistics, optimizer state, EMA."""
        b = self.backend
        b.load_torch_state(self.model, {**snap["params"], **snap["buffers"]})
        b.load_torch_state(self.ema.ema, snap["ema"])
        params = dict(b.trainable(self.model))
        for tname, pname in self._STATE:
            wanted = {k: snap["state"][f"{k}.{tname}"] for k in params
                      if f"{k}.{tname}" in snap["state"]}
            for k, value in b.named_from_torch(self.model, wanted).items():  # Linear transposed
                acc = self._paddle_acc(pname, params[k])
                acc.set_value(value.astype(acc.dtype))


_GROUPS = (("grads", "param_grad"), ("params", "optim_params"), ("state", "optim_state"),
           ("buffers", "bn_stats"), ("ema", "ema"))


def _compare_step(k: int, mode: str, prec: str, t: Dict[str, Dict[str, np.ndarray]],
                  p: Dict[str, Dict[str, np.ndarray]],
                  truth: Optional[Dict[str, Dict[str, np.ndarray]]],
                  lrs: Tuple[float, float], losses: Tuple[float, float],
                  truth_loss: Optional[float]) -> List[Comparison]:
    stage = f"train-step/{mode}/{prec}/step{k + 1:02d}"

    def tol(category: str) -> Tolerance:
        return SYNCED_TOLERANCES[(category, prec)] if mode == "synced" else FREE_TOLERANCES[category]

    out = [compare_arrays(np.array([lrs[1]]), np.array([lrs[0]]), category="lr", stage=stage,
                          name="learning rate", order=0, precision=prec, tol=tol("lr")),
           compare_arrays(np.array([losses[1]]), np.array([losses[0]]), category="loss",
                          stage=stage, name="loss", order=1, precision=prec, tol=tol("loss"),
                          truth=None if truth_loss is None else np.array([truth_loss]))]
    for i, (what, category) in enumerate(_GROUPS):
        ref, got = t[what], p[what]  # both in torch's names and layouts (the snapshots)
        context = max((float(np.abs(v).max()) for v in ref.values() if v.size), default=0.0)
        cs = compare_named(got, ref, category=category, stage=stage, precision=prec,
                           tol=tol(category), scale=GRAD_CONTEXT_FLOOR * context,
                           order={n: 2 + i + j / 1e4 for j, n in enumerate(ref)},
                           truth=truth[what] if truth is not None else None)
        for c in cs:
            c.name = f"{what}: {c.name}"
        out += cs
    return out


def run_train_step_parity(cfg: TrainStepConfig, progress: bool = False,
                          log: Callable[[str], None] = lambda s: None) -> TrainStepResult:
    """Run ``cfg.steps`` training steps in both frameworks and compare after every step
    (torch runs on ``cfg.threads`` threads; the previous setting is restored afterwards)."""
    with torch_threads(cfg.threads):
        return _run(cfg, progress, log)


def _run(cfg: TrainStepConfig, progress: bool, log: Callable[[str], None]) -> TrainStepResult:
    from cream_core.training.masks import step_masks

    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.fault is not None and cfg.fault not in FAULTS:
        raise ValueError(f"unknown fault {cfg.fault!r}; choose one of {', '.join(FAULTS)}")
    for prec in cfg.precisions:
        if prec not in _PRECISIONS:
            raise ValueError(f"unknown precision {prec!r}")
    if cfg.noise_members < 1:
        raise ValueError(f"noise_members must be >= 1, got {cfg.noise_members}")
    for mode in cfg.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    t0 = time.perf_counter()
    recipe = _recipe(cfg)
    result = TrainStepResult(config={**cfg.__dict__, "precisions": list(cfg.precisions),
                                     "modes": list(cfg.modes)})
    from cream_torch_ref import train as T

    init = T.build_model(recipe, seed=cfg.seed)
    state = {k: v.detach().numpy().copy() for k, v in init.state_dict().items()}
    batches = _batches(recipe, cfg.steps)
    spec = T.MaskInjector(T.build_model(recipe, seed=cfg.seed)).spec()
    runs = [(m, p) for m in cfg.modes for p in cfg.precisions if not (m == "free" and p == "fp64")]
    result.info.update({
        "recipe": recipe.to_dict(), "img_size": recipe.img_size, "runs": [list(r) for r in runs],
        "drop_path_layers": len(spec.drop_path), "dropout": spec.dropout,
        "schedule": "stepped after every step: lr(k) = schedule value at 'epoch' k",
        "data": "bundled photos through the official training augmentation, one epoch per step",
        "fault": FAULTS.get(cfg.fault or "", None),
    })
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps * sum(3 + cfg.noise_members if m == "free" else 2 for m, _ in runs),
                   desc="train-step parity", unit="step", leave=False)
    for mode, prec in runs:
        sides = {"torch": _Side("torch", recipe, state, prec, None),
                 "paddle": _Side("paddle", recipe, state, prec, cfg.fault)}
        if mode == "free":
            sides["truth"] = _Side("torch", recipe, state, "fp64", None)
            for pert in ensemble(cfg.noise_members, cfg.seed, cfg.noise_threads):
                sides[f"noise{pert.member}"] = _Side("torch", recipe, state, prec, None, pert)
        inside = True  # free run: still inside the predictable horizon
        for images, labels, k in batches:
            if mode == "synced" and k > 0:
                sides["paddle"].load_from_torch(previous)
            masks = step_masks(spec, recipe.seed, k, 0, len(labels))
            lrs, losses, snaps = {}, {}, {}
            for name, side in sides.items():
                lrs[name], losses[name] = side.step(images, labels, masks, k)
                snaps[name] = side.snapshot()
                if bar is not None:
                    bar.update(1)
            previous = snaps["torch"]
            noise = _step_noise(snaps, losses) if mode == "free" else None
            comps = _compare_step(k, mode, prec, snaps["torch"], snaps["paddle"], snaps.get("truth"),
                                  (lrs["torch"], lrs["paddle"]),
                                  (losses["torch"], losses["paddle"]), losses.get("truth"))
            spread, judged = None, True
            if noise is not None:
                _apply_noise(comps, noise)
                spread = _noise_spread(comps)
                inside = inside and spread <= FREE_HORIZON
                judged = inside
                if not judged:
                    _not_judged(comps)
            result.comparisons += comps
            result.steps.append(_step_summary(mode, prec, k, lrs, losses, comps, spread, judged))
            log(f"{mode} {prec} step {k + 1}: loss torch {losses['torch']:.6f} paddle "
                f"{losses['paddle']:.6f}, {'ok' if result.steps[-1]['ok'] else 'FAIL'}")
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _flat(snap: Dict[str, Dict[str, np.ndarray]], loss: float) -> Dict[str, np.ndarray]:
    """A snapshot as one name -> array map, named as the comparisons are (``"<group>: <name>"``)."""
    out = {"loss": np.array([loss])}
    for what, _ in _GROUPS:
        out.update({f"{what}: {k}": v for k, v in snap[what].items()})
    return out


def _step_noise(snaps: Dict[str, Dict[str, Dict[str, np.ndarray]]],
                losses: Dict[str, float]) -> NoiseModel:
    """The measured fp32 noise of one free step: every ensemble member's distance from the torch
    base run, and the torch fp64 run's (the members' snapshots are consumed)."""
    acc = NoiseAccumulator()
    base = _flat(snaps["torch"], losses["torch"])
    for name in [n for n in snaps if n.startswith("noise")]:
        acc.add(int(name[len("noise"):]), _flat(snaps.pop(name), losses[name]), base)
    if "truth" in snaps:
        acc.add(-1, _flat(snaps["truth"], losses["truth"]), base)
    return acc.model


def _apply_noise(comps: List[Comparison], noise: NoiseModel) -> None:
    """Raise each comparison's bound to ``NOISE_FACTOR`` x its measured noise where that is larger,
    and record the noise and the ratio error / noise on it."""
    for c in comps:
        judge_with_noise(c, noise.of(c.name), noise.factor)


def _noise_spread(comps: List[Comparison]) -> float:
    """The largest measured noise of a step's tensors, relative to each tensor's scale."""
    return max((c.noise / c.ref_scale for c in comps
                if c.ref_scale > 0 and math.isfinite(c.noise)), default=0.0)


def _not_judged(comps: List[Comparison]) -> None:
    """Mark a step beyond the predictable horizon: reported, not judged."""
    for c in comps:
        if not c.ok:
            c.note = "; ".join(filter(None, [c.note, f"beyond the horizon, not judged "
                                                     f"(excess {c.excess:.3g})"]))
        c.ok = True


def _step_summary(mode: str, prec: str, k: int, lrs: Dict[str, float], losses: Dict[str, float],
                  comps: List[Comparison], spread: Optional[float], judged: bool) -> Dict[str, Any]:
    """One row of the per-step table (and of the JSON): worst differences, verdict, noise."""
    worst: Dict[str, float] = {}
    for c in comps:
        rel = c.max_abs / c.ref_scale if c.ref_scale and math.isfinite(c.max_abs) else (
            0.0 if c.max_abs == 0 else math.inf)
        worst[c.category] = max(worst.get(c.category, 0.0), rel)
    ratios = [c.noise_ratio for c in comps if math.isfinite(c.noise_ratio)]
    beyond = [c for c in comps if "beyond the horizon" in c.note]
    return {"mode": mode, "precision": prec, "step": k + 1, "lr_torch": lrs["torch"],
            "lr_paddle": lrs["paddle"], "loss_torch": losses["torch"],
            "loss_paddle": losses["paddle"], "worst_of_scale": worst,
            "ok": all(c.ok for c in comps), "failed": sum(not c.ok for c in comps),
            "judged": judged, "noise_of_scale": spread,
            "max_noise_ratio": max(ratios, default=None), "beyond_bound_unjudged": len(beyond),
            "max_excess": max((c.excess for c in comps if math.isfinite(c.excess)), default=0.0)}


def judged_steps(result: TrainStepResult) -> Optional[Tuple[List[int], int]]:
    """The free run's judged steps (inside the predictable horizon) and its step count, or None
    without a free run."""
    free = [s for s in result.steps if s["mode"] == "free"]
    if not free:
        return None
    return [s["step"] for s in free if s["judged"]], len(free)


def _ranges(steps: List[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``'1-3, 5'``."""
    if not steps:
        return "none"
    parts, start = [], steps[0]
    for a, b in zip(steps, steps[1:] + [None]):  # type: ignore[operator]
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(parts)


def format_steps(result: TrainStepResult) -> str:
    """Terminal table: one row per step with the worst difference of each quantity (relative to the
    tensor's scale) and the worst ratio to its tolerance (``<= 1`` passes)."""
    from tabulate import tabulate

    rows = []
    for s in result.steps:
        w = s["worst_of_scale"]
        rows.append([s["mode"], s["precision"], s["step"], f"{s['lr_torch']:.4g}",
                     f"{s['loss_torch']:.6f}", f"{s['loss_paddle']:.6f}",
                     *(f"{w.get(c, math.nan):.1e}" for c in
                       ("param_grad", "optim_params", "optim_state", "ema", "bn_stats")),
                     f"{s['max_excess']:.2f}",
                     "-" if s.get("noise_of_scale") is None else f"{s['noise_of_scale']:.1e}",
                     "-" if s.get("max_noise_ratio") is None else f"{s['max_noise_ratio']:.3g}",
                     ("ok" if s["judged"] else "not judged (beyond horizon)")
                     if s["ok"] else f"FAIL ({s['failed']})"])
    return tabulate(rows, headers=["mode", "prec", "step", "lr", "loss torch", "loss paddle",
                                   "grads", "params", "opt state", "EMA", "BN stats",
                                   "worst/tol", "noise", "err/noise", ""], tablefmt="simple")


def _tolerance_lines(result: TrainStepResult) -> List[str]:
    seen: Dict[Tuple[str, str], set] = {}
    for c in result.comparisons:
        _, mode, prec, _ = c.stage.split("/")
        seen.setdefault((mode, prec), set()).add((c.category, c.tolerance))
    lines = []
    for (mode, prec), pairs in seen.items():
        extra = (f" (and >= 10x the torch fp32 run's distance to fp64, and >= NOISE_FACTOR "
                 f"{NOISE_FACTOR:g} x the measured noise)") if mode == "free" else ""
        lines.append(f"  {mode} {prec}{extra}: " + ", ".join(f"{cat} {tol}" for cat, tol in
                                                           sorted(pairs)))
    return lines


# ------------------------------------------------------------------------------------------------
# command line

def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="cream-14", choices=model_names(), metavar="NAME",
                   help="child net (default cream-14)")
    p.add_argument("--steps", type=int_at_least(1), default=10, metavar="K", help="steps (default 10, >= 10 "
                                                                      "for the acceptance check)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="N", help="default 8")
    p.add_argument("--img-size", type=int_at_least(32, "five stride-2 stages"), metavar="PX", help="default: the model's resolution")
    p.add_argument("--num-classes", type=int_at_least(1), default=1000, metavar="N")
    p.add_argument("--drop-path-rate", type=float_in(0.0, 1.0), default=0.2, metavar="P",
                   help="stochastic depth to exercise (default 0.2; the official retrain used 0)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--precision", choices=("fp32", "fp64", "both"), default="both",
                   help="fp32 = deployed precision, fp64 = semantic check (synced only); "
                        "default both")
    p.add_argument("--mode", choices=("synced", "free", "both"), default="both",
                   help="synced: every step from equal states; free: k steps each on its own "
                        "(default both)")
    p.add_argument("--inject-fault", choices=sorted(FAULTS), metavar="NAME",
                   help=f"break the Paddle side on purpose: {', '.join(sorted(FAULTS))}")
    p.add_argument("--threads", type=int_at_least(1), default=1, metavar="N", help="torch threads (default 1)")
    p.add_argument("--noise-members", type=int_at_least(1, "the free run's noise"),
                   default=NOISE_MEMBERS, metavar="N",
                   help=f"free run: perturbed torch fp32 runs measuring the noise (default "
                        f"{NOISE_MEMBERS})")
    p.add_argument("--json", metavar="FILE", help="write every comparison as JSON")
    p.add_argument("--no-progress", action="store_true")


def _command(args: argparse.Namespace) -> int:
    """The work of ``parity train-step``; bad input (options, output) raises a ``ValueError``."""
    prepare_outputs({"--json": args.json})  # the output guard of every tool, before the work
    precisions = _PRECISIONS if args.precision == "both" else (args.precision,)
    cfg = TrainStepConfig(model=args.model, steps=args.steps, batch_size=args.batch_size,
                          img_size=args.img_size, num_classes=args.num_classes,
                          drop_path_rate=args.drop_path_rate, seed=args.seed,
                          precisions=precisions, fault=args.inject_fault, threads=args.threads,
                          noise_members=args.noise_members,
                          modes=MODES if args.mode == "both" else (args.mode,))
    result = run_train_step_parity(cfg, progress=not args.no_progress)
    _print_result(args, cfg, result)
    if args.json:
        from cream_core.data.report import write_json
        write_json(args.json, result.to_dict())  # a full or failing disk after the work: exit 2
        print(f"JSON: {args.json}")
    return 0 if result.ok else 1


def _print_result(args: argparse.Namespace, cfg: TrainStepConfig, result: TrainStepResult) -> None:
    """The steps' table, the tolerances, the verdict, the first divergence and the free run's
    judged steps."""
    print(format_steps(result))
    print("tolerances (see parity/tolerances.py and parity/train_step.py):")
    print("\n".join(_tolerance_lines(result)))
    n, failed = len(result.comparisons), sum(not c.ok for c in result.comparisons)
    if args.precision != "fp32" and "free" in cfg.modes:
        print("(no free fp64 run: there the compounded fp32 constants are the whole difference; "
              "see the module doc)")
    print(f"{n} comparisons over {cfg.steps} steps ({args.model}, batch {cfg.batch_size}, "
          f"{result.info['img_size']} px) in {result.seconds:.1f} s: "
          + ("all within tolerance" if not failed else f"{failed} FAILED"))
    if result.first is not None:
        f = result.first
        print(f"first divergence: {f.stage} {f.name}: max abs {f.max_abs:.2e} on a scale of "
              f"{f.ref_scale:.2e}, {f.excess:.3g}x its bound ({f.tolerance}) {f.note}")
    horizon = judged_steps(result)
    if horizon is not None:
        judged, total = horizon
        print(f"free run: judged steps {_ranges(judged)} of {total}" + (
            "" if len(judged) == total else
            f"; steps {_ranges([k for k in range(1, total + 1) if k not in judged])} are beyond the "
            f"predictable horizon (torch's own perturbed fp32 runs differ there by more than "
            f"FREE_HORIZON = {FREE_HORIZON:g} of a tensor's scale): reported, not judged"))
        if result.inconclusive:
            print(f"free run inconclusive: fewer than MIN_JUDGED_STEPS = {MIN_JUDGED_STEPS} step(s) "
                  "inside the predictable horizon (try another --seed or a larger --batch)")
    if cfg.fault:
        print(f"injected fault: {FAULTS[cfg.fault]}")


#: ``parity train-step``: exit 0 all within tolerance, 1 divergence or an inconclusive free run,
#: 2 bad input, 130 interrupted.
SUBCOMMAND = Subcommand("train-step", __doc__, _add_arguments, _command,
                        help="k retraining steps in both frameworks, compared after every step")
register = SUBCOMMAND.register
