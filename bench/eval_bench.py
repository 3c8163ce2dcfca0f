"""Evaluation throughput, Paddle vs torch, in one run: model only and end to end (decode included).

    python -m bench.eval_bench [--models cream-14 cream-604] [--images 256] [--rounds 3] [--json FILE]
    python -m bench.eval_bench --suite inputs --models cream-14 --images 1000 [--rounds 3]

Every configuration runs in a fresh process holding one framework, as ``cream-eval`` does (two
frameworks' OpenMP thread pools in one process spin-wait against each other and distort both).
Configurations are run round-robin ``--rounds`` times and the median is reported, so that load from
other processes hits all of them alike.

* **model only**: a fixed float32 batch through the forward, timed after warm-up: torch eager with
  one thread per core and with one thread; Paddle eager, ``to_static``, and Paddle Inference with
  oneDNN (one thread per core, one thread). Reported per wall-clock second and per CPU-second of
  the process (the latter is less sensitive to other processes competing for the cores).
* **end to end**: ``cream_torch_ref.evaluate`` / ``cream_paddle.evaluate`` over ``--images`` JPEGs
  at a typical ImageNet val size (500x375, made from the bundled photos), with the official
  preprocessing in ``--workers`` decoding processes. ``cores busy`` = CPU time of the process and
  its workers / wall time.
* **predictions**: every configuration's top-1 on the bundled photos (model only) or on the
  end-to-end images is compared with torch's.

* **inputs and processes** (``--suite inputs``, issue 14): ``cream-eval`` itself (its own
  images/s: the evaluation loop, after model loading and indexing) on ``--images`` val-sized JPEGs
  as the val **tar** (read in place) and as the flat **folder** of the same files, labelled by a
  ``LOC_val_solution.csv``, in **1 process** (default workers and threads) and in **2 processes**
  (``torchrun`` / ``paddle.distributed.launch``, one thread and no decoding worker each). Measured
  against this machine's **bound** in the same run: one core's cost per image = decode + exact
  resize/crop (the official transform, one process) + the model (one thread, the mode cream-eval
  uses: torch eager, Paddle Inference), and bound = cores / that cost, i.e. every core busy with
  nothing but the necessary work. Goal: >= 85 % of the bound for cream-14, tar no slower than
  the folder. On a machine shared with other work the wall-clock figures move with the load, so
  the same comparison is also made in CPU time: cream-eval's images per CPU-second of its loop
  (all processes and decoding workers, from its JSON ``cpu_seconds``) against one core's
  images per CPU-second of the necessary work (its overhead, whatever the load).

Weights: ``seeded_official_checkpoint`` (official format, BatchNorm calibrated on photos so that
predictions depend on the image; speed does not depend on the values), converted with ``convert-ckpt``'s API.
Not a test: run it by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from bench.common import ROOT, child_env, save_json, work_folder

#: Photos the seeded weights' BatchNorm statistics are calibrated on.
CALIBRATION_PHOTOS = 8
#: Typical ImageNet val image size (width x height); decoding cost scales with it.
IMAGENET_TYPICAL_SIZE = (500, 375)


# --- set-up (parent process) ------------------------------------------------------------------------

def _make_images(folder: Path, n: int) -> Path:
    """``n`` JPEGs of a typical ImageNet size in one class folder, cycling through the photos."""
    from PIL import Image

    import cream_core.data as cd

    cls = folder / "val" / cd.imagenet_wnids()[0]
    cls.mkdir(parents=True)
    photos = [Image.open(p).convert("RGB").resize(IMAGENET_TYPICAL_SIZE, Image.LANCZOS)
              for p in cd.sample_files()]
    for i in range(n):
        photos[i % len(photos)].save(cls / f"img_{i:05d}.JPEG", quality=90)
    return folder / "val"


def _photos(res: int) -> np.ndarray:
    """The bundled photos, preprocessed as the official evaluation does."""
    import cream_core.data as cd

    t = cd.EvalTransform(res)
    return cd.normalize(np.stack([t(p) for p in cd.sample_files()]))


def _checkpoint(name: str, folder: Path) -> Dict[str, str]:
    """A seeded official-format checkpoint and its Paddle conversion (made in a child process, so
    the parent stays framework-free). BatchNorm is calibrated on photographs: calibrated on noise,
    cream-604's logits on photos grow ~10^4-fold and fp32 rounding differences with them."""
    code = f"""
CALIBRATION_PHOTOS = {CALIBRATION_PHOTOS}
import warnings
warnings.filterwarnings("ignore")
from converters.convert import convert_checkpoint
import numpy as np
import cream_core.data as cd
from cream_core.arch import child_spec
from cream_torch_ref.models import seeded_official_checkpoint
t = cd.EvalTransform(child_spec({name!r}).resolution)
photos = cd.normalize(np.stack([t(p) for p in cd.sample_files()[:CALIBRATION_PHOTOS]]))
seeded_official_checkpoint({name!r}, {str(folder / "model.pth.tar")!r}, legacy=True,
                           calibration_images=photos)
convert_checkpoint({str(folder / "model.pth.tar")!r}, {str(folder / "model.pdparams")!r}, model={name!r})
"""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True)
    return {"ckpt": str(folder / "model.pth.tar"), "pdparams": str(folder / "model.pdparams")}


