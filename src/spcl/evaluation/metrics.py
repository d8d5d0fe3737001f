"""Segmentation metrics: a streaming confusion matrix and the IoU tables computed from it.

The paper (Sec. 4, Tables 1–2) reports per-class IoU and mIoU on Cityscapes val over 19 classes, or
over SYNTHIA's 16 and 13 classes. Everything here derives from one K×K int64 confusion matrix
(rows = ground truth, columns = prediction), filled by one ``torch.bincount`` per batch: memory
stays fixed whatever the size of the set (the reference appends every pixel to growing arrays).

Distributed evaluation (DDP at the edges): each process updates its own :class:`ConfusionMatrix`;
before computing scores, the counts (state, never averages) are summed over processes, e.g.
``confusion.reduce_(torch.distributed.all_reduce)``. ``matrix`` is a plain tensor, so any
in-place sum works. With NCCL the matrix must live on the process's GPU even on a rank that saw no
batch: pass ``device=`` at construction. Nothing in this module knows about ranks.

IoU conventions (identical to cityscapesscripts' pixel-level evaluation; tested against it):
``IoU_k = TP / (TP + FP + FN)``. A class absent from both ground truth and prediction has no IoU:
NaN in the per-class arrays, ``None`` in :meth:`SegmentationScores.to_dict`, "absent" in tables,
and it is left out of every mean. A class predicted but never in the ground truth gets IoU 0 (it
only has false positives) and an undefined accuracy (recall): NaN, left out of mAcc. When every
class is absent (e.g. all pixels ignored), mIoU, mAcc and pixel accuracy are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spcl.base import IGNORE_INDEX
from spcl.data.labels import class_subset_indices

__all__ = [
    "ConfusionMatrix",
    "SegmentationScores",
    "scores_from_confusion",
]

PERCENT = 100.0  # scores are reported in percent, as in the paper's tables
ABSENT = "absent"  # how tables show a class absent from ground truth and prediction
UNDEFINED = "n/a"  # how tables show an accuracy with no ground-truth pixel (predicted-only class)


class ConfusionMatrix:
    """Streaming K×K pixel confusion matrix (rows = ground truth, columns = prediction).

    Args:
        num_classes: number of classes K; valid labels are ``0 .. K-1``.
        ignore_index: ground-truth value of pixels that are skipped.
        device: where the matrix starts (needed for collective sums before any update, e.g. NCCL);
            ``None`` means the default device. An update moves the matrix to its inputs' device.

    Attributes:
        matrix: the (K, K) int64 counts; a plain tensor, so it can be all-reduced in place.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predictions against its ground truth.

        Pixels whose target is ``ignore_index`` are skipped entirely (their prediction is not
        checked, so a pseudo-label map with 255 there is fine).

        Args:
            pred: predicted class ids.
            target: ground-truth class ids or ``ignore_index``.

        Raises:
            TypeError: a non-integer dtype.
            ValueError: shapes or devices differ, or a counted pixel has a prediction outside
                ``[0, K)`` or a target that is neither in ``[0, K)`` nor ``ignore_index``.

        Shape:
            - pred: any shape, e.g. (B, H, W) or (H, W).
            - target: same shape as ``pred``.
        """
        for name, tensor in (("pred", pred), ("target", target)):
            dtype = tensor.dtype
            if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
                raise TypeError(f"{name} must hold integer class ids, got dtype {dtype}")
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
            )
        if pred.device != target.device:
            raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)

        counted = target != self.ignore_index
        tgt, prd = target.long(), pred.long()  # widen before the index arithmetic (uint8 maps)
        self._check_range(prd, tgt, counted)
        k = self.num_classes
        index = torch.where(counted, tgt * k + prd, k * k)  # ignored pixels → one extra bin
        counts = torch.bincount(index.reshape(-1), minlength=k * k + 1)  # (K*K + 1,)
        self.matrix += counts[: k * k].reshape(k, k)

    def _check_range(self, prd: torch.Tensor, tgt: torch.Tensor, counted: torch.Tensor) -> None:
        """Raise ValueError naming an out-of-range class id among the counted pixels."""
        k = self.num_classes
        bad_pred = counted & ((prd < 0) | (prd >= k))
        bad_tgt = counted & ((tgt < 0) | (tgt >= k))
        if not bool((bad_pred | bad_tgt).any()):  # the update's only host sync
            return
        valid = f"[0, {k})"
        if bool(bad_pred.any()):
            raise ValueError(f"pred holds class id {prd[bad_pred][0].item()}, outside {valid}")
        raise ValueError(
            f"target holds class id {tgt[bad_tgt][0].item()}, outside {valid} "
            f"and not the ignore index {self.ignore_index}"
        )

    def reset(self) -> None:
        """Zero the counts (the matrix keeps its device)."""
        self.matrix.zero_()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts to this one (e.g. several loaders); returns ``self``.

        Raises:
            ValueError: the two differ in number of classes or ignore index.
        """
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                "cannot merge confusion matrices of different label spaces: "
                f"(num_classes, ignore_index) = {(self.num_classes, self.ignore_index)} "
                f"vs {(other.num_classes, other.ignore_index)}"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def reduce_(self, reduce_fn: Callable[[torch.Tensor], Any]) -> ConfusionMatrix:
        """Sum the counts across processes in place; returns ``self``.

        Args:
            reduce_fn: a function that sums a tensor in place over processes, e.g.
                ``torch.distributed.all_reduce`` (default op SUM). Its return value is ignored.
        """
        reduce_fn(self.matrix)
        return self

    def compute(self, class_names: Sequence[str]) -> SegmentationScores:
        """Scores of the counts so far; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.matrix, class_names)

    def state_dict(self) -> dict[str, Any]:
        """The counts and label-space settings (the matrix is a copy)."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "matrix": self.matrix.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counts saved by :meth:`state_dict` (onto this matrix's device).

        Raises:
            ValueError: the saved label space or matrix shape differs from this one.
        """
        saved = (state["num_classes"], state["ignore_index"])
        if saved != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"saved (num_classes, ignore_index) = {saved} differ from this matrix's "
                f"{(self.num_classes, self.ignore_index)}"
            )
        matrix = state["matrix"]
        if tuple(matrix.shape) != tuple(self.matrix.shape):
            raise ValueError(
                f"saved matrix has shape {tuple(matrix.shape)}, expected {tuple(self.matrix.shape)}"
            )
        self.matrix = matrix.to(device=self.matrix.device, dtype=torch.int64).clone()


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


def scores_from_confusion(
    matrix: torch.Tensor | np.ndarray, class_names: Sequence[str]
) -> SegmentationScores:
    """Per-class IoU and accuracy, their means and pixel accuracy of a confusion matrix.

    Args:
        matrix: counts, rows = ground truth, columns = prediction.
        class_names: one name per row, in order.

    Returns:
        The scores in percent; see the module docstring for absent and predicted-only classes.

    Raises:
        ValueError: the matrix is not square or does not match ``class_names``.

    Shape:
        - matrix: (K, K) with K = ``len(class_names)``.
    """
    if isinstance(matrix, torch.Tensor):
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
