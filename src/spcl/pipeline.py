"""The SPCL recipe as an ordered list of stages, run into one resumable run directory.

    warmup → prototypes(warmup) → pseudo_labels(warmup) → adapt → pseudo_labels_2(adapt)
           → self_train → online([warmup]) → evaluate

``online`` is the EMA-teacher recipe (DAFormer/MIC/SePiCo), an alternative to the SPCL chain that
starts from the ImageNet init or the warm-up. Each stage writes one folder (``01_warmup/`` …
``08_evaluate/``). A stage is done when its folder
holds ``done.json`` with the fingerprint of the config it ran with (the config sections it depends
on plus the fingerprints of the stages it reads); a re-run skips done stages, re-runs a stage whose
fingerprint changed (and so everything downstream), and lets a training stage interrupted half-way
resume from its checkpoint. Before replacing a finished stage, a re-run says which and why (the
config keys that changed, per stage) and moves its folder to ``history/N/``
(:mod:`spcl.run_history`); ``config.yaml`` is rewritten only once a command has succeeded.
``run.stages`` selects which stages a run has (e.g. warm-up and
evaluation only, for a source-only baseline). A lock file keeps a second process out of a run
directory in use. Fingerprints and the lock live in :mod:`spcl.run_state`.

Importing this module is cheap (no torch): the stage modules are imported when a stage runs, so
the command line can list the stages without loading the models.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from spcl.base import STAGE_NAMES, ConfigError, UsageError, atomic_write_bytes
from spcl.config import save_config
from spcl.config_schema import Config
from spcl.run_history import (
    announcement,
    keep_in_history,
    next_history_folder,
    remove_stale_temp_files,
    replacement_reason,
)
from spcl.run_state import (
    RunLockedError,
    fingerprint,
    read_json,
    run_lock,
    stage_config,
)

if TYPE_CHECKING:
    from spcl.context import RunContext

__all__ = [
    "STAGES",
    "STAGE_FOLDERS",
    "STAGE_NAMES",
    "TRAINED_MODELS",
    "RunLockedError",
    "Stage",
    "metrics_path",
    "model_path",
    "plan",
    "run_lock",
    "run_pipeline",
    "stage_inputs",
]

StageFn = Callable[["RunContext", Path, dict[str, Path]], Path]
Observer = Callable[[str], AbstractContextManager[None]]  # wraps each stage that runs (by name)


@dataclass(frozen=True)
class Stage:
    """One step of the recipe.

    Attributes:
        name: stage name (``run.stages``, ``--from``, ``--only``).
        folder: its folder in the run directory.
        sections: dotted config sections its result depends on.
        needs: stages whose outputs it reads, in the order ``fn`` receives them.
        fn: runs the stage into a folder given the upstream outputs; returns its output path.
    """

    name: str
    folder: str
    sections: tuple[str, ...]
    needs: tuple[str, ...]
    fn: StageFn


def _stage(name: str) -> ModuleType:
    """The module of a stage, imported when the stage first runs (it imports torch)."""
    return importlib.import_module(f"spcl.stages.{name}")


_COMMON = ("model", "data", "run.seed")
STAGES: tuple[Stage, ...] = (
    Stage(
        "warmup", "01_warmup", (*_COMMON, "warmup"), (), lambda c, d, i: _stage("warmup").run(c, d)
    ),
    Stage(
        "prototypes",
        "02_prototypes",
        _COMMON,
        ("warmup",),
        lambda c, d, i: _stage("prototypes").run(c, d, i["warmup"]),
    ),
    Stage(
        "pseudo_labels",
        "03_pseudo_labels",
        (*_COMMON, "pseudo_labels"),
        ("warmup",),
        lambda c, d, i: _stage("pseudo_labels").run(c, d, i["warmup"]),
    ),
    Stage(
        "adapt",
        "04_adapt",
        (*_COMMON, "adapt"),
        ("warmup", "prototypes", "pseudo_labels"),
        lambda c, d, i: _stage("adapt").run(c, d, i["warmup"], i["prototypes"], i["pseudo_labels"]),
    ),
    Stage(
        "pseudo_labels_2",
        "05_pseudo_labels",
        (*_COMMON, "pseudo_labels"),
        ("adapt",),
        lambda c, d, i: _stage("pseudo_labels").run(c, d, i["adapt"]),
    ),
    Stage(
        "self_train",
        "06_self_train",
        (*_COMMON, "self_train"),
        ("adapt", "pseudo_labels_2"),
        lambda c, d, i: _stage("self_train").run(c, d, i["adapt"], i["pseudo_labels_2"]),
    ),
    Stage(
        "online",
        "07_online",
        (*_COMMON, "online"),
        ("warmup",),  # with online.init=warmup only
        lambda c, d, i: _stage("online").run(c, d, i.get("warmup")),
    ),
    Stage(
        "evaluate",
        "08_evaluate",
        ("model", "data", "evaluate"),
        ("warmup", "adapt", "self_train", "online"),  # those of them that the run has
        lambda c, d, i: _stage("evaluate").run_all(c, d, i),
    ),
)
if tuple(s.name for s in STAGES) != STAGE_NAMES:  # the CLI lists base.STAGE_NAMES
    raise RuntimeError("spcl.base.STAGE_NAMES must list spcl.pipeline.STAGES in order")
STAGE_FOLDERS = {s.name: s.folder for s in STAGES}  # stage name → its folder in a run directory
TRAINED_MODELS = ("warmup", "adapt", "self_train", "online")  # stages whose output is a model
EVALUATION = "evaluate"  # the stage that scores the trained models
ONLINE = "online"  # the EMA-teacher stage, whose input depends on online.init
MODEL_FILE, METRICS_FILE = "model.pth", "metrics.json"
DONE_FILE, CONFIG_FILE = "done.json", "config.yaml"  # a stage's completion record; the run's config


def model_path(run_dir: str | Path, stage: str) -> Path:
    """The ``model.pth`` a training stage writes in a run directory."""
    if stage not in TRAINED_MODELS:
        raise UsageError(f"stage {stage!r} trains no model; trained models: {TRAINED_MODELS}")
    return Path(run_dir) / STAGE_FOLDERS[stage] / MODEL_FILE


def metrics_path(run_dir: str | Path, stage: str) -> Path:
    """The evaluation stage's ``metrics.json`` for the model of ``stage`` in a run directory."""
    if stage not in TRAINED_MODELS:
        raise UsageError(f"stage {stage!r} trains no model; trained models: {TRAINED_MODELS}")
    return Path(run_dir) / STAGE_FOLDERS[EVALUATION] / stage / METRICS_FILE


