"""Pixel-weighted cross-entropy reductions worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from spcl.method.weighted_ce import pixel_weighted_cross_entropy

IGNORE = 255


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 pixels, 2 classes; logits (0, 0) → CE ln 2, (ln 3, 0) with label 0 → CE ln(4/3)."""
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 1] = math.log(3.0)
    labels = torch.tensor([[[1, 0, IGNORE, 0]]])
    weight = torch.tensor([[[0.5, 2.0, 7.0, 0.0]]])
    return logits, labels, weight


def test_all_pixels_reduction_counts_ignored_in_denominator() -> None:
    logits, labels, weight = _example()
    ln2, ln43 = math.log(2.0), math.log(4 / 3)
    expected = (0.5 * ln2 + 2.0 * ln43 + 0.0 + 0.0 * ln2) / 4  # ignored: 0 over 4 pixels
    loss = pixel_weighted_cross_entropy(logits, labels, weight)
    assert loss.item() == pytest.approx(expected)
    unweighted = pixel_weighted_cross_entropy(logits, labels)
    assert unweighted.item() == pytest.approx((ln2 + ln43 + ln2) / 4)


def test_valid_pixels_reduction() -> None:
    logits, labels, weight = _example()
    ln2, ln43 = math.log(2.0), math.log(4 / 3)
    loss = pixel_weighted_cross_entropy(logits, labels, weight, reduction="valid_pixels")
    assert loss.item() == pytest.approx((0.5 * ln2 + 2.0 * ln43) / 3)
    plain = pixel_weighted_cross_entropy(logits, labels, reduction="valid_pixels")
    torch.testing.assert_close(
        plain, torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE)
    )


def test_all_ignored_is_a_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), IGNORE)
    for reduction in ("all_pixels", "valid_pixels"):
        loss = pixel_weighted_cross_entropy(logits, labels, reduction=reduction)  # type: ignore[arg-type]
        assert loss.item() == 0.0
        loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_weight_gets_no_gradient_and_shapes_are_checked() -> None:
    logits, labels, weight = _example()
    weight.requires_grad_(True)
    pixel_weighted_cross_entropy(logits.requires_grad_(True), labels, weight).backward()
    assert weight.grad is None
    with pytest.raises(ValueError, match="align_corners=False"):
        pixel_weighted_cross_entropy(logits, labels[..., :2])
    with pytest.raises(ValueError, match="reduction"):
        pixel_weighted_cross_entropy(logits, labels, reduction="mean")  # type: ignore[arg-type]
