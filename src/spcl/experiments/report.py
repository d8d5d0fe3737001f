"""The one report writer of the demo and the bench: ``results.json``, ``report.md``, plots.

``report.md``: the setup (machine, versions, command), the main table (mIoU mean ± std, gap
closed, difference to ``spcl`` and to the self-training control, time), published numbers where
given, the figures, per-class IoU, mIoU per seed and what each row is with the command that
reproduces it. The numbers come from :func:`spcl.experiments.payload.build_payload`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spcl.base import atomic_write_bytes
from spcl.experiments.figures import plot_class_heatmap, plot_miou_bars
from spcl.experiments.rows import (
    CONTROL_ROW,
    HIGH_ROW,
    LOW_ROW,
    METHOD_ROW,
    ONLINE_ROW,
    ONLINE_SOURCE_ONLY_ROW,
)

__all__ = ["SIGNIFICANT", "format_summary", "write_markdown", "write_outputs"]

SECONDS_DECIMALS_BELOW = 10.0  # times under 10 s get one decimal
SIGNIFICANT = "*"  # marks a row whose mean ± std interval does not overlap the other's
Figures = Sequence[tuple[str, Path]]  # (caption, PNG in the report's folder)
COMPARISONS = (
    ("vs_spcl", METHOD_ROW, "vs spcl"),
    ("vs_control", CONTROL_ROW, "vs control"),
    ("vs_online", ONLINE_ROW, "vs online"),  # the online rows only (their own control)
    ("vs_source_only", ONLINE_SOURCE_ONLY_ROW, "vs own source-only"),  # the online rows only
)


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return _num(value, 0 if value is not None and value >= SECONDS_DECIMALS_BELOW else 1)


def _versus(comparison: Mapping[str, Any] | None) -> str:
    if comparison is None:
        return "—"
    delta = round(comparison["delta"], 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{delta:+.1f}{' ' + SIGNIFICANT if comparison['differs'] else ''}"


def format_summary(payload: Mapping[str, Any]) -> str:
    """The main Markdown table: mIoU mean ± std, gap closed, Δ vs spcl and control, time.

    A comparison column is left out when its row is not in the report (the demo has no control)
    or no row is compared with it (the demo's online row has no variants).
    """
    rows = payload["rows"]
    compared = [
        (key, label)
        for key, name, label in COMPARISONS
        if name in rows and any(row.get(key) for row in rows.values())
    ]
    seeds = len(payload["_meta"]["seeds"])
    header = ["row", "mIoU mean ± std" if seeds > 1 else "mIoU", "gap closed"]
    header += [label for _, label in compared] + ["time (s)"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for name, row in rows.items():
        closed = row["gap_closed"]
        shown_gap = "" if closed is None or name in (LOW_ROW, HIGH_ROW) else f"{closed:.0f}%"
        miou = _num(row["miou_mean"]) + (f" ± {_num(row['miou_std'])}" if seeds > 1 else "")
        cells = [f"`{name}`", miou, shown_gap, *(_versus(row[key]) for key, _ in compared)]
        lines.append("| " + " | ".join([*cells, _seconds(row["seconds_mean"])]) + " |")
    return "\n".join(lines)


def _per_class_table(payload: Mapping[str, Any]) -> str:
    names = list(payload["rows"])
    lines = ["| class | " + " | ".join(f"`{n}`" for n in names) + " |"]
    lines.append("| --- |" + " ---: |" * len(names))
    for cls in payload["classes"]:
        cells = [_num(payload["rows"][n]["per_class_mean"][cls]) for n in names]
        lines.append(
            f"| {cls} | " + " | ".join(c if c != "n/a" else "absent" for c in cells) + " |"
        )
    return "\n".join(lines)


def _per_seed_table(payload: Mapping[str, Any]) -> str:
    seeds = [str(s) for s in payload["_meta"]["seeds"]]
    lines = ["| row | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("| --- |" + " ---: |" * len(seeds))
    for name, row in payload["rows"].items():
        lines.append(
            f"| `{name}` | " + " | ".join(_num(row["seeds"][s]["miou"], 2) for s in seeds) + " |"
        )
    return "\n".join(lines)


def _published_table(payload: Mapping[str, Any]) -> str:
    ours = payload["rows"].get("spcl_self_training") or payload["rows"].get(METHOD_ROW) or {}
    lines = [
        "| method | metric | published | ours (SPCL + self-training, mean ± std) | source |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for entry in payload["published"]:
        key = entry["metric"]
        mine = f"{_num(ours.get(f'{key}_mean'))} ± {_num(ours.get(f'{key}_std'))}"
        lines.append(
            f"| {entry['method']} | {key} | {entry['value']:.1f} | {mine} | {entry['source']} |"
        )
    return "\n".join(lines)


def _setup(meta: Mapping[str, Any]) -> str:
    machine = meta["machine"]
    gpu = f", GPU {machine['gpu']}" if "gpu" in machine else ""
    quick = " (quick variant: tiny sizes and schedules; the numbers mean nothing)" * meta["quick"]
    return (
        f"Config `{meta['config']}`{quick}; seeds {', '.join(map(str, meta['seeds']))} "
        f"(each sets the training seed and, for the synthetic pair, the generator seed).\n\n"
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} torch threads, device {machine['device']}{gpu}. "
        f"Versions: spcl {machine['spcl']}, Python {machine['python']}, "
        f"torch {machine['torch']}, NumPy {machine['numpy']}.\n\n"
        f"Wall time of this invocation {meta['seconds']:.0f} s (a resumed bench counts only "
        f"what it ran); all stages of all runs, each counted once: {meta['stage_seconds']:.0f} s."
        f"\n\nCommand:\n\n```\n{meta['command']}\n```"
    )


def _row_definitions(payload: Mapping[str, Any]) -> str:
    commands = payload["_meta"].get("run_commands", {})
    lines = []
    for name, row in payload["rows"].items():
        command = commands.get(row["run"], "")
        lines.append(
            f"- `{name}`: {row['title']}; the model of stage `{row['stage']}` of run "
            f"`{row['run']}`.\n\n  ```\n  {command}\n  ```"
        )
    return "\n".join(lines)


def write_markdown(
    payload: Mapping[str, Any], path: Path, figures: Figures, title: str, intro: str = ""
) -> Path:
    """``report.md``: setup, the main table, published numbers, figures, per-class, definitions."""
    meta = payload["_meta"]
    seeds = len(meta["seeds"])
    published = (
        f"## Published numbers\n\n{_published_table(payload)}\n\n" if payload["published"] else ""
    )
    pictures = "\n\n".join(f"![{caption}]({file.name})\n\n*{caption}*" for caption, file in figures)
    per_seed = f"## mIoU per seed\n\n{_per_seed_table(payload)}\n\n" if seeds > 1 else ""
    text = f"""# {title}

{intro}{_setup(meta)}

## Target-val mIoU

{format_summary(payload)}

Mean ± sample std over {seeds} seed(s). "Gap closed" is the share of the
source-only → oracle gap (between the means) that the row recovers. "vs spcl" and "vs control"
(and, for the online rows, "vs online", their own control, and "vs own source-only", the
online recipe trained on the source alone) give the difference of means;
`{SIGNIFICANT}` marks a row whose mean ± std interval does not overlap the other row's (a plain
rule, not a statistical test; with one seed nothing is marked). Time is the wall time of every
stage the row's model needs, from scratch (stages shared between rows count in each row; AdaBN
counts its recalibration pass).

