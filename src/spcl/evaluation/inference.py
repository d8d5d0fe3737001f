"""One inference function for evaluation, pseudo-labelling and prediction.

``predict_probs`` runs the segmenter on a batch, optionally at several scales and with a horizontal
flip, and returns softmax probabilities at the requested output size (bilinear, align_corners=True,
as the reference upsamples).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spcl.method.losses import upsample_logits

__all__ = ["predict_probs"]


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    out_size: Sequence[int] | None = None,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Softmax probabilities averaged over scales (and flips).

    Args:
        model: returns an object with ``.logits`` (e.g. SegOutput) for an image batch.
        images: normalised images (B, 3, H, W).
        out_size: (H_out, W_out) of the result; default the input size.
        flip: also run on the horizontally flipped image and average.
        scales: input scale factors (1.0 = as given).

    Shape:
        returns (B, K, H_out, W_out).
    """
    out_size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
    total = None
    count = 0
    for scale in scales:
        scaled = images
        if scale != 1.0:
            size = [max(1, round(s * scale)) for s in images.shape[-2:]]
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            probs = upsample_logits(model(view).logits.float(), out_size).softmax(dim=1)
            probs = probs.flip(-1) if index == 1 else probs
            total = probs if total is None else total + probs
            count += 1
    assert total is not None
    return total / count
