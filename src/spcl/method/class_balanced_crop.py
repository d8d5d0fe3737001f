"""SePiCo's class-balanced crop (CBC) of whole target images, chosen on the teacher's labels.

SePiCo (BIT-DA/SePiCo ``mmseg/models/utils/ours_transforms.py`` ``RandomCrop`` with ``prod``,
called from ``mmseg/models/uda/sepico.py`` when ``pseudo_random_crop``; docs/recipes.md,
"SePiCo class-balanced crop") loads the target images whole (1280×640), labels them with the EMA
teacher, and crops each image
where its pseudo-labels are most varied: of ``CBC_BOXES`` random boxes the first best-scoring one
is kept, a box scoring 0 unless its labels (``ignore_index`` left out) hold two classes or more
with none at ``max_share`` (0.75) or above, else the sum over classes with more than one pixel of
log(pixel count). With ``regen_pseudo`` the teacher then labels the crop again.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = ["CBC_BOXES", "CBC_MAX_SHARE", "class_balanced_corners", "crop_at", "crop_score"]

CBC_BOXES = 10  # random boxes scored per image (SePiCo: "Repeat 10 times")
CBC_MAX_SHARE = 0.75  # a box whose top class holds this share or more scores 0 (`cat_max_ratio`)


def crop_score(labels: Tensor, max_share: float = CBC_MAX_SHARE) -> float:
    """SePiCo's score of one box's labels: 0 unless ≥ 2 classes and the top one's share is below
    ``max_share`` (ignored pixels left out), else Σ log(count) over classes with > 1 pixel."""
    kept = labels[labels != IGNORE_INDEX]
    counts = torch.bincount(kept.flatten().long()) if kept.numel() else kept.new_zeros(0)
    counts = counts[counts > 0]
    if counts.numel() < 2 or counts.max() >= max_share * counts.sum():
        return 0.0
    return float(counts[counts > 1].double().log().sum())


def class_balanced_corners(
    labels: Tensor,
    size: tuple[int, int] | list[int],
    generator: torch.Generator,
    *,
    boxes: int = CBC_BOXES,
    max_share: float = CBC_MAX_SHARE,
) -> list[tuple[int, int]]:
    """The (top, left) corner of each image's class-balanced crop of ``size`` = (h, w).

    Boxes are drawn uniformly over the positions that fit (``generator``, on the CPU, so a
    checkpointed generator reproduces them); ties keep the first box.

    Shape:
        labels: (B, H, W) with H ≥ h and W ≥ w.

    Raises:
        ValueError: the crop is larger than the images.
    """
    height, width = labels.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if h > height or w > width:
        raise ValueError(
            f"class-balanced crop {h}x{w} is larger than the images ({height}x{width})"
        )
    corners = []
    for image_labels in labels:
        tops = torch.randint(0, height - h + 1, (boxes,), generator=generator).tolist()
        lefts = torch.randint(0, width - w + 1, (boxes,), generator=generator).tolist()
        best, chosen = -1.0, (tops[0], lefts[0])
        for top, left in zip(tops, lefts, strict=True):
            score = crop_score(image_labels[top : top + h, left : left + w], max_share)
            if score > best:
                best, chosen = score, (top, left)
        corners.append(chosen)
    return corners


def crop_at(
    batch: Tensor, corners: list[tuple[int, int]], size: tuple[int, int] | list[int]
) -> Tensor:
    """Each image of ``batch`` cut at its corner to ``size``.

    Shape:
        batch: (B, ..., H, W) → (B, ..., h, w).
    """
    h, w = int(size[0]), int(size[1])
    return torch.stack(
        [
            item[..., top : top + h, left : left + w]
            for item, (top, left) in zip(batch, corners, strict=True)
        ]
    )
