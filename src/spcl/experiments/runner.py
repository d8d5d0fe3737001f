"""Run a seed's pipeline runs into an experiment folder and collect each row's scores.

Both commands share this: the demo is one seed of its rows (``OUT/data``, ``OUT/runs/<run>``),
the bench several seeds (``OUT/data/seed<S>``, ``OUT/runs/seed<S>/<run>``). Each run is a
resumable pipeline run directory, so an interrupted experiment continues where it stopped. Before
a run starts, stages that an earlier run of the same seed finished with the same fingerprint are
hard-linked in (:mod:`spcl.experiments.sharing`).
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spcl.config import config_to_dict, load_config
from spcl.config_schema import Config
from spcl.experiments.rows import ROWS, Row, ablation_rows, runs_for, yaml_value
from spcl.experiments.sharing import row_seconds, share_done_stages
from spcl.pipeline import metrics_path, run_lock, run_pipeline

__all__ = ["Layout", "SeedResult", "collect_row", "run_seed", "seed_overrides"]


@dataclass(frozen=True)
class Layout:
    """Where an experiment keeps its data and runs: per seed (bench) or for one seed (demo)."""

    out: Path
    per_seed: bool

    def data_dir(self, seed: int) -> Path:
        return self.out / "data" / f"seed{seed}" if self.per_seed else self.out / "data"

    def run_dir(self, seed: int, run: str) -> Path:
        runs = self.out / "runs"
        return runs / f"seed{seed}" / run if self.per_seed else runs / run


@dataclass
class SeedResult:
    """One seed's rows: their scores, the resolved config and command of each run."""

    specs: list[Row] = field(default_factory=list)  # the rows, in report order
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)


def seed_overrides(base: Config, layout: Layout, seed: int) -> list[str]:
    """The seed, and for a generated synthetic pair its generator seed and data folder."""
    overrides = [f"run.seed={seed}"]
    if base.data.synthetic.generate:
        root = yaml_value(str(layout.data_dir(seed)))
        overrides += [f"data.synthetic.seed={seed}"]
        overrides += [f"data.{d}.root={root}" for d in ("source", "target", "target_val")]
    return overrides


def collect_row(run_dir: Path, row: Row, config: Config) -> dict[str, Any]:
    """A row's scores from its run: mIoU (and subsets), per-class IoU, seconds, model, config."""
    metrics = json.loads(metrics_path(run_dir, row.stage).read_text())
    seconds = row_seconds(run_dir, row.stage) + float(metrics.get("adabn_seconds", 0.0))
    return {
        **{k: v for k, v in metrics.items() if k.startswith("miou")},
        "per_class_iou": metrics["per_class_iou"],
        "seconds": round(seconds, 2),
        "run_dir": str(run_dir),
        "model": str(metrics.get("weights", "")),
        "config": config_to_dict(config),
    }


def _run_one(config: Config, run_dir: Path, donors: Sequence[Path]) -> None:
    from spcl.context import open_run  # torch: imported when an experiment runs
    from spcl.engine.distributed import barrier

    with open_run(config, run_dir) as ctx:
        lock = run_lock(run_dir) if ctx.is_main else contextlib.nullcontext()
        with lock:
            ctx.tracker.info(f"=== {run_dir.name} ===")
            if ctx.is_main:
                shared = share_done_stages(config, run_dir, donors)
                for stage, donor in shared.items():
                    ctx.tracker.info(
                        f"[{run_dir.name}] {stage}: finished stage shared from {donor}"
                    )
            barrier()
            run_pipeline(ctx)


def run_seed(
    layout: Layout,
    seed: int,
    config: str,
    common: Sequence[str],
    rows: Sequence[str],
    ablate: Sequence[str] = (),
) -> SeedResult:
    """Run (or resume) what ``rows`` (and the ablations) need for ``seed``, then collect them.

    Args:
        layout: where data and runs go.
        seed: the training seed (and, for the synthetic pair, the generator seed).
        config: YAML path or shipped config name.
        common: overrides for every run (quick sizes, the user's), before the seed's own.
        rows: names of :data:`~spcl.experiments.rows.ROWS`.
        ablate: names of :data:`~spcl.experiments.rows.ABLATIONS` (rows added after ``rows``).
    """
    base = [*common, *seed_overrides(load_config(config, list(common)), layout, seed)]
    base_config = load_config(config, base)  # the seed's data folders: the oracle reads them
    extra_rows, extra_runs = ablation_rows(ablate, base_config)
    result = SeedResult(specs=[*(ROWS[name] for name in rows), *extra_rows])
    done: list[Path] = []
    for run in runs_for(result.specs, base_config, extra_runs):
        run_dir = layout.run_dir(seed, run.name)
        overrides = run.all_overrides(base, run_dir)
        result.configs[run.name] = load_config(config, overrides)
        result.commands[run.name] = shlex.join(["spcl", "run", config, *overrides])
        _run_one(result.configs[run.name], run_dir, done)
        done.append(run_dir)
    for row in result.specs:
        run_dir = layout.run_dir(seed, row.run)
        result.rows[row.name] = collect_row(run_dir, row, result.configs[row.run])
    return result