{published}## Figures

{pictures}

## Per-class IoU (mean over seeds)

{_per_class_table(payload)}

{per_seed}## What each row is (command for seed {meta["seeds"][0]})

{_row_definitions(payload)}

Stages whose config and inputs are identical (same pipeline fingerprint) are computed once and
hard-linked into the runs that share them. `results.json` holds every number above.
"""
    atomic_write_bytes(path, text.encode())
    return path


def write_outputs(
    out: Path,
    payload: Mapping[str, Any],
    *,
    title: str,
    intro: str = "",
    figures: Figures = (),
    results: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``miou.png``, ``per_class_iou.png`` and ``report.md`` into ``out``.

    Args:
        out: the report's folder.
        payload: :func:`~spcl.experiments.payload.build_payload`'s output.
        title, intro: the report's heading and an opening paragraph.
        figures: more ``(caption, PNG)`` pictures, shown after the two plots.
        results: what ``results.json`` holds (default: the payload itself).

    Raises:
        ValueError: a number is NaN or infinite (JSON would not hold it).
    """
    out = Path(out)
    results_path = out / "results.json"
    text = json.dumps(payload if results is None else results, indent=1, allow_nan=False)
    atomic_write_bytes(results_path, text.encode())
    plots = {
        "miou": plot_miou_bars(payload, out / "miou.png"),
        "per_class": plot_class_heatmap(payload, out / "per_class_iou.png"),
    }
    shown = [
        ("target-val mIoU per row, mean ± std over seeds", plots["miou"]),
        ("per-class IoU per row, mean over seeds", plots["per_class"]),
        *figures,
    ]
    report = write_markdown(payload, out / "report.md", shown, title, intro)
    return {"results": results_path, "report": report, **plots}
