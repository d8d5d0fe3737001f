"""Checkpoint files: atomic writes, refusal of unsafe pickles, prefix cleaning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from spcl.base import CheckpointError, atomic_file
from spcl.engine.checkpoint import clean_state_dict, load_state, save_state


class _Payload:
    """Unpickling this would create a marker file: a load must never execute it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_round_trip_and_no_temp_left(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).view(2, 3), "step": 7, "nested": {"a": [1, 2]}}
    save_state(state, tmp_path / "c.pth")
    loaded = load_state(tmp_path / "c.pth")
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert loaded["nested"] == {"a": [1, 2]}
    assert os.listdir(tmp_path) == ["c.pth"]


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    save_state({"v": torch.tensor(1)}, path)
    with pytest.raises(RuntimeError, match="boom"), atomic_file(path) as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert load_state(path)["v"].item() == 1
    assert os.listdir(tmp_path) == ["c.pth"]


def test_unsafe_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth: refused"):
        load_state(path)
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.pth"):
        load_state(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk.pth"):
        load_state(tmp_path / "junk.pth")
    torch.save(torch.zeros(2), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_state(tmp_path / "tensor.pth")


def test_clean_state_dict_strips_wrappers() -> None:
    state = {"module.a.weight": 1, "_orig_mod.module.b": 2, "c": 3, "backbone.d": 4}
    assert clean_state_dict(state) == {"a.weight": 1, "b": 2, "c": 3, "backbone.d": 4}
    assert clean_state_dict(state, ("backbone.",))["d"] == 4