def plan(config: Config) -> list[Stage]:
    """The stages this config runs, in order; checks that each has what it reads.

    Raises:
        ConfigError: an unknown stage name, or a stage without a stage it needs.
    """
    wanted = list(config.run.stages)
    unknown = [n for n in wanted if n not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"run.stages: unknown stage(s) {unknown}; valid: {list(STAGE_NAMES)}")
    chosen = [s for s in STAGES if s.name in wanted]
    for stage in chosen:
        needs = stage_inputs(stage, config)
        missing = [n for n in needs if n not in wanted]
        if missing:
            raise ConfigError(f"run.stages: '{stage.name}' needs {missing}; add them to run.stages")
    return chosen


def stage_inputs(stage: Stage, config: Config) -> tuple[str, ...]:
    """The stages whose outputs ``stage`` reads under ``config`` (its fingerprint's upstream).

    The evaluation reads every trained model the run has (at least one); the online stage reads
    the warm-up only when it starts from it (``online.init: warmup``).
    """
    if stage.name == EVALUATION:
        wanted = config.run.stages
        return tuple(n for n in stage.needs if n in wanted) or ("warmup",)
    if stage.name == ONLINE:
        return stage.needs if config.online.init == "warmup" else ()
    return stage.needs


def prepare_data(ctx: RunContext) -> None:
    """Generate the synthetic pair at the source root if ``data.synthetic.generate`` and absent,
    then check what the run reads, before any training (:mod:`spcl.stages.start_checks`, which
    sets an unset ``data.num_classes``); an unknown ``model.name`` is refused first.

    Raises:
        UnknownNameError: ``model.name`` is not a registered model.
        ConfigError, MissingFileError: ``generate`` is set but the source is not of kind
            ``synthetic``, or what :func:`spcl.stages.start_checks.check_run_start` refuses.
    """
    from spcl.stages.class_sets import check_model_name  # imports torch
    from spcl.stages.start_checks import check_run_start

    check_model_name(ctx.config.model.name)
    _generate_data(ctx)
    check_run_start(ctx)


