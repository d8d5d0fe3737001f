"""The training transform's class-limited crop (DAFormer's source ``RandomCrop(cat_max_ratio)``)."""

from __future__ import annotations

import numpy as np
import pytest

from spcl.base import IGNORE_INDEX
from spcl.data.transforms import ClassLimitedCrop, build_train_transform

SIZE, CROP = 64, 16
SEEDS = range(60)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A label whose left 40 columns are one class and whose other 24 are striped 1/2,
    and an image whose pixels encode their own row and column (to check the crop's place)."""
    label = np.zeros((SIZE, SIZE), dtype=np.uint8)
    label[:, 40:] = 1
    label[::2, 40:] = 2
    rows, cols = np.indices((SIZE, SIZE))
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    return image, label


def dominated(label: np.ndarray, share: float) -> bool:
    """One class with ``share`` or more of the labelled pixels, or fewer than two classes."""
    counts = np.bincount(label[label != IGNORE_INDEX].ravel())
    counts = counts[counts > 0]
    return counts.size < 2 or counts.max() >= share * counts.sum()


def crops(max_share: float) -> list[tuple[np.ndarray, np.ndarray]]:
    transform = build_train_transform(crop=[CROP, CROP], crop_max_share=max_share)
    image, label = scene()
    return [transform(image, label, seed) for seed in SEEDS]


def test_crops_that_one_class_dominates_are_drawn_again() -> None:
    plain = sum(dominated(label, 0.75) for _, label in crops(1.0))
    limited = sum(dominated(label, 0.75) for _, label in crops(0.75))
    assert plain > len(SEEDS) // 2  # most random crops fall on the one-class part
    assert limited <= 1  # 11 draws: a dominated crop remains with probability ~0.6**11
    for image, label in crops(0.75):  # image and label cut at the same place
        y0, x0 = int(image[0, 0, 0]), int(image[0, 0, 1])
        np.testing.assert_array_equal(label, scene()[1][y0 : y0 + CROP, x0 : x0 + CROP])


def test_the_crop_is_seeded_and_gives_up_after_ten_redraws() -> None:
    again = crops(0.75)
    for (a_img, a_lab), (b_img, b_lab) in zip(crops(0.75), again, strict=True):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_lab, b_lab)
    draws: list[int] = []
    crop = ClassLimitedCrop(CROP, CROP, 0.75)
    real = crop.balanced
    crop.balanced = lambda label: draws.append(1) or real(label)  # type: ignore[method-assign]
    one_class = np.zeros((SIZE, SIZE), dtype=np.uint8)
    params = {"shape": one_class.shape}
    chosen = crop.get_params_dependent_on_data(params, {"mask": one_class})
    assert len(draws) == 10 and len(chosen["crop_coords"]) == 4  # checked 10 times, then kept
    draws.clear()
    crop.get_params_dependent_on_data(params, {"image": scene()[0]})  # no label: first draw
    assert draws == []


def test_ignored_pixels_do_not_count_towards_a_share() -> None:
    crop = ClassLimitedCrop(CROP, CROP, 0.75)
    label = np.full((4, 4), IGNORE_INDEX, dtype=np.uint8)
    label[0, :2] = [3, 4]  # two classes, half each, among the labelled pixels
    assert crop.balanced(label)
    label[0, 2] = 3  # 2 of 3
    assert crop.balanced(label)
    label[0, 3] = 3  # 3 of 4 = 0.75: not below
    assert not crop.balanced(label)
    assert not crop.balanced(np.full((4, 4), IGNORE_INDEX, dtype=np.uint8))


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_the_config_refuses_shares_outside_zero_to_one(value: float) -> None:
    from spcl.base import ConfigError
    from spcl.config import load_config

    with pytest.raises(ConfigError, match="source_crop_max_share"):
        load_config("demo", [f"online.source_crop_max_share={value}"])
