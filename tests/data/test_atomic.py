"""Atomic writes: a failure never leaves a truncated output or a temporary file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines.core.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_write_helpers(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "d.json", {"b": 1, "a": "ü"})
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == '{\n  "a": "ü",\n  "b": 1\n}\n'
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == {"a": "ü", "b": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_keeps_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_text("half writ")
        raise RuntimeError("killed")
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failure_without_previous_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.txt"):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("directory_flag", [True, False])
def test_directory_replaced_whole_on_success(tmp_path: Path, directory_flag: bool) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_path(target, directory=directory_flag) as tmp:
        if not directory_flag:
            tmp.mkdir()
        (tmp / "fresh.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_directory_failure_keeps_previous_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    (target / "kept.txt").write_text("old")
    with pytest.raises(ValueError), atomic_path(target, directory=True) as tmp:
        (tmp / "partial.txt").write_text("new")
        raise ValueError("bad data")
    assert sorted(p.name for p in target.iterdir()) == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_file_replaces_directory_and_back(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    atomic_write_text(target, "a file")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "inner").write_text("x")
    assert (target / "inner").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]
