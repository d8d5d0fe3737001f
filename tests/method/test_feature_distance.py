"""Thing-class feature distance and label down-scaling vs loops and the one-hot/avg-pool form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spcl.method.feature_distance import (
    CITYSCAPES_THING_CLASSES,
    downscale_label_ratio,
    masked_feature_distance,
    thing_feature_distance,
)

IGNORE = 255
K = 19


def _one_hot_pool(labels: torch.Tensor, scale: int, min_ratio: float) -> torch.Tensor:
    """mmseg/utils/utils.py downscale_label_ratio as its docstring states it (one-hot, avg-pool)."""
    slots = labels.clone()
    slots[slots == IGNORE] = K
    one_hot = F.one_hot(slots, K + 1).permute(0, 3, 1, 2).float()
    ratio, winner = F.avg_pool2d(one_hot, kernel_size=scale).max(dim=1)
    winner[winner == K] = IGNORE
    winner[ratio < min_ratio] = IGNORE
    return winner


def test_downscale_by_hand() -> None:
    labels = torch.tensor(
        [
            [
                [1, 1, 2, 2, 5, 5],
                [1, 3, 2, IGNORE, 5, 5],
                [IGNORE, IGNORE, 4, 4, 6, 7],
                [IGNORE, 0, 4, 4, 8, 9],
            ]
        ]
    )
    out = downscale_label_ratio(labels, 2, K)
    # blocks: 1 (3/4 ≥ .75), 2 (3/4), 5 (4/4); ignore majority, 4 (4/4), 6 (1/4 < .75)
    assert out.tolist() == [[[1, 2, 5], [IGNORE, 4, IGNORE]]]
    strict = downscale_label_ratio(labels, 2, K, min_ratio=0.8)
    assert strict.tolist() == [[[IGNORE, IGNORE, 5], [IGNORE, 4, IGNORE]]]


def test_downscale_matches_one_hot_pool_on_random_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    for scale in (2, 3, 4, 8):
        # blocky labels with noise so that many blocks sit near the 0.75 boundary
        base = torch.randint(0, K, (2, 4, 5), generator=gen)
        labels = base.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        noise = torch.rand(labels.shape, generator=gen) < 0.15
        labels[noise] = torch.randint(0, K, (int(noise.sum()),), generator=gen)
        labels[torch.rand(labels.shape, generator=gen) < 0.05] = IGNORE
        labels = F.pad(labels, (0, scale - 1, 0, 1), value=3)  # a ragged edge avg_pool drops
        expected = _one_hot_pool(labels, scale, 0.75)
        assert torch.equal(downscale_label_ratio(labels, scale, K), expected), scale


def test_masked_distance_by_hand() -> None:
    student = torch.zeros(1, 2, 1, 3)
    frozen = torch.tensor([[[[3.0, 1.0, 0.0]], [[4.0, 0.0, 2.0]]]])  # distances 5, 1, 2
    mask = torch.tensor([[[True, False, True]]])
    assert masked_feature_distance(student, frozen, mask).item() == pytest.approx(3.5)
    assert masked_feature_distance(student, frozen).item() == pytest.approx(8 / 3)


def test_empty_mask_is_zero_with_zero_gradient() -> None:
    student = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = masked_feature_distance(student, torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_gradient_is_finite_where_features_coincide() -> None:
    frozen = torch.randn(1, 4, 2, 2)
    student = frozen.clone().requires_grad_(True)  # at t = 0 the student is the ImageNet model
    masked_feature_distance(student, frozen, torch.ones(1, 2, 2)).backward()
    assert torch.isfinite(student.grad).all()


def test_thing_distance_against_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, K, (2, 4, 6), generator=gen).repeat_interleave(4, 1)
    labels = labels.repeat_interleave(4, 2)  # (2, 16, 24): blocks of 4 are pure
    student = torch.randn(2, 5, 4, 6, generator=gen, requires_grad=True)
    frozen = torch.randn(2, 5, 4, 6, generator=gen)
    loss = thing_feature_distance(student, frozen, labels, K)
    s, f, small = student.detach().numpy(), frozen.numpy(), labels[:, ::4, ::4].numpy()
    dists = [
        np.linalg.norm(s[b, :, y, x] - f[b, :, y, x])
        for b in range(2)
        for y in range(4)
        for x in range(6)
        if small[b, y, x] in CITYSCAPES_THING_CLASSES
    ]
    assert dists and loss.item() == pytest.approx(float(np.mean(dists)), rel=1e-5)
    loss.backward()
    assert student.grad is not None
    with pytest.raises(ValueError, match="feature size"):
        thing_feature_distance(student, frozen, labels[:, :8], K)
