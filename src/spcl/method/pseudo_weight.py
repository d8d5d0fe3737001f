"""Teacher pseudo-labels and DAFormer's confidence (quality) weight for self-training.

From the EMA teacher's logits on the un-augmented target batch: ``p = softmax(logits)``,
``(p_max, ŷ) = max over classes``. DAFormer weights every pseudo-labelled pixel by one scalar, the
fraction of pixels of the *whole batch* with ``p_max ≥ τ`` (τ = 0.968), broadcast to every pixel
(lhoyer/DAFormer:mmseg/models/uda/dacs.py ``forward_train``, "Generate pseudo-label"; the same in
MIC ``get_pseudo_label_and_weight`` and SePiCo). Then the *PL crop* zeroes the weight of the top
15 and bottom 120 rows of each 512-px-high target crop, where Cityscapes shows the rectification
border and the ego car (``pseudo_weight_ignore_top/bottom``).

Switches (defaults are the reference): ``weight_mode="sample_quality"`` takes the fraction per
image instead of per batch; ``weight_mode="hard_threshold"`` drops the scalar for a per-pixel
0/1 weight ``[p_max ≥ τ]``. :func:`crop_pseudo_weight` also multiplies by an optional valid mask
(MIC's ``valid_pseudo_mask``: 0 on padding or other unusable pixels), and
:func:`pseudo_labels_with_ignore` writes ``ignore_index`` where the weight is 0 (SePiCo's target
labels for the contrastive term).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = [
    "PL_CROP_BOTTOM_ROWS",
    "PL_CROP_REFERENCE_HEIGHT",
    "PL_CROP_TOP_ROWS",
    "REFERENCE_PSEUDO_THRESHOLD",
    "PseudoLabels",
    "WeightMode",
    "crop_pseudo_weight",
    "pl_crop_rows",
    "pseudo_labels_with_ignore",
    "teacher_pseudo_labels",
]

REFERENCE_PSEUDO_THRESHOLD = 0.968  # τ, configs/_base_/uda/dacs.py pseudo_threshold
PL_CROP_TOP_ROWS = 15  # uda.pseudo_weight_ignore_top (rows of a 512-px-high crop)
PL_CROP_BOTTOM_ROWS = 120  # uda.pseudo_weight_ignore_bottom
PL_CROP_REFERENCE_HEIGHT = 512  # the crop height those rows belong to (Cityscapes at 1024×512)
WeightMode = Literal["batch_quality", "sample_quality", "hard_threshold"]
_WEIGHT_MODES: tuple[str, ...] = ("batch_quality", "sample_quality", "hard_threshold")


class PseudoLabels(NamedTuple):
    """Teacher pseudo-labels. Shapes: all (B, H, W)."""

    labels: Tensor  # ŷ = argmax of the softmax, int64
    confidence: Tensor  # p_max, float
    weight: Tensor  # per-pixel loss weight before the PL crop, float


@torch.no_grad()
def teacher_pseudo_labels(
    logits: Tensor,
    threshold: float = REFERENCE_PSEUDO_THRESHOLD,
    *,
    weight_mode: WeightMode = "batch_quality",
) -> PseudoLabels:
    """Pseudo-labels, confidences and DAFormer's quality weight from the teacher's logits.

    ``batch_quality`` (reference): ``q = #{p_max ≥ τ} / (B·H·W)``, one scalar for the batch, at
    every pixel. ``sample_quality``: ``q_i`` over image i's pixels only. ``hard_threshold``:
    ``[p_max ≥ τ]`` per pixel. Computed without gradient and without a device sync (the
    reference's ``.item()`` is not needed).

    Args:
        logits: teacher class scores, already at the label size (DAFormer upsamples them
            bilinearly with ``align_corners=False`` inside ``encode_decode``).
        threshold: τ.
        weight_mode: see above.

    Returns:
        :class:`PseudoLabels` ``(labels, confidence, weight)``.

    Shape:
        logits: (B, K, H, W) → each field (B, H, W).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if weight_mode not in _WEIGHT_MODES:
        raise ValueError(f"weight_mode={weight_mode!r}; expected one of {_WEIGHT_MODES}")
    logits = logits.detach()
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half / bfloat16 teacher outputs: softmax in float32
    probs = torch.softmax(logits, dim=1)
    confidence, labels = probs.max(dim=1)  # (B, H, W) each
    confident = confidence >= threshold  # (B, H, W) bool
    if weight_mode == "hard_threshold":
        return PseudoLabels(labels, confidence, confident.float())
    # exact integer counts, divided in float64 as the reference's Python division
    if weight_mode == "sample_quality":
        count, size = confident.sum(dim=(1, 2), keepdim=True), confident[0].numel()
    else:
        count, size = confident.sum(), confident.numel()
    quality = (count.double() / size).float()
    return PseudoLabels(labels, confidence, quality.expand_as(confidence).clone())


def pl_crop_rows(
    height: int,
    top: int = PL_CROP_TOP_ROWS,
    bottom: int = PL_CROP_BOTTOM_ROWS,
    reference_height: int = PL_CROP_REFERENCE_HEIGHT,
) -> tuple[int, int]:
    """The PL-crop rows for a crop of ``height`` rows, scaled from the reference.

    DAFormer's 15 / 120 rows belong to a 512-px-high target crop that spans the whole height of a
    Cityscapes image resized to 1024×512, so they are fractions of the image height
    (≈ 2.9 % / 23.4 %). For another height the rows scale: ``round(top · height / 512)`` (e.g. 8 /
    60 at 256 px, 30 / 240 at 1024 px, as HRDA's full-resolution crop). Use the rows as given
    (``reference_height=height``) when the crop does not span the full image height.

    Returns:
        ``(top_rows, bottom_rows)`` as ints.
    """
    if height <= 0 or reference_height <= 0:
        raise ValueError(
            f"height and reference_height must be > 0, got {height}, {reference_height}"
        )
    if top < 0 or bottom < 0:
        raise ValueError(f"PL-crop rows must be ≥ 0, got top={top}, bottom={bottom}")
    scale = height / reference_height
    return round(top * scale), round(bottom * scale)


def crop_pseudo_weight(
    weight: Tensor,
    top: int = PL_CROP_TOP_ROWS,
    bottom: int = PL_CROP_BOTTOM_ROWS,
    valid_mask: Tensor | None = None,
) -> Tensor:
    """Zero the weight in the top ``top`` and bottom ``bottom`` rows (a new tensor).

    As the reference, ``0`` rows means no crop (never ``w[:, -0:]``, which would be all rows).
    Rows are pixels of ``weight``; use :func:`pl_crop_rows` to scale them to the crop height.

    Args:
        weight: per-pixel pseudo-label weight.
        top: rows zeroed at the top.
        bottom: rows zeroed at the bottom.
        valid_mask: optional (B, H, W) mask multiplied in (0 where the pseudo-label must not
            count, e.g. padding or ignore-labelled pixels; MIC's ``valid_pseudo_mask``).

    Returns:
        The cropped weight.

    Shape:
        weight: (B, H, W) → (B, H, W).
    """
    if weight.dim() != 3:
        raise ValueError(f"weight must be (B, H, W), got shape {tuple(weight.shape)}")
    if top < 0 or bottom < 0:
        raise ValueError(f"PL-crop rows must be ≥ 0, got top={top}, bottom={bottom}")
    out = weight.clone()
    if top > 0:
        out[:, :top, :] = 0
    if bottom > 0:
        out[:, -bottom:, :] = 0
    if valid_mask is not None:
        if valid_mask.shape != weight.shape:
            raise ValueError(
                f"valid_mask {tuple(valid_mask.shape)} must match weight {tuple(weight.shape)}"
            )
        out = out * valid_mask.to(out.dtype)
    return out


def pseudo_labels_with_ignore(
    labels: Tensor, weight: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``labels`` with ``ignore_index`` where ``weight == 0`` (SePiCo's target contrast labels).

    With the broadcast quality weight only the PL-crop rows (and invalid pixels) become ignored,
    unless no pixel of the batch is confident (q = 0), which ignores everything.

    Shape:
        labels, weight: (B, H, W) → (B, H, W) int64.
    """
    if labels.shape != weight.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match weight {tuple(weight.shape)}")
    return labels.long().masked_fill(weight == 0, ignore_index)
