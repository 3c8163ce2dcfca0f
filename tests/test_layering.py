"""The packages import only downward, in the order written in the README's "Layout".

Every non-test module is parsed with :mod:`ast` (nothing is imported or run) and each ``import`` /
``from ... import`` statement, at module level or inside a function, is checked: a package may import
its own modules and the packages of *lower* layers, never one of its own layer or above. The
framework-free layers (core and data) also import no deep-learning framework, and each framework
package imports only its own framework.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Tuple

import pytest

#: Lowest layer first. A package may import the packages of lower layers only; the two framework
#: packages share a layer and so may not import each other.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("cream_arch",),                      # framework-free core
    ("cream_data",),                      # framework-free data pipeline (numpy, PIL)
    ("cream_torch_ref", "cream_paddle"),  # the two frameworks
    ("converters",),
    ("parity",),
    ("cream_cli",),
)
_TORCH: FrozenSet[str] = frozenset({"torch", "torchvision", "timm"})
_PADDLE: FrozenSet[str] = frozenset({"paddle", "x2paddle"})
#: Third-party top-level modules a package must not import at all (not even lazily).
FORBIDDEN_THIRD_PARTY: Dict[str, FrozenSet[str]] = {
    "cream_arch": _TORCH | _PADDLE,
    "cream_data": _TORCH | _PADDLE,
    "cream_torch_ref": _PADDLE,
    "cream_paddle": _TORCH,
}
REPO = Path(__file__).resolve().parents[1]


def _layer_of(layers: Tuple[Tuple[str, ...], ...]) -> Dict[str, int]:
    return {pkg: i for i, group in enumerate(layers) for pkg in group}


def _modules(root: Path, packages: List[str]) -> Iterator[Path]:
    """The non-test modules of ``packages`` under ``root``."""
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if not (path.name.startswith("test_") or path.name == "conftest.py"):
                yield path


def _imported_tops(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """``(line, top-level name)`` of every absolute import; relative ones stay in their package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def layering_violations(root: Path, layers: Tuple[Tuple[str, ...], ...] = LAYERS,
                        forbidden: Dict[str, FrozenSet[str]] = FORBIDDEN_THIRD_PARTY) -> List[str]:
    """One ``file:line: message`` per upward, sideways or forbidden import under ``root``."""
    layer = _layer_of(layers)
    found = []
    for path in _modules(root, list(layer)):
        pkg = path.relative_to(root).parts[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, top in _imported_tops(tree):
            where = f"{path.relative_to(root).as_posix()}:{line}"
            if top in layer and top != pkg and layer[top] >= layer[pkg]:
                found.append(f"{where}: {pkg} (layer {layer[pkg]}) imports {top} "
                             f"(layer {layer[top]})")
            elif top in forbidden.get(pkg, ()):
                found.append(f"{where}: {pkg} must not import {top}")
    return found


def test_repository_imports_only_downward():
    assert layering_violations(REPO) == []


def test_every_package_is_in_a_layer():
    """A new top-level package must be placed in :data:`LAYERS` (and the README) to be checked."""
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(_layer_of(LAYERS))


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


_CLEAN = {"cream_arch/__init__.py": "from .space import X\nimport numpy\n",
          "cream_data/__init__.py": "from cream_arch.atomic import atomic_write_text\n",
          "cream_paddle/__init__.py": "import paddle\nfrom cream_data import x\n",
          "cream_cli/main.py": "import parity\nfrom converters.cli import main\n",
          "parity/test_x.py": "import cream_cli\n"}  # tests are not checked


@pytest.mark.parametrize("rel, text, expected", [
    ("cream_arch/configs/__init__.py", "def f():\n    from cream_data.x import y\n",
     "cream_arch/configs/__init__.py:2: cream_arch (layer 0) imports cream_data (layer 1)"),
    ("parity/eval_parity.py", "import cream_cli.eval as e\n",
     "parity/eval_parity.py:1: parity (layer 4) imports cream_cli (layer 5)"),
    ("cream_paddle/search.py", "\nfrom cream_torch_ref import supernet\n",
     "cream_paddle/search.py:2: cream_paddle (layer 2) imports cream_torch_ref (layer 2)"),
    ("cream_data/loader.py", "if True:\n    import torch.nn\n",
     "cream_data/loader.py:2: cream_data must not import torch"),
    ("cream_torch_ref/m.py", "from paddle import nn\n", "cream_torch_ref/m.py:1: "
     "cream_torch_ref must not import paddle"),
])
def test_checker_reports_an_injected_bad_import(tmp_path, rel, text, expected):
    root = _tree(tmp_path, _CLEAN)
    assert layering_violations(root) == []  # the clean tree passes: no false alarm
    _tree(tmp_path, {rel: text})
    assert layering_violations(root) == [expected]
