"""Segmentation cross-entropy with the reference's source temperature (SPCL stages 1 and 4.1).

The reference upsamples the source logits to the label size (bilinear, ``align_corners=True``)
and divides them by 1.8 before the softmax cross-entropy, in the warm-up and in the adaptation
(the discriminator also sees the softmax of the tempered source logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = ["SOURCE_LOGIT_TEMPERATURE", "tempered_cross_entropy", "upsample_logits"]

SOURCE_LOGIT_TEMPERATURE = 1.8  # the reference's divisor of the source logits ("div(1.8)")


def upsample_logits(
    logits: Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = True
) -> Tensor:
    """Bilinear resize; ``align_corners=True`` as the SPCL reference upsamples logits (mmseg's
    DAFormer/MIC/SePiCo resize with ``align_corners=False``).

    Shape:
        logits: (B, K, h, w) → (B, K, H, W) with ``(H, W) = size``.
    """
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def tempered_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    temperature: float = SOURCE_LOGIT_TEMPERATURE,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Cross-entropy of ``logits / temperature``, mean over non-ignored pixels.

    A zero attached to the graph (not NaN) when every pixel is ignored.

    Args:
        logits: class scores at the labels' size (see :func:`upsample_logits`).
        labels: class per pixel, ``ignore_index`` where unused.
        temperature: divisor of the logits; 1.0 gives the plain cross-entropy.
        ignore_index: label of pixels to skip.

    Returns:
        A scalar loss.

    Shape:
        logits: (B, K, H, W); labels: (B, H, W) → ().
    """
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}: expected "
            f"{expected}; upsample the logits with upsample_logits(logits, labels.shape[-2:])"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    labels = labels.long()
    scaled = logits / temperature
    total = F.cross_entropy(scaled, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
