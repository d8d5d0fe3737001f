"""A tracker's log lines go to its own run's ``log.txt``, even beside trackers left open."""

from __future__ import annotations

import gc
from pathlib import Path

from spcl.engine.tracking import Tracker


def test_a_tracker_never_writes_into_the_log_of_an_earlier_one_left_open(tmp_path: Path) -> None:
    # CPython reuses a freed object's address at once: a logger named after id(tracker) was
    # shared by the next tracker, whose lines then went to the earlier run's log.txt as well
    for i in range(20):
        tracker = Tracker(tmp_path / f"run{i}", progress=False)
        files = [h.baseFilename for h in tracker.logger.handlers if hasattr(h, "baseFilename")]
        assert files == [str(tmp_path / f"run{i}" / "log.txt")]
        tracker.info(f"line {i}", console=False)
        del tracker  # not closed, as a test or a crashed caller may leave it
        gc.collect()
    for i in range(20):
        assert (tmp_path / f"run{i}" / "log.txt").read_text().count("line") == 1


def test_close_releases_the_log_file(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, progress=False)
    tracker.info("one", console=False)
    tracker.close()
    assert tracker.logger.handlers == []
    assert "one" in (tmp_path / "log.txt").read_text()
