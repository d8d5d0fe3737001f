"""HRDA's multi-resolution geometry, fusion and loss on tensors (Hoyer et al., ECCV 2022).

HRDA (docs/recipes.md, "HRDA multi-resolution training") trains one segmenter on two views of a
large crop: the **context** view (the whole crop downscaled, ×0.5) and the **detail** view (a
``hr_crop_size`` window of the crop at full resolution, its corners on multiples of 8). A scale
attention ``a`` (sigmoid of a second head on the context features) fuses them at the detail
prediction's resolution:

    fused = up(a) · detail_inserted + up((1 − a) · context)

where ``up`` is the ×(1/scale) bilinear upsampling, ``detail_inserted`` is the detail logits
placed at the window's cells (zeros elsewhere) and ``a`` is zeroed outside the window first, so
the context alone predicts there. At inference the detail view is the whole image, predicted by
overlapping windows whose logits are averaged (:func:`assemble_windows`). The loss is the fused
CE × (1 − λ_d) + the detail CE on the cropped labels × λ_d (λ_d = 0.1).

Boxes are ``(y1, y2, x1, x2)`` in pixels of the full-resolution crop, as in the authors' code;
:func:`cells_of` maps one onto a coarser grid (floor, as the authors' ``int(y / stride)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HRDA_ALIGN_CORNERS",
    "HRDA_CROP_DIVISIBLE",
    "HRDA_DETAIL_LOSS_WEIGHT",
    "Box",
    "assemble_windows",
    "cells_of",
    "crop_to_box",
    "detail_box",
    "fuse_scales",
    "hrda_loss",
    "window_boxes",
]

HRDA_CROP_DIVISIBLE = 8  # detail-window corners on multiples of 8 (HRDA `crop_coord_divisible`)
HRDA_DETAIL_LOSS_WEIGHT = 0.1  # λ_d of the detail CE (HRDA `hr_loss_weight`)
HRDA_ALIGN_CORNERS = False  # mmseg's resize in HRDA's head and segmentor


class Box(NamedTuple):
    """A window ``[y1, y2) × [x1, x2)`` (pixels or cells)."""

    y1: int
    y2: int
    x1: int
    x2: int


def detail_box(
    height: int,
    width: int,
    crop: Sequence[int],
    divisible: int,
    generator: torch.Generator,
) -> Box:
    """A random ``crop`` window of an image, its corners on multiples of ``divisible``.

    The offset is drawn uniformly among ``0, d, 2d, …`` up to the last one that keeps the window
    inside (HRDA's ``get_crop_bbox``); a crop as large as the image is the whole image (no draw).
    """
    crop_h, crop_w = min(int(crop[0]), height), min(int(crop[1]), width)
    if (crop_h, crop_w) == (height, width):
        return Box(0, height, 0, width)
    starts = []
    for margin in (height - crop_h, width - crop_w):
        choices = max(1, (margin + 1) // divisible)  # the authors' count; ≥ 1 for thin margins
        starts.append(int(torch.randint(choices, (1,), generator=generator)) * divisible)
    top, left = starts
    return Box(top, top + crop_h, left, left + crop_w)


def cells_of(box: Box, pixels: Sequence[int], cells: Sequence[int]) -> Box:
    """``box`` (in a ``pixels`` = (H, W) image) on a ``cells`` = (h, w) grid, floored."""
    (height, width), (rows, cols) = pixels, cells
    return Box(
        box.y1 * rows // height,
        box.y2 * rows // height,
        box.x1 * cols // width,
        box.x2 * cols // width,
    )


def crop_to_box(tensor: Tensor, box: Box) -> Tensor:
    """The ``box`` window of the last two dimensions of ``tensor``."""
    return tensor[..., box.y1 : box.y2, box.x1 : box.x2]


def window_boxes(height: int, width: int, crop: Sequence[int], overlap: bool) -> list[Box]:
    """The detail windows that cover an image at inference, row by row.

    Stride = half the crop with ``overlap`` (HRDA's ``hr_slide_overlapping``), else the crop;
    the last window of a row or column ends at the border (mmseg's slide grid).
    """
    boxes = []
    crop_h, crop_w = min(int(crop[0]), height), min(int(crop[1]), width)
    step_h, step_w = (max(1, crop_h // 2), max(1, crop_w // 2)) if overlap else (crop_h, crop_w)
    rows = max(height - crop_h + step_h - 1, 0) // step_h + 1
    cols = max(width - crop_w + step_w - 1, 0) // step_w + 1
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * step_h + crop_h, height), min(col * step_w + crop_w, width)
            boxes.append(Box(y2 - crop_h, y2, x2 - crop_w, x2))
    return boxes


def _placed(logits: Tensor, cells: Box, size: Sequence[int]) -> Tensor:
    """``logits`` zero-padded into a ``size`` grid at ``cells`` (resized to the cells first when a
    window's logits do not have the cells' size, e.g. at an image side not divisible by the
    stride)."""
    shape = (cells.y2 - cells.y1, cells.x2 - cells.x1)
    if tuple(logits.shape[-2:]) != shape:
        logits = F.interpolate(
            logits, size=shape, mode="bilinear", align_corners=HRDA_ALIGN_CORNERS
        )
    pad = (cells.x1, size[1] - cells.x2, cells.y1, size[0] - cells.y2)
    return F.pad(logits, pad)


def assemble_windows(
    window_logits: Sequence[Tensor],
    boxes: Sequence[Box],
    pixels: Sequence[int],
    size: Sequence[int],
) -> Tensor:
    """The detail logits of a whole image: each window's logits at its cells, overlaps averaged.

    Args:
        window_logits: (B, K, h_i, w_i) per window.
        boxes: each window's pixel box in the ``pixels`` = (H, W) image.
        size: the (h, w) grid of the result.

    Raises:
        ValueError: the windows leave a cell uncovered.
    """
    total = None
    hits = window_logits[0].new_zeros(1, 1, *size)
    for logits, box in zip(window_logits, boxes, strict=True):
        cells = cells_of(box, pixels, size)
        placed = _placed(logits, cells, size)
        total = placed if total is None else total + placed
        hits[..., cells.y1 : cells.y2, cells.x1 : cells.x2] += 1
    if total is None or bool((hits == 0).any()):
        raise ValueError(f"the detail windows {list(boxes)} leave cells of {tuple(size)} uncovered")
    return total / hits


def fuse_scales(
    context: Tensor,
    attention: Tensor,
    detail: Tensor,
    *,
    box: Box | None,
    pixels: Sequence[int],
) -> Tensor:
    """HRDA's fusion at the detail resolution (the module docstring's formula).

    Args:
        context: context logits (B, K, h, w) of the downscaled image.
        attention: sigmoid scale attention (B, K or 1, h, w) on the same grid.
        detail: with ``box``, the detail window's logits; without, the whole image's assembled
            detail logits on the output grid.
        box: the detail window in the ``pixels`` = (H, W) full-resolution image, or ``None``.

    Shape:
        returns (B, K, H', W'): the detail resolution over the whole image (``detail``'s grid at
        inference; with a box, the window's logits per pixel times the crop), twice the context
        grid at HRDA's scale 0.5.
    """
    out_size = detail.shape[-2:] if box is None else _output_grid(context, pixels, detail, box)
    if box is not None:
        keep = torch.zeros_like(attention[:, :1])
        lr = cells_of(box, pixels, context.shape[-2:])
        keep[..., lr.y1 : lr.y2, lr.x1 : lr.x2] = 1
        attention = attention * keep
        detail = _placed(detail, cells_of(box, pixels, out_size), out_size)
    up = lambda t: F.interpolate(  # noqa: E731 - one resize, written once
        t, size=tuple(out_size), mode="bilinear", align_corners=HRDA_ALIGN_CORNERS
    )
    return up(attention) * detail + up((1 - attention) * context)


def _output_grid(context: Tensor, pixels: Sequence[int], detail: Tensor, box: Box) -> tuple:
    """The fused grid in training: the detail window's own resolution over the whole crop."""
    rows = round(detail.shape[-2] * pixels[0] / (box.y2 - box.y1))
    cols = round(detail.shape[-1] * pixels[1] / (box.x2 - box.x1))
    return (rows, cols)


def hrda_loss(
    ce: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    fused: Tensor,
    detail: Tensor,
    box: Box,
    labels: Tensor,
    weight: Tensor | None,
    detail_weight: float,
) -> Tensor:
    """Fused CE × (1 − λ_d) + detail CE × λ_d, the detail CE on the ``box`` window of the labels
    and weights (HRDA's ``losses`` with ``hr_loss_weight`` λ_d and no separate context loss)."""
    loss = ce(fused, labels, weight) * (1.0 - detail_weight)
    if detail_weight == 0:
        return loss
    cut = None if weight is None else crop_to_box(weight, box)
    return loss + ce(detail, crop_to_box(labels, box), cut) * detail_weight