def _generate_data(ctx: RunContext) -> None:
    data = ctx.config.data
    root = Path(data.source.root)
    if not data.synthetic.generate or root.exists():
        return
    if data.source.kind != "synthetic":
        raise ConfigError(
            f"data.synthetic.generate is true but data.source.kind is {data.source.kind!r}: "
            f"the generator writes the synthetic pair only; set data.synthetic.generate=false"
        )
    from spcl.engine.distributed import barrier

    if ctx.is_main:
        from spcl.data.synthetic import generate_pair

        ctx.tracker.info(f"generating the synthetic pair into {root}")
        syn = data.synthetic
        generate_pair(
            root,
            seed=syn.seed,
            preset=syn.preset,
            n_train=syn.n_train,
            n_val=syn.n_val,
            size=(syn.size[0], syn.size[1]),
            progress=ctx.config.run.progress,
        )
    barrier()


@dataclass(frozen=True)
class _Step:
    """What a run does with one planned stage: skip it (done), run it, or replace it."""

    stage: Stage
    key: str  # its fingerprint under this config
    upstream: dict[str, str]  # fingerprints of the stages it reads
    run: bool  # False: done with this fingerprint, skipped
    replaces: str | None = None  # why a finished result is replaced (None: nothing finished)


def _plan_steps(
    ctx: RunContext, stages: list[Stage], start_from: str | None, only: str | None
) -> list[_Step]:
    """Decide, before anything runs, what each stage of the run does (raises on a bad --only)."""
    names = [s.name for s in stages]
    last = names.index(only) if only is not None else len(names) - 1
    steps: list[_Step] = []
    prints: dict[str, str] = {}
    reruns: set[str] = set()
    forced = False
    for stage in stages[: last + 1]:
        forced = forced or stage.name == start_from
        needs = stage_inputs(stage, ctx.config)
        upstream = {n: prints[n] for n in needs if n in prints}
        if len(upstream) < len(needs):
            missing = [n for n in needs if n not in prints]
            raise UsageError(f"stage '{stage.name}' needs {missing}, which have not run")
        key = fingerprint(stage, ctx.config, upstream)
        prints[stage.name] = key
        done = read_json(ctx.stage_dir(stage.folder) / DONE_FILE)
        selected = only is None or stage.name == only
        asked = selected and (forced or only is not None)  # --from, --only: run even if done
        if done is not None and done["fingerprint"] == key and not asked:
            steps.append(_Step(stage, key, upstream, run=False))
            continue
        if not selected:
            raise UsageError(
                f"--only {only}: stage '{stage.name}' it depends on is not done "
                f"(run without --only first)"
            )
        replaces = None
        if done is not None:
            rerun_inputs = [n for n in needs if n in reruns]
            sections = stage_config(stage, ctx.config)
            why = replacement_reason(done, key, sections, upstream, rerun_inputs)
            replaces = why or (f"--from {start_from}" if forced else f"--only {only}")
        reruns.add(stage.name)
        steps.append(_Step(stage, key, upstream, run=True, replaces=replaces))
    return steps


