"""The supernet in both frameworks against the official code: layer search, FLOPs table, keys, paths.

Official data: ``tests/data/golden_search/supernet_tables.json`` (layer search on 36 budgets, the
official ``FlopsEst`` of the default 0..600 supernet, a digest of its state-dict keys) and the
``state_keys_shapes`` recorded in the golden search-step files (see the README there).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from cream_core.search.board import BoardEntry, PrioritizedBoard, with_fixed_stages
from cream_core.io.digest import digest_errors, tensor_digest
from cream_core.config.search import ConfigError, load_search_config
from cream_core.arch.supernet import (child_state_from_supernet, detect_supernet, flops_op_dict,
                                     flops_table, names_in_order, outside_path, path_blocks,
                                     plan_supernet, search_for_layer, supernet_for_budget,
                                     validate_cand)
from cream_core.arch.seeded import seeded_input, seeded_state
from cream_torch_ref.childnet import ChildNet
from cream_torch_ref.supernet import SuperNet, create_supernet

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_search"
OFFICIAL = json.loads((GOLDEN / "supernet_tables.json").read_text())
PROBE = [["s0"], ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"], ["c1", "c2", "c3", "c4"],
         ["d1", "d2", "d3", "d4"], ["e1", "e2", "e3", "e4"], ["h"]]
#: Forward outputs of the two frameworks on identical weights: a few fp32 ulp per op over ~10 blocks.
FORWARD_REL = 1e-5


def _golden_keys(name: str) -> List[Tuple[str, Tuple[int, ...], str]]:
    g = torch.load(GOLDEN / name, map_location="cpu", weights_only=True)
    return [(k, tuple(s), d) for k, s, d in g["state_keys_shapes"]], g


# --- framework-free -----------------------------------------------------------------------------
@pytest.mark.golden
@pytest.mark.parametrize("case", OFFICIAL["search_for_layer"],
                         ids=lambda c: f"{c['flops_minimum']:g}-{c['flops_maximum']:g}")
def test_layer_search_matches_official(case) -> None:
    got = search_for_layer(case["flops_minimum"], case["flops_maximum"], arch_def=PROBE)
    if case["sta_num"] is None:
        assert got is None
        return
    assert got is not None
    assert list(got.sta_num) == case["sta_num"]
    assert [list(s) for s in got.arch_def] == case["arch_def"]
    assert got.resolution == case["resolution"]


def test_flops_op_dict_shape() -> None:
    table = flops_op_dict()
    assert sorted(table) == [0, 1, 2, 3, 4] and all(sorted(v) == list(range(6)) for v in table.values())
    # bigger ops cost more within a stage's first block (k3e4 < k3e6, ..., k7e6 the largest)
    for ops in table.values():
        assert ops[5][0] == max(o[0] for o in ops.values())


@pytest.mark.golden
def test_flops_table_equals_official_flopsest() -> None:
    ref = OFFICIAL["supernet_0_600"]
    t = flops_table(plan_supernet(ref["sta_num"]))
    for b, d1 in ref["flops_dict"].items():
        for m, d2 in d1.items():
            for c, v in d2.items():
                assert t.flops[int(b)][int(m)][int(c)] == v, (b, m, c)
                assert t.params[int(b)][int(m)][int(c)] == ref["params_dict"][b][m][c], (b, m, c)
    assert t.flops_fixed == ref["flops_fixed"] and t.params_fixed == ref["params_fixed"]
    for ex in ref["example_get_flops"]:
        assert t.get_flops(ex["cand"]) == ex["flops"]
        assert t.get_params(ex["cand"]) == ex["params"]


def test_validate_cand_names_the_problem() -> None:
    plan = plan_supernet((1, 1, 3, 2, 1))
    assert validate_cand([[0], [1], [2], [3, 4, 5], [0, 1], [2], [0]], plan)
    with pytest.raises(ValueError, match="stage 3 has 3 blocks"):
        validate_cand([[0], [1], [2], [3, 4, 5, 0], [0, 1], [2], [0]], plan)
    with pytest.raises(ValueError, match="choice 6"):
        validate_cand([[0], [6], [2], [3], [0], [2], [0]], plan)
    with pytest.raises(ValueError, match="7 stages"):
        validate_cand([[0], [1]], plan)


# --- the torch supernet against the official model -------------------------------------------------
@pytest.mark.golden
@pytest.mark.parametrize("name", ["meta_step_official.pt", "meta_step_deep.pt"])
def test_torch_keys_shapes_order_equal_official(name: str) -> None:
    keys, g = _golden_keys(name)
    model, sta, res = create_supernet(g["flops_minimum"], g["flops_maximum"], g["num_classes"])
    assert list(sta) == list(g["sta_num"]) and res == g["resolution"]
    mine = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert mine == keys


@pytest.mark.golden
def test_default_supernet_digest_equals_official() -> None:
    ref = OFFICIAL["supernet_0_600"]
    model, sta, res = create_supernet()
    assert list(sta) == ref["sta_num"] and res == ref["resolution"]
    sd = model.state_dict()
    lines = "\n".join(f"{k}:{list(v.shape)}:{str(v.dtype).replace('torch.', '')}" for k, v in sd.items())
    assert len(sd) == ref["state_dict_entries"]
    assert hashlib.sha256(lines.encode()).hexdigest() == ref["state_dict_sha256"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


def test_invalid_flops_raise() -> None:
    with pytest.raises(ValueError, match="Invalid FLOPs Settings"):
        create_supernet(700, 800)


def test_shared_supernet_helpers_on_plain_data() -> None:
    """The framework-free half both SuperNets use: path walk, the official name test, names by
    identity, the budget check."""
    blocks = [[["s0"]], [["a0", "a1"], ["b0", "b1"]], [["c0", "c1", "c2"]]]
    assert list(path_blocks(blocks, [[0], [1, -1], [2]])) == ["s0", "a1", "c2"]
    assert list(path_blocks(blocks, [[0], [-1]])) == ["s0"]  # fewer blocks named: the rest not run
    picks = {n: (outside_path(n), outside_path(n, meta=True))
             for n in ("conv_stem.weight", "blocks.1.0.2.conv_pw.weight", "meta_layer.bias")}
    assert picks == {"conv_stem.weight": (True, False), "blocks.1.0.2.conv_pw.weight": (False, False),
                     "meta_layer.bias": (False, True)}
    a, b, c = object(), object(), object()
    assert names_in_order([("x", a), ("y", b), ("z", c)], [c, a]) == ["z", "x"]
    assert supernet_for_budget(0, 600) == search_for_layer(0, 600)
    with pytest.raises(ValueError, match="Invalid FLOPs Settings: no supernet fits 700..800"):
        supernet_for_budget(700, 800)


def test_rand_parameters_official_order() -> None:
    model, _, _ = create_supernet(0, 20, 10)
    cand = [[0], [1], [2], [3], [4], [5], [0]]
    names = model.rand_parameter_names(cand)
    assert names[:7] == ["conv_stem.weight", "bn1.weight", "bn1.bias", "conv_head.weight",
                         "conv_head.bias", "classifier.weight", "classifier.bias"]
    assert names[7].startswith("blocks.0.0.0.") and names[-1].startswith("blocks.6.0.0.")
    assert [n.split(".")[3] for n in names if n.startswith("blocks.2.")] == ["2"] * len(
        [n for n in names if n.startswith("blocks.2.")])
    assert model.rand_parameter_names(cand, meta=True) == ["meta_layer.weight", "meta_layer.bias"]
    skipped = model.rand_parameter_names([[0], [1], [-1], [3], [4], [5], [0]])
    assert not any(n.startswith("blocks.2.") for n in skipped)


def test_detect_and_child_weights() -> None:
    model, sta, _ = create_supernet(0, 200, 10)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = detect_supernet(shapes)
    assert found is not None and found.sta_num == sta and found.num_classes == 10 and found.slice == 4
    assert detect_supernet({k: v for k, v in shapes.items() if k != "meta_layer.weight"}) is None
    cand = [[0], [5], [4], [3, 5, 0], [2, 1], [1], [0]]
    child = ChildNet(cand, num_classes=10)
    state = child_state_from_supernet(model.state_dict(), cand, model.plan)
    child.load_state_dict(state, strict=True)  # every key, every shape
    # one-block stages keep the pool default (the official decoder): stage 1 takes candidate 0 (k3 e4)
    assert torch.equal(state["blocks.1.0.conv_dw.weight"], model.state_dict()["blocks.1.0.0.conv_dw.weight"])
    assert torch.equal(state["blocks.3.2.conv_pw.weight"], model.state_dict()["blocks.3.2.0.conv_pw.weight"])
    # the child computes what the supernet path computes where the blocks coincide (stage 3 has 3)
    model.eval()
    child.eval()
    x = torch.from_numpy(seeded_input(2, 64, 3))
    same = [[0], [0], [2], [3, 5, 0], [1, 1], [3], [0]]  # pool defaults on one-block stages
    child2 = ChildNet(same, num_classes=10).eval()
    child2.load_state_dict(child_state_from_supernet(model.state_dict(), same, model.plan))
    with torch.no_grad():
        assert torch.allclose(child2(x), model(x, same), atol=1e-5)


# --- Paddle twin ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twins():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import paddle  # noqa: F401
    from cream_core.rules import apply_rules, paddle_layout
    from cream_paddle.supernet import SuperNet as PSuperNet

    plan = plan_supernet((1, 1, 2, 1, 1))
    tm = SuperNet(plan, num_classes=10)
    pm = PSuperNet(plan, num_classes=10)
    keys_shapes = [(k, tuple(v.shape)) for k, v in tm.state_dict().items()]
    init = {k: np.asarray(v).astype(np.float32 if "num_batches" not in k else np.int64)
            for k, v in seeded_state(keys_shapes, seed=5).items()}
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})
    pm.set_state_dict(apply_rules(init, paddle_layout(pm), to="paddle").state_dict)
    return tm, pm, init


@pytest.mark.paddle
def test_paddle_names_and_order_mirror_torch(twins) -> None:
    tm, pm, _ = twins
    trainable = [n for n, p in pm.named_parameters() if not p.stop_gradient]
    assert trainable == [n for n, _ in tm.named_parameters()]
    for cand in ([[0], [1], [2], [3, 4], [5], [0], [0]], [[0], [5], [-1], [0, 1], [2], [3], [0]]):
        assert pm.rand_parameter_names(cand) == tm.rand_parameter_names(cand)
    assert pm.rand_parameter_names([[0]] * 7, True) == tm.rand_parameter_names([[0]] * 7, True)


@pytest.mark.paddle
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_paddle_forward_equals_torch(twins, train: bool) -> None:
    import paddle

    from cream_paddle.backend import Backend

    tm, pm, init = twins
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})
    tm.train(train)
    pm.train(train)
    x = seeded_input(4, 64, 11)
    for cand in ([[0], [1], [2], [3, 4], [5], [0], [0]], [[0], [4], [3], [5, -1], [1], [2], [0]]):
        ref = tm(torch.from_numpy(x), cand).detach().numpy()
        got = pm(paddle.to_tensor(x), cand).numpy()
        assert np.abs(got - ref).max() <= FORWARD_REL * np.abs(ref).max(), cand
    if train:  # running statistics moved the same way (torch momentum, unbiased variance)
        ps, ts = Backend.torch_state(pm), tm.state_dict()
        for k in ps:
            if "running_" in k:
                ref = ts[k].numpy()
                assert np.abs(ps[k] - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-6), k
    feats = np.random.RandomState(0).rand(1, 40).astype(np.float32)
    assert np.allclose(pm.forward_meta(paddle.to_tensor(feats)).numpy(),
                       tm.forward_meta(torch.from_numpy(feats)).detach().numpy(), atol=1e-6)


@pytest.mark.paddle
def test_paddle_create_supernet_and_detect(twins) -> None:
    from cream_core.rules import paddle_layout
    from cream_paddle.supernet import create_supernet as pcreate

    pm, sta, res = pcreate(0, 20, 10)
    tm, sta_t, res_t = create_supernet(0, 20, 10)
    assert (sta, res) == (sta_t, res_t)
    shapes = {k: v.shape for k, v in paddle_layout(pm).items()}
    assert detect_supernet(shapes, layout="paddle") == detect_supernet(
        {k: tuple(v.shape) for k, v in tm.state_dict().items()})


# --- board, config, digests ---------------------------------------------------------------------------
def test_board_update_rule_and_size() -> None:
    b: PrioritizedBoard = PrioritizedBoard((1, 1, 1, 1, 1), pool_size=3, meta_sta_epoch=2)
    cand = with_fixed_stages([[1]] * 5)
    assert not b.should_add(2, 90.0, 100.0)  # not before META_STA_EPOCH has passed
    for p1, fl in ((10.0, 100.0), (30.0, 90.0), (20.0, 80.0)):
        assert b.should_add(3, p1, fl)
        b.add(p1, fl, cand, None, None)
        b.trim()
    assert [e.prec1 for e in b.entries()] == [30.0, 20.0, 10.0]
    assert not b.should_add(3, 14.0, 120.0)  # better than the last, but not by 5 and not cheaper
    assert b.should_add(3, 15.5, 120.0)  # better by more than acc_gap
    assert b.should_add(3, 11.0, 99.0)  # better and fewer FLOPs
    assert not b.should_add(3, 10.0, 50.0)  # not better
    b.add(15.5, 120.0, cand, None, None)
    b.trim()  # over size: the last entry goes
    assert [e.prec1 for e in b.entries()] == [30.0, 20.0, 15.5] and b.board_size() == 3
    assert b.top1().prec1 == 30.0
    b.add(30.0, 95.0, with_fixed_stages([[2]] * 5), None, None)  # tie on accuracy: more FLOPs first
    assert [(e.prec1, e.flops) for e in b.entries()][:2] == [(30.0, 95.0), (30.0, 90.0)]


def test_board_given_or_restored_entries_are_sorted() -> None:
    """top1 and trim read the board's order: entries given at construction or restored from a
    checkpoint are put best first, stably (equal keys keep their order)."""
    cand = with_fixed_stages([[1]] * 5)
    entries = [BoardEntry(p1, fl, cand, tag, None)
               for p1, fl, tag in ((10.0, 1.0, "a"), (90.0, 1.0, "b"), (50.0, 2.0, "c"),
                                   (50.0, 2.0, "d"))]
    built = PrioritizedBoard((1,) * 5, board=list(entries))
    restored = PrioritizedBoard((1,) * 5)
    restored.restore(entries)
    for b in (built, restored):
        assert [e.data for e in b.entries()] == ["b", "c", "d", "a"] and b.top1().data == "b"


def test_board_sampling() -> None:
    even = PrioritizedBoard((2, 3, 1, 1, 4), how_to_prob="even")
    assert even.get_prob() is None
    rng, ref = np.random.RandomState(7), np.random.RandomState(7)
    path = even.sample(rng)
    assert path[0] == [0] and path[-1] == [0] and [len(s) for s in path[1:-1]] == [2, 3, 1, 1, 4]
    assert path[1:-1] == [ref.choice(6, n).tolist() for n in (2, 3, 1, 1, 4)]  # as np.random.choice
    pre = PrioritizedBoard((4,) * 5)
    assert pre.get_prob() == [0.05, 0.2, 0.05, 0.5, 0.05, 0.15]
    draws = np.concatenate([np.concatenate(pre.sample(rng, pre.get_prob())[1:-1]) for _ in range(400)])
    freq = np.bincount(draws, minlength=6) / draws.size
    assert abs(freq[3] - 0.5) < 0.03 and freq[0] < 0.08
    teacher = PrioritizedBoard((1,) * 5, how_to_prob="teacher")
    assert teacher.get_prob() is None  # empty board: uniform
    teacher.add(50.0, 1.0, with_fixed_stages([[3], [3], [1], [5], [3]]), None, None)
    # the stem and head choices (op 0) are counted too, as the official code counts them
    assert teacher.get_prob() == [2 / 7, 1 / 7, 0.0, 3 / 7, 0.0, 1 / 7]
    with pytest.raises(ValueError):
        PrioritizedBoard((1,) * 5, pick_method="best")


def test_search_config_official_file_and_errors(tmp_path: Path) -> None:
    cfg = load_search_config()
    assert (cfg.lr, cfg.meta_lr, cfg.momentum, cfg.weight_decay, cfg.nesterov) == (1.0, 1e-4, 0.9, 1e-4, True)
    assert (cfg.update_iter, cfg.slice, cfg.pool_size, cfg.pick_method, cfg.meta_sta_epoch) == \
        (200, 4, 10, "meta", 20)
    assert cfg.pre_prob == (0.05, 0.2, 0.05, 0.5, 0.05, 0.15) and cfg.smoothing == 0.1
    official = tmp_path / "train.yaml"  # the official file's layout, PRE_PROB as a string
    official.write_text("SEED: 42\nLR: 1.0\nNET:\n  EMA:\n    USE: True\nSUPERNET:\n  PICK_METHOD: 'top1'\n"
                        "  PRE_PROB: (0.05,0.2,0.05,0.5,0.05,0.15)\n  RESUNIT: False\n")
    c2 = load_search_config(official)
    assert c2.pick_method == "top1" and c2.pre_prob == cfg.pre_prob and "NET.EMA.USE" in c2.ignored
    bad = tmp_path / "bad.yaml"
    bad.write_text("SUPERNET:\n  SLICEE: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key SUPERNET.SLICEE"):
        load_search_config(bad)
    bad.write_text("SUPERNET:\n  DIL_CONV: True\n")
    with pytest.raises(ConfigError, match="DIL_CONV"):
        load_search_config(bad)
    with pytest.raises(ConfigError, match="BATCH_SIZE 6"):
        load_search_config(batch_size=6)


def test_digest_catches_differences() -> None:
    rng = np.random.RandomState(0)
    a = rng.standard_normal((64, 40, 3, 3))
    d = tensor_digest("blocks.x", a)
    assert all(v < 1e-12 for v in digest_errors("blocks.x", a, d).values())
    for bad in (a * (1 + 1e-3), a + np.where(rng.rand(*a.shape) < 0.01, 0.05, 0.0),
                np.flip(a, 0).copy()):
        e = digest_errors("blocks.x", bad, d)
        assert max(e["proj"], e["norm"], e["sampled"]) > 1e-4
    assert digest_errors("blocks.x", a.reshape(64, -1), d)["sampled"] == float("inf")


@pytest.mark.paddle
@pytest.mark.cli
def test_convert_ckpt_converts_supernets(tmp_path: Path) -> None:
    """A supernet checkpoint (official layout) converts to .pdparams and back, bit-exactly, and the
    converted Paddle supernet computes what the torch one computes."""
    import paddle

    from converters.convert import convert_checkpoint, pdparams_to_pth
    from cream_paddle.checkpoint import load_checkpoint as load_pd
    from cream_paddle.supernet import SuperNet as PSuperNet
    from cream_torch_ref.checkpoint import read_checkpoint, save_official_checkpoint

    plan = plan_supernet((1, 1, 2, 1, 1))
    tm = SuperNet(plan, num_classes=7)
    ks = [(k, tuple(v.shape)) for k, v in tm.state_dict().items()]
    state = {k: torch.from_numpy(np.asarray(v).astype(np.int64 if "num_batches" in k else np.float32))
             for k, v in seeded_state(ks, seed=4).items()}
    tm.load_state_dict(state)
    src, pd_file, back = tmp_path / "s.pth.tar", tmp_path / "s.pdparams", tmp_path / "back.pth.tar"
    save_official_checkpoint(src, state, epoch=3, arch="cream-supernet")
    res = convert_checkpoint(str(src), str(pd_file))
    assert res.model == "cream-supernet[1.1.2.1.1]" and res.num_classes == 7
    pdparams_to_pth(str(pd_file), str(back))
    again = read_checkpoint(str(back))["state_dict"]
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    pm = PSuperNet(plan, num_classes=7)
    pm.set_state_dict(dict(load_pd(str(pd_file)).state_dict))
    tm.eval()
    pm.eval()
    x = seeded_input(2, 64, 1)
    cand = [[0], [3], [1], [2, 5], [4], [0], [0]]
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), cand).numpy()
    assert np.abs(pm(paddle.to_tensor(x), cand).numpy() - ref).max() <= FORWARD_REL * np.abs(ref).max()
