"""Pipeline bookkeeping: plan, skip done stages, re-run on config change, --from, --only, lock.

Stages are replaced by fakes that record their calls, so these tests check the bookkeeping alone;
the real stages run end to end in tests/test_run_e2e.py.
"""

from __future__ import annotations

import json
import multiprocessing
import typing
from pathlib import Path

import pytest
import torch

from spcl import pipeline
from spcl.config import load_config
from spcl.config_schema import Config
from spcl.context import RunContext
from spcl.engine.tracking import Tracker

ROOTS = ["data.source.root=/x", "data.target.root=/x", "data.target_val.root=/x"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    record: list[str] = []

    def fake(stage: pipeline.Stage):
        def fn(ctx: RunContext, out_dir: Path, inputs: dict[str, Path]) -> Path:
            record.append(stage.name)
            out = out_dir / "out.txt"
            out.write_text(json.dumps({k: str(v) for k, v in inputs.items()}))
            return out

        return fn

    monkeypatch.setattr(pipeline, "_run_function", fake)  # each stage's run(ctx, out_dir, inputs)
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


def test_changed_config_says_what_reruns_and_why_and_keeps_the_old_results(
    tmp_path: Path, calls: list[str]
) -> None:
    pipeline.run_pipeline(_ctx(tmp_path))
    old_adapt = (tmp_path / "04_adapt" / "out.txt").read_text()
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path, "adapt.lambda_cl=0.5", "adapt.temperature=50"))
    assert calls == ["adapt", "pseudo_labels_2", "self_train", "evaluate"]
    log = (tmp_path / "log.txt").read_text()
    said = log.index("re-running 4 finished stage(s)")
    assert log.rindex("[adapt] running into") > said  # said before doing so
    assert "adapt: config changed: adapt.lambda_cl 1.0 → 0.5, adapt.temperature 100.0 → 50.0" in log
    assert "pseudo_labels_2: it reads adapt, which re-runs" in log
    assert "warmup: config changed" not in log
    history = tmp_path / "history" / "1"
    assert (history / "04_adapt" / "out.txt").read_text() == old_adapt
    assert (
        json.loads((history / "04_adapt" / "done.json").read_text())["config"]["adapt"]["lambda_cl"]
        == 1.0
    )
    assert {p.name for p in history.iterdir()} == {
        "04_adapt",
        "05_pseudo_labels",
        "06_self_train",
        "08_evaluate",
        "config.yaml",
        "replaced.json",
    }
    assert "lambda_cl: 1.0" in (history / "config.yaml").read_text()
    assert "lambda_cl: 0.5" in (tmp_path / "config.yaml").read_text()
    replaced = json.loads((history / "replaced.json").read_text())
    assert replaced["adapt"].startswith("config changed: adapt.lambda_cl")
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path, "run.seed=3"), start_from="self_train")
    assert calls == ALL  # run.seed is in every stage's sections
    assert (tmp_path / "history" / "2" / "01_warmup").is_dir()
    assert "warmup: config changed: run.seed 0 → 3" in (tmp_path / "log.txt").read_text()


def test_from_says_the_forced_reruns(tmp_path: Path, calls: list[str]) -> None:
    pipeline.run_pipeline(_ctx(tmp_path))
    pipeline.run_pipeline(_ctx(tmp_path), start_from="self_train")
    log = (tmp_path / "log.txt").read_text()
    assert "self_train: --from self_train" in log
    assert "evaluate: it reads self_train, which re-runs" in log
    assert (tmp_path / "history" / "1" / "06_self_train" / "done.json").is_file()


def test_a_failed_command_keeps_the_config_yaml(
    tmp_path: Path, calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spcl.context import open_run

    def run(*overrides: str, only: str | None = None) -> None:
        config = load_config(None, [*ROOTS, "run.progress=false", *overrides])
        with open_run(config, tmp_path) as ctx:
            pipeline.run_pipeline(ctx, only=only)

    run()
    saved = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ValueError, match="'warmup' it depends on is not done"):
        run("model.width=8", only="evaluate")  # the models in the folder are 64 wide
    assert (tmp_path / "config.yaml").read_text() == saved
    assert calls.count("evaluate") == 1

    def broken(ctx, out_dir, inputs):
        raise RuntimeError("evaluation failed")

    faked = pipeline._run_function
    monkeypatch.setattr(
        pipeline, "_run_function", lambda s: broken if s.name == "evaluate" else faked(s)
    )
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run("evaluate.flip=true", only="evaluate")
    assert (tmp_path / "config.yaml").read_text() == saved
    assert "flip: false" in saved


