"""SePiCo's class-balanced crop: the box score, the choice among random boxes, the cut."""

from __future__ import annotations

import math

import pytest
import torch

from spcl.base import IGNORE_INDEX
from spcl.method.class_balanced_crop import class_balanced_corners, crop_at, crop_score


def test_the_score_needs_two_classes_below_the_share_and_sums_log_counts() -> None:
    assert crop_score(torch.zeros(4, 4, dtype=torch.long)) == 0.0  # one class
    two = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    assert crop_score(two) == pytest.approx(2 * math.log(4))
    skewed = torch.tensor([[0, 0, 0, 1]])  # 3 of 4 = 0.75: not below the share
    assert crop_score(skewed) == 0.0
    single = torch.tensor([[0, 0, 1, 2, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    assert crop_score(single) == pytest.approx(2 * math.log(2))  # class 1 (1 px) left out
    assert crop_score(torch.full((2, 2), IGNORE_INDEX)) == 0.0


def scene() -> torch.Tensor:
    """(1, 32, 64) labels: one class but for a striped 16x16 patch (rows 8-23, cols 40-55)."""
    labels = torch.zeros(1, 32, 64, dtype=torch.long)
    labels[0, 8:24, 40:56] = 1
    labels[0, 8:24:2, 40:56] = 2
    return labels


def test_the_best_of_ten_boxes_lands_on_the_varied_labels() -> None:
    labels = scene().repeat(30, 1, 1)
    corners = class_balanced_corners(labels, (16, 16), torch.Generator().manual_seed(0))
    scores = [crop_score(labels[0, t : t + 16, x : x + 16]) for t, x in corners]
    plain = torch.Generator().manual_seed(0)
    random_scores = [
        crop_score(labels[0, t : t + 16, x : x + 16])
        for t, x in zip(
            torch.randint(0, 17, (30,), generator=plain).tolist(),
            torch.randint(0, 49, (30,), generator=plain).tolist(),
            strict=True,
        )
    ]
    assert sum(s > 0 for s in scores) >= 27  # the chosen boxes hold the patch
    assert sum(s > 0 for s in random_scores) < 20  # one random box mostly does not
    again = class_balanced_corners(labels, (16, 16), torch.Generator().manual_seed(0))
    assert corners == again
    for top, left in corners:
        assert 0 <= top <= 16 and 0 <= left <= 48


def test_boxes_that_all_score_zero_keep_the_first_and_a_large_crop_is_refused() -> None:
    flat = torch.zeros(2, 20, 20, dtype=torch.long)
    generator = torch.Generator().manual_seed(3)
    corners = class_balanced_corners(flat, (8, 8), generator)
    first = torch.Generator().manual_seed(3)
    top0 = torch.randint(0, 13, (10,), generator=first).tolist()[0]
    left0 = torch.randint(0, 13, (10,), generator=first).tolist()[0]
    assert corners[0] == (top0, left0)
    with pytest.raises(ValueError, match="larger than the images"):
        class_balanced_corners(flat, (8, 32), generator)


def test_crop_at_cuts_every_channel_at_each_images_corner() -> None:
    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    cut = crop_at(images, [(1, 2), (3, 0)], (2, 4))
    assert cut.shape == (2, 3, 2, 4)
    assert torch.equal(cut[0], images[0, :, 1:3, 2:6])
    assert torch.equal(cut[1], images[1, :, 3:5, 0:4])
