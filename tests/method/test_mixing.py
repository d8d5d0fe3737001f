"""ClassMix masks and mixing against hand-made examples and set arithmetic."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from spcl.method.mixing import class_mix_masks, mix, mix_batch

IGNORE = 255
K = 5


def _labels() -> torch.Tensor:
    """Batch classes {0, 1, 3, 255} (n = 4): image 0 has 0, 1, 255; image 1 has 0, 3."""
    return torch.tensor(
        [
            [[0, 0, 1, 1], [0, IGNORE, 1, 1], [0, 0, 0, 1]],
            [[3, 3, 0, 0], [3, 3, 0, 0], [0, 0, 0, 0]],
        ]
    )


def _slot(value: int) -> int:
    return K if value == IGNORE else value


@pytest.mark.parametrize("exclude_ignore", [False, True])
def test_mask_is_exactly_the_chosen_batch_classes(exclude_ignore: bool) -> None:
    labels = _labels()
    batch_classes = {0, 1, 3} if exclude_ignore else {0, 1, 3, IGNORE}
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = class_mix_masks(labels, K, gen, exclude_ignore=exclude_ignore)
        candidates = {c for c in range(K + 1) if out.candidates[0, c]}
        assert candidates == {_slot(c) for c in batch_classes}
        for i in range(labels.shape[0]):
            chosen = {c for c in range(K + 1) if out.chosen[i, c]}
            assert len(chosen) == math.ceil(len(batch_classes) / 2)
            assert chosen <= candidates
            for y in range(labels.shape[1]):
                for x in range(labels.shape[2]):
                    pasted = _slot(int(labels[i, y, x])) in chosen
                    assert bool(out.mask[i, y, x]) == pasted


def test_odd_number_of_classes_rounds_up() -> None:
    labels = torch.tensor([[[0, 1, 2]]])  # n = 3 → 2 chosen
    out = class_mix_masks(labels, K, torch.Generator().manual_seed(1), exclude_ignore=True)
    assert int(out.chosen.sum()) == 2
    assert int(out.mask.sum()) == 2


def test_per_sample_classes_uses_each_images_own_labels() -> None:
    labels = _labels()
    out = class_mix_masks(
        labels, K, torch.Generator().manual_seed(0), per_sample_classes=True, exclude_ignore=True
    )
    assert {c for c in range(K + 1) if out.candidates[0, c]} == {0, 1}
    assert {c for c in range(K + 1) if out.candidates[1, c]} == {0, 3}
    assert out.chosen.sum(dim=1).tolist() == [1, 1]


def test_choice_is_uniform_over_subsets() -> None:
    labels = torch.tensor([[[0, 1, 2, 3]]])  # C(4, 2) = 6 subsets, each with probability 1/6
    gen = torch.Generator().manual_seed(5)
    draws = 1200
    counts = Counter(
        tuple(class_mix_masks(labels, K, gen).chosen[0, :4].tolist()) for _ in range(draws)
    )
    assert len(counts) == 6
    # binomial(1200, 1/6): std ≈ 12.9; 5 std
    assert all(
        abs(c - draws / 6) < 5 * math.sqrt(draws * (1 / 6) * (5 / 6)) for c in counts.values()
    )


def test_same_generator_state_same_masks() -> None:
    first = class_mix_masks(_labels(), K, torch.Generator().manual_seed(9))
    second = class_mix_masks(_labels(), K, torch.Generator().manual_seed(9))
    assert torch.equal(first.mask, second.mask)


def test_only_ignore_pixels() -> None:
    labels = torch.full((1, 2, 2), IGNORE)
    kept = class_mix_masks(labels, K, torch.Generator().manual_seed(0))
    assert kept.mask.all()  # n = 1 (the ignore label) → 1 chosen: everything pasted
    excluded = class_mix_masks(labels, K, torch.Generator().manual_seed(0), exclude_ignore=True)
    assert not excluded.mask.any()


def test_mix_batch_by_hand() -> None:
    mask = torch.tensor([[[True, False], [False, True]]])
    src_img = torch.arange(8.0).view(1, 2, 2, 2)
    tgt_img = -torch.arange(8.0).view(1, 2, 2, 2) - 1
    src_labels = torch.tensor([[[1, 2], [3, IGNORE]]])
    tgt_pseudo = torch.tensor([[[7, 8], [9, 10]]])
    tgt_weight = torch.full((1, 2, 2), 0.3)
    out = mix_batch(mask, src_img, tgt_img, src_labels, tgt_pseudo, tgt_weight)
    assert out.image.tolist() == [[[[0.0, -2.0], [-3.0, 3.0]], [[4.0, -6.0], [-7.0, 7.0]]]]
    assert out.labels.tolist() == [[[1, 8], [9, IGNORE]]]
    torch.testing.assert_close(out.weight, torch.tensor([[[1.0, 0.3], [0.3, 1.0]]]))


def test_mix_equals_arithmetic_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(2, 4, 5, generator=gen) > 0.5
    src, tgt = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen)
    m = mask[:, None].float()
    assert torch.equal(mix(mask, src, tgt), m * src + (1 - m) * tgt)
    with pytest.raises(ValueError, match="mask"):
        mix(mask[:, :3], src, tgt)
