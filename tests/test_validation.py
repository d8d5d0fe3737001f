"""Periodic validation during training (run.val_every) and evaluation tables titled by model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spcl.config import load_config
from spcl.context import open_run
from spcl.data.synthetic import generate_pair
from spcl.pipeline import run_pipeline
from tiny import TINY


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("validation") / "data"
    return generate_pair(root, seed=3, n_train=4, n_val=2, size=(64, 128), preview=False)


def _run(data: Path, out: Path, *overrides: str) -> dict[str, Path]:
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    schedule = ["warmup.optim.max_iter=4", "warmup.optim.stop_iter=4", "run.log_every=2"]
    config = load_config(
        "demo", [*TINY, *roots, *schedule, "warmup.adversarial=false", f"run.out={out}", *overrides]
    )
    with open_run(config) as ctx:
        return run_pipeline(ctx)


def test_validation_logs_the_curve_and_changes_no_weight(data: Path, tmp_path: Path) -> None:
    stages = "run.stages=[warmup]"
    plain = _run(data, tmp_path / "plain", stages, "run.val_every=0")
    watched = _run(data, tmp_path / "watched", stages, "run.val_every=2")
    a = torch.load(plain["warmup"], weights_only=True)["model"]
    b = torch.load(watched["warmup"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same RNG draws, last model handed on
    log = (tmp_path / "watched" / "log.txt").read_text()
    for step in (2, 4):
        assert f"[warmup] iteration {step}: val/miou=" in log
        assert f"[warmup] iteration {step}: val mIoU" in log
    assert "val/iou/road=" in log
    assert "val/miou" not in (tmp_path / "plain" / "log.txt").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "watched" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "warmup/val/miou" in tags and "warmup/val/iou/road" in tags
    assert [e.step for e in events.Scalars("warmup/val/miou")] == [2, 4]


def test_each_evaluation_table_and_file_names_its_model(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(data, out, "run.stages=[warmup, evaluate]")
    folder = out / "08_evaluate" / "warmup"
    weights = out / "01_warmup" / "model.pth"
    title = f"warmup model {weights} on synthetic {data} (split val)"
    assert (folder / "metrics.txt").read_text().splitlines()[0] == title
    assert (folder / "metrics.csv").read_text().splitlines()[0] == f"# {title}"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["title"] == title and metrics["stage"] == "warmup"
    log = (out / "log.txt").read_text()
    assert f"[evaluate] {title}\nclass" in log
    assert f"[evaluate]     warmup model {weights}: mIoU" in log
