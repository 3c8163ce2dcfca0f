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
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

import pytest

#: Lowest layer first. A package (or core module) may import those of lower layers only; the two
#: framework packages share a layer and so may not import each other. The framework-free core
#: (``cream_core``) is layered inside as well.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("cream_core.io",),                             # files, errors, CLI convention
    ("cream_core.rules", "cream_core.backend"),     # state-dict rules; each Backend's core half
    ("cream_core.arch",),                           # the architecture as data
    ("cream_core.data",),                           # images in, numbers out (numpy, PIL)
    ("cream_core.training", "cream_core.search"),   # framework-free loops and bookkeeping
    ("cream_core.config",),                         # the YAML recipes
    ("cream_torch_ref", "cream_paddle"),            # the two frameworks
    ("converters",),
    ("parity",),
    ("cream_cli",),
)
_TORCH: FrozenSet[str] = frozenset({"torch", "torchvision", "timm"})
_PADDLE: FrozenSet[str] = frozenset({"paddle", "x2paddle"})
#: Third-party top-level modules a package must not import at all (not even lazily).
FORBIDDEN_THIRD_PARTY: Dict[str, FrozenSet[str]] = {
    **{pkg: _TORCH | _PADDLE for group in LAYERS for pkg in group if pkg.startswith("cream_core.")},
    "cream_torch_ref": _PADDLE,
    "cream_paddle": _TORCH,
}
REPO = Path(__file__).resolve().parents[1]


def _layer_of(layers: Tuple[Tuple[str, ...], ...]) -> Dict[str, int]:
    return {pkg: i for i, group in enumerate(layers) for pkg in group}


def _owner(dotted: str, layer: Dict[str, int]) -> Optional[str]:
    """The layered package (or core module) that ``dotted`` belongs to: its longest listed prefix."""
    owners = [pkg for pkg in layer if dotted == pkg or dotted.startswith(pkg + ".")]
    return max(owners, key=len) if owners else None


def _modules(root: Path, packages: List[str]) -> Iterator[Tuple[Path, str]]:
    """``(path, dotted name)`` of the non-test modules under ``root``'s top-level ``packages``."""
    for top in sorted({pkg.split(".")[0] for pkg in packages}):
        for path in sorted((root / top).rglob("*.py")):
            if not (path.name.startswith("test_") or path.name == "conftest.py"):
                parts = path.relative_to(root).with_suffix("").parts
                yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """``(line, dotted name)`` of every absolute import; relative ones stay in their package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # ``from cream_core import io`` imports cream_core.io
                yield node.lineno, f"{node.module}.{alias.name}"


def layering_violations(root: Path, layers: Tuple[Tuple[str, ...], ...] = LAYERS,
                        forbidden: Dict[str, FrozenSet[str]] = FORBIDDEN_THIRD_PARTY) -> List[str]:
    """One ``file:line: message`` per upward, sideways or forbidden import under ``root``."""
    layer = _layer_of(layers)
    found = []
    for path, dotted in _modules(root, list(layer)):
        pkg = _owner(dotted, layer)
        if pkg is None:  # a namespace root such as cream_core/__init__.py: imports nothing
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in _imported(tree):
            where = f"{path.relative_to(root).as_posix()}:{line}"
            target = _owner(name, layer)
            if target is not None and target != pkg and layer[target] >= layer[pkg]:
                found.append(f"{where}: {pkg} (layer {layer[pkg]}) imports {target} "
                             f"(layer {layer[target]})")
            elif name.split(".")[0] in forbidden.get(pkg, ()):
                found.append(f"{where}: {pkg} must not import {name.split('.')[0]}")
    return found


def test_repository_imports_only_downward():
    assert layering_violations(REPO) == []


def test_every_package_is_in_a_layer():
    """A new package must be placed in :data:`LAYERS` (and the README) to be checked."""
    layer = _layer_of(LAYERS)
    tops = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    core = {p.stem for p in (REPO / "cream_core").iterdir()
            if (p / "__init__.py").is_file() or (p.suffix == ".py" and p.stem != "__init__")}
    assert tops == {pkg.split(".")[0] for pkg in layer}
    assert {f"cream_core.{name}" for name in core} == {pkg for pkg in layer if "." in pkg}


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


_CLEAN = {"cream_core/arch/__init__.py": "from .space import X\nimport numpy\n",
          "cream_core/data/__init__.py": "from cream_core.io.atomic import atomic_write_text\n",
          "cream_paddle/__init__.py": "import paddle\nfrom cream_core.data import x\n",
          "cream_cli/main.py": "import parity\nfrom converters.cli import main\n",
          "parity/test_x.py": "import cream_cli\n"}  # tests are not checked


@pytest.mark.parametrize("rel, text, expected", [
    ("cream_core/arch/space.py", "def f():\n    from cream_core.data.x import y\n",
     "cream_core/arch/space.py:2: cream_core.arch (layer 2) imports cream_core.data (layer 3)"),
    ("cream_core/io/atomic.py", "from cream_core.search.board import PICK_METHODS\n",
     "cream_core/io/atomic.py:1: cream_core.io (layer 0) imports cream_core.search (layer 4)"),
    ("cream_core/training/loop.py", "from cream_core.search import board\n",
     "cream_core/training/loop.py:1: cream_core.training (layer 4) imports cream_core.search "
     "(layer 4)"),
    ("parity/eval_parity.py", "import cream_cli.eval as e\n",
     "parity/eval_parity.py:1: parity (layer 8) imports cream_cli (layer 9)"),
    ("cream_paddle/search.py", "\nfrom cream_torch_ref import supernet\n",
     "cream_paddle/search.py:2: cream_paddle (layer 6) imports cream_torch_ref (layer 6)"),
    ("cream_core/data/loader.py", "if True:\n    import torch.nn\n",
     "cream_core/data/loader.py:2: cream_core.data must not import torch"),
    ("cream_core/rules.py", "import paddle\n", "cream_core/rules.py:1: cream_core.rules must not "
     "import paddle"),
    ("cream_torch_ref/m.py", "from paddle import nn\n", "cream_torch_ref/m.py:1: "
     "cream_torch_ref must not import paddle"),
])
def test_checker_reports_an_injected_bad_import(tmp_path, rel, text, expected):
    root = _tree(tmp_path, _CLEAN)
    assert layering_violations(root) == []  # the clean tree passes: no false alarm
    _tree(tmp_path, {rel: text})
    assert layering_violations(root) == [expected]
