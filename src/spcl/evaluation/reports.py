"""Score files: ``metrics.json``, a per-class CSV, the confusion-matrix CSV and the text table.

Every file is written to a temporary file beside its destination and renamed into place, so a
crash never leaves a half-written report. Scores are in percent; JSON holds ``null`` (CSV an empty
cell) where a value is undefined (a class absent from ground truth and prediction).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spcl.base import atomic_write_bytes
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.evaluation.scores import SegmentationScores

__all__ = [
    "default_subsets",
    "titled",
    "write_confusion_csv",
    "write_csv",
    "write_json",
    "write_table",
]

JSON_INDENT = 2
CSV_COLUMNS = (
    "class",
    "train_id",
    "iou",
    "acc",
    "true_pos",
    "false_pos",
    "false_neg",
    "unlabelled_pred",
    "gt_pixels",
    "pred_pixels",
)
GT_PRED_CORNER = "gt \\ pred"  # top-left cell of the confusion CSV
CSV_COMMENT = "#"  # starts the title line of a titled CSV


def default_subsets(class_names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The class subsets whose mIoU the paper also reports for this label space.

    19 Cityscapes classes → ``{"16": ..., "13": ...}`` (SYNTHIA's subsets), SYNTHIA's 16 →
    ``{"13": ...}``, anything else → ``{}``.
    """
    names = tuple(class_names)
    if names == CITYSCAPES.names:
        return {"16": SYNTHIA_16_NAMES, "13": SYNTHIA_13_NAMES}
    if names == SYNTHIA_16_NAMES:
        return {"13": SYNTHIA_13_NAMES}
    return {}


def _subsets_or_default(
    scores: SegmentationScores, subsets: Mapping[str, Sequence[str]] | None
) -> Mapping[str, Sequence[str]]:
    return default_subsets(scores.class_names) if subsets is None else subsets


def write_json(
    scores: SegmentationScores,
    path: str | Path,
    subsets: Mapping[str, Sequence[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``scores.to_dict(subsets)`` (keys ``miou``, ``per_class_iou``, …) plus ``extra``.

    Args:
        scores: the scores.
        path: destination file.
        subsets: named class subsets adding ``miou_<name>``; None = :func:`default_subsets`.
        extra: more JSON-ready keys (e.g. the report of ``evaluate_folders``); they may not
            replace a score key.

    Raises:
        ValueError: ``extra`` repeats a score key, or holds NaN/inf.
    """
    payload = scores.to_dict(_subsets_or_default(scores, subsets))
    clash = sorted(set(payload) & set(extra or {}))
    if clash:
        raise ValueError(f"extra keys {clash} would replace score keys of the same name")
    payload.update(extra or {})
    text = json.dumps(payload, indent=JSON_INDENT, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())
    return Path(path)


def write_table(
    scores: SegmentationScores,
    path: str | Path,
    subsets: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
) -> Path:
    """Write the plain-text per-class table (``scores.format_table``), under ``title`` if given."""
    table = scores.format_table(_subsets_or_default(scores, subsets))
    atomic_write_bytes(path, (titled(table, title) + "\n").encode())
    return Path(path)


def titled(table: str, title: str | None) -> str:
    """``table`` under a title line naming what it scores (the table alone without a title)."""
    return table if not title else f"{title}\n{table}"


def write_csv(
    scores: SegmentationScores,
    path: str | Path,
    subsets: Mapping[str, Sequence[str]] | None = None,
    unlabelled: Mapping[str, int] | None = None,
    title: str | None = None,
) -> Path:
    """Write one row per class with every number, then one row per mean.

    With ``title``, the first line is ``# TITLE`` (what the file scores; read the file with
    ``pandas.read_csv(path, comment="#")`` or skip that line).

    Class rows: ``class, train_id, iou, acc`` (percent) and the pixel counts ``true_pos,
    false_pos, false_neg, unlabelled_pred, gt_pixels, pred_pixels``. Mean rows (``mIoU``,
    ``mAcc``, ``pixel acc``, ``mIoU (<subset>)``) fill ``class`` and ``iou`` or ``acc`` only.

    Args:
        scores: the scores.
        path: destination file.
        subsets: named class subsets; None = :func:`default_subsets`.
        unlabelled: per class, ground-truth pixels predicted as no class (``evaluate_folders``'
            ``report["unlabelled_predictions"]``); they are part of ``false_neg`` and
            ``gt_pixels``. None = zero.
    """
    matrix = scores.confusion.astype(np.int64)
    missed = np.array([int((unlabelled or {}).get(n, 0)) for n in scores.class_names])
    true_pos = np.diag(matrix)
    gt_pixels = matrix.sum(axis=1) + missed
    pred_pixels = matrix.sum(axis=0)
    buffer = io.StringIO()
    if title:
        buffer.write(f"{CSV_COMMENT} {title}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, name in enumerate(scores.class_names):
        counts = (true_pos[i], pred_pixels[i] - true_pos[i], gt_pixels[i] - true_pos[i])
        counts += (missed[i], gt_pixels[i], pred_pixels[i])
        row = [name, i, _cell(scores.iou[i]), _cell(scores.acc[i]), *(int(c) for c in counts)]
        writer.writerow(row)
    blank = [""] * (len(CSV_COLUMNS) - 4)
    writer.writerow([f"mIoU ({scores.num_present} classes)", "", _cell(scores.miou), "", *blank])
    writer.writerow(["mAcc", "", "", _cell(scores.macc), *blank])
    writer.writerow(["pixel acc", "", "", _cell(scores.pixel_acc), *blank])
    for name, subset in _subsets_or_default(scores, subsets).items():
        writer.writerow([f"mIoU ({name})", "", _cell(scores.miou_over(subset)), "", *blank])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return Path(path)


def write_confusion_csv(scores: SegmentationScores, path: str | Path) -> Path:
    """Write the confusion matrix counts: a header of predicted classes, one row per GT class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([GT_PRED_CORNER, *scores.class_names])
    for name, row in zip(scores.class_names, scores.confusion.tolist(), strict=True):
        writer.writerow([name, *row])
    atomic_write_bytes(path, buffer.getvalue().encode())
    return Path(path)


def _cell(value: float) -> str:
    """Full-precision number, or an empty cell for NaN."""
    return "" if math.isnan(value) else repr(float(value))
