"""MIC block masks: kept fraction against the binomial, block structure, scaling, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from spcl.method.masking import block_mask, mask_images, scaled_block_size


def test_kept_fraction_matches_one_minus_ratio() -> None:
    gen = torch.Generator().manual_seed(0)
    ratio, block = 0.7, 8
    mask = block_mask((64, 64, 64), gen, block_size=block, ratio=ratio)  # 64 × 8 × 8 blocks
    blocks = mask[:, 0, ::block, ::block]  # one value per block
    num_blocks = blocks.numel()
    kept = blocks.mean().item()
    # kept blocks ~ Binomial(n, 1 − r) / n: 5 standard deviations
    tolerance = 5 * math.sqrt(ratio * (1 - ratio) / num_blocks)
    assert abs(kept - (1 - ratio)) < tolerance
    assert mask.mean().item() == pytest.approx(kept)  # equal-size blocks: pixel fraction = block


def test_mask_is_constant_on_each_block() -> None:
    gen = torch.Generator().manual_seed(1)
    mask = block_mask((3, 96, 64), gen, block_size=32, ratio=0.5)
    assert mask.shape == (3, 1, 96, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.view(3, 1, 3, 32, 2, 32)  # (B, 1, gy, b, gx, b)
    assert torch.all(blocks == blocks[:, :, :, :1, :, :1])


def test_uneven_grid_uses_python_round_and_nearest() -> None:
    gen = torch.Generator().manual_seed(2)
    mask = block_mask((1, 40, 50), gen, block_size=16, ratio=0.5)  # grid round(2.5)=2, round(3.1)=3
    rows = mask[0, 0, :, 0]
    assert torch.all(rows[:20] == rows[0]) and torch.all(rows[20:] == rows[20])
    with pytest.raises(ValueError, match="too small"):
        block_mask((1, 15, 15), gen, block_size=32)  # round(0.47) = 0


def test_ratio_extremes_and_seeding() -> None:
    shape = (2, 64, 64)
    assert torch.all(block_mask(shape, torch.Generator().manual_seed(0), ratio=0.0) == 1)
    assert torch.all(block_mask(shape, torch.Generator().manual_seed(0), ratio=1.0) == 0)
    a = block_mask(shape, torch.Generator().manual_seed(5))
    b = block_mask(shape, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_mask_images_zeroes_masked_pixels_only() -> None:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    masked = mask_images(images, torch.Generator().manual_seed(4))
    mask = block_mask((2, 64, 64), torch.Generator().manual_seed(4))
    assert torch.equal(masked, images * mask)
    assert torch.all(masked[mask.expand_as(images) == 0] == 0)


def test_scaled_block_size() -> None:
    assert scaled_block_size(512) == 32
    assert scaled_block_size(1024) == 64  # HRDA
    assert scaled_block_size(128) == 8
    assert scaled_block_size(8) == 1
