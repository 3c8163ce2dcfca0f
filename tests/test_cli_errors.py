"""The one command-line error convention (cream_core/io/cli_errors.py): every failure kind maps to its
documented exit code with one line and no traceback, the argparse validators refuse what they must,
and every console script of pyproject.toml follows it."""
from __future__ import annotations

import argparse
import importlib
import os
import tomllib
from pathlib import Path
from typing import Callable

import pytest

from cream_core.io.cli_errors import (EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_OK,
                                   UsageError, float_in, input_shape, int_at_least,
                                   module_callable, run_cli)
from cream_core.io.errors import CheckpointError, ConfigError, OutputError
from cream_core.data.workers import WorkerDied

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _raises(exc: BaseException) -> Callable[[argparse.Namespace], int]:
    def body(args: argparse.Namespace) -> int:
        raise exc
    return body


@pytest.mark.parametrize("exc, code, words", [
    (UsageError("give --a or --b"), EXIT_BAD_INPUT, "tool: error: give --a or --b"),
    (OutputError("o.json", "is an input"), EXIT_BAD_INPUT, "tool: error: o.json: is an input"),
    (CheckpointError("c.pth", "not a checkpoint"), EXIT_BAD_INPUT, "tool: error: c.pth: not a"),
    (ConfigError("c.yaml", "unknown key X"), EXIT_BAD_INPUT, "tool: error: c.yaml: unknown key X"),
    (FloatingPointError("loss is nan"), EXIT_CHECK_FAILED, "tool: error: loss is nan"),
    (WorkerDied("a data-loading worker process died"), EXIT_CHECK_FAILED,
     "tool: error: a data-loading worker process died"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "tool: interrupted"),
])
def test_each_failure_has_its_code_and_one_line(exc, code, words, capsys) -> None:  # noqa: ANN001
    parser = argparse.ArgumentParser(prog="tool")
    assert run_cli(parser, [], _raises(exc)) == code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and words in lines[-1] and "Traceback" not in err
    assert len(lines) == (2 if isinstance(exc, UsageError) else 1)  # a usage error: usage first


def test_results_pass_through_and_hints_follow_bad_input(capsys) -> None:  # noqa: ANN001
    parser = argparse.ArgumentParser(prog="tool")
    assert run_cli(parser, [], lambda a: EXIT_OK) == EXIT_OK
    assert run_cli(parser, [], lambda a: EXIT_CHECK_FAILED) == EXIT_CHECK_FAILED
    assert run_cli(parser, [], _raises(ValueError("d: bad image")),
                   hint=lambda a, e: "(use --skip-bad)") == EXIT_BAD_INPUT
    assert capsys.readouterr().err.splitlines() == ["tool: error: d: bad image",
                                                    "tool: (use --skip-bad)"]
    with pytest.raises(RuntimeError):  # a bug is not bad input: it is not hidden
        run_cli(parser, [], _raises(RuntimeError("bug")))


@pytest.mark.parametrize("validator, good, bad, words", [
    (int_at_least(1), ("1", "7"), ("0", "-3", "x", "1.5"), "must be at least 1"),
    (int_at_least(-1), ("-1", "0"), ("-2",), "must be at least -1"),
    (float_in(0.0, 1.0), ("0", "0.5"), ("1", "-0.1", "nan", "a"), "must be in [0, 1)"),
    (module_callable, ("a:b", "torchvision.models:resnet18"),
     ("a", ":b", "a:", "a:b:c"), "expected MODULE:CALLABLE"),
    (input_shape(4, 4), ("1,3,8,8",), ("1,3,8", "1,3,0,8", "a,b,c,d", "1,3,8,8,8"),
     "expected 4 positive integers"),
])
def test_validators(validator, good, bad, words) -> None:  # noqa: ANN001
    for text in good:
        validator(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as e:
            validator(text)
        assert words in str(e.value) or "not a" in str(e.value), (text, str(e.value))


def _main(script: str) -> Callable[..., int]:
    module, _, name = SCRIPTS[script].partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_documents_its_codes_and_refuses_bad_options(script: str, capsys) -> None:  # noqa: ANN001
    main = _main(script)
    assert main(["--help"]) == EXIT_OK
    assert "exit status: 0 ok" in " ".join(capsys.readouterr().out.split())
    assert main(["--no-such-option"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err  # (or a missing required option, which argparse checks first)
    assert err.startswith("usage: ") and " error: " in err and "Traceback" not in err


#: ``script, argv, words of the last stderr line``: values refused before any work (argparse
#: validators, or the first file check), all exit 2.
BAD_VALUES = [
    ("cream-demo", ["--batch", "0"], "cream-demo: error: argument --batch: must be at least 1"),
    ("cream-demo", ["--ckpt", "{missing}"], "cream-demo: error: {missing}: no such file"),
    ("cream-eval", ["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    ("cream-train", ["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
    ("cream-search", ["--meta-sta-epoch", "-2"], "argument --meta-sta-epoch: must be at least -1"),
    ("convert-ckpt", ["x.pth", "--input-shape", "1"], "argument --input-shape: expected 2 or more"),
    ("parity", ["run", "--steps", "2"], "parity run: error: argument --steps: must be at least 3"),
    ("parity", ["run", "--torch", "resnet18"], "argument --torch: expected MODULE:CALLABLE"),
    ("parity", ["eval", "--min-agreement", "101"], "argument --min-agreement: must be in [0, 100]"),
]


@pytest.mark.parametrize("script, argv, words", BAD_VALUES)
def test_bad_values_exit_2_with_the_reason_last(script: str, argv: list, words: str, tmp_path,
                                                capsys) -> None:  # noqa: ANN001
    missing = str(tmp_path / "missing.pth.tar")
    argv = [a.replace("{missing}", missing) for a in argv]
    assert _main(script)(argv) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert words.replace("{missing}", missing) in err.strip().splitlines()[-1], err
    assert "Traceback" not in err and os.listdir(tmp_path) == []
