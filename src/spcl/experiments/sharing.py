"""Finished pipeline stages across an experiment's runs: shared by hard link, and their seconds.

Before a run of the demo or the bench starts, every training stage that an earlier run of the same
seed finished with the very fingerprint this run would compute is hard-linked into it, so the
pipeline skips it (:func:`share_done_stages`). The seconds of a row count every stage its model
needed, shared ones included (:func:`row_seconds`); the total counts each stage once
(:func:`total_stage_seconds`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from spcl.config_schema import Config
from spcl.pipeline import EVALUATION, done_record, plan, stage_fingerprints
from spcl.run_dir import DONE_FILE, RunDir
from spcl.run_state import RunStateError

__all__ = ["row_seconds", "share_done_stages", "total_stage_seconds"]


def _done_fingerprint(run_dir: Path, stage: str) -> str | None:
    """The fingerprint a stage of ``run_dir`` finished with (None: unfinished or damaged, so
    nothing is shared from it; the pipeline names a damaged record of the run itself)."""
    try:
        done = done_record(run_dir, stage)
    except RunStateError:
        return None
    return None if done is None else done["fingerprint"]


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link the files of ``src`` into a fresh ``dst`` (via a temporary folder)."""
    partial = dst.with_name(dst.name + ".sharing")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial, copy_function=os.link)  # all runs live under one OUT folder
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)


def share_done_stages(config: Config, run_dir: Path, donors: Sequence[Path]) -> dict[str, str]:
    """Link into ``run_dir`` every training stage a donor run finished with this config's print.

    A stage is shared only when a donor's ``done.json`` holds exactly the fingerprint that
    :func:`spcl.pipeline.run_pipeline` would compute for it under ``config``, i.e. the same config
    sections and the same upstream results; the pipeline then skips it. Files are hard links,
    safe because stages write by temporary file + rename and re-run stages delete their folder.

    Returns:
        stage name → donor run directory, for the stages linked now.
    """
    prints = stage_fingerprints(config)
    shared: dict[str, str] = {}
    for stage in plan(config):
        if stage.name == EVALUATION:  # it scores every model of its run: never shared
            continue
        key = prints[stage.name]
        if _done_fingerprint(run_dir, stage.name) == key:
            continue
        donor = next((d for d in donors if _done_fingerprint(d, stage.name) == key), None)
        if donor is not None:
            _link_tree(RunDir(donor).stage(stage.name), RunDir(run_dir).stage(stage.name))
            shared[stage.name] = str(donor)
    return shared


def row_seconds(run_dir: Path, stage: str) -> float:
    """Wall seconds of every stage a row's model needed (``done.json``), e.g. warm-up → adapt.

    The chain follows the inputs each ``done.json`` records; shared stages count with the time
    their donor spent: the cost of the row from scratch.
    """
    records: dict[str, dict] = {}
    todo = [stage]
    while todo:  # the stage and, transitively, every stage it read
        name = todo.pop()
        done = done_record(run_dir, name)
        if done is None:
            raise FileNotFoundError(
                f"{RunDir(run_dir).done(name)}: stage {name!r} has not finished"
            )
        records[name] = done
        todo += [n for n in done.get("inputs", {}) if n not in records]
    return sum(float(done["seconds"]) for done in records.values())


def total_stage_seconds(runs_dir: Path) -> float:
    """The compute all runs under ``runs_dir`` needed: each stage once (shared ones are links)."""
    seen: dict[tuple[int, int], float] = {}
    for done in runs_dir.glob(f"**/{DONE_FILE}"):
        info = done.stat()
        seen[(info.st_dev, info.st_ino)] = float(json.loads(done.read_text())["seconds"])
    return round(sum(seen.values()), 1)
