"""End to end on the synthetic pair: the quick demo, and kill -9 followed by an exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spcl.data.synthetic import generate_pair
from spcl.experiments.demo import run_demo
from spcl.experiments.rows import DEMO_ROWS, QUICK_OVERRIDES

pytestmark = pytest.mark.slow


def test_quick_demo_writes_every_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = run_demo(tmp_path, seed=1, quick=True)
    assert set(results) == {*DEMO_ROWS, "_meta"}
    saved = json.loads((tmp_path / "results.json").read_text())
    for row in DEMO_ROWS:
        assert 0.0 <= saved[row]["miou"] <= 100.0
        assert len(saved[row]["per_class_iou"]) == 19
    assert (tmp_path / "report.md").read_text().count("| road |") == 1
    assert (tmp_path / "panels.png").stat().st_size > 10_000
    pictures = ("per_class_iou.png", "per_class_iou_bars.png", "miou.png")
    for picture in (*pictures, "features_warmup.png", "features_adapt.png"):
        assert (tmp_path / picture).stat().st_size > 10_000, picture
    evaluated = tmp_path / "runs" / "spcl" / "08_evaluate" / "self_train"
    assert (evaluated / "panels.png").stat().st_size > 10_000
    assert len(json.loads((evaluated / "metrics.json").read_text())["confusion"]) == 19
    printed = capsys.readouterr().out
    assert "spcl run demo" in printed and "`spcl_self_training`" in printed
    # a second call finds every stage done and only rebuilds the report
    again = run_demo(tmp_path, seed=1, quick=True)
    assert {k: v for k, v in again.items() if k != "_meta"} == {
        k: v for k, v in results.items() if k != "_meta"
    }


def _run_command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spcl",
        "run",
        "demo",
        *QUICK_OVERRIDES,
        f"data.source.root={data}",
        f"data.target.root={data}",
        f"data.target_val.root={data}",
        "run.deterministic=true",
        "run.progress=false",
        "run.ckpt_every=1",
        "warmup.optim.stop_iter=12",
        "warmup.optim.max_iter=12",
        f"run.out={out}",
    ]


def test_kill_9_then_rerun_ends_with_identical_weights(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_pair(data, seed=2, n_train=16, n_val=6, size=(64, 128), preview=False, progress=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_run_command(data, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _run_command(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "01_warmup" / "checkpoint.pth"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if (
            checkpoint.exists()
            and torch.load(checkpoint, weights_only=True)["_loop"]["iteration"] >= 4
        ):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "01_warmup" / "done.json").exists()

    subprocess.run(_run_command(data, killed), check=True, env=env, capture_output=True)
    assert "resumed from" in (killed / "log.txt").read_text()
    for stage in ("01_warmup", "04_adapt", "06_self_train"):
        a = torch.load(straight / stage / "model.pth", weights_only=True)["model"]
        b = torch.load(killed / stage / "model.pth", weights_only=True)["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{stage}: {key} differs after resume"
    for stage in ("warmup", "adapt", "self_train"):
        metrics_a = json.loads((straight / "08_evaluate" / stage / "metrics.json").read_text())
        metrics_b = json.loads((killed / "08_evaluate" / stage / "metrics.json").read_text())
        assert metrics_a["miou"] == metrics_b["miou"]
