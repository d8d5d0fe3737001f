"""``spcl demo``: the whole method on the built-in synthetic pair, with its baselines, in minutes.

One seed of :data:`~spcl.experiments.rows.DEMO_ROWS` on one generated pair (``OUT/data``), in
four resumable pipeline runs (``OUT/runs/<run>``):

* ``source_only``: warm-up without the adversarial term, evaluated (the source-only baseline);
* ``spcl``: the published SPCL chain (adversarial warm-up → prototypes → pseudo-labels → SPCL
  adaptation → pseudo-labels → self-training → evaluation), which gives three rows;
* ``online``: the online recipe (EMA teacher, ClassMix, the teacher's confidence weight) started
  from the source-only warm-up, which it shares; the headline adapted row;
* ``oracle``: the same warm-up trained on target labels (the upper bound).

It prints the table of target-val mIoU and the command that reproduces each row, and writes
``results.json`` (one entry per row: ``miou``, ``per_class_iou`` in percent, ``run``, ``model``;
and ``_meta``), and ``report.md`` with the per-class table and figures (the report writer of the
bench: :mod:`spcl.experiments.report`). Run the same command again after an interruption.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from spcl.experiments.bench import machine_info
from spcl.experiments.figures import (
    plot_feature_embeddings,
    plot_row_iou_bars,
    plot_row_predictions,
)
from spcl.experiments.payload import build_payload
from spcl.experiments.report import format_summary, write_outputs
from spcl.experiments.rows import (
    DEMO_ROWS,
    HIGH_ROW,
    LOW_ROW,
    ONLINE_ROW,
    QUICK_OVERRIDES,
    ROWS,
)
from spcl.experiments.runner import Layout, SeedResult, run_seed
from spcl.experiments.sharing import total_stage_seconds
from spcl.run_dir import RunDir, metrics_path, model_path

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = "demo"  # shipped config (src/spcl/configs/demo.yaml)
HEADLINE_ROW = ONLINE_ROW  # the adapted row the figures show beside source-only
CHAIN_ROW = "spcl_self_training"  # the published SPCL chain's last row, shown beside it
FEATURE_RUN = "spcl"  # whose features and prototypes are embedded before and after adaptation
TITLE = "spcl demo report"
INTRO = (
    "The pipeline and its baselines on the built-in synthetic pair (`spcl demo`). These rows "
    "alone do not say what SPCL's contrastive term contributes: `spcl bench` adds the controls "
    "(AdaBN, plain self-training) on the same budget and seeds.\n\n"
)


def _legacy_results(out: Path, result: SeedResult, meta: dict[str, Any]) -> dict[str, Any]:
    """``results.json``: per row ``miou``, ``per_class_iou``, ``run``, ``model``; ``_meta``."""
    rows = {
        name: {
            "miou": entry["miou"],
            "per_class_iou": entry["per_class_iou"],
            "run": str(out / "runs" / ROWS[name].run),
            "model": entry["model"],
        }
        for name, entry in result.rows.items()
    }
    return {**rows, "_meta": meta}


def _figures(layout: Layout, seed: int, result: SeedResult) -> list[tuple[str, Path]]:
    """Predictions, per-class IoU bars and feature embeddings of the demo's models."""
    from spcl.stages.builders import domain_dataset  # torch: imported when the demo runs

    out, data = layout.out, result.configs[FEATURE_RUN].data
    rows = (LOW_ROW, CHAIN_ROW, HEADLINE_ROW, HIGH_ROW)
    run = {name: layout.run_dir(seed, ROWS[name].run) for name in rows}
    shown = (LOW_ROW, CHAIN_ROW, HEADLINE_ROW)
    target_val = domain_dataset(data.target_val, with_labels=True, train=False)
    source_val = dataclasses.replace(data.source, split=data.target_val.split)
    panels = plot_row_predictions(
        {name: model_path(run[name], ROWS[name].stage) for name in shown},
        target_val,
        out / "panels.png",
    )
    bars = plot_row_iou_bars(
        {name: metrics_path(run[name], ROWS[name].stage) for name in run},
        out / "per_class_iou_bars.png",
    )
    spcl_run = RunDir(layout.run_dir(seed, FEATURE_RUN))
    before, after = plot_feature_embeddings(
        [
            (spcl_run.model("warmup"), spcl_run.prototypes("prototypes")),
            (spcl_run.model("adapt"), spcl_run.prototypes("adapt")),
        ],
        {
            "source": domain_dataset(source_val, with_labels=True, train=False),
            "target": target_val,
        },
        [out / "features_warmup.png", out / "features_adapt.png"],
    )
    return [
        (f"target image, ground truth, then the predictions of {', '.join(shown)}", panels),
        (f"per-class IoU of {', '.join(run)}", bars),
        ("pixel features (PCA) and prototypes after the warm-up", before),
        ("the same after SPCL adaptation", after),
    ]


def run_demo(
    out: str | Path, seed: int = 0, *, quick: bool = False, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run (or resume) the demo into ``out``; returns the results written to ``results.json``."""
    layout = Layout(Path(out), per_seed=False)
    begin = time.perf_counter()
    common = [*(QUICK_OVERRIDES if quick else ()), *extra]
    result = run_seed(layout, seed, DEMO_CONFIG, common, DEMO_ROWS)
    seconds = round(time.perf_counter() - begin, 1)
    meta = {
        "seed": seed,
        "seeds": [seed],
        "quick": quick,
        "config": DEMO_CONFIG,
        "seconds": seconds,
        "stage_seconds": total_stage_seconds(layout.out / "runs"),
        "commands": result.commands,
        "run_commands": result.commands,
        "command": " ".join(
            ["spcl demo --out", str(out), f"--seed {seed}", *(["--quick"] * quick)]
        ),
        "machine": machine_info(DEMO_CONFIG, common),
    }
    payload = build_payload(result.specs, {seed: result.rows}, meta)
    results = _legacy_results(layout.out, result, meta)
    write_outputs(
        layout.out,
        payload,
        title=TITLE,
        intro=INTRO,
        figures=_figures(layout, seed, result),
        results=results,
    )
    print(format_summary(payload))
    print()
    for row in result.specs:
        print(f"{row.name}: {result.commands[row.run]}  # model of stage '{row.stage}'")
    print(f"\nreport: {layout.out / 'report.md'}   results: {layout.out / 'results.json'}")
    print(f"({seconds:.0f} s)")
    return results
