"""Compare the keys and shapes of two state dicts, framework-free.

Used by the checkpoint loader, ``convert-ckpt`` and the parity harness alike, so that "missing",
"unexpected" and "shape mismatch" mean the same everywhere and are reported the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

__all__ = ["KeyReport", "compare_shapes"]

Shape = Tuple[int, ...]


@dataclass
class KeyReport:
    """Result of matching a state dict against what a model expects."""

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Shape, Shape]] = field(default_factory=list)  # key, expected, got
    matched: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        """One line: counts and the first few keys of each kind."""
        def few(items: Sequence[str]) -> str:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {few(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatch(es): " + few(
                [f"{k} expects {list(e)} but has {list(g)}" for k, e, g in self.mismatched]))
        return "; ".join(parts) if parts else f"all {self.matched} keys match"

    def lines(self) -> List[str]:
        """Every problem on its own line, for a full report."""
        out = [f"missing     {k}" for k in self.missing]
        out += [f"unexpected  {k}" for k in self.unexpected]
        out += [f"mismatch    {k}: expected {list(e)}, got {list(g)}" for k, e, g in self.mismatched]
        return out

    def as_dict(self) -> Dict[str, object]:
        return {"ok": self.ok, "matched": self.matched, "missing": self.missing,
                "unexpected": self.unexpected,
                "mismatched": [[k, list(e), list(g)] for k, e, g in self.mismatched]}


def compare_shapes(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]]) -> KeyReport:
    """Which keys of ``expected`` are missing from ``got``, which are extra, which differ in shape."""
    rep = KeyReport()
    for k, shape in expected.items():
        if k not in got:
            rep.missing.append(k)
        elif tuple(got[k]) != tuple(shape):
            rep.mismatched.append((k, tuple(shape), tuple(got[k])))
        else:
            rep.matched += 1
    rep.unexpected = [k for k in got if k not in expected]
    return rep
