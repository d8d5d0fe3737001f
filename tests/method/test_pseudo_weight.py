"""Teacher pseudo-labels and DAFormer's quality weight on hand-computed examples."""

from __future__ import annotations

import pytest
import torch

from spcl.method.pseudo_weight import (
    crop_pseudo_weight,
    pl_crop_rows,
    pseudo_labels_with_ignore,
    teacher_pseudo_labels,
)

IGNORE = 255


def _logits_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (log is a right inverse of softmax)."""
    return probs.log()


def _example() -> torch.Tensor:
    """2 images of 2×2 pixels, 2 classes.

    Max-probs: image 0: .99 .97 .60 .98; image 1: .5 .9 .9 .999.
    """
    p_class1 = torch.tensor(
        [[[0.99, 0.03], [0.40, 0.98]], [[0.5, 0.9], [0.1, 0.001]]], dtype=torch.float64
    )
    probs = torch.stack([1 - p_class1, p_class1], dim=1)
    return _logits_from_probs(probs)


def test_labels_and_confidence() -> None:
    out = teacher_pseudo_labels(_example())
    assert out.labels.tolist() == [[[1, 0], [0, 1]], [[0, 1], [0, 0]]]  # 0.5/0.5 → first max
    expected = torch.tensor(
        [[[0.99, 0.97], [0.60, 0.98]], [[0.5, 0.9], [0.9, 0.999]]], dtype=torch.float64
    )
    torch.testing.assert_close(out.confidence, expected, atol=1e-12, rtol=0)


def test_batch_quality_weight_by_hand() -> None:
    # p ≥ 0.968: image 0 has .99, .97, .98 (3 of 4), image 1 has .999 (1 of 4): q = 4 / 8
    out = teacher_pseudo_labels(_example())
    assert out.weight.shape == (2, 2, 2)
    assert torch.equal(out.weight, torch.full((2, 2, 2), 0.5))


def test_sample_quality_and_hard_threshold() -> None:
    per_sample = teacher_pseudo_labels(_example(), weight_mode="sample_quality").weight
    assert torch.equal(per_sample[0], torch.full((2, 2), 0.75))
    assert torch.equal(per_sample[1], torch.full((2, 2), 0.25))
    hard = teacher_pseudo_labels(_example(), weight_mode="hard_threshold").weight
    assert hard.tolist() == [[[1, 1], [0, 1]], [[0, 0], [0, 1]]]
    with pytest.raises(ValueError, match="weight_mode"):
        teacher_pseudo_labels(_example(), weight_mode="pixel")  # type: ignore[arg-type]


def test_threshold_is_inclusive() -> None:
    logits = torch.tensor([0.0, 3.4]).view(1, 2, 1, 1)
    conf = teacher_pseudo_labels(logits).confidence.item()
    assert teacher_pseudo_labels(logits, threshold=conf).weight.item() == 1.0  # p ≥ τ
    above = float(torch.nextafter(torch.tensor(conf), torch.tensor(2.0)))
    assert teacher_pseudo_labels(logits, threshold=above).weight.item() == 0.0


def test_pl_crop_rows_scale_with_height() -> None:
    assert pl_crop_rows(512) == (15, 120)
    assert pl_crop_rows(1024) == (30, 240)  # HRDA's full-resolution margins
    assert pl_crop_rows(256) == (8, 60)  # round(7.5) = 8 (half to even), 60
    assert pl_crop_rows(64) == (2, 15)
    assert pl_crop_rows(300, reference_height=300) == (15, 120)


def test_crop_zeroes_rows_and_applies_valid_mask() -> None:
    weight = torch.full((2, 10, 3), 0.4)
    cropped = crop_pseudo_weight(weight, top=2, bottom=3)
    expected_rows = [0, 0, 0.4, 0.4, 0.4, 0.4, 0.4, 0, 0, 0]
    for row, value in enumerate(expected_rows):
        assert torch.all(cropped[:, row] == torch.tensor(value)), row
    assert torch.equal(weight, torch.full((2, 10, 3), 0.4))  # input untouched
    assert torch.equal(crop_pseudo_weight(weight, top=0, bottom=0), weight)  # 0 rows: no crop
    valid = torch.ones(2, 10, 3)
    valid[1, 4, 1] = 0
    masked = crop_pseudo_weight(weight, top=2, bottom=3, valid_mask=valid)
    assert masked[1, 4, 1] == 0 and masked[0, 4, 1] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="valid_mask"):
        crop_pseudo_weight(weight, valid_mask=torch.ones(2, 10))


def test_labels_with_ignore_where_weight_is_zero() -> None:
    labels = torch.tensor([[[1, 2], [3, 4]]])
    weight = torch.tensor([[[0.0, 0.5], [0.5, 0.0]]])
    assert pseudo_labels_with_ignore(labels, weight).tolist() == [[[IGNORE, 2], [3, IGNORE]]]
