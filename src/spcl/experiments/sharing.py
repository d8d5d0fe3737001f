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
from spcl.pipeline import STAGES, plan, stage_inputs
from spcl.run_state import fingerprint

__all__ = ["row_seconds", "share_done_stages", "stage_fingerprints", "total_stage_seconds"]


def _done_fingerprint(stage_dir: Path) -> str | None:
    try:
        return json.loads((stage_dir / "done.json").read_text())["fingerprint"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link the files of ``src`` into a fresh ``dst`` (via a temporary folder)."""
    partial = dst.with_name(dst.name + ".sharing")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial, copy_function=os.link)  # all runs live under one OUT folder
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)


def stage_fingerprints(config: Config) -> dict[str, str]:
    """The fingerprint :func:`spcl.pipeline.run_pipeline` gives each training stage of ``config``.

    The evaluation stage is left out: it scores every model of its run, so it is never shared.
    """
    prints: dict[str, str] = {}
    for stage in plan(config):
        if stage.name != "evaluate":
            needs = stage_inputs(stage, config)
            prints[stage.name] = fingerprint(stage, config, {n: prints[n] for n in needs})
    return prints


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
        if stage.name not in prints:
            continue
        key = prints[stage.name]
        target = run_dir / stage.folder
        if _done_fingerprint(target) == key:
            continue
        donor = next((d for d in donors if _done_fingerprint(d / stage.folder) == key), None)
        if donor is not None:
            _link_tree(donor / stage.folder, target)
            shared[stage.name] = str(donor)
    return shared


def row_seconds(run_dir: Path, stage: str) -> float:
    """Wall seconds of every stage a row's model needed (``done.json``), e.g. warm-up → adapt.

    The chain follows the inputs each ``done.json`` records; shared stages count with the time
    their donor spent: the cost of the row from scratch.
    """
    by_name = {s.name: s for s in STAGES}
    chain: set[str] = set()
    todo = [stage]
    while todo:  # the stage and, transitively, every stage it read
        name = todo.pop()
        chain.add(name)
        done = json.loads((run_dir / by_name[name].folder / "done.json").read_text())
        todo += [n for n in done.get("inputs", {}) if n not in chain]
    return sum(
        float(json.loads((run_dir / by_name[n].folder / "done.json").read_text())["seconds"])
        for n in chain
    )


def total_stage_seconds(runs_dir: Path) -> float:
    """The compute all runs under ``runs_dir`` needed: each stage once (shared ones are links)."""
    seen: dict[tuple[int, int], float] = {}
    for done in runs_dir.glob("**/done.json"):
        info = done.stat()
        seen[(info.st_dev, info.st_ino)] = float(json.loads(done.read_text())["seconds"])
    return round(sum(seen.values()), 1)
