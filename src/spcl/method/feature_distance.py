"""DAFormer's thing-class ImageNet feature distance (FD) and its label down-scaling.

The student's last backbone features on the clean source batch are pulled toward those of a
frozen ImageNet-initialised copy (run in eval mode, no gradient), only where the down-scaled
ground truth is a *thing* class (lhoyer/DAFormer:mmseg/models/uda/dacs.py ``calc_feat_dist``,
``masked_feat_dist``):

* labels are down-scaled by ``s = W_label // W_feat`` with :func:`downscale_label_ratio`
  (mmseg/utils/utils.py): one-hot with the ignore label as an extra class, average-pooled by s,
  argmax and its fraction; 255 where the argmax is the ignore class or the fraction < 0.75.
* ``FD = mean over masked positions of ‖f_S − f_I‖₂`` (L2 over channels, not squared), mask =
  down-scaled label ∈ thing classes (Cityscapes train ids 6, 7, 11–18: traffic light, traffic
  sign, person, rider, car, truck, bus, train, motorcycle, bicycle); the loss is λ·FD, λ = 0.005.

Empty mask: the reference's mean over an empty selection is NaN but reaches no weight (MIC
dacs.py comment), so the step is unchanged apart from a NaN in the logs. Here the mean is
``Σ mask·d / max(Σ mask, 1)``: 0, still attached to the student features, with an all-zero
gradient, so the weights get exactly the reference's (absent) update and nothing is NaN.

SePiCo uses the same :func:`downscale_label_ratio` (min ratio 0.75) to put source labels at
feature size for its class statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "FD_MIN_RATIO",
    "REFERENCE_FD_WEIGHT",
    "downscale_label_ratio",
    "masked_feature_distance",
    "thing_feature_distance",
]

REFERENCE_FD_WEIGHT = 0.005  # λ, uda.imnet_feature_dist_lambda (the stage multiplies)
FD_MIN_RATIO = 0.75  # uda.imnet_feature_dist_scale_min_ratio
# uda.imnet_feature_dist_classes: traffic light, sign, person, rider, car, truck, bus, train,
# motorcycle, bicycle (Cityscapes train ids)
CITYSCAPES_THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@torch.no_grad()
def downscale_label_ratio(
    labels: Tensor,
    scale: int,
    num_classes: int,
    min_ratio: float = FD_MIN_RATIO,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Block-wise majority label, ``ignore_index`` where the majority is weak or ignored.

    Each ``scale × scale`` block gets the class with the largest share (ignore counted as an
    extra class); blocks whose winner is the ignore class or whose share is below ``min_ratio``
    become ``ignore_index``. Trailing rows/columns that do not fill a block are dropped (as
    ``avg_pool2d``). Values outside ``[0, num_classes)`` count as ignore. ``scale = 1`` returns
    the labels with those values set to ignore (the reference asserts ``scale > 1``).

    Args:
        labels: label maps.
        scale: integer down-scaling factor s.
        num_classes: K.
        min_ratio: minimum share of the winning class (0.75).
        ignore_index: the ignore label.

    Returns:
        The down-scaled labels, int64.

    Shape:
        labels: (B, H, W) → (B, H // s, W // s).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be an integer ≥ 1, got {scale}")
    batch, height, width = labels.shape
    small_h, small_w = height // scale, width // scale
    labels = labels[:, : small_h * scale, : small_w * scale].long()
    slots = labels.masked_fill((labels < 0) | (labels >= num_classes), num_classes)
    # block-wise class counts by one bincount (the reference's one-hot + avg_pool2d, without the
    # (B, K+1, H, W) one-hot): pixel (b, y, x) belongs to block (b, y // s, x // s)
    rows = torch.arange(small_h, device=labels.device).repeat_interleave(scale)
    cols = torch.arange(small_w, device=labels.device).repeat_interleave(scale)
    block = rows[:, None] * small_w + cols[None, :]  # (H', W')
    block = block[None] + torch.arange(batch, device=labels.device)[:, None, None] * (
        small_h * small_w
    )
    counts = torch.bincount(
        (block * (num_classes + 1) + slots).reshape(-1),
        minlength=batch * small_h * small_w * (num_classes + 1),
    ).view(batch, small_h, small_w, num_classes + 1)
    top, winner = counts.max(dim=-1)  # first index on ties (ties only below 0.5 < min_ratio)
    ratio = top.float() / float(scale * scale)  # = avg_pool2d's share, same float32 rounding
    invalid = (winner == num_classes) | (ratio < min_ratio)
    return winner.masked_fill(invalid, ignore_index)


def masked_feature_distance(
    student_feat: Tensor, frozen_feat: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Mean over masked positions of ``‖student − frozen‖₂`` over channels (0 if none).

    Args:
        student_feat: student features (gradient flows to them).
        frozen_feat: ImageNet-model features (detached here).
        mask: positions to average over; None averages over all.

    Returns:
        A scalar; 0 attached to the graph (zero gradient) when the mask is empty.

    Shape:
        features: (B, C, h, w); mask: (B, h, w) → ().
    """
    if student_feat.shape != frozen_feat.shape:
        raise ValueError(
            f"student features {tuple(student_feat.shape)} and frozen features "
            f"{tuple(frozen_feat.shape)} differ"
        )
    distance = torch.linalg.vector_norm(student_feat - frozen_feat.detach(), dim=1)  # (B, h, w)
    if mask is None:
        return distance.mean()
    if mask.shape != distance.shape:
        raise ValueError(f"mask must be {tuple(distance.shape)}, got {tuple(mask.shape)}")
    weight = mask.to(distance.dtype)
    return (distance * weight).sum() / weight.sum().clamp(min=1.0)


def thing_feature_distance(
    student_feat: Tensor,
    frozen_feat: Tensor,
    labels: Tensor,
    num_classes: int,
    thing_classes: Sequence[int] = CITYSCAPES_THING_CLASSES,
    *,
    min_ratio: float = FD_MIN_RATIO,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """DAFormer's FD restricted to thing classes (multiply by λ = 0.005 for the loss).

    Args:
        student_feat: student last-level backbone features on the source batch.
        frozen_feat: the frozen ImageNet model's features on the same images.
        labels: source ground truth at image size.
        num_classes: K.
        thing_classes: train ids whose positions count (Cityscapes things by default).
        min_ratio: minimum class share of a down-scaled label block.
        ignore_index: the ignore label.

    Returns:
        The scalar feature distance.

    Shape:
        features: (B, C, h, w); labels: (B, H, W) with ``H // (W // w) = h`` → ().
    """
    if labels.dim() != 3 or student_feat.dim() != 4:
        raise ValueError(
            f"expected features (B, C, h, w) and labels (B, H, W), got "
            f"{tuple(student_feat.shape)} and {tuple(labels.shape)}"
        )
    scale = labels.shape[-1] // student_feat.shape[-1]  # the reference uses the width ratio
    small = downscale_label_ratio(labels, scale, num_classes, min_ratio, ignore_index)
    if small.shape[-2:] != student_feat.shape[-2:]:
        raise ValueError(
            f"labels {tuple(labels.shape[-2:])} down-scaled by {scale} give "
            f"{tuple(small.shape[-2:])}, not the feature size {tuple(student_feat.shape[-2:])}"
        )
    things = torch.as_tensor(list(thing_classes), device=small.device, dtype=small.dtype)
    mask = torch.isin(small, things)
    return masked_feature_distance(student_feat, frozen_feat, mask)
