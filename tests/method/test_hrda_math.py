"""HRDA's geometry, fusion and loss (spcl.method.hrda) against hand computations."""

from __future__ import annotations

import pytest
import torch

from spcl.method.hrda import (
    Box,
    assemble_windows,
    cells_of,
    crop_to_box,
    detail_box,
    fuse_scales,
    hrda_loss,
    window_boxes,
)


def test_detail_box_corners_are_multiples_of_the_divisor_and_inside() -> None:
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        box = detail_box(1024, 1024, (512, 512), 8, gen)
        assert box.y1 % 8 == 0 and box.x1 % 8 == 0
        assert (box.y2 - box.y1, box.x2 - box.x1) == (512, 512)
        assert min(box) >= 0 and max(box) <= 1024
        seen.add(box.y1)
    assert len(seen) > 30  # offsets 0, 8, …, 512: 65 choices, drawn uniformly
    assert max(seen) <= 512


def test_detail_box_is_the_whole_image_when_the_crop_is_and_repeats_with_the_seed() -> None:
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert detail_box(64, 64, (64, 64), 8, gen) == Box(0, 64, 0, 64)
    assert torch.equal(gen.get_state(), state)  # no draw
    first = detail_box(64, 96, (32, 32), 8, torch.Generator().manual_seed(5))
    assert first == detail_box(64, 96, (32, 32), 8, torch.Generator().manual_seed(5))
    thin = detail_box(32, 96, (32, 32), 8, gen)  # no vertical margin: top 0, a drawn left
    assert thin.y1 == 0 and thin.x1 % 8 == 0


def test_cells_of_floors_like_the_authors_int_division() -> None:
    # DeepLab-v2 under HRDA: context cells are 16 px of the crop; a corner at 8 px floors to 0
    assert cells_of(Box(8, 520, 24, 536), (1024, 1024), (64, 64)) == Box(0, 32, 1, 33)
    assert cells_of(Box(256, 768, 0, 512), (1024, 1024), (256, 256)) == Box(64, 192, 0, 128)


def test_window_boxes_overlap_at_half_the_crop_and_end_at_the_border() -> None:
    boxes = window_boxes(1024, 1024, (512, 512), overlap=True)
    assert [b.y1 for b in boxes[::3]] == [0, 256, 512]
    assert [b.x1 for b in boxes[:3]] == [0, 256, 512]
    assert window_boxes(1024, 1024, (512, 512), overlap=False) == [
        Box(0, 512, 0, 512),
        Box(0, 512, 512, 1024),
        Box(512, 1024, 0, 512),
        Box(512, 1024, 512, 1024),
    ]
    assert window_boxes(100, 300, (64, 128), overlap=True)[-1] == Box(36, 100, 172, 300)
    assert window_boxes(40, 40, (64, 64), overlap=True) == [Box(0, 40, 0, 40)]


def test_assemble_windows_averages_overlapping_logits() -> None:
    boxes = window_boxes(1, 8, (1, 4), overlap=True)  # x: [0,4), [2,6), [4,8)
    logits = [torch.full((1, 1, 1, 4), v) for v in (1.0, 3.0, 5.0)]
    out = assemble_windows(logits, boxes, (1, 8), (1, 8))
    assert out.flatten().tolist() == [1, 1, 2, 2, 4, 4, 5, 5]
    with pytest.raises(ValueError, match="uncovered"):
        assemble_windows(logits[:1], boxes[:1], (1, 8), (1, 8))


def test_fuse_scales_against_a_hand_computation() -> None:
    """Crop 8×8 px, context grid 2×2 (4 px a cell), detail window = right half (8×4 px) with
    logits 4×2 (2 px a cell), so the fused grid is 4×4. The attention α is kept only in the
    window's context cells (column 1), then upsampled ×2 (align_corners=False): columns
    0, ¼α, ¾α, α. The context logits are 2 everywhere, so up((1 − a)·2) = 2·(1 − up(a))."""
    alpha = 0.6
    context = torch.full((1, 1, 2, 2), 2.0)
    attention = torch.full((1, 1, 2, 2), alpha)
    detail = torch.arange(8.0).reshape(1, 1, 4, 2)
    fused = fuse_scales(context, attention, detail, box=Box(0, 8, 4, 8), pixels=(8, 8))
    assert fused.shape == (1, 1, 4, 4)
    up = [0.0, alpha / 4, 3 * alpha / 4, alpha]
    for row in range(4):
        inserted = [0.0, 0.0, float(detail[0, 0, row, 0]), float(detail[0, 0, row, 1])]
        expected = [up[c] * inserted[c] + 2 * (1 - up[c]) for c in range(4)]
        assert fused[0, 0, row].tolist() == pytest.approx(expected)


def test_fuse_scales_at_inference_uses_the_whole_detail_map() -> None:
    context = torch.randn(2, 3, 4, 4)
    attention = torch.rand(2, 3, 4, 4)
    detail = torch.randn(2, 3, 8, 8)
    fused = fuse_scales(context, attention, detail, box=None, pixels=(32, 32))
    up = lambda t: torch.nn.functional.interpolate(t, size=(8, 8), mode="bilinear")  # noqa: E731
    assert torch.allclose(fused, up(attention) * detail + up((1 - attention) * context))


def test_hrda_loss_weighs_fused_and_detail_on_the_cropped_labels() -> None:
    calls = []

    def ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        calls.append((logits, labels, weight))
        return logits.sum() + labels.sum() * 0 + (0 if weight is None else weight.sum())

    fused = torch.ones(1, 2, 4, 4)
    detail = torch.full((1, 2, 2, 2), 3.0)
    labels = torch.arange(64).reshape(1, 8, 8)
    weight = torch.ones(1, 8, 8)
    box = Box(4, 8, 0, 4)
    loss = hrda_loss(ce, fused, detail, box, labels, weight, 0.1)
    assert float(loss) == pytest.approx((32 + 64) * 0.9 + (24 + 16) * 0.1)
    assert torch.equal(calls[1][1], crop_to_box(labels, box)) and calls[1][2].shape == (1, 4, 4)
    assert float(hrda_loss(ce, fused, detail, box, labels, None, 0.0)) == pytest.approx(32)
