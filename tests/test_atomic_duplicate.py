"""``atomic_duplicate``: the handed-on model file is a second name of its source, not a rewrite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spcl import base
from spcl.base import atomic_duplicate, atomic_write_bytes


def test_a_duplicate_is_a_link_that_replacing_the_source_leaves_alone(tmp_path: Path) -> None:
    source, copy = tmp_path / "teacher.pth", tmp_path / "model.pth"
    atomic_write_bytes(source, b"weights")
    atomic_write_bytes(copy, b"an older model")
    atomic_duplicate(source, copy)
    assert copy.read_bytes() == b"weights" and os.path.samefile(source, copy)
    atomic_write_bytes(source, b"new weights")  # files are replaced, never written in place
    assert copy.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "teacher.pth"]


def test_without_links_it_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(base.os, "link", no_links)
    source, copy = tmp_path / "student.pth", tmp_path / "model.pth"
    atomic_write_bytes(source, b"weights")
    atomic_duplicate(source, copy)
    assert copy.read_bytes() == b"weights" and not os.path.samefile(source, copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "student.pth"]
