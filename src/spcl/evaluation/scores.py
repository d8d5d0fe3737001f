"""IoU tables of a confusion matrix: per-class IoU and accuracy, their means, pixel accuracy.

Torch-free (numpy only), so that folder evaluation (``spcl evaluate --pred-dir``) never imports
torch; :mod:`spcl.evaluation.metrics` re-exports everything here next to its streaming
``ConfusionMatrix``. The conventions are those of cityscapesscripts' pixel-level evaluation; see
:mod:`spcl.evaluation.metrics` for absent and predicted-only classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spcl.data.labels import class_subset_indices

__all__ = [
    "SegmentationScores",
    "scores_from_confusion",
]

PERCENT = 100.0  # scores are reported in percent, as in the paper's tables
ABSENT = "absent"  # how tables show a class absent from ground truth and prediction
UNDEFINED = "n/a"  # how tables show an accuracy with no ground-truth pixel (predicted-only class)


@dataclass(frozen=True, eq=False)
class SegmentationScores:
    """Per-class and mean scores of one confusion matrix, all in percent.

    Attributes:
        class_names: class names in matrix order.
        confusion: (K, K) int64 counts the scores come from (rows = ground truth).
        iou: (K,) per-class IoU; NaN for absent classes.
        acc: (K,) per-class accuracy (recall); NaN for classes with no ground-truth pixel.
        miou: mean IoU over the classes that are not absent; NaN if all are.
        macc: mean accuracy over the classes with ground-truth pixels; NaN if none.
        pixel_acc: correct pixels / counted pixels; NaN if no pixel was counted.
        absent_classes: names of classes in neither ground truth nor prediction.
    """

    class_names: tuple[str, ...]
    confusion: np.ndarray
    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    pixel_acc: float
    absent_classes: tuple[str, ...]

    def miou_over(self, subset: Sequence[str]) -> float:
        """Mean IoU over a named class subset, e.g. SYNTHIA's 16 or 13 classes; absent ones skipped.

        Raises:
            KeyError: a name of ``subset`` is not a class of these scores.
        """
        indices = class_subset_indices(self.class_names, tuple(subset))
        return _mean_present(self.iou[indices])

    def to_dict(self, subsets: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """JSON-friendly scores (percent floats; ``None`` for absent or undefined values).

        Args:
            subsets: optional named class subsets; each adds a key ``miou_<name>``: e.g.
                ``{"16": SYNTHIA_16_NAMES, "13": SYNTHIA_13_NAMES}`` adds ``miou_16``, ``miou_13``.
        """
        names = self.class_names
        result: dict[str, Any] = {
            "miou": _json_float(self.miou),
            "macc": _json_float(self.macc),
            "pixel_acc": _json_float(self.pixel_acc),
            "per_class_iou": {n: _json_float(v) for n, v in zip(names, self.iou, strict=True)},
            "per_class_acc": {n: _json_float(v) for n, v in zip(names, self.acc, strict=True)},
            "absent_classes": list(self.absent_classes),
        }
        for name, subset in (subsets or {}).items():
            result[f"miou_{name}"] = _json_float(self.miou_over(subset))
        return result

    def format_table(
        self, subsets: Mapping[str, Sequence[str]] | None = None, digits: int = 2
    ) -> str:
        """Plain-text per-class table (class, IoU, Acc) followed by the mean lines.

        Args:
            subsets: optional named class subsets, each adding a line ``mIoU (<name>)``.
            digits: decimals shown.
        """
        absent = set(self.absent_classes)

        def number(value: float) -> str:
            return UNDEFINED if math.isnan(value) else f"{value:.{digits}f}"

        rows = [
            (n, ABSENT, ABSENT) if n in absent else (n, number(i), number(a))
            for n, i, a in zip(self.class_names, self.iou, self.acc, strict=True)
        ]
        means = [
            (f"mIoU ({self.num_present} classes)", number(self.miou), ""),
            ("mAcc", "", number(self.macc)),
            ("pixel acc", "", number(self.pixel_acc)),
        ]
        for name, subset in (subsets or {}).items():
            means.append((f"mIoU ({name})", number(self.miou_over(subset)), ""))
        first = max(len(row[0]) for row in [("class", "", ""), *rows, *means])
        width = max(len(cell) for row in [*rows, *means] for cell in row[1:]) + 2

        def line(row: tuple[str, str, str]) -> str:
            return f"{row[0]:<{first}}{row[1]:>{width}}{row[2]:>{width}}".rstrip()

        rule = "-" * (first + 2 * width)
        header = line(("class", "IoU", "Acc"))
        return "\n".join([header, rule, *map(line, rows), rule, *map(line, means)])

    @property
    def num_present(self) -> int:
        """Number of classes that count in mIoU (not absent)."""
        return len(self.class_names) - len(self.absent_classes)


def scores_from_confusion(matrix: Any, class_names: Sequence[str]) -> SegmentationScores:
    """Per-class IoU and accuracy, their means and pixel accuracy of a confusion matrix.

    Args:
        matrix: counts (numpy array or torch tensor), rows = ground truth, columns = prediction.
        class_names: one name per row, in order.

    Returns:
        The scores in percent; see the module docstring for absent and predicted-only classes.

    Raises:
        ValueError: the matrix is not square or does not match ``class_names``.

    Shape:
        - matrix: (K, K) with K = ``len(class_names)``.
    """
    if hasattr(matrix, "detach"):  # a torch tensor, on any device (torch is not imported here)
        matrix = matrix.detach().cpu().numpy()
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(
            f"confusion matrix has shape {counts.shape}, expected ({k}, {k}) for {k} class names"
        )
    true_pos = np.diag(counts).astype(np.float64)  # (K,)
    gt_pixels = counts.sum(axis=1).astype(np.float64)  # (K,) row sums: TP + FN
    pred_pixels = counts.sum(axis=0).astype(np.float64)  # (K,) column sums: TP + FP
    union = gt_pixels + pred_pixels - true_pos  # (K,) TP + FP + FN
    iou = _safe_ratio(true_pos, union) * PERCENT
    acc = _safe_ratio(true_pos, gt_pixels) * PERCENT
    total = float(counts.sum())
    pixel_acc = float(true_pos.sum()) / total * PERCENT if total > 0 else math.nan
    return SegmentationScores(
        class_names=tuple(class_names),
        confusion=counts,
        iou=iou,
        acc=acc,
        miou=_mean_present(iou),
        macc=_mean_present(acc),
        pixel_acc=pixel_acc,
        absent_classes=tuple(n for n, u in zip(class_names, union, strict=True) if u == 0),
    )


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is 0 (no warning)."""
    out = np.full_like(numerator, math.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean_present(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN if there are none (no warning)."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def _json_float(value: float) -> float | None:
    """A Python float, or None for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)
