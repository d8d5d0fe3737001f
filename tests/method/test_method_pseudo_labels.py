"""Streaming per-class thresholds against the reference's sorted order statistic (numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spcl.method.pseudo_labels import (
    DEFAULT_THRESHOLD_BINS,
    ThresholdEstimator,
    apply_thresholds,
    class_coverage,
    threshold_predictions,
)

IGNORE = 255
TOLERANCE = 1e-4  # the bound promised against the reference's exact order statistic
BIN_BOUND = 0.5 / DEFAULT_THRESHOLD_BINS + 1e-7  # what the bin centre guarantees (float32 slack)


def _reference_thresholds(conf: np.ndarray, pred: np.ndarray, k: int, cap: float) -> np.ndarray:
    """The reference: per class, sorted(conf)[round(0.5·n)] (round half to even), capped."""
    out = np.zeros(k)
    for cls in range(k):
        values = np.sort(conf[pred == cls])
        n = len(values)
        if n == 0:
            continue
        index = int(np.round(0.5 * n))
        assert index < n  # n = 1 → 0, n = 3 → 2: never out of range
        out[cls] = min(values[index], cap)
    return out


EDGE_VALUES = [0.0, 1.0, 0.5, 0.9, 1.0 / DEFAULT_THRESHOLD_BINS, 1.0 - 1.0 / DEFAULT_THRESHOLD_BINS]
confidences = st.one_of(
    st.floats(0.0, 1.0, width=32),
    st.sampled_from(EDGE_VALUES),
    st.integers(0, DEFAULT_THRESHOLD_BINS).map(lambda i: np.float32(i / DEFAULT_THRESHOLD_BINS)),
)


@settings(max_examples=100, deadline=None)
@given(
    pixels=st.lists(st.tuples(confidences, st.integers(0, 4)), min_size=1, max_size=60),
    cap=st.sampled_from([0.9, 1.0]),
)
def test_thresholds_within_tolerance_of_reference(
    pixels: list[tuple[float, int]], cap: float
) -> None:
    conf = np.array([c for c, _ in pixels], dtype=np.float32)
    pred = np.array([p for _, p in pixels], dtype=np.int64)
    est = ThresholdEstimator(num_classes=5, cap=cap)
    est.update_from_predictions(torch.from_numpy(conf), torch.from_numpy(pred))
    got = est.thresholds().numpy()
    expected = _reference_thresholds(conf, pred, 5, cap)
    assert BIN_BOUND < TOLERANCE
    assert np.all(np.abs(got - expected) <= BIN_BOUND), (got, expected)
    assert np.all(got[np.bincount(pred, minlength=5) == 0] == 0)  # never predicted → 0
    assert np.all(got <= cap)


def test_single_pixel_and_rounding_half_to_even() -> None:
    est = ThresholdEstimator(num_classes=3, cap=1.0)
    # class 0: one pixel → index round(0.5) = 0; class 1: three → round(1.5) = 2;
    # class 2: five → round(2.5) = 2 (half to even)
    conf = torch.tensor([0.3, 0.1, 0.2, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5])
    pred = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])
    est.update_from_predictions(conf, pred)
    np.testing.assert_allclose(est.thresholds().numpy(), [0.3, 0.7, 0.3], atol=TOLERANCE)


def test_cap_and_never_predicted_class() -> None:
    est = ThresholdEstimator(num_classes=3)
    est.update_from_predictions(torch.tensor([0.99, 0.97, 0.95]), torch.tensor([0, 0, 0]))
    np.testing.assert_allclose(est.thresholds().numpy(), [0.9, 0.0, 0.0])


def test_update_from_probs_streams_like_one_big_update() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 5, 7, generator=gen) * 3
    probs = logits.softmax(dim=1)
    streamed = ThresholdEstimator(num_classes=4)
    sizes = []
    for chunk in probs.split([1, 2, 3]):
        streamed.update(chunk)
        sizes.append(streamed.histograms.numel())
    whole = ThresholdEstimator(num_classes=4)
    whole.update(probs)
    assert torch.equal(streamed.histograms, whole.histograms)
    assert sizes == [4 * DEFAULT_THRESHOLD_BINS] * 3  # memory does not grow with updates
    conf, pred = probs.max(dim=1)
    expected = _reference_thresholds(conf.numpy(), pred.numpy(), 4, 0.9)
    np.testing.assert_allclose(streamed.thresholds().numpy(), expected, atol=TOLERANCE)
    assert streamed.counts().tolist() == np.bincount(pred.reshape(-1), minlength=4).tolist()


def test_state_dict_round_trip_and_shape_errors() -> None:
    est = ThresholdEstimator(num_classes=2, bins=16)
    est.update_from_predictions(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]))
    other = ThresholdEstimator(num_classes=2, bins=16)
    other.load_state_dict(est.state_dict())
    assert torch.equal(other.thresholds(), est.thresholds())
    with pytest.raises(ValueError, match="expected"):
        ThresholdEstimator(num_classes=3, bins=16).load_state_dict(est.state_dict())
    with pytest.raises(ValueError, match="K=3"):
        ThresholdEstimator(num_classes=3).update(torch.rand(1, 2, 4, 4))


def _naive_apply(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    b, _, h, w = probs.shape
    out = np.empty((b, h, w), dtype=np.int64)
    for i, y, x in np.ndindex(b, h, w):
        cls = int(np.argmax(probs[i, :, y, x]))
        out[i, y, x] = IGNORE if probs[i, cls, y, x] < thresholds[cls] else cls
    return out


def test_apply_thresholds_matches_loop_including_equality() -> None:
    gen = torch.Generator().manual_seed(1)
    probs = (torch.randn(2, 3, 4, 6, generator=gen) * 2).softmax(dim=1)
    thresholds = torch.tensor([0.6, 0.0, 0.9])
    conf, pred = probs.max(dim=1)
    at_edge = tuple(torch.nonzero(pred == 0)[0].tolist())
    thresholds[0] = conf[at_edge]  # a pixel exactly at its threshold is kept
    labels = apply_thresholds(probs, thresholds)
    np.testing.assert_array_equal(labels.numpy(), _naive_apply(probs.numpy(), thresholds.numpy()))
    assert labels[at_edge] == 0
    assert (labels == IGNORE).any()
    assert torch.equal(threshold_predictions(conf, pred, thresholds), labels)
    never_rejected = pred == 1
    assert torch.all(labels[never_rejected] == 1)


def test_class_coverage_matches_loop() -> None:
    pred = torch.tensor([[[0, 0, 1, 1, 1, 0]]])
    labels = torch.tensor([[[0, IGNORE, 1, IGNORE, IGNORE, 0]]])
    coverage = class_coverage(pred, labels, num_classes=3)
    assert coverage[:2].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert torch.isnan(coverage[2])
