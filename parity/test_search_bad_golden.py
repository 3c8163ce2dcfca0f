"""``parity search-step`` on malformed golden files: one line naming the file and the problem, exit 2
(bad input), never a traceback and never exit 1 (which means "the frameworks diverge").

Every case is a small change to a golden file of the repository (the official-initialisation warm-up
step, compact and full form), written to a temporary folder.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch

from parity.search_step import load_golden, main

GOLDEN = (Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_search"
          / "official_init_warmup_step.pt")


def _compact() -> Dict[str, Any]:
    return dict(torch.load(GOLDEN, weights_only=True))


@pytest.fixture(scope="module")
def full_raw() -> Dict[str, Any]:
    """The same file in the full form (``init_state_dict``, float32 images)."""
    raw = _compact()
    g = load_golden(str(GOLDEN))
    raw["init_state_dict"] = {k: torch.from_numpy(np.array(v)) for k, v in g.init_state.items()}
    for k in ("init_seed", "state_keys_shapes", "init_scheme"):
        raw.pop(k)
    raw["x"], raw["board_x"] = torch.from_numpy(g.x), torch.from_numpy(g.board_x)
    return raw


def _set(path: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    """A mutation setting ``raw[a][b]...`` (``path`` = 'a/b') to ``value`` (a callable: of the old)."""
    def mutate(raw: Dict[str, Any]) -> None:
        *parents, last = path.split("/")
        d = raw
        for p in parents:
            d[p] = dict(d[p])
            d = d[p]
        d[last] = value(d[last]) if callable(value) else value
    return mutate


def _with(t: Any, index: Any, v: float) -> Any:
    t = t.clone().float() if t.dtype == torch.float16 else t.clone()
    t[index] = v
    return t


def _drop_state_entry(raw: Dict[str, Any]) -> None:
    raw["state_keys_shapes"] = [e for e in raw["state_keys_shapes"] if e[0] != "bn1.running_mean"]


def _delete(key: str) -> Callable[[Dict[str, Any]], None]:
    def mutate(raw: Dict[str, Any]) -> None:
        parent, _, leaf = key.rpartition("/")
        d = raw[parent] = dict(raw[parent])
        del d[leaf]
    return mutate


#: (case, mutation of the compact file, words the one-line error must contain)
COMPACT_CASES = [
    ("lr-string", _set("cfg/LR", "fast"), "bad cfg"),
    ("lr-nan", _set("cfg/LR", math.nan), "LR is nan"),
    ("meta-lr-inf", _set("cfg/META_LR", math.inf), "META_LR is inf"),
    ("momentum-list", _set("cfg/MOMENTUM", [0.9]), "bad cfg"),
    ("num-classes-string", _set("num_classes", "ten"), "bad cfg"),
    ("flops-string", _set("flops_maximum", "many"), "flops_minimum/flops_maximum"),
    ("cand-int", _set("random_cand", 5), "random_cand"),
    ("cand-out-of-range", _set("random_cand", [[0], [9], [2], [4], [1], [3], [0]]), "random_cand"),
    ("x-string", _set("x", "pixels"), "x: expected a numeric tensor"),
    ("x-nan", _set("x", lambda t: _with(t, (0, 0, 0, 0), math.nan)), "x: holds NaN or Inf"),
    ("x-3d", _set("x", lambda t: t[:, 0]), "x has shape"),
    ("board-x-inf", _set("board_x", lambda t: _with(t, (1, 2, 3, 4), math.inf)), "board_x: holds NaN"),
    ("board-x-size", _set("board_x", lambda t: t[..., :32]), "board_x has shape"),
    ("board-feat-shape", _set("board_feat", lambda t: t[:, :5]), "board_feat has shape"),
    ("y-short", _set("y", lambda t: t[:7]), "y has shape"),
    ("y-float", _set("y", lambda t: t.float()), "y: expected a numeric tensor"),
    ("label-too-large", _set("y", lambda t: _with(t, 3, 10)), "labels out of range"),
    ("label-negative", _set("y", lambda t: _with(t, 0, -1)), "labels out of range"),
    ("state-key-missing", _drop_state_entry, "initial state does not fit the supernet: 1 missing"),
    ("init-seed-string", _set("init_seed", "abc"), "init_seed"),
    ("init-scheme-unknown", _set("init_scheme", "magic"), "init_scheme"),
    ("keys-shapes-garbage", _set("state_keys_shapes", [["a"]]), "state_keys_shapes"),
    ("grads-not-dict", _set("grads", [1, 2]), "grads is not a dict"),
    ("grad-wrong-shape", _set("grads/bn1.bias", lambda t: t[:3]), "grads['bn1.bias']: shape"),
    ("grad-unknown", _set("grads/no.such.weight", torch.zeros(3)), "no such entry"),
    ("grad-nan", _set("grads/bn1.bias", lambda t: _with(t, 0, math.nan)), "holds NaN"),
    ("loss-string", _set("loss", "low"), "loss: wrong type"),
    ("cfg-missing", _delete("cfg/UPDATE_ITER"), "cfg lacks UPDATE_ITER"),
]

#: The same kinds of damage to the full form's initial state.
FULL_CASES = [
    ("init-not-dict", _set("init_state_dict", [1]), "init_state_dict is not a dict"),
    ("init-missing-key", _delete("init_state_dict/bn1.running_mean"), "1 missing (first: bn1.running_mean)"),
    ("init-extra-key", _set("init_state_dict/stray.weight", torch.zeros(2)), "1 unknown (first: stray.weight)"),
    ("init-wrong-shape", _set("init_state_dict/conv_stem.weight", lambda t: t[:8]),
     "initial state conv_stem.weight: shape"),
    ("init-nan", _set("init_state_dict/bn1.weight", lambda t: _with(t, 0, math.nan)), "holds NaN"),
    ("init-string", _set("init_state_dict/bn1.weight", "ones"), "expected a numeric tensor"),
]


def _check(tmp_path: Path, raw: Dict[str, Any], words: str, capsys) -> None:
    path = tmp_path / "bad golden.pt"
    torch.save(raw, path)
    before = path.read_bytes()
    assert main(["--golden", str(path), "--framework", "torch", "--noise-members", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and words in err, err
    assert "Traceback" not in err and path.read_bytes() == before


@pytest.mark.cli
@pytest.mark.parametrize("case, mutate, words", COMPACT_CASES, ids=[c[0] for c in COMPACT_CASES])
def test_malformed_compact_golden(tmp_path: Path, capsys, case: str, mutate, words: str) -> None:
    raw = _compact()
    mutate(raw)
    _check(tmp_path, raw, words, capsys)


@pytest.mark.cli
@pytest.mark.parametrize("case, mutate, words", FULL_CASES, ids=[c[0] for c in FULL_CASES])
def test_malformed_full_golden(tmp_path: Path, capsys, full_raw, case: str, mutate, words: str) -> None:
    raw = dict(full_raw)
    mutate(raw)
    _check(tmp_path, raw, words, capsys)


@pytest.mark.cli
def test_malformed_golden_in_a_fresh_process(tmp_path: Path) -> None:
    """The console entry: exit 2, one line, no traceback (NaN labels, a stray state key)."""
    raw = _compact()
    _set("cfg/LR", math.nan)(raw)
    path = tmp_path / "nan-lr.pt"
    torch.save(raw, path)
    p = subprocess.run([sys.executable, "-m", "parity.cli", "search-step", "--golden", str(path),
                        "--noise-members", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert "nan-lr.pt" in p.stderr and "LR is nan" in p.stderr


@pytest.mark.cli
def test_bad_noise_members_is_a_usage_error(capsys) -> None:
    assert main(["--golden", str(GOLDEN), "--noise-members", "-1"]) == 2
    assert "--noise-members" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["golden", "folder"])
def test_json_onto_the_golden_file_or_a_folder_is_refused_before_the_work(tmp_path, capsys,
                                                                          where) -> None:
    golden = tmp_path / "g.pt"
    golden.write_bytes(GOLDEN.read_bytes())
    out = golden if where == "golden" else tmp_path
    assert main(["--golden", str(golden), "--framework", "torch", "--noise-members", "0",
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(out) in err
    assert golden.read_bytes() == GOLDEN.read_bytes()
