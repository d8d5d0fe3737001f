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
class is absent (e.g. all pixels ignored), mIoU, mAcc and pixel accuracy are NaN. The scores
themselves live in the torch-free :mod:`spcl.evaluation.scores` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from spcl.base import IGNORE_INDEX
from spcl.evaluation.scores import SegmentationScores, scores_from_confusion

__all__ = [
    "ConfusionMatrix",
    "SegmentationScores",
    "scores_from_confusion",
]


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
