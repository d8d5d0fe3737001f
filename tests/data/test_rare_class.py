"""Rare-Class Sampling: probabilities vs the softmax formula, pools, draw counts, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spcl.data.loaders import InfiniteLoader
from spcl.data.rare_class import (
    RareClassOrder,
    rare_class_pools,
    rare_class_probabilities,
    scaled_min_pixels,
)
from spcl.data.sampling import ClassIndex

# scipy.stats.chi2.ppf(1 - 1e-6, df) for df = 1..4: a false alarm once in a million runs
CHI2_CRITICAL = {1: 23.928, 2: 27.631, 3: 30.665, 4: 33.377}


def _index() -> ClassIndex:
    """6 images, 5 classes; class 4 never occurs; class 3 only in small amounts."""
    counts = np.array(
        [
            [9000, 5000, 0, 10, 0],
            [8000, 0, 4000, 0, 0],
            [7000, 3001, 0, 20, 0],
            [9500, 0, 0, 2999, 0],
            [6000, 2000, 3500, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=np.int64,
    )
    return ClassIndex([f"img{i}" for i in range(len(counts))], counts)


def _softmax_by_hand(totals: list[int], temperature: float) -> list[float]:
    total = sum(totals)
    exps = [math.exp((1 - n / total) / temperature) for n in totals]
    return [e / sum(exps) for e in exps]


def test_probabilities_follow_the_softmax_formula() -> None:
    index = _index()
    totals = index.pixel_counts.sum(axis=0).tolist()  # [39500, 10001, 7500, 3029, 0]
    for temperature in (0.01, 0.1, 1.0):
        classes, probs = rare_class_probabilities(index.pixel_counts, temperature)
        assert classes.tolist() == [0, 1, 2, 3]  # class 4 has no pixel: not a candidate
        np.testing.assert_allclose(probs, _softmax_by_hand(totals[:4], temperature), rtol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        rare_class_probabilities(index.pixel_counts, 0.0)


def test_pools_are_strictly_above_min_pixels() -> None:
    pools = rare_class_pools(_index().pixel_counts, 3000)
    assert [p.tolist() for p in pools] == [[0, 1, 2, 3, 4], [0, 2], [1, 4], [], []]


def test_empty_pool_raises_or_is_dropped() -> None:
    with pytest.raises(ValueError, match=r"classes \[3\].*empty_pools='drop'"):
        RareClassOrder(_index(), seed=0, min_pixels=3000)
    order = RareClassOrder(_index(), seed=0, min_pixels=3000, empty_pools="drop")
    assert order.classes.tolist() == [0, 1, 2]
    totals = [39500, 10001, 7500, 3029]
    expected = _softmax_by_hand(totals, 0.01)[:3]
    np.testing.assert_allclose(order.probs, np.array(expected) / sum(expected), rtol=1e-12)


def test_draw_frequencies_match_probabilities() -> None:
    temperature = 0.3  # moderate, so that every class is drawn often enough for the test
    order = RareClassOrder(_index(), seed=3, temperature=temperature, min_pixels=5, length=20000)
    classes, images = order.draw_classes(epoch=0)
    expected = np.array(_softmax_by_hand([39500, 10001, 7500, 3029], temperature)) * len(classes)
    observed = np.array([(classes == c).sum() for c in range(4)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_CRITICAL[3]
    # every image comes from its class's pool, and uniformly within it
    pools = rare_class_pools(_index().pixel_counts, 5)
    for c in range(4):
        drawn = images[classes == c]
        assert set(drawn.tolist()) <= set(pools[c].tolist())
        hits = np.array([(drawn == i).sum() for i in pools[c]])
        if len(hits) > 1:
            uniform = len(drawn) / len(hits)
            stat = float(((hits - uniform) ** 2 / uniform).sum())
            assert stat < CHI2_CRITICAL[len(hits) - 1], (c, hits)


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    first = RareClassOrder(_index(), seed=7, min_pixels=5)
    again = RareClassOrder(_index(), seed=7, min_pixels=5)
    assert len(first) == 6  # default length: the number of images
    np.testing.assert_array_equal(first(4), again(4))
    np.testing.assert_array_equal(first(4), first(4))
    long = RareClassOrder(_index(), seed=7, min_pixels=5, length=200)
    assert not np.array_equal(long(0), long(1))
    other_seed = RareClassOrder(_index(), seed=8, min_pixels=5, length=200)
    assert not np.array_equal(long(0), other_seed(0))
    assert long(0).dtype == np.int64 and long(0).shape == (200,)


def test_scaled_min_pixels() -> None:
    assert scaled_min_pixels(1914 * 1052) == 3000
    assert scaled_min_pixels(1280 * 720) == 1373
    assert scaled_min_pixels(64 * 32, min_pixels=3000) == 3


def test_infinite_loader_draws_the_order_and_resumes() -> None:
    class Indices(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, item: tuple[int, int]) -> int:
            return item[0]

    order = RareClassOrder(_index(), seed=1, min_pixels=5, length=8)
    loader = InfiniteLoader(Indices(), batch_size=2, seed=0, order=order)
    batches = [next(loader).tolist() for _ in range(6)]  # 4 batches per epoch, into epoch 1
    assert [i for batch in batches[:4] for i in batch] == order(0).tolist()
    assert [i for batch in batches[4:] for i in batch] == order(1)[:4].tolist()
    resumed = InfiniteLoader(Indices(), batch_size=2, seed=0, order=order)
    resumed.load_state_dict({"epoch": 1, "offset": 1})
    assert next(resumed).tolist() == batches[5]


def test_the_sampler_hands_each_draw_its_class() -> None:
    from spcl.data.loaders import SeededBatchSampler

    order = RareClassOrder(_index(), seed=1, min_pixels=5, length=8)
    items = [
        item
        for batch in SeededBatchSampler(8, 2, seed=0, shuffle=False, order=order)
        for item in batch
    ]
    classes, images = order.draw_classes(0)
    assert [i for i, _, _ in items] == images.tolist()
    assert [c for _, _, c in items] == classes.tolist()

    class IndicesOnly:  # the same draws without their classes
        def __len__(self) -> int:
            return len(order)

        def __call__(self, epoch: int) -> np.ndarray:
            return order(epoch)

    plain = SeededBatchSampler(8, 2, seed=0, shuffle=False, order=IndicesOnly())
    assert [(i, s) for i, s, _ in items] == [item for batch in plain for item in batch]


def _striped_list(tmp_path):  # -> SegmentationList
    from PIL import Image

    from spcl.data.lists import SegmentationList
    from spcl.data.transforms import build_train_transform

    label = np.zeros((64, 64), dtype=np.uint8)
    label[:, 48:] = 5  # class 5: the right 16 columns only
    Image.fromarray(label).save(tmp_path / "l.png")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    transform = build_train_transform(crop=[16, 16])
    return SegmentationList([tmp_path / "i.png"], [tmp_path / "l.png"], transform=transform)


def test_a_rare_class_sample_is_redrawn_until_it_holds_its_class(tmp_path) -> None:
    data = _striped_list(tmp_path)

    def holding(min_pixels: float) -> int:
        data.min_class_pixels = min_pixels
        return sum(int((data[(0, seed, 5)]["label"] == 5).sum() > 40) for seed in range(40))

    assert holding(0) < 20  # one draw: x0 must be ≥ 35 of 0..48 for more than 40 pixels
    assert holding(40) >= 36  # up to 11 draws: ~1 - 0.71**11 of samples
    data.min_class_pixels = 0  # off (the default): a triple gives what the pair gives
    for seed in range(5):
        np.testing.assert_array_equal(data[(0, seed, 5)]["label"], data[(0, seed)]["label"])
    data.min_class_pixels = 40
    first = [data[(0, seed, 5)]["label"] for seed in range(5)]
    again = [data[(0, seed, 5)]["label"] for seed in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # seeded redraws


def test_vfmuda_joint_rule_needs_the_class_and_no_dominant_class_in_one_crop(tmp_path) -> None:
    from spcl.data.lists import _retry_seed

    data = _striped_list(tmp_path)
    data.min_class_pixels = 40

    def both(label: torch.Tensor) -> bool:  # > 40 px of class 5, no class at 75 % or more
        rare = int((label == 5).sum())
        return 40 < rare < 0.75 * label.numel() and label.numel() - rare < 0.75 * label.numel()

    nested = sum(both(data[(0, seed, 5)]["label"]) for seed in range(40))
    data.joint_tries, data.max_share = 20, 0.75
    joint = sum(both(data[(0, seed, 5)]["label"]) for seed in range(40))
    assert joint >= 38 > nested  # DAFormer's rule keeps crops of class 5 alone
    data.max_share = 0.01  # no crop can pass: the authors' one more, unchecked draw
    for seed in range(3):
        _, expected = data.transform(*data.load(0), _retry_seed(seed, 20))
        np.testing.assert_array_equal(data[(0, seed, 5)]["label"], expected)
