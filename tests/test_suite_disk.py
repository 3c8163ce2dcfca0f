"""The suite cleans up after itself: a full run kept every test's files (~5 GB: six converted child
nets, resnet18 and vgg11 state dicts) until it ended, and filled a CI machine's disk. Passing tests'
folders are now removed as they finish; a failing test's are kept to look at."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


def test_pytest_removes_a_passing_tests_tmp_path() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["tmp_path_retention_policy"] == "failed"
    assert options["tmp_path_retention_count"] == 1


INNER = '''
from pathlib import Path

made = []

def test_writes(module_tmp):
    made.append(module_tmp("shared"))
    (made[-1] / "big.bin").write_bytes(b"0" * 1000)
    Path("made.txt").write_text(str(made[-1]))

def test_then(module_tmp):
    assert made[0].is_dir()  # shared by the module's tests while it runs
    assert OUTCOME
'''


@pytest.mark.parametrize("passes", [True, False])
def test_module_tmp_is_removed_when_its_module_passes(pytester: pytest.Pytester,
                                                      passes: bool) -> None:
    pytester.makeconftest((REPO / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER.replace("OUTCOME", str(passes)))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2 if passes else 1, failed=0 if passes else 1)
    folder = Path((pytester.path / "made.txt").read_text())
    assert folder.is_dir() != passes  # removed after a clean module, kept after a failure
