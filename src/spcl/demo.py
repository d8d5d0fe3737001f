"""``spcl demo``: the whole method on the built-in synthetic pair, with its baselines, in minutes.

Three pipeline runs share one generated pair (``OUT/data``):

* ``runs/source_only``: warm-up without the adversarial term, evaluated (the source-only baseline);
* ``runs/spcl``: the full pipeline (adversarial warm-up → prototypes → pseudo-labels → SPCL
  adaptation → pseudo-labels → self-training → evaluation), which gives three rows;
* ``runs/oracle``: the same warm-up trained on target labels (the upper bound).

It prints a table of target-val mIoU with the command that reproduces each row, and writes
``results.json`` (one entry per row: ``miou`` and ``per_class_iou`` in percent), ``report.md``
with the per-class table, and ``panels.png`` (image, ground truth, source-only, SPCL + ST).
Every run is resumable: run the same command again after an interruption.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spcl.config import load_config
from spcl.context import open_run
from spcl.engine.checkpoint import atomic_write_bytes
from spcl.pipeline import run_lock, run_pipeline

__all__ = ["QUICK_OVERRIDES", "ROWS", "DemoRun", "demo_runs", "metrics_file", "run_demo"]

DEMO_CONFIG = "demo"  # shipped config (src/spcl/configs/demo.yaml)
# A CI-sized variant: tiny images, model and schedule; numbers mean nothing, the plumbing is real.
QUICK_OVERRIDES = (
    "data.synthetic.n_train=16",
    "data.synthetic.n_val=6",
    "data.synthetic.size=[64, 128]",
    "data.num_workers=0",
    "model.width=8",
    "warmup.optim.max_iter=6",
    "warmup.optim.stop_iter=6",
    "warmup.optim.batch_size=4",
    "adapt.optim.max_iter=4",
    "adapt.optim.stop_iter=4",
    "adapt.optim.batch_size=2",
    "self_train.optim.max_iter=4",
    "self_train.optim.stop_iter=4",
    "self_train.optim.batch_size=4",
    "self_train.crop=[64, 128]",
    "run.log_every=2",
    "run.ckpt_every=2",
)
# result row → (run, stage whose model it evaluates)
ROWS: dict[str, tuple[str, str]] = {
    "source_only": ("source_only", "warmup"),
    "adversarial_warmup": ("spcl", "warmup"),
    "spcl": ("spcl", "adapt"),
    "spcl_self_training": ("spcl", "self_train"),
    "oracle": ("oracle", "warmup"),
}
ROW_TITLES = {
    "source_only": "source only (warm-up, no adversarial term)",
    "adversarial_warmup": "adversarial warm-up (output space)",
    "spcl": "SPCL adaptation",
    "spcl_self_training": "SPCL + self-training",
    "oracle": "oracle (trained on target labels)",
}


@dataclass(frozen=True)
class DemoRun:
    """One pipeline run of the demo: its folder and its overrides of the demo config."""

    name: str
    overrides: tuple[str, ...]

    def command(self, config: str = DEMO_CONFIG) -> str:
        return shlex.join(["spcl", "run", config, *self.overrides])


def demo_runs(out: Path, seed: int, quick: bool, extra: tuple[str, ...] = ()) -> list[DemoRun]:
    """The demo's runs, with every override that makes them (data root, seeds, quick sizes)."""
    data = out / "data"
    common = (
        f"data.source.root={data}",
        f"data.target.root={data}",
        f"data.target_val.root={data}",
        f"data.synthetic.seed={seed}",
        f"run.seed={seed}",
        *(QUICK_OVERRIDES if quick else ()),
        *extra,
    )
    warmup_only = ("run.stages=[warmup, evaluate]", "warmup.adversarial=false")
    runs = {
        "source_only": warmup_only,
        "spcl": (),
        "oracle": (*warmup_only, "data.source.domain=target"),
    }
    return [
        DemoRun(name, (*common, *specific, f"run.out={out / 'runs' / name}"))
        for name, specific in runs.items()
    ]


def metrics_file(out: Path, row: str) -> Path:
    """The ``metrics.json`` behind a result row."""
    run, stage = ROWS[row]
    return out / "runs" / run / "07_evaluate" / stage / "metrics.json"


def _collect(out: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for row, (run, _) in ROWS.items():
        metrics = json.loads(metrics_file(out, row).read_text())
        results[row] = {
            "miou": metrics["miou"],
            "per_class_iou": metrics["per_class_iou"],
            "run": str(out / "runs" / run),
            "model": str(metrics.get("weights", "")),
        }
    return results


def _gap_closed(results: dict[str, dict[str, Any]], row: str) -> float | None:
    low, high = results["source_only"]["miou"], results["oracle"]["miou"]
    value = results[row]["miou"]
    if None in (low, high, value) or high <= low:
        return None
    return 100.0 * (value - low) / (high - low)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The terminal/Markdown table: row, mIoU, share of the source-only → oracle gap closed."""
    lines = ["| row | mIoU (target val) | gap closed |", "| --- | ---: | ---: |"]
    for row in ROWS:
        miou = results[row]["miou"]
        closed = _gap_closed(results, row)
        lines.append(
            f"| {ROW_TITLES[row]} | {'n/a' if miou is None else f'{miou:.1f}'} | "
            f"{'' if closed is None or row in ('source_only', 'oracle') else f'{closed:.0f}%'} |"
        )
    return "\n".join(lines)


def run_demo(
    out: str | Path, seed: int = 0, *, quick: bool = False, extra: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Run (or resume) the demo into ``out``; returns the results written to ``results.json``."""
    out = Path(out)
    begin = time.perf_counter()
    runs = demo_runs(out, seed, quick, extra)
    for run in runs:
        config = load_config(DEMO_CONFIG, run.overrides)
        with open_run(config) as ctx, run_lock(ctx.run_dir):
            ctx.tracker.info(f"=== demo: {run.name} ===")
            run_pipeline(ctx)
    results = _collect(out)
    seconds = time.perf_counter() - begin
    commands = {run.name: run.command() for run in runs}
    payload = {
        **results,
        "_meta": {"seed": seed, "quick": quick, "seconds": round(seconds, 1), "commands": commands},
    }
    atomic_write_bytes(out / "results.json", json.dumps(payload, indent=2).encode())
    from spcl.demo_report import write_report

    write_report(out, results, commands, seconds, seed, quick)
    print(format_table(results))
    print()
    for row, (run, stage) in ROWS.items():
        print(f"{row}: {commands[run]}  # model of stage '{stage}'")
    print(f"\nreport: {out / 'report.md'}   results: {out / 'results.json'}   ({seconds:.0f} s)")
    return results
