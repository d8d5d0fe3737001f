"""The bench's outputs: ``results.json``, ``report.md`` and two PNG plots.

Per row: mean ± std of the target-val mIoU over seeds (sample standard deviation; 0 for one seed),
the share of the source-only → oracle gap it closes (from the means), its wall time, and whether
it differs from the ``spcl`` row and from the self-training control. "Differs" is a deliberately
plain rule: the two mean ± std intervals do not overlap (``|Δmean| > std_a + std_b``); with one
seed no row is called different. ``results.json`` keeps every per-seed number and each row's
resolved config; the plots are a bar chart with error bars and a rows × classes IoU heatmap.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spcl.engine.checkpoint import atomic_write_bytes

__all__ = [
    "Published",
    "build_payload",
    "format_summary",
    "gap_closed",
    "intervals_differ",
    "mean_std",
    "plot_class_heatmap",
    "plot_miou_bars",
    "write_markdown",
    "write_outputs",
]

METHOD_ROW, CONTROL_ROW = "spcl", "self_training_control"  # every row is compared to these two
LOW_ROW, HIGH_ROW = "source_only", "oracle"  # the ends of the gap that rows close
PERCENT = 100.0
DPI = 110
BAR_ROW_INCHES = 0.42  # height per row of the bar chart
CELL_INCHES = 0.5  # heatmap cell
KIND_COLOURS = {
    "baseline": "#9e9e9e",
    "control": "#e69f00",
    "method": "#0072b2",
    "bound": "#009e73",
    "ablation": "#cc79a7",
}
DARK_CELL = 55.0  # heatmap cells above this IoU get white text
ABSENT_GREY = "#eeeeee"
SECONDS_DECIMALS_BELOW = 10.0  # times under 10 s get one decimal
SIGNIFICANT = "*"  # marks a row whose mean ± std interval does not overlap the other's


@dataclass(frozen=True)
class Published:
    """A published number shown beside ours (real benchmarks only)."""

    method: str
    metric: str  # key of our results it compares with: miou, miou_13, ...
    value: float
    source: str  # the paper, with where in it the number is


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; 0.0 for one value) of the non-None values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None, None
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))


def gap_closed(value: float | None, low: float | None, high: float | None) -> float | None:
    """Percent of the ``low`` → ``high`` gap that ``value`` recovers (None if undefined)."""
    if value is None or low is None or high is None or high <= low:
        return None
    return PERCENT * (value - low) / (high - low)


def intervals_differ(mean_a: float, std_a: float, mean_b: float, std_b: float) -> bool:
    """Whether ``mean ± std`` of a and b do not overlap."""
    return abs(mean_a - mean_b) > std_a + std_b


def _stats(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row's statistics over its per-seed entries."""
    first = entries[0]
    classes = list(first["per_class_iou"])
    miou_keys = [k for k in first if k.startswith("miou")]
    per_class = {c: mean_std([e["per_class_iou"][c] for e in entries]) for c in classes}
    return {
        "n": len(entries),
        **{f"{k}_mean": mean_std([e[k] for e in entries])[0] for k in miou_keys},
        **{f"{k}_std": mean_std([e[k] for e in entries])[1] for k in miou_keys},
        "seconds_mean": mean_std([e["seconds"] for e in entries])[0],
        "per_class_mean": {c: v[0] for c, v in per_class.items()},
        "per_class_std": {c: v[1] for c, v in per_class.items()},
    }


