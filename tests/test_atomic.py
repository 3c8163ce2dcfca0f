"""``cream_core.io.atomic``: whole files or nothing, the previous file kept on failure."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cream_core.io.atomic import atomic_write, atomic_write_text, replaced_folder


def test_writes_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.bin"
    atomic_write(dest, lambda f: f.write(b"abc"))
    assert dest.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask
    atomic_write_text(tmp_path / "t.txt", "é\nline\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\nline\n".encode("utf-8")


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    dest.write_text("old")

    def half(f) -> None:
        f.write("partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(dest, half, mode="w")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(ValueError):
        atomic_write(dest, lambda f: None, mode="a")


def test_replaced_folder_swaps_in_a_whole_folder_or_keeps_the_old(tmp_path: Path) -> None:
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with replaced_folder(dest, ".export.") as tmp:
            Path(tmp, "new.txt").write_text("half")
            raise RuntimeError("export failed")
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(dest) == ["old.txt"]
    with replaced_folder(dest, ".export.") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        Path(tmp, "new.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(dest) == ["new.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not mkdtemp's 0700