# --- one configuration (child process) -------------------------------------------------------------

def _forward(spec: Dict[str, Any]):
    from cream_core.arch import child_spec

    res = child_spec(spec["model"]).resolution
    if spec["framework"] == "torch":
        import cream_torch_ref
        from cream_torch_ref.evaluate import make_forward

        net = cream_torch_ref.create_model(spec["model"], checkpoint=spec["ckpt"])
    else:
        import cream_paddle
        from cream_paddle.evaluate import make_forward

        net = cream_paddle.create_model(spec["model"], checkpoint=spec["pdparams"])
    return net, make_forward(net, spec["mode"], res, spec["threads"]), res


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_model_only(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Median images/s (wall and CPU) of the forward on a fixed batch; logits on the photos."""
    from cream_core.arch import seeded_input

    _, forward, res = _forward(spec)
    x = seeded_input(spec["batch"], res, seed=0)
    photos_logits = forward(_photos(res))
    forward(x)  # warm-up at the timed batch size
    walls, cpus = [], []
    for _ in range(spec["reps"]):
        c0, t0 = _cpu(), time.perf_counter()
        forward(x)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    np.save(spec["logits_out"], photos_logits)
    return {"images_per_s": spec["batch"] / statistics.median(walls),
            "images_per_cpu_s": spec["batch"] / statistics.median(cpus)}


def run_end_to_end(spec: Dict[str, Any]) -> Dict[str, Any]:
    """cream-eval's path: decode in workers + forward; images/s and cores busy."""
    import cream_core.data as cd

    if spec["framework"] == "torch":
        import cream_torch_ref
        from cream_torch_ref.evaluate import evaluate

        net = cream_torch_ref.create_model(spec["model"], checkpoint=spec["ckpt"])
    else:
        import cream_paddle
        from cream_paddle.evaluate import evaluate

        net = cream_paddle.create_model(spec["model"], checkpoint=spec["pdparams"])
    from cream_core.arch import child_spec

    loader = cd.EvalLoader(cd.open_dataset(spec["data"]), child_spec(spec["model"]).resolution,
                           batch_size=spec["batch"], workers=spec["workers"])
    t0, c0 = time.perf_counter(), os.times()
    r = evaluate(net, loader, mode=spec["mode"], threads=spec["threads"])
    wall, c1 = time.perf_counter() - t0, os.times()
    cpu = sum(getattr(c1, f) - getattr(c0, f)
              for f in ("user", "system", "children_user", "children_system"))
    np.save(spec["logits_out"], r.predictions[:, 0])
    return {"images_per_s": r.images_per_s, "model_images_per_s": r.model_images_per_s,
            "images": r.images, "cores_busy": cpu / wall}


def run_bound(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One core's seconds per image: the official transform (decode + exact resize + crop) of the
    files, and the model on one thread at the benchmark's batch size (median of ``reps``)."""
    import cream_core.data as cd
    from cream_core.arch import seeded_input

    spec = {**spec, "threads": 1}
    _, forward, res = _forward(spec)
    t = cd.EvalTransform(res)
    files = sorted(Path(spec["data"]).iterdir())[:spec["decode_images"]]
    t(files[0])
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        t(f)
    decode = (time.perf_counter() - t0) / len(files)
    decode_cpu = (time.process_time() - c0) / len(files)
    x = seeded_input(spec["batch"], res, seed=0)
    forward(x)
    walls, cpus = [], []
    for _ in range(spec["reps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        forward(x)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    model = statistics.median(walls) / spec["batch"]
    model_cpu = statistics.median(cpus) / spec["batch"]
    return {"decode_s": decode, "model_s": model, "per_core_images_per_s": 1.0 / (decode + model),
            "per_cpu_s_images": 1.0 / (decode_cpu + model_cpu)}


def _eval_command(spec: Dict[str, Any], tmp: Path) -> List[str]:
    """cream-eval as a user runs it: one process, or two under the framework's launcher."""
    weights = spec["ckpt"] if spec["framework"] == "torch" else spec["pdparams"]
    args = ["--framework", spec["framework"], "--model", spec["model"], "--weights", weights,
            "--data", spec["data"], "--labels", spec["labels"], "--batch-size", str(spec["batch"]),
            "--json", str(tmp / "r.json"), "--no-progress"]
    repo = Path(__file__).resolve().parents[1]
    if spec["processes"] == 1:
        return [sys.executable, "-m", "cream_cli.eval", *args]
    args += ["--threads", "1", "--workers", "0"]
    if spec["framework"] == "torch":
        # --log-dir: else torchrun leaves a torchelastic_* temporary folder behind on every run
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(spec["processes"]), "--log-dir", str(tmp / "log"), "-m", "cream_cli.eval",
                *args]
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
            str(spec["processes"]), "--log_dir", str(tmp / "log"),
            str(repo / "cream_cli" / "eval.py"), *args]


def run_cli(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``cream-eval``'s own images/s (and its top-1) on the given input and process count."""
    with work_folder("cream_eval_bench_cli_") as tmp:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.run(_eval_command(spec, Path(tmp)), capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"cream-eval failed ({spec['label']}):\n{proc.stderr[-2000:]}")
        rep = json.loads((Path(tmp) / "r.json").read_text())
    return {"images_per_s": rep["images_per_s"], "images": rep["images"], "top1": rep["top1"],
            "processes": rep.get("processes", 1),
            "images_per_cpu_s": rep["images"] / rep["cpu_seconds"]}


def _child(spec_json: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(spec_json)
    kinds = {"model": run_model_only, "e2e": run_end_to_end, "bound": run_bound}
    out = kinds[spec["kind"]](spec)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _run_child(spec: Dict[str, Any]) -> Dict[str, Any]:
    # "-m" from the repository root, the checkout first on the path: the child imports bench.common
    proc = subprocess.run([sys.executable, "-m", "bench.eval_bench", "--child", json.dumps(spec)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark child failed ({spec['label']}):\n{proc.stderr[-2000:]}")


# --- the run (parent process) -----------------------------------------------------------------------

def _configs(cores: int) -> List[Tuple[str, str, str, int]]:
    """(label, framework, mode, threads) of every model-only configuration."""
    return [(f"torch eager, {cores} thr", "torch", "eager", cores),
            ("torch eager, 1 thr", "torch", "eager", 1),
            ("paddle eager", "paddle", "eager", 1),
            ("paddle to_static", "paddle", "static", 1),
            (f"paddle inference, {cores} thr", "paddle", "inference", cores),
            ("paddle inference, 1 thr", "paddle", "inference", 1)]


def bench(models: List[str], images: int, batch: int, reps: int, rounds: int, workers: int,
          tmp: Path) -> Tuple[Dict[str, Any], List[List[str]]]:
    """Run every configuration ``rounds`` times round-robin; returns the report and table rows."""
    import cream_core.data as cd

    cores = cd.default_workers()
    data = _make_images(tmp / "data", images)
    report: Dict[str, Any] = {}
    rows: List[List[str]] = []
    for name in models:
        files = _checkpoint(name, tmp / name)
        specs: List[Dict[str, Any]] = []
        for label, fw, mode, threads in _configs(cores):
            specs.append({"kind": "model", "label": label, "model": name, "framework": fw,
                          "mode": mode, "threads": threads, "batch": batch, "reps": reps, **files})
        for label, fw, mode, threads in (
                (f"torch, {cores} thr", "torch", "eager", cores), ("torch, 1 thr", "torch", "eager", 1),
                (f"paddle inference, {cores} thr", "paddle", "inference", cores),
                ("paddle inference, 1 thr", "paddle", "inference", 1),
                ("paddle eager", "paddle", "eager", 1)):
            specs.append({"kind": "e2e", "label": label, "model": name, "framework": fw,
                          "mode": mode, "threads": threads, "batch": batch, "workers": workers,
                          "data": str(data), **files})
        results: Dict[str, List[Dict[str, Any]]] = {s["label"] + s["kind"]: [] for s in specs}
        outputs: Dict[str, np.ndarray] = {}
        for r in range(rounds):
            for i, s in enumerate(specs):
                s["logits_out"] = str(tmp / f"{name}-{i}-{r}.npy")
                results[s["label"] + s["kind"]].append(_run_child(s))
                outputs[s["label"] + s["kind"]] = np.load(s["logits_out"])
        ref_model = outputs[specs[0]["label"] + "model"]
        ref_e2e = next(v for k, v in outputs.items() if k.endswith("e2e"))
        entry: Dict[str, Any] = {"model_only": {}, "end_to_end": {}}
        for s in specs:
            key = s["label"] + s["kind"]
            runs = results[key]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            if s["kind"] == "model":
                out = outputs[key]
                same = out.argmax(1) == ref_model.argmax(1)
                med["photos_top1_agree_with_torch"] = float(same.mean() * 100)
                med["photos_max_logit_diff"] = float(np.abs(out - ref_model).max())
                entry["model_only"][s["label"]] = med
                rows.append([name, "model only", s["label"], f"{med['images_per_s']:.0f}",
                             f"{med['images_per_cpu_s']:.0f}", "",
                             f"{med['photos_top1_agree_with_torch']:.0f}",
                             f"{med['photos_max_logit_diff']:.1e}"])
            else:
                med["top1_agree_with_torch"] = float((outputs[key] == ref_e2e).mean() * 100)
                entry["end_to_end"][s["label"]] = med
                rows.append([name, "end to end", s["label"], f"{med['images_per_s']:.0f}", "",
                             f"{med['cores_busy']:.2f}", f"{med['top1_agree_with_torch']:.0f}", ""])
        report[name] = entry
    return report, rows


def _val_inputs(tmp: Path, images: int) -> Dict[str, str]:
    """``images`` val-sized JPEGs as the val tar and the flat folder, with a LOC csv."""
    from cream_core.data.synthetic_val import write_synthetic_val

    sv = write_synthetic_val(tmp / "val", n=images, seed=0, size=IMAGENET_TYPICAL_SIZE)
    shutil.rmtree(sv.folder)  # the val/<wnid>/ copy is not measured here
    return {"tar": str(sv.tar), "folder": str(sv.flat), "labels": str(sv.loc_csv)}


def bench_inputs(models: List[str], images: int, batch: int, reps: int, rounds: int,
                 tmp: Path) -> Tuple[Dict[str, Any], List[List[str]]]:
    """cream-eval on tar vs folder, 1 vs 2 processes, against the bound measured alongside."""
    import cream_core.data as cd

    cores = cd.default_workers()
    data = _val_inputs(tmp, images)
    report: Dict[str, Any] = {}
    rows: List[List[str]] = []
    for name in models:
        files = _checkpoint(name, tmp / name)
        specs: List[Dict[str, Any]] = []
        for fw, mode in (("torch", "eager"), ("paddle", "inference")):
            specs.append({"kind": "bound", "label": f"{fw} bound", "model": name, "framework": fw,
                          "mode": mode, "batch": batch, "reps": reps, "data": data["folder"],
                          "decode_images": min(images, 200), **files})
            for inp in ("folder", "tar"):
                for procs in (1, 2):
                    specs.append({"kind": "cli", "label": f"{fw} {inp} {procs} proc",
                                  "model": name, "framework": fw, "batch": batch,
                                  "processes": procs, "data": data[inp],
                                  "labels": data["labels"], **files})
        results: Dict[str, List[Dict[str, Any]]] = {s["label"]: [] for s in specs}
        for _ in range(rounds):
            for s in specs:
                results[s["label"]].append(run_cli(s) if s["kind"] == "cli" else _run_child(s))
        entry: Dict[str, Any] = {}
        for s in specs:
            runs = results[s["label"]]
            entry[s["label"]] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for fw in ("torch", "paddle"):
            b = entry[f"{fw} bound"]
            bound = cores * b["per_core_images_per_s"]
            b["bound_images_per_s"] = bound
            rows.append([name, f"{fw} bound ({cores} cores)", f"{bound:.0f}", "100",
                         f"{b['per_cpu_s_images']:.0f}", "100",
                         f"decode {b['decode_s'] * 1e3:.2f} ms + model {b['model_s'] * 1e3:.2f} ms",
                         ""])
            for inp in ("folder", "tar"):
                for procs in (1, 2):
                    e = entry[f"{fw} {inp} {procs} proc"]
                    e["fraction_of_bound"] = e["images_per_s"] / bound
                    e["cpu_fraction_of_bound"] = e["images_per_cpu_s"] / b["per_cpu_s_images"]
                    rows.append([name, f"{fw} {inp}, {procs} proc", f"{e['images_per_s']:.0f}",
                                 f"{100 * e['fraction_of_bound']:.0f}",
                                 f"{e['images_per_cpu_s']:.0f}",
                                 f"{100 * e['cpu_fraction_of_bound']:.0f}", "",
                                 f"{e['top1']:.3f}"])
        report[name] = entry
    return report, rows


def main(argv: "List[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cream-14", "cream-604"])
    p.add_argument("--images", type=int, default=256, help="images for the end-to-end runs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5, help="timed forwards per model-only run")
    p.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of every run")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    p.add_argument("--omp-wait", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of the runs (cream-eval uses PASSIVE)")
    p.add_argument("--suite", default="frameworks", choices=["frameworks", "inputs", "all"],
                   help="frameworks: model only and end to end, Paddle vs torch; inputs: "
                        "cream-eval on tar vs folder, 1 vs 2 processes, vs the machine's bound")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args.child)

    import cream_core.data as cd
    from tabulate import tabulate

    if args.omp_wait == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait  # inherited by every run
    workers = cd.default_workers() if args.workers is None else args.workers
    load_before = os.getloadavg()
    models: Dict[str, Any] = {}
    inputs: Dict[str, Any] = {}
    with work_folder("cream_eval_bench_") as tmp:
        # a folder per suite: each writes its own checkpoints (--suite all failed on the second's)
        if args.suite in ("frameworks", "all"):
            models, rows = bench(args.models, args.images, args.batch_size, args.reps,
                                 args.rounds, workers, Path(tmp, "frameworks"))
            print(tabulate(rows, headers=["model", "run", "configuration", "img/s",
                                          "img per CPU-s", "cores busy", "top-1 = torch (%)",
                                          "max |dlogit|"], tablefmt="github",
                           disable_numparse=True))
        if args.suite in ("inputs", "all"):
            inputs, rows = bench_inputs(args.models, args.images, args.batch_size, args.reps,
                                        args.rounds, Path(tmp, "inputs"))
            print(tabulate(rows, headers=["model", "cream-eval run", "img/s", "% of bound",
                                          "img per CPU-s", "% of CPU bound",
                                          "per core and image", "top-1 (%)"],
                           tablefmt="github", disable_numparse=True))
    load_after = os.getloadavg()
    print(f"(batch {args.batch_size}; end to end: {args.images} images of "
          f"{IMAGENET_TYPICAL_SIZE[0]}x{IMAGENET_TYPICAL_SIZE[1]}, {workers} decoding workers; "
          f"median of {args.rounds} rounds; OMP_WAIT_POLICY {args.omp_wait}; "
          f"{os.cpu_count()} CPUs; load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f})")
    if args.json:
        report = {"cpus": os.cpu_count(), "omp_wait_policy": args.omp_wait,
                  "batch_size": args.batch_size, "images": args.images,
                  "image_size": IMAGENET_TYPICAL_SIZE, "workers": workers, "rounds": args.rounds,
                  "load_average_before": load_before, "load_average_after": load_after,
                  "models": models, "inputs": inputs}
        save_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