def _compare(row: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if other is None or row is other or row["miou_mean"] is None or other["miou_mean"] is None:
        return None
    delta = row["miou_mean"] - other["miou_mean"]
    enough = row["n"] > 1 and other["n"] > 1
    differs = (
        intervals_differ(row["miou_mean"], row["miou_std"], other["miou_mean"], other["miou_std"])
        if enough
        else None
    )
    return {"delta": delta, "differs": differs}


def build_payload(
    rows: Sequence[Any],
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
    meta: Mapping[str, Any],
    published: Sequence[Published] = (),
) -> dict[str, Any]:
    """Every number of the bench: per row, its per-seed results and their statistics.

    Args:
        rows: :class:`spcl.bench.Row` objects (name, title, run, stage, kind), in report order.
        per_seed: seed → row name → ``{"miou", "miou_<subset>"..., "per_class_iou", "seconds",
            "run_dir", "config"}``.
        meta: seeds, command, machine, versions, times (stored under ``_meta``).
        published: other papers' numbers to show beside ours.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entries = [per_seed[seed][row.name] for seed in per_seed]
        out[row.name] = {
            "title": row.title,
            "run": row.run,
            "stage": row.stage,
            "kind": row.kind,
            **_stats(entries),
            "seeds": {str(seed): dict(per_seed[seed][row.name]) for seed in per_seed},
        }
    low, high = out.get(LOW_ROW, {}).get("miou_mean"), out.get(HIGH_ROW, {}).get("miou_mean")
    for stats in out.values():
        stats["gap_closed"] = gap_closed(stats["miou_mean"], low, high)
        stats["vs_spcl"] = _compare(stats, out.get(METHOD_ROW))
        stats["vs_control"] = _compare(stats, out.get(CONTROL_ROW))
    first = next(iter(out.values()))
    return {
        "rows": out,
        "classes": list(first["per_class_mean"]),
        "published": [vars(p) for p in published],
        "_meta": dict(meta),
    }


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
    """The main Markdown table: mIoU mean ± std, gap closed, Δ vs spcl and control, time."""
    lines = [
        "| row | mIoU mean ± std | gap closed | vs spcl | vs control | time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in payload["rows"].items():
        closed = row["gap_closed"]
        shown_gap = "" if closed is None or name in (LOW_ROW, HIGH_ROW) else f"{closed:.0f}%"
        lines.append(
            f"| `{name}` | {_num(row['miou_mean'])} ± {_num(row['miou_std'])} | {shown_gap} | "
            f"{_versus(row['vs_spcl'])} | {_versus(row['vs_control'])} | "
            f"{_seconds(row['seconds_mean'])} |"
        )
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


def _save_png(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_miou_bars(payload: Mapping[str, Any], path: Path) -> Path:
    """Horizontal bars of mean mIoU per row with ± std error bars; source-only/oracle lines."""
    names = list(payload["rows"])
    rows = [payload["rows"][n] for n in names]
    means = np.array([r["miou_mean"] if r["miou_mean"] is not None else np.nan for r in rows])
    stds = np.array([r["miou_std"] if r["miou_std"] is not None else 0.0 for r in rows])
    fig = Figure(figsize=(8.0, 1.2 + BAR_ROW_INCHES * len(names)), dpi=DPI)
    ax = fig.add_subplot()
    positions = np.arange(len(names))[::-1]  # first row on top
    colours = [KIND_COLOURS.get(r["kind"], "black") for r in rows]
    ax.barh(positions, np.nan_to_num(means), xerr=stds, color=colours, capsize=3)
    for y, mean, std in zip(positions, means, stds, strict=True):
        if not np.isnan(mean):
            ax.text(mean + std + 0.5, y, f"{mean:.1f}", va="center", fontsize=8)
    for key, style in ((LOW_ROW, ":"), (HIGH_ROW, "--")):
        value = payload["rows"].get(key, {}).get("miou_mean")
        if value is not None:
            ax.axvline(value, color="black", linestyle=style, linewidth=0.8, label=key)
    ax.set_yticks(positions, names)
    ax.set_xlabel(f"target-val mIoU (mean ± std over {len(payload['_meta']['seeds'])} seed(s))")
    ax.set_xlim(0.0, max(PERCENT / 2, float(np.nanmax(means + stds, initial=0.0)) + 8.0))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save_png(fig, path)


def plot_class_heatmap(payload: Mapping[str, Any], path: Path) -> Path:
    """Rows × classes mean IoU; absent classes grey."""
    names, classes = list(payload["rows"]), payload["classes"]
    values = np.array(
        [
            [
                np.nan if (v := payload["rows"][n]["per_class_mean"][c]) is None else v
                for c in classes
            ]
            for n in names
        ],
        dtype=np.float64,
    )  # (rows, classes)
    fig = Figure(
        figsize=(3.0 + CELL_INCHES * len(classes), 1.6 + CELL_INCHES * len(names)), dpi=DPI
    )
    ax = fig.add_subplot()
    ax.set_facecolor(ABSENT_GREY)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=PERCENT)
    for i, j in zip(*np.nonzero(~np.isnan(values)), strict=True):
        colour = "black" if values[i, j] > DARK_CELL else "white"
        ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("per-class IoU, mean over seeds (grey: class absent)")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return _save_png(fig, path)


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


def write_markdown(payload: Mapping[str, Any], path: Path, plots: Mapping[str, Path]) -> Path:
    """``report.md``: setup, the main table, published numbers, plots, per-class, definitions."""
    meta = payload["_meta"]
    published = (
        f"## Published numbers\n\n{_published_table(payload)}\n\n" if payload["published"] else ""
    )
    text = f"""# spcl bench: what each part of SPCL buys

{_setup(meta)}

## Target-val mIoU

{format_summary(payload)}

Mean ± sample std over {len(meta["seeds"])} seed(s). "Gap closed" is the share of the
source-only → oracle gap (between the means) that the row recovers. "vs spcl" and "vs control"
give the difference of means; `{SIGNIFICANT}` marks a row whose mean ± std interval does not overlap
the other row's (a plain rule, not a statistical test; with one seed nothing is marked). Time is
the wall time of every stage the row's model needs, from scratch (stages shared between rows count
in each row; AdaBN counts its recalibration pass).

{published}## Plots

![mIoU per row]({plots["miou"].name})

![per-class IoU]({plots["per_class"].name})

## Per-class IoU (mean over seeds)

{_per_class_table(payload)}

## mIoU per seed

{_per_seed_table(payload)}

## What each row is (command for seed {meta["seeds"][0]})

{_row_definitions(payload)}

Rows run on the same schedules; stages whose config and inputs are identical (same pipeline
fingerprint) are computed once and hard-linked into the runs that share them. `results.json` holds
every number above, each row's per-seed results and resolved config.
"""
    atomic_write_bytes(path, text.encode())
    return path


def write_outputs(out: Path, payload: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``results.json``, ``miou.png``, ``per_class_iou.png`` and ``report.md`` into ``out``.

    Raises:
        ValueError: a number is NaN or infinite (JSON would not hold it).
    """
    out = Path(out)
    results = out / "results.json"
    atomic_write_bytes(results, json.dumps(payload, indent=1, allow_nan=False).encode())
    plots = {
        "miou": plot_miou_bars(payload, out / "miou.png"),
        "per_class": plot_class_heatmap(payload, out / "per_class_iou.png"),
    }
    report = write_markdown(payload, out / "report.md", plots)
    return {"results": results, "report": report, **plots}