def test_a_stage_whose_input_was_replaced_earlier_says_so(tmp_path: Path, calls: list[str]) -> None:
    pipeline.run_pipeline(_ctx(tmp_path))
    pipeline.run_pipeline(_ctx(tmp_path, "warmup.lambda_adv=0.01"), only="warmup")
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path, "warmup.lambda_adv=0.01"))
    assert calls == ALL[1:]
    log = (tmp_path / "log.txt").read_text()
    assert "warmup: config changed: warmup.lambda_adv 0.001 → 0.01" in log
    assert "prototypes: its input 'warmup' changed since it ran" in log
    assert "adapt: it reads prototypes, pseudo_labels, which re-run" in log
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == ["1", "2"]


def _other_value(dotted: str, neutral: object) -> object:
    """A valid value of key ``dotted`` other than its ``neutral`` one (Literal keys: another
    choice; counts stay whole; free strings get a suffix; a list of counts gets four; a section
    given whole gets its switch turned on)."""
    hints: object = Config
    for part in dotted.split("."):
        hints = typing.get_type_hints(hints, include_extras=True)[part]
    if isinstance(neutral, bool):
        return not neutral
    if isinstance(neutral, int):
        return neutral + 3
    if isinstance(neutral, float):
        return 0.5
    if isinstance(neutral, list) and dotted.endswith("scale_range"):  # a [low, high] pair
        return [0.9, 1.1]
    if isinstance(neutral, list):  # a list of counts (pseudo-label margins): four of them
        return [1, 2, 3, 4]
    if isinstance(neutral, dict):  # a section given whole: its switch turned on
        return {**neutral, "enabled": True}
    choices = typing.get_args(hints)
    return next((c for c in choices if c != neutral), f"{neutral}x")


def _at(tree: dict, dotted: str) -> object:
    """The value at ``dotted`` in a stage's config sections, or ``MISSING``."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


MISSING = object()
TOGETHER = {  # what another value of a key needs beside it
    "online.contrast.loss": ["online.contrast.statistics=cumulative"],
    **{
        f"online.distill.{w}": ["online.distill.pretrained=f.pth"]
        for w in ("weight_source", "weight_target")
    },
}


def test_keys_added_later_leave_fingerprints_alone_at_their_neutral_value() -> None:
    from spcl.pipeline import STAGES
    from spcl.run_state import NEUTRAL_DEFAULTS, fingerprint, stage_config

    stages = {s.name: s for s in STAGES}
    plain = load_config("demo")
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        section = dotted.partition(".")[0]
        stage = stages.get(section, stages["warmup"])
        if section == "data" and not dotted.startswith("data.source"):
            continue  # one domain is enough: the three share the mechanism
        assert _at(stage_config(stage, plain), dotted) is MISSING, dotted
        other = _other_value(dotted, neutral)
        changed = load_config("demo", [f"{dotted}={json.dumps(other)}", *TOGETHER.get(dotted, [])])
        assert _at(stage_config(stage, changed), dotted) == other, dotted
        assert fingerprint(stage, changed, {}) != fingerprint(stage, plain, {})


def test_only_runs_its_stage_even_when_it_is_done(tmp_path: Path, calls: list[str]) -> None:
    """Before, ``--only evaluate`` on a finished run skipped the evaluation it asked for."""
    pipeline.run_pipeline(_ctx(tmp_path))
    calls.clear()
    pipeline.run_pipeline(_ctx(tmp_path), only="evaluate")
    assert calls == ["evaluate"]
    assert "evaluate: --only evaluate" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "history" / "1" / "08_evaluate" / "done.json").is_file()  # kept
