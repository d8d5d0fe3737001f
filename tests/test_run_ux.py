"""What a run prints: messages on their own line, one log prefix per stage, progress that does not
flood a log file.

Before (main 3f6f3d3): the Ctrl-C/SIGTERM line was printed on the progress bar's line; the
pseudo-label stages logged as ``[pseudo_labels]``, ``[pseudo-labels]`` and ``[03_pseudo_labels]``;
``make demo > log`` filled the file with carriage-return redraws of every bar.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from spcl import cli
from spcl.engine.tracking import Tracker
from spcl.progress import PlainProgress
from spcl.recipe import STAGE_NAMES
from test_class_tables import _overrides, make_folder


def test_the_stop_message_starts_its_own_line_below_a_bar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted(args: object) -> int:
        bar = tqdm(total=10, desc="warmup", file=sys.stderr)
        bar.update(3)
        raise KeyboardInterrupt  # the bar is left drawn, as in a stopped training loop

    monkeypatch.setattr(cli, "_cmd_run", interrupted)
    assert cli.main(["run", "demo"]) == 130
    lines = capsys.readouterr().err.split("\n")
    assert "warmup:  30%" in lines[-3] and lines[-2].startswith("spcl: interrupted; ")


def test_each_stage_logs_under_its_own_name(tmp_path: Path) -> None:
    from spcl.config import load_config
    from spcl.context import open_run
    from spcl.pipeline import run_pipeline

    root = make_folder(tmp_path / "data", 3)
    run = tmp_path / "run"
    overrides = [*_overrides(root, 3, run), "run.stages=[warmup, pseudo_labels]"]
    with open_run(load_config(None, [*overrides, "pseudo_labels.adabn=true"])) as ctx:
        run_pipeline(ctx)
    prefixes = set(re.findall(r" INFO \[([^\]]+)\]", (run / "log.txt").read_text()))
    assert prefixes == {"warmup", "pseudo_labels"}
    assert prefixes <= set(STAGE_NAMES)


def test_bars_written_to_a_file_are_plain_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tracker = Tracker(tmp_path, progress=True)  # stderr is captured: not a terminal
    bar = tracker.bar(40, desc="online")
    for _ in range(40):
        bar.update(1)
    bar.set_postfix(loss="0.412")
    bar.close()
    tracker.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.fullmatch(r"online: 40/40 \(100%\) \S+ it/s, 0:\d\d elapsed, loss=0.412\n", err)
    plain = PlainProgress(range(3), desc="class index", unit="label", every=0.0, file=sys.stdout)
    assert list(plain) == [0, 1, 2]
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[2] for line in out] == ["1/3", "2/3", "3/3"]
