"""Statistics of a demo or bench over seeds: mean ± std per row, gap closed, differences.

Per row: mean ± std of the target-val mIoU over seeds (sample standard deviation; 0 for one seed),
the share of the source-only → oracle gap it closes (from the means), its wall time, and whether
it differs from the ``spcl`` row and from the self-training control. "Differs" is a deliberately
plain rule: the two mean ± std intervals do not overlap (``|Δmean| > std_a + std_b``); with one
seed no row is called different.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spcl.experiments.rows import (
    CONTROL_ROW,
    HIGH_ROW,
    LOW_ROW,
    METHOD_ROW,
    ONLINE_ROW,
    ONLINE_SOURCE_ONLY_ROW,
    Row,
)

__all__ = ["PERCENT", "Published", "build_payload", "gap_closed", "intervals_differ", "mean_std"]

PERCENT = 100.0


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
    rows: Sequence[Row],
    per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]],
    meta: Mapping[str, Any],
    published: Sequence[Published] = (),
) -> dict[str, Any]:
    """Every number of the bench: per row, its per-seed results and their statistics.

    Args:
        rows: the report's rows (name, title, run, stage, kind), in report order.
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
        # the online rows against their own control (one ingredient added or removed)
        online = stats["kind"] in ("online", "ablation") and stats["stage"] == "online"
        stats["vs_online"] = _compare(stats, out.get(ONLINE_ROW)) if online else None
        # every online row against the online recipe's own source-only run (the SPCL chain's
        # own source-only run is the gap's low end, source_only)
        own = out.get(ONLINE_SOURCE_ONLY_ROW) if stats["stage"] == "online" else None
        stats["vs_source_only"] = _compare(stats, own)
    first = next(iter(out.values()))
    return {
        "rows": out,
        "classes": list(first["per_class_mean"]),
        "published": [vars(p) for p in published],
        "_meta": dict(meta),
    }
