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


@pytest.mark.slow
@pytest.mark.parametrize("hand_on", ["teacher", "student"])
def test_validating_the_online_stage_trains_exactly_as_without(
    data: Path, tmp_path: Path, hand_on: str
) -> None:
    # a MiT has Dropout and DropPath: validation must leave each module's mode as it found it
    # (the teacher's dropout off, the rest in train mode), not call model.train() on it
    online = (
        "model.name=daformer_mit_b0",
        "online.init=pretrained",
        f"online.hand_on={hand_on}",
        "online.optim.max_iter=3",
        "online.optim.stop_iter=3",
        "online.optim.batch_size=2",
        "online.source_sampling=uniform",  # no class index: the runs differ in validation alone
        "run.stages=[online]",
    )
    plain = _run(data, tmp_path / "plain", *online, "run.val_every=0")
    watched = _run(data, tmp_path / "watched", *online, "run.val_every=1")
    for name in ("teacher.pth", "student.pth"):
        a = torch.load(plain["online"].with_name(name), weights_only=True)["model"]
        b = torch.load(watched["online"].with_name(name), weights_only=True)["model"]
        differ = [key for key in a if not torch.equal(a[key], b[key])]
        assert not differ, f"{name}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
    log = (tmp_path / "watched" / "log.txt").read_text()
    assert all(f"[online] iteration {step}: val mIoU" in log for step in (1, 2, 3))


def test_kept_training_flags_puts_back_each_modules_mode() -> None:
    from spcl.stages.validation import kept_training_flags

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.ReLU())
    model.train()
    model[1].eval()  # as the online stage's teacher: dropout off, the rest in train mode
    with pytest.raises(RuntimeError), kept_training_flags(model):
        model.eval()
        model.train()
        raise RuntimeError("a failed validation")
    assert [m.training for m in model.modules()] == [True, True, False, True]