def run_pipeline(
    ctx: RunContext,
    *,
    start_from: str | None = None,
    only: str | None = None,
    observe: Observer | None = None,
) -> dict[str, Path]:
    """Run (or resume) the planned stages; returns each stage's output path.

    Before anything runs, the finished stages that will be replaced are listed with the reason
    (the config keys that changed, old → new; an input that re-runs; ``--from``); their folders
    move to ``history/N/`` of the run directory. ``config.yaml`` is written when every stage
    asked for has finished, so a command that fails leaves the previous one in place (a new run
    directory gets it once the start's checks have passed).

    Args:
        ctx: the run context (config, run directory, device, tracker).
        start_from: re-run this stage and every later one even if done.
        only: run just this stage, even if done (the stages it reads must be done).
        observe: a context manager around each stage that runs, given its name (``spcl run
            --fast-dev-run`` times it and measures its memory).

    Raises:
        UsageError: ``start_from``/``only`` not a stage of the run, or ``only`` without its inputs.
        ConfigError: an unknown stage in ``run.stages``, or a stage without one it needs.
    """
    stages = plan(ctx.config)
    names = [s.name for s in stages]
    for flag, value in (("--from", start_from), ("--only", only)):
        if value is not None and value not in names:
            raise UsageError(f"{flag} {value}: not a stage of this run; stages: {names}")
    prepare_data(ctx)  # sets data.num_classes when unset: before any fingerprint
    steps = _plan_steps(ctx, stages, start_from, only)
    replaced, history = _announce_replacements(ctx, steps)
    if ctx.is_main and not (ctx.run_dir / CONFIG_FILE).exists():  # a new run that started well
        save_config(ctx.config, ctx.run_dir / CONFIG_FILE)
    outputs: dict[str, Path] = {}
    for step in steps:
        stage, out_dir = step.stage, ctx.stage_dir(step.stage.folder)
        if not step.run:
            done = read_json(out_dir / DONE_FILE)
            assert done is not None
            outputs[stage.name] = out_dir / done["output"]
            ctx.tracker.info(f"[{stage.name}] done already ({out_dir}), skipped")
            continue
        inputs = {n: outputs[n] for n in step.upstream}
        observer = observe or (lambda _name: contextlib.nullcontext())
        outputs[stage.name] = _run_stage(ctx, step, out_dir, inputs, (history, replaced), observer)
    if ctx.is_main:  # only now: a failed command keeps the config.yaml of the last good one
        save_config(ctx.config, ctx.run_dir / CONFIG_FILE)
    return outputs


def _announce_replacements(ctx: RunContext, steps: list[_Step]) -> tuple[dict[str, str], Path]:
    """Say which finished stages will be replaced and why; the history folder they move to."""
    replaced = {s.stage.name: s.replaces for s in steps if s.replaces is not None}
    history = next_history_folder(ctx.run_dir)
    for line in announcement(replaced, history):
        ctx.tracker.info(line)
    return replaced, history


def _run_stage(
    ctx: RunContext,
    step: _Step,
    out_dir: Path,
    inputs: dict[str, Path],
    history: tuple[Path, dict[str, str]],
    observe: Observer,
) -> Path:
    from spcl.engine.distributed import barrier

    stage, key = step.stage, step.key
    started = read_json(out_dir / "started.json")
    if ctx.is_main:
        if (out_dir / DONE_FILE).exists():
            keep_in_history(history[0], out_dir, history[1])  # a finished result: kept
        elif started is None or started.get("fingerprint") != key:
            shutil.rmtree(out_dir, ignore_errors=True)  # a partial stage of another config
        else:
            for path in remove_stale_temp_files(out_dir):  # left by kill -9 mid-write
                ctx.tracker.info(f"[{stage.name}] removed {path.name} (an interrupted write)")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "started.json", json.dumps({"fingerprint": key}).encode())
    barrier()
    ctx.tracker.info(f"[{stage.name}] running into {out_dir}")
    begin = time.perf_counter()
    with observe(stage.name):
        output = stage.fn(ctx, out_dir, inputs)
    seconds = time.perf_counter() - begin
    if ctx.is_main:
        record = {
            "fingerprint": key,
            "output": str(output.relative_to(out_dir)),
            "seconds": round(seconds, 2),
            "inputs": {n: str(p) for n, p in inputs.items()},
            "upstream": step.upstream,
            "config": stage_config(stage, ctx.config),
        }
        atomic_write_bytes(out_dir / DONE_FILE, json.dumps(record, indent=2).encode())
    barrier()
    ctx.tracker.info(f"[{stage.name}] finished in {seconds:.1f} s")
    return output
