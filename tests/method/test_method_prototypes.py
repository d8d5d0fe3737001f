"""Prototype statistics and EMA bank against naive per-pixel loops in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spcl.method.prototypes import (
    PrototypeAccumulator,
    PrototypeBank,
    class_feature_means,
    class_feature_sums,
    downsample_labels,
    reliable_mask,
)

IGNORE = 255


def _random_batch(
    seed: int, b: int = 2, c: int = 5, h: int = 3, w: int = 4, k: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels with ignored pixels; class k - 1 never appears."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(b, c, h, w, generator=gen)
    labels = torch.randint(0, k - 1, (b, h, w), generator=gen)
    labels[torch.rand(b, h, w, generator=gen) < 0.25] = IGNORE
    return features, labels


def _naive_sums(features: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    b, c, h, w = features.shape
    sums = np.zeros((k, c))
    counts = np.zeros(k, dtype=np.int64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                label = labels[i, y, x]
                if label == IGNORE:
                    continue
                vec = features[i, :, y, x].astype(np.float64)
                sums[label] += vec / np.linalg.norm(vec)
                counts[label] += 1
    return sums, counts


def _naive_image_means(
    features: np.ndarray, labels: np.ndarray, k: int
) -> list[dict[int, np.ndarray]]:
    """Per image: {class: mean of normalised features over its pixels}."""
    out = []
    for i in range(features.shape[0]):
        sums, counts = _naive_sums(features[i : i + 1], labels[i : i + 1], k)
        out.append({cls: sums[cls] / counts[cls] for cls in range(k) if counts[cls] > 0})
    return out


@pytest.mark.parametrize(
    ("in_size", "out_size"), [((8, 12), (4, 6)), ((512, 1024), (65, 129)), ((7, 5), (3, 2))]
)
def test_downsample_labels_takes_top_left_sample(
    in_size: tuple[int, int], out_size: tuple[int, int]
) -> None:
    labels = torch.randint(0, 256, (2, *in_size))
    out = downsample_labels(labels, out_size).numpy()
    ref = labels.numpy()
    rows = [math.floor(i * in_size[0] / out_size[0]) for i in range(out_size[0])]
    cols = [math.floor(j * in_size[1] / out_size[1]) for j in range(out_size[1])]
    expected = ref[:, rows][:, :, cols]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_downsample_labels_rejects_channel_dim() -> None:
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        downsample_labels(torch.zeros(1, 1, 4, 4), (2, 2))


def test_reliable_mask_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    labels[0, 0, 0] = IGNORE
    out = reliable_mask(labels, logits)
    pred = logits.argmax(1)
    for i, y, x in np.ndindex(*labels.shape):
        keep = labels[i, y, x] == pred[i, y, x]
        assert out[i, y, x] == (labels[i, y, x] if keep else IGNORE)
    assert (out != IGNORE).any() and (out == IGNORE).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_feature_sums_match_loop(seed: int) -> None:
    features, labels = _random_batch(seed)
    sums, counts = class_feature_sums(features, labels, num_classes=4)
    ref_sums, ref_counts = _naive_sums(features.numpy(), labels.numpy(), 4)
    np.testing.assert_allclose(sums.numpy(), ref_sums, atol=1e-5)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    assert counts[3] == 0 and torch.all(sums[3] == 0)  # the empty class
    means, _ = class_feature_means(features, labels, num_classes=4)
    present = ref_counts > 0
    np.testing.assert_allclose(
        means.numpy()[present], ref_sums[present] / ref_counts[present, None], atol=1e-5
    )
    assert torch.all(means[3] == 0)


def test_class_feature_sums_all_ignored_and_single_pixel() -> None:
    features = torch.randn(1, 3, 2, 2)
    sums, counts = class_feature_sums(features, torch.full((1, 2, 2), IGNORE), num_classes=2)
    assert torch.all(sums == 0) and torch.all(counts == 0)
    single = torch.tensor([[3.0], [4.0]])[None, :, :, None]  # (1, 2, 1, 1), norm 5
    sums, counts = class_feature_sums(single, torch.ones(1, 1, 1, dtype=torch.long), 2)
    np.testing.assert_allclose(sums.numpy(), [[0, 0], [0.6, 0.8]], atol=1e-7)
    assert counts.tolist() == [0, 1]


def test_class_feature_sums_zero_feature_counts_but_adds_nothing() -> None:
    features = torch.zeros(1, 3, 1, 2)
    features[0, :, 0, 1] = torch.tensor([0.0, 2.0, 0.0])
    sums, counts = class_feature_sums(features, torch.zeros(1, 1, 2, dtype=torch.long), 1)
    assert counts.tolist() == [2]
    np.testing.assert_allclose(sums.numpy(), [[0.0, 1.0, 0.0]])


def test_class_feature_sums_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="downsample_labels"):
        class_feature_sums(torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long), 2)


def _naive_ema(
    protos: np.ndarray, sums: np.ndarray, counts: np.ndarray, alpha: float, policy: str
) -> np.ndarray:
    out = protos.copy()
    for cls in range(protos.shape[0]):
        if counts[cls] > 0:
            out[cls] = alpha * protos[cls] + (1 - alpha) * sums[cls] / counts[cls]
        elif policy == "zero_fill":
            out[cls] = alpha * protos[cls]
    return out


@pytest.mark.parametrize("policy", ["zero_fill", "keep"])
def test_bank_ema_matches_loop_for_both_policies(policy: str) -> None:
    bank = PrototypeBank(num_classes=4, dim=5, absent_policy=policy)  # type: ignore[arg-type]
    start = torch.randn(4, 5, generator=torch.Generator().manual_seed(7))
    bank.initialize(start)
    expected = start.double().numpy()
    for seed in range(3):
        features, labels = _random_batch(seed)
        counts = bank.update(features, labels)
        ref_sums, ref_counts = _naive_sums(features.numpy(), labels.numpy(), 4)
        expected = _naive_ema(expected, ref_sums, ref_counts, 0.1, policy)
        np.testing.assert_array_equal(counts.numpy(), ref_counts)
        np.testing.assert_allclose(bank.prototypes.numpy(), expected, atol=1e-5)
    absent = bank.prototypes[3]
    if policy == "keep":
        torch.testing.assert_close(absent, start[3])
    else:
        torch.testing.assert_close(absent, start[3] * 0.1**3)


def test_bank_update_from_sums_matches_update_and_marks_initialized() -> None:
    features, labels = _random_batch(3)
    a = PrototypeBank(4, 5)
    b = PrototypeBank(4, 5)
    a.update(features, labels)
    b.update_from_sums(*class_feature_sums(features, labels, 4))
    torch.testing.assert_close(a.prototypes, b.prototypes)
    assert a.initialized.tolist() == [True, True, True, False]


def test_bank_state_dict_round_trip_and_errors() -> None:
    bank = PrototypeBank(4, 5, absent_policy="keep")
    bank.update(*_random_batch(4))
    state = bank.state_dict()
    assert set(state) == {"prototypes", "initialized"}
    other = PrototypeBank(4, 5, absent_policy="keep")
    other.load_state_dict(state)
    torch.testing.assert_close(other.prototypes, bank.prototypes)
    assert torch.equal(other.initialized, bank.initialized)
    with pytest.raises(ValueError, match="absent_policy"):
        PrototypeBank(4, 5, absent_policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected sums"):
        bank.update_from_sums(torch.zeros(3, 5), torch.zeros(3))


def test_bank_to_moves_buffers_and_keeps_dtype() -> None:
    bank = PrototypeBank(2, 3).to(torch.float64)
    assert bank.prototypes.dtype == torch.float64
    assert bank.initialized.dtype == torch.bool


def test_accumulator_is_mean_of_per_image_means_not_pixel_mean() -> None:
    # image 0: class 0 on 3 pixels pointing along e0; image 1: class 0 on 1 pixel along e1
    features = torch.zeros(2, 2, 2, 2)
    features[0, 0] = 1.0
    features[1, 1] = 1.0
    labels = torch.full((2, 2, 2), IGNORE)
    labels[0, 0, 0] = labels[0, 0, 1] = labels[0, 1, 0] = 0
    labels[1, 1, 1] = 0
    acc = PrototypeAccumulator(num_classes=2, dim=2)
    acc.add(features, labels)
    protos, seen = acc.prototypes()
    torch.testing.assert_close(protos[0], torch.tensor([0.5, 0.5]))  # pixel mean: [0.75, 0.25]
    pixel_mean, _ = class_feature_means(features, labels, 2)
    assert not torch.allclose(protos[0], pixel_mean[0])
    assert seen.tolist() == [True, False] and torch.all(protos[1] == 0)


def test_accumulator_streaming_matches_loop() -> None:
    acc = PrototypeAccumulator(num_classes=4, dim=5)
    per_class: dict[int, list[np.ndarray]] = {}
    for seed in range(3):
        features, labels = _random_batch(seed, b=3)
        acc.add(features, labels)
        for image in _naive_image_means(features.numpy(), labels.numpy(), 4):
            for cls, mean in image.items():
                per_class.setdefault(cls, []).append(mean)
    protos, seen = acc.prototypes()
    for cls in range(4):
        assert bool(seen[cls]) == (cls in per_class)
        expected = np.mean(per_class[cls], axis=0) if cls in per_class else np.zeros(5)
        np.testing.assert_allclose(protos[cls].numpy(), expected, atol=1e-5)
    sums, counts = acc.sums_and_counts()
    assert counts.tolist() == [len(per_class.get(cls, [])) for cls in range(4)]
    sums.mul_(2)  # an in-place all-reduce over two identical ranks leaves the means unchanged
    counts.mul_(2)
    torch.testing.assert_close(acc.prototypes()[0], protos)
    assert acc.image_counts.tolist() == counts.tolist()
    restored = PrototypeAccumulator(4, 5)
    restored.load_state_dict(acc.state_dict())
    torch.testing.assert_close(restored.prototypes()[0], protos)
    bank = PrototypeBank(4, 5)
    bank.initialize(*acc.prototypes())
    assert bank.initialized.tolist() == seen.tolist()
