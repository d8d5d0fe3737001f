"""Pipeline bookkeeping: plan, skip done stages, re-run on config change, --from, --only, lock.

Stages are replaced by fakes that record their calls, so these tests check the bookkeeping alone;
the real stages run end to end in tests/test_run_e2e.py.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from spcl import pipeline
from spcl.config import load_config
from spcl.context import RunContext
from spcl.engine.tracking import Tracker

ROOTS = ["data.source.root=/x", "data.target.root=/x", "data.target_val.root=/x"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    record: list[str] = []

    def fake(stage: pipeline.Stage) -> pipeline.Stage:
        def fn(ctx: RunContext, out_dir: Path, inputs: dict[str, Path]) -> Path:
            record.append(stage.name)
            out = out_dir / "out.txt"
            out.write_text(json.dumps({k: str(v) for k, v in inputs.items()}))
            return out

        return pipeline.Stage(stage.name, stage.folder, stage.sections, stage.needs, fn)

    monkeypatch.setattr(pipeline, "STAGES", tuple(fake(s) for s in pipeline.STAGES))
    monkeypatch.setattr(pipeline, "prepare_data", lambda ctx: None)
    return record


def _ctx(tmp_path: Path, *overrides: str) -> RunContext:
    config = load_config(None, [*ROOTS, *overrides])
    return RunContext(config, tmp_path, torch.device("cpu"), Tracker(tmp_path, progress=False))


ALL = [
    "warmup",
    "prototypes",
    "pseudo_labels",
    "adapt",
    "pseudo_labels_2",
    "self_train",
    "evaluate",
]


def test_runs_all_in_order_then_skips(tmp_path: Path, calls: list[str]) -> None:
    outputs = pipeline.run_pipeline(_ctx(tmp_path))
    assert calls == ALL
    assert list(outputs) == ALL
    inputs = json.loads(outputs["adapt"].read_text())
    assert set(inputs) == {"warmup", "prototypes", "pseudo_labels"}
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path))
    assert calls == []


def test_changed_config_reruns_the_stage_and_what_depends_on_it(
    tmp_path: Path, calls: list[str]
) -> None:
    pipeline.run_pipeline(_ctx(tmp_path))
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path, "adapt.lambda_cl=0.5"))
    assert calls == ["adapt", "pseudo_labels_2", "self_train", "evaluate"]
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path, "adapt.lambda_cl=0.5", "data.num_workers=7"))
    assert calls == []  # worker count never changes a result


def test_from_reruns_later_stages_and_only_runs_one(tmp_path: Path, calls: list[str]) -> None:
    pipeline.run_pipeline(_ctx(tmp_path))
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path), start_from="pseudo_labels_2")
    assert calls == ["pseudo_labels_2", "self_train", "evaluate"]
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path), start_from="adapt", only="adapt")
    assert calls == ["adapt"]
    with pytest.raises(ValueError, match="--only nope"):
        pipeline.run_pipeline(_ctx(tmp_path), only="nope")


def test_only_needs_its_inputs_done(tmp_path: Path, calls: list[str]) -> None:
    with pytest.raises(ValueError, match="'warmup' it depends on is not done"):
        pipeline.run_pipeline(_ctx(tmp_path), only="adapt")
    assert calls == []


def test_partial_plans(tmp_path: Path, calls: list[str]) -> None:
    outputs = pipeline.run_pipeline(_ctx(tmp_path, "run.stages=[warmup, evaluate]"))
    assert calls == ["warmup", "evaluate"]
    assert set(json.loads(outputs["evaluate"].read_text())) == {"warmup"}
    with pytest.raises(ValueError, match="'adapt' needs"):
        pipeline.plan(_ctx(tmp_path, "run.stages=[warmup, adapt]").config)
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.plan(_ctx(tmp_path, "run.stages=[warmup, bogus]").config)


def test_stale_partial_stage_is_wiped(tmp_path: Path, calls: list[str]) -> None:
    stage_dir = tmp_path / "01_warmup"
    stage_dir.mkdir(parents=True)
    (stage_dir / "started.json").write_text(json.dumps({"fingerprint": "other"}))
    (stage_dir / "checkpoint.pth").write_text("from another config")
    pipeline.run_pipeline(_ctx(tmp_path, "run.stages=[warmup]"))
    assert not (stage_dir / "checkpoint.pth").exists()
    assert (stage_dir / "done.json").exists()


def _hold(path: str, ready, release) -> None:  # runs in a child process
    with pipeline.run_lock(Path(path)):
        ready.set()
        release.wait(30)


def test_lock_refuses_a_second_process(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    child = context.Process(target=_hold, args=(str(tmp_path), ready, release))
    child.start()
    try:
        assert ready.wait(60)
        locked = pytest.raises(pipeline.RunLockedError, match=f"in use .*pid {child.pid}")
        with locked, pipeline.run_lock(tmp_path):
            pass
    finally:
        release.set()
        child.join(30)
    with pipeline.run_lock(tmp_path):  # free again once the holder is gone
        pass
