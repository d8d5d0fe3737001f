"""The class-collapse alert: a class whose share of the pseudo-labels (or whose validation IoU)
stays about zero for N checks in a row is named in log.txt, TensorBoard and collapse.json.

Before (main 3f6f3d3) nothing watched: a class that collapsed on one seed (lhoyer/MIC#9) showed
only in the final evaluation. The alert watches and never steers: no random draw, no extra forward
pass, the same weights with it on or off, and its keys leave finished stages finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spcl.config import load_config
from spcl.context import RunContext, open_run
from spcl.data.labels import ClassTable
from spcl.data.synthetic import generate_pair
from spcl.engine.tracking import Tracker
from spcl.evaluation.metrics import ConfusionMatrix
from spcl.experiments.rows import QUICK_OVERRIDES
from spcl.pipeline import STAGES, run_pipeline
from spcl.run_dir import COLLAPSE_FILE
from spcl.run_state import fingerprint
from spcl.stages.collapse import PSEUDO_LABEL_SHARE, CollapseAlert
from tiny import TINY

NAMES = ("road", "train", "sky")
ROOTS = ["data.source.root=/x", "data.target.root=/x", "data.target_val.root=/x"]


def _alert(tmp_path: Path, *overrides: str) -> tuple[CollapseAlert, RunContext]:
    config = load_config(
        None, [*ROOTS, "run.collapse_every=2", "run.collapse_checks=2", *overrides]
    )
    ctx = RunContext(config, tmp_path, torch.device("cpu"), Tracker(tmp_path, progress=False))
    ctx.classes = ClassTable(NAMES, ((0, 0, 0),) * len(NAMES))
    return CollapseAlert(ctx, tmp_path / "07_online", "online", PSEUDO_LABEL_SHARE, 8), ctx


def _labels(*classes: int) -> torch.Tensor:
    """A (1, 4, 4) label map holding ``classes`` (the first fills what the others leave)."""
    labels = torch.full((1, 4, 4), classes[0])
    for i, c in enumerate(classes[1:]):
        labels[0, i] = c
    return labels


def _steps(alert: CollapseAlert, first: int, last: int, labels: torch.Tensor) -> None:
    for done in range(first, last + 1):
        alert.observe(labels, torch.ones(labels.shape))
        alert.after_step(done)


def test_a_class_that_fades_is_named_in_the_log_tensorboard_and_the_summary(
    tmp_path: Path,
) -> None:
    alert, ctx = _alert(tmp_path)
    (tmp_path / "07_online").mkdir()
    rng = torch.get_rng_state()
    _steps(alert, 1, 2, _labels(0, 1))  # check 1: 'train' holds a row of pixels
    _steps(alert, 3, 6, _labels(0))  # checks 2, 3: gone → the alert; 'sky' never seen: no alert
    assert torch.equal(torch.get_rng_state(), rng)  # no random draw
    log = (tmp_path / "log.txt").read_text()
    assert "[online] iteration 6: class collapse: 'train' has had a pseudo-label share" in log
    assert "below 0.01% for 2 checks in a row (now 0%); it was 25% at iteration 2" in log
    assert "'sky'" not in log and "'road'" not in log
    summary = json.loads((tmp_path / "07_online" / COLLAPSE_FILE).read_text())
    assert summary["collapsed"] == ["train"] and summary["last_check"] == 6
    assert summary["alerts"] == [
        {"class": "train", "signal": PSEUDO_LABEL_SHARE, "iteration": 6, "value": 0.0}
    ]
    _steps(alert, 7, 8, _labels(0, 1))  # back at the last check: said, and the summary is final
    ctx.tracker.close()
    assert "class 'train' is back: pseudo-label share 25%" in (tmp_path / "log.txt").read_text()
    assert json.loads((tmp_path / "07_online" / COLLAPSE_FILE).read_text())["collapsed"] == []
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "online/collapse/text_summary" in events.Tags()["tensors"]
    assert [e.step for e in events.Scalars("online/share/train")] == [2, 4, 6, 8]


def test_a_validation_iou_that_drops_to_zero_is_named(tmp_path: Path) -> None:
    alert, _ = _alert(tmp_path)
    (tmp_path / "07_online").mkdir()
    for done, hit in ((5, True), (10, False), (15, False)):
        matrix = ConfusionMatrix(len(NAMES))
        gt = torch.tensor([0, 1, 1, 0])
        matrix.update(gt if hit else torch.zeros(4, dtype=torch.long), gt)
        alert.validated(done, matrix.compute(NAMES))
    log = (tmp_path / "log.txt").read_text()
    assert "iteration 15: class collapse: 'train' has had a val IoU below 0.01%" in log
    assert "'sky'" not in log  # absent from the split: never judged


def test_a_restart_takes_up_the_streaks_or_drops_alerts_after_the_checkpoint(
    tmp_path: Path,
) -> None:
    alert, _ = _alert(tmp_path)
    (tmp_path / "07_online").mkdir()
    _steps(alert, 1, 6, _labels(0, 1))
    _steps(alert, 7, 8, _labels(0))  # one check low
    resumed, _ = _alert(tmp_path)  # resumed from a checkpoint at 8: one more low check alerts
    _steps(resumed, 9, 10, _labels(0))
    assert "iteration 10: class collapse: 'train'" in (tmp_path / "log.txt").read_text()
    again, _ = _alert(tmp_path)  # resumed from an earlier checkpoint (6): the alert at 10 goes
    _steps(again, 7, 8, _labels(0))  # 'train' not seen since the restart: no alert
    summary = json.loads((tmp_path / "07_online" / COLLAPSE_FILE).read_text())
    assert summary["alerts"] == [] and summary["last_check"] == 8


def test_the_alert_keys_leave_fingerprints_alone() -> None:
    plain = load_config("demo")
    other = load_config("demo", ["run.collapse_every=7", "run.collapse_checks=9"])
    for stage in STAGES:
        assert fingerprint(stage, other, {}) == fingerprint(stage, plain, {})


@pytest.mark.slow
def test_the_alert_changes_no_weight(tmp_path: Path) -> None:
    """Self-training and the online stage end with the same weights with the alert on or off."""
    data = generate_pair(
        tmp_path / "data", seed=5, n_train=4, n_val=2, size=(64, 128), preview=False, progress=False
    )
    roots = [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    chain = "[warmup, prototypes, pseudo_labels, adapt, pseudo_labels_2, self_train, online]"
    overrides = [*QUICK_OVERRIDES, *TINY, *roots, "online.init=warmup", f"run.stages={chain}"]
    out = tmp_path / "run"
    for every, start in ((1, None), (0, "self_train")):
        more = [f"run.collapse_every={every}", f"run.out={out}"]
        with open_run(load_config("demo", [*overrides, *more])) as ctx:
            run_pipeline(ctx, start_from=start)
    for stage in ("06_self_train", "07_online"):
        before = torch.load(out / "history/1" / stage / "model.pth", weights_only=True)["model"]
        after = torch.load(out / stage / "model.pth", weights_only=True)["model"]
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], v) for k, v in after.items())
        assert (out / "history/1" / stage / COLLAPSE_FILE).is_file()
