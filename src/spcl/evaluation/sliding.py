"""Sliding-window inference: probabilities of a large image from overlapping crops.

Each crop goes through :func:`spcl.evaluation.inference.predict_probs` (flip averaging included)
at its own size; overlapping probabilities are averaged, then resized (bilinear,
``align_corners=True``) to the requested output size. Multi-scale inference rescales the whole
image first and slides the window over each rescaled copy. The reference evaluates whole images;
sliding windows are for images larger than memory allows (or than the training crops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spcl.evaluation.inference import predict_probs

__all__ = ["parse_slide", "predict_probs_sliding", "window_starts"]

SQUARE = 2  # slide given as (crop, stride)
RECTANGLE = 4  # slide given as (crop_h, crop_w, stride_h, stride_w)


def parse_slide(slide: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(crop, stride)`` or ``(crop_h, crop_w, stride_h, stride_w)`` → ``((ch, cw), (sh, sw))``.

    Raises:
        ValueError: another length, a value below 1, or a stride larger than its crop.
    """
    values = tuple(int(v) for v in slide)
    if len(values) == SQUARE:
        values = (values[0], values[0], values[1], values[1])
    if (
        len(values) != RECTANGLE
        or min(values) < 1
        or values[2] > values[0]
        or values[3] > values[1]
    ):
        raise ValueError(
            f"slide must be (crop, stride) or (crop_h, crop_w, stride_h, stride_w) with positive "
            f"values and stride <= crop, got {tuple(slide)}"
        )
    return (values[0], values[1]), (values[2], values[3])


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``crop`` every ``stride`` covering ``[0, size)``.

    The last window ends at ``size``; an image no longer than ``crop`` has one window at 0.

    Raises:
        ValueError: ``stride`` exceeds ``crop`` (pixels between windows would be left out).
    """
    if size <= crop:
        return [0]
    if stride > crop:
        raise ValueError(f"the stride {stride} exceeds the crop {crop}: windows would leave gaps")
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(count)]


@torch.no_grad()
def predict_probs_sliding(
    model: nn.Module,
    images: torch.Tensor,
    out_size: Sequence[int] | None = None,
    *,
    crop: Sequence[int],
    stride: Sequence[int],
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Softmax probabilities from overlapping windows, averaged over windows, flips and scales.

    Args:
        model: returns an object with ``.logits`` (e.g. SegOutput) for an image batch.
        images: normalised images.
        out_size: (H_out, W_out) of the result; default the input size.
        crop: window (height, width); a window is clipped to a smaller image.
        stride: step (height, width) between windows, at most ``crop``.
        flip: also run each window horizontally flipped and average.
        scales: image scale factors (1.0 = as given).

    Returns:
        Probabilities summing to 1 over classes at every pixel.

    Shape:
        - images: (B, 3, H, W).
        - returns: (B, K, H_out, W_out).
    """
    out_size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
    total = None
    for scale in scales:
        scaled = images
        if scale != 1.0:
            size = [max(1, round(s * scale)) for s in images.shape[-2:]]
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        probs = _slide_once(model, scaled, crop, stride, flip)
        if tuple(probs.shape[-2:]) != out_size:
            probs = F.interpolate(probs, size=out_size, mode="bilinear", align_corners=True)
        total = probs if total is None else total + probs
    if total is None:
        raise ValueError("scales must hold at least one scale factor")
    return total / len(scales)


def _slide_once(
    model: nn.Module,
    images: torch.Tensor,
    crop: Sequence[int],
    stride: Sequence[int],
    flip: bool,
) -> torch.Tensor:
    """Window-averaged probabilities at the images' own size, (B, K, H, W)."""
    height, width = images.shape[-2:]
    for length, step in zip(crop, stride, strict=True):
        if step > length:
            raise ValueError(
                f"stride {tuple(stride)} exceeds crop {tuple(crop)}: windows leave gaps"
            )
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    total = None
    hits = images.new_zeros(1, 1, height, width)  # how many windows cover each pixel
    for top in window_starts(height, crop_h, stride[0]):
        for left in window_starts(width, crop_w, stride[1]):
            window = images[..., top : top + crop_h, left : left + crop_w]
            probs = predict_probs(model, window, flip=flip)  # (B, K, crop_h, crop_w)
            if total is None:
                total = probs.new_zeros(*probs.shape[:2], height, width)
            total[..., top : top + crop_h, left : left + crop_w] += probs
            hits[..., top : top + crop_h, left : left + crop_w] += 1
    assert total is not None  # window_starts always yields a window
    return total / hits
