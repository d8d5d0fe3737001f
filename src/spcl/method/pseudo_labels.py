"""Target pseudo-labels with per-class confidence thresholds (SPCL stage 3).

Over the whole target set, every pixel's confidence (max softmax probability) and predicted class
are gathered; class k's threshold is the median confidence of the pixels predicted as k, capped at
0.9 (0 for a class never predicted). A pixel keeps its predicted class where its confidence
reaches that threshold, else it is ignored.

The reference keeps every pixel's confidence in RAM and takes the order statistic
``sorted(conf)[round(0.5·n)]`` (NumPy's round half to even). :class:`ThresholdEstimator` computes
the same value from fixed-size per-class histograms: with ``bins`` equal-width bins over [0, 1]
it returns the centre of the bin holding that order statistic, so the error is at most
``0.5 / bins`` (1.5e-5 with the default 2**15 bins; capping at 0.9 can only shrink it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = [
    "DEFAULT_THRESHOLD_BINS",
    "REFERENCE_THRESHOLD_CAP",
    "ThresholdEstimator",
    "apply_thresholds",
    "class_coverage",
    "threshold_predictions",
]

REFERENCE_THRESHOLD_CAP = 0.9  # per-class thresholds never exceed this (reference)
DEFAULT_THRESHOLD_BINS = 2**15  # bin width 2**-15: threshold error ≤ 2**-16 ≈ 1.5e-5 (< 1e-4)


def _check_conf_pred(conf: Tensor, pred: Tensor) -> None:
    if conf.shape != pred.shape:
        raise ValueError(
            f"conf and pred must have the same shape, got {tuple(conf.shape)} and "
            f"{tuple(pred.shape)}"
        )


def _median_rank(counts: Tensor) -> Tensor:
    """0-based rank ``round(0.5·n)`` with round half to even, in exact integer arithmetic.

    For even n it is n/2; for odd n = 2m + 1, 0.5·n = m + 0.5 rounds to the even one of m, m + 1.
    It is always < n for n ≥ 1 (n = 1 → 0, n = 3 → 2).
    """
    half = counts // 2
    return half + (counts % 2) * (half % 2)


class ThresholdEstimator:
    """Streaming per-class confidence histograms → the reference's per-class thresholds.

    ``histograms[k, b]`` counts the pixels predicted as class k whose confidence falls in bin b
    (``floor(conf · bins)``, 1.0 in the last bin). Memory is ``K × bins`` int64 whatever the
    number of images; the tensor follows the inputs' device, and a distributed caller
    all-reduces ``histograms`` (in place) before calling :meth:`thresholds`.

    Args:
        num_classes: K.
        cap: upper bound of every threshold (the reference's 0.9).
        bins: histogram bins over [0, 1]; the threshold error is at most ``0.5 / bins``.
    """

    def __init__(
        self,
        num_classes: int,
        cap: float = REFERENCE_THRESHOLD_CAP,
        bins: int = DEFAULT_THRESHOLD_BINS,
    ) -> None:
        if bins < 1:
            raise ValueError(f"bins must be ≥ 1, got {bins}")
        self.num_classes = num_classes
        self.cap = cap
        self.bins = bins
        self.histograms = torch.zeros(num_classes, bins, dtype=torch.int64)

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """Add a batch of softmax maps.

        Shape:
            probs: (B, K, H, W) class probabilities.
        """
        if probs.dim() != 4 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"probs must be (B, K={self.num_classes}, H, W), got shape {tuple(probs.shape)}"
            )
        conf, pred = probs.max(dim=1)
        self.update_from_predictions(conf, pred)

    @torch.no_grad()
    def update_from_predictions(self, conf: Tensor, pred: Tensor) -> None:
        """Add precomputed confidences (in [0, 1]) and predicted classes (in [0, K)).

        Shape:
            conf, pred: any shape, the same for both, e.g. (B, H, W).
        """
        _check_conf_pred(conf, pred)
        if self.histograms.device != conf.device:
            self.histograms = self.histograms.to(conf.device)
        # conf · bins is exact for a power-of-two bin count, so bin edges are exact
        bin_index = (conf.double() * self.bins).floor_().long().clamp_(0, self.bins - 1)
        flat = (pred.long() * self.bins).add_(bin_index).reshape(-1)  # class-major bin index
        ones = flat.new_ones(()).expand(flat.numel())  # no (N,) allocation
        self.histograms.view(-1).scatter_add_(0, flat, ones)  # no host sync, unlike bincount

    def counts(self) -> Tensor:
        """Pixels predicted as each class so far, (K,) int64."""
        return self.histograms.sum(dim=1)

    def thresholds(self) -> Tensor:
        """Per-class thresholds (K,) float32: bin centre of the median order statistic, capped.

        Class k's value approximates ``sorted(conf_k)[round(0.5·n_k)]`` to within
        ``0.5 / bins``, then ``min(·, cap)``; a class never predicted gets 0.
        """
        cumulative = self.histograms.cumsum(dim=1)  # (K, bins)
        counts = cumulative[:, -1]
        rank = _median_rank(counts)  # 0-based; the (rank + 1)-th smallest confidence
        bin_index = torch.searchsorted(cumulative, (rank + 1)[:, None], side="left")[:, 0]
        centre = (bin_index.double() + 0.5) / self.bins
        values = torch.where(counts > 0, centre.clamp(max=self.cap), centre.new_zeros(()))
        return values.float()

    def state_dict(self) -> dict[str, Tensor]:
        return {"histograms": self.histograms}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        histograms = state["histograms"]
        if tuple(histograms.shape) != (self.num_classes, self.bins):
            raise ValueError(
                f"histograms have shape {tuple(histograms.shape)}, expected "
                f"({self.num_classes}, {self.bins})"
            )
        self.histograms = histograms.to(torch.int64).clone()


def threshold_predictions(
    conf: Tensor, pred: Tensor, thresholds: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Pseudo-labels from confidences: ``pred`` where ``conf ≥ thresholds[pred]``, else ignore.

    Shape:
        conf, pred: (B, H, W); thresholds: (K,) → (B, H, W) int64.
    """
    _check_conf_pred(conf, pred)
    pred = pred.long()
    rejected = conf < thresholds.to(conf.device)[pred]  # strict, as the reference
    return pred.masked_fill(rejected, ignore_index)


def apply_thresholds(probs: Tensor, thresholds: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pseudo-labels from softmax maps: argmax where its confidence reaches its class threshold.

    Args:
        probs: class probabilities.
        thresholds: per-class thresholds, e.g. :meth:`ThresholdEstimator.thresholds`.
        ignore_index: label of rejected pixels.

    Returns:
        Labels (int64), ``ignore_index`` where ``conf < thresholds[pred]``.

    Shape:
        probs: (B, K, H, W); thresholds: (K,) → (B, H, W).
    """
    if probs.dim() != 4 or thresholds.shape != (probs.shape[1],):
        raise ValueError(
            f"expected probs (B, K, H, W) and thresholds (K,), got {tuple(probs.shape)} and "
            f"{tuple(thresholds.shape)}"
        )
    conf, pred = probs.max(dim=1)
    return threshold_predictions(conf, pred, thresholds, ignore_index)


def class_coverage(
    pred: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Fraction of the pixels predicted as each class that keep a pseudo-label (for logging).

    Args:
        pred: predicted classes (argmax), values in [0, K).
        labels: the pseudo-labels made from them.
        num_classes: K.
        ignore_index: label of rejected pixels.

    Returns:
        (K,) float32 coverage; NaN for a class never predicted.

    Shape:
        pred, labels: (B, H, W) → (K,).
    """
    _check_conf_pred(labels, pred)
    pred = pred.long().reshape(-1)
    kept = (labels.reshape(-1) != ignore_index).long()
    predicted = torch.zeros(num_classes, dtype=torch.int64, device=pred.device)
    predicted.scatter_add_(0, pred, torch.ones_like(pred))
    kept_per_class = torch.zeros_like(predicted).scatter_add_(0, pred, kept)
    return kept_per_class.float() / predicted.float()
