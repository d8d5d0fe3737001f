"""Files spcl writes get the user's umask (0o666 & ~umask), not the atomic write's 0o600.

Before, every file went through ``tempfile.mkstemp`` (mode 0o600) and kept that mode after the
rename, so colleagues on a shared server could not read models, predictions or metrics.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from spcl.base import atomic_file, atomic_write_bytes, current_umask, dir_mode, file_mode
from spcl.config import load_config
from spcl.context import open_run
from spcl.data.synthetic import generate_pair
from spcl.pipeline import metrics_path, model_path, run_pipeline
from spcl.predict import predict_paths
from test_class_tables import _overrides, make_folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run the test under umask 0o022 and restore the caller's afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_current_umask_reads_without_changing_it() -> None:
    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert (file_mode(), dir_mode()) == (0o640, 0o750)
        assert os.umask(0o027) == 0o027  # unchanged by the reads
    finally:
        os.umask(previous)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int, expected: int) -> None:
    previous = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with atomic_file(tmp_path / "b.txt", "w") as handle:
            handle.write("y")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a.bin") == expected
    assert _mode(tmp_path / "b.txt") == expected


def test_run_outputs_are_readable_by_the_group_and_others(tmp_path: Path, umask: None) -> None:
    root = make_folder(tmp_path / "data", 3)
    run = tmp_path / "run"
    with open_run(load_config(None, _overrides(root, 3, run))) as ctx:
        run_pipeline(ctx)
    written = [
        run / "config.yaml",
        run / "env.json",
        run / "log.txt",
        model_path(run, "warmup"),
        metrics_path(run, "warmup"),
        run / "03_pseudo_labels" / "thresholds.json",
        next((run / "03_pseudo_labels" / "labels").glob("*.png")),
        run / "01_warmup" / "done.json",
    ]
    predictions = predict_paths(
        model_path(run, "warmup"), [str(root / "images" / "val")], run / "p"
    )
    for path in [*written, *predictions]:
        assert _mode(path) == 0o644, path


def test_the_synthetic_pair_folder_gets_the_usual_mode(tmp_path: Path, umask: None) -> None:
    out = generate_pair(
        tmp_path / "pair", n_train=1, n_val=1, size=(32, 64), preview=False, progress=False
    )
    assert _mode(out) == 0o755  # mkdtemp's 0o700 before
    assert _mode(out / "manifest.json") == 0o644
