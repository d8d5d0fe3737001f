"""Pixel-weighted cross-entropy with the mmseg/DAFormer reduction (self-training losses).

mmseg's ``cross_entropy`` (lhoyer/DAFormer:mmseg/models/losses/cross_entropy_loss.py and
losses/utils.py ``weight_reduce_loss``) takes ``F.cross_entropy(reduction='none',
ignore_index=255)``, multiplies by the per-pixel weight and averages over **all** B·H·W pixels:
ignored pixels add 0 to the numerator but 1 to the denominator, and the weights do not enter the
denominator. DAFormer uses it for the source CE (no weight), the ClassMix CE (weight ``w_mix``)
and MIC's masked CE (weight ``w_t``). Logits are bilinearly upsampled with ``align_corners=False``
to the label size before the loss (mmseg decode_head.py ``losses``); do that before calling.

``reduction="valid_pixels"`` divides by the number of non-ignored pixels instead (VFM-UDA's
source CE, or the usual ``F.cross_entropy`` mean when unweighted).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = ["CrossEntropyReduction", "pixel_weighted_cross_entropy"]

CrossEntropyReduction = Literal["all_pixels", "valid_pixels"]
_REDUCTIONS: tuple[str, ...] = ("all_pixels", "valid_pixels")


def pixel_weighted_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    *,
    reduction: CrossEntropyReduction = "all_pixels",
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """``Σ w·CE / N`` with N = all pixels (reference) or the non-ignored pixels.

    Args:
        logits: class scores at the labels' size.
        labels: class per pixel, ``ignore_index`` where unused.
        weight: per-pixel weight (detached; None = 1 everywhere).
        reduction: ``"all_pixels"`` (DAFormer) or ``"valid_pixels"``.
        ignore_index: label of pixels that contribute 0.

    Returns:
        A scalar loss; with every pixel ignored, a zero attached to the graph.

    Shape:
        logits: (B, K, H, W); labels, weight: (B, H, W) → ().
    """
    expected = (logits.shape[0], *logits.shape[2:])
    if logits.dim() != 4 or tuple(labels.shape) != expected:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}: expected "
            f"{expected}; upsample the logits with F.interpolate(logits, labels.shape[-2:], "
            "mode='bilinear', align_corners=False) first"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {_REDUCTIONS}")
    labels = labels.long()
    losses = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    if weight is not None:
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight {tuple(weight.shape)} must match labels {expected}")
        losses = losses * weight.detach().to(losses.dtype)
    if reduction == "all_pixels":
        return losses.mean()
    return losses.sum() / (labels != ignore_index).sum().clamp(min=1)
