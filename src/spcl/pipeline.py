"""Plan and run the recipe's stages (:mod:`spcl.recipe`) into one resumable run directory.

``online`` is the EMA-teacher recipe (DAFormer/MIC/SePiCo), an alternative to the SPCL chain that
starts from the ImageNet init or the warm-up. Each stage writes one folder (``01_warmup/`` …
``08_evaluate/``; every name in a run directory: :mod:`spcl.run_dir`). A stage is done when its
folder holds ``done.json`` with the fingerprint of the config it ran with (the config sections it
depends on plus the fingerprints of the stages it reads, :func:`stage_fingerprints`); a re-run
skips done stages, re-runs a stage whose fingerprint changed (and so everything downstream), and
lets a training stage interrupted half-way resume from its checkpoint. Before replacing a finished
stage, a re-run says which and why (the config keys that changed, per stage) and moves its folder
to ``history/N/`` (:mod:`spcl.run_history`); ``config.yaml`` is rewritten only once a command has
succeeded. ``run.stages`` selects which stages a run has (e.g. warm-up and evaluation only, for a
source-only baseline). A lock file keeps a second process out of a run directory in use.
Fingerprints and the lock live in :mod:`spcl.run_state`.

Importing this module is cheap (no torch): the stage modules are imported when a stage runs, so
the command line can list the stages without loading the models.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spcl.base import ConfigError, UsageError, atomic_write_bytes
from spcl.config import save_config
from spcl.config_schema import Config
from spcl.recipe import EVALUATION, STAGE_NAMES, STAGES, Stage, plan, stage_inputs
from spcl.run_dir import DONE_FILE, STARTED_FILE, RunDir, metrics_path, model_path
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
    "EVALUATION",
    "STAGES",
    "STAGE_NAMES",
    "RunLockedError",
    "Stage",
    "done_record",
    "metrics_path",
    "model_path",
    "plan",
    "prepare_data",
    "run_lock",
    "run_pipeline",
    "stage_fingerprints",
    "stage_inputs",
]

Observer = Callable[[str], AbstractContextManager[None]]  # wraps each stage that runs (by name)


def _run_function(stage: Stage) -> Callable[[RunContext, Path, dict[str, Path]], Path]:
    """``run(ctx, out_dir, inputs)`` of the stage's module, imported when the stage first runs
    (it imports torch)."""
    return importlib.import_module(f"spcl.stages.{stage.module}").run


def stage_fingerprints(config: Config, stages: Sequence[Stage] | None = None) -> dict[str, str]:
    """The fingerprint :func:`run_pipeline` gives each planned stage of ``config`` (in order).

    A stage's fingerprint hashes its config sections and the fingerprints of the stages it reads
    (:func:`spcl.run_state.fingerprint`): equal fingerprints, equal results.
    """
    prints: dict[str, str] = {}
    for stage in plan(config) if stages is None else stages:
        upstream = {n: prints[n] for n in stage_inputs(stage, config) if n in prints}
        prints[stage.name] = fingerprint(stage, config, upstream)
    return prints


def done_record(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The ``done.json`` of a finished stage in a run directory (None: not finished).

    Raises:
        RunStateError: the record was edited or damaged (the message names the file).
    """
    return read_json(RunDir(run_dir).done(stage))


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
    prints = stage_fingerprints(ctx.config, stages[: last + 1])
    steps: list[_Step] = []
    reruns: set[str] = set()
    forced = False
    for stage in stages[: last + 1]:
        forced = forced or stage.name == start_from
        needs = stage_inputs(stage, ctx.config)
        missing = [n for n in needs if n not in prints]
        if missing:
            raise UsageError(f"stage '{stage.name}' needs {missing}, which have not run")
        upstream = {n: prints[n] for n in needs}
        key = prints[stage.name]
        done = read_json(RunDir(ctx.run_dir).done(stage.name))
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
    run_dir = RunDir(ctx.run_dir)
    if ctx.is_main and not run_dir.config.exists():  # a new run that started well
        save_config(ctx.config, run_dir.config)
    outputs: dict[str, Path] = {}
    for step in steps:
        stage, out_dir = step.stage, run_dir.stage(step.stage.name)
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
        save_config(ctx.config, run_dir.config)
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
    started = read_json(out_dir / STARTED_FILE)
    if ctx.is_main:
        if (out_dir / DONE_FILE).exists():
            keep_in_history(history[0], out_dir, history[1])  # a finished result: kept
        elif started is None or started.get("fingerprint") != key:
            shutil.rmtree(out_dir, ignore_errors=True)  # a partial stage of another config
        else:
            for path in remove_stale_temp_files(out_dir):  # left by kill -9 mid-write
                ctx.tracker.info(f"[{stage.name}] removed {path.name} (an interrupted write)")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / STARTED_FILE, json.dumps({"fingerprint": key}).encode())
    barrier()
    ctx.tracker.info(f"[{stage.name}] running into {out_dir}")
    begin = time.perf_counter()
    with observe(stage.name):
        output = _run_function(stage)(ctx, out_dir, inputs)
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
