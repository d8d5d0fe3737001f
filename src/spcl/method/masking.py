"""MIC's random block mask for Masked Image Consistency (lhoyer/MIC).

Per image, a grid of ``round(H/b) × round(W/b)`` uniforms; a block is kept where its value is
``> r``, the grid is upsampled to H×W with nearest interpolation, and the image is multiplied by it
(masked pixels become 0 in normalised space, i.e. the ImageNet mean colour)
(lhoyer/MIC:seg/mmseg/models/utils/masking_transforms.py ``BlockMaskGenerator``; mmseg ``resize``
defaults to nearest). MIC trains the student on the masked, colour-augmented target image with the
teacher's pseudo-labels and weights of the *un-masked* image
(seg/mmseg/models/uda/masking_consistency_module.py).

Defaults are for 512×512 crops (DAFormer / DeepLab-v2 hosts): b = 32, r = 0.7 (MIC
seg/experiments.py id 81); HRDA's 1024 crops use b = 64 ("half the patch size when training with
half resolution"). For other crop sizes scale b with the side, :func:`scaled_block_size`
(16 blocks per 512 px: b = 8 at 128 px). When H is not a multiple of b, nearest upsampling makes
the blocks unequal (sizes ``floor`` / ``ceil`` of H / round(H/b)), as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MIC_BLOCK_SIZE",
    "MIC_MASK_RATIO",
    "MIC_REFERENCE_SIZE",
    "block_mask",
    "mask_images",
    "scaled_block_size",
]

MIC_BLOCK_SIZE = 32  # mask_block_size for 512×512 crops
MIC_MASK_RATIO = 0.7  # mask_ratio r: a block is dropped with probability r
MIC_REFERENCE_SIZE = 512  # the crop side that block size belongs to


def scaled_block_size(
    side: int, reference_block: int = MIC_BLOCK_SIZE, reference_side: int = MIC_REFERENCE_SIZE
) -> int:
    """Block size for crops of ``side`` px keeping MIC's blocks-per-side (32 at 512 → 16 blocks)."""
    if side <= 0 or reference_side <= 0:
        raise ValueError(f"side and reference_side must be > 0, got {side}, {reference_side}")
    return max(1, round(reference_block * side / reference_side))


@torch.no_grad()
def block_mask(
    shape: tuple[int, int, int],
    generator: torch.Generator,
    *,
    block_size: int = MIC_BLOCK_SIZE,
    ratio: float = MIC_MASK_RATIO,
    device: torch.device | str | None = None,
) -> Tensor:
    """MIC block masks: 1 keeps a pixel, 0 masks it.

    Args:
        shape: ``(B, H, W)``.
        generator: the random stream (uniforms are drawn on its device, then moved).
        block_size: b, block side in pixels.
        ratio: r, the probability that a block is masked.
        device: where the mask lives (default: the generator's device).

    Returns:
        Float mask of 0/1.

    Shape:
        (B, 1, H, W), broadcastable over image channels.
    """
    batch, height, width = shape
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    grid = (round(height / block_size), round(width / block_size))  # Python round, as MIC
    if min(grid) < 1:
        raise ValueError(
            f"image {height}×{width} is too small for block_size {block_size} (grid {grid}); "
            f"use scaled_block_size({min(height, width)}) = {scaled_block_size(min(height, width))}"
        )
    uniforms = torch.rand((batch, 1, *grid), generator=generator, device=generator.device)
    keep = (uniforms > ratio).float().to(device if device is not None else generator.device)
    return F.interpolate(keep, size=(height, width), mode="nearest")


@torch.no_grad()
def mask_images(
    images: Tensor,
    generator: torch.Generator,
    *,
    block_size: int = MIC_BLOCK_SIZE,
    ratio: float = MIC_MASK_RATIO,
) -> Tensor:
    """``images · block_mask``: MIC's masked images (no gradient, as the reference).

    Shape:
        images: (B, C, H, W) → (B, C, H, W).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    mask = block_mask(
        (batch, height, width),
        generator,
        block_size=block_size,
        ratio=ratio,
        device=images.device,
    )
    return images * mask.to(images.dtype)
