"""Semantic prototypes: per-class means of L2-normalised features (SPCL stages 2 and 4.4).

A prototype is the mean of ``norm(f)`` (features L2-normalised over channels) over the pixels of
one class. SPCL builds them once from the warm-up model on the source set (stage 2: the mean over
images of per-image class means, :class:`PrototypeAccumulator`) and then updates them every
adaptation step from the source batch with an exponential moving average
(:class:`PrototypeBank`).

Every class statistic is computed in one pass with a one-hot matrix product (no per-class Python
loop, no mask repeated over channels), and the batch statistics are exposed as *sums and counts*
so that a distributed caller can all-reduce them before they are applied::

    sums, counts = class_feature_sums(src_feat, src_mask, num_classes)
    all_reduce(sums); all_reduce(counts)  # the caller's business; method/ is rank-unaware
    bank.update_from_sums(sums, counts)

Labels outside ``[0, num_classes)`` (``ignore_index`` included) contribute nothing.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.base import IGNORE_INDEX

__all__ = [
    "REFERENCE_MOMENTUM",
    "AbsentPolicy",
    "PrototypeAccumulator",
    "PrototypeBank",
    "class_feature_means",
    "class_feature_sums",
    "downsample_labels",
    "reliable_mask",
]

REFERENCE_MOMENTUM = 0.1  # α in P ← α·P + (1 − α)·batch_mean: the reference keeps 10% of the old P
AbsentPolicy = Literal["zero_fill", "keep"]
_ABSENT_POLICIES: tuple[str, ...] = ("zero_fill", "keep")
_STAT_DTYPES = (torch.float32, torch.float64)  # class statistics never run in half precision
NORMALIZE_EPS = 1e-12  # F.normalize's default floor on the norm


def _check_features_labels(features: Tensor, labels: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    expected = (features.shape[0], *features.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must be (B, h, w) = {expected} to match features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}; downsample them with downsample_labels() first"
        )


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize label maps with torch nearest interpolation, as the reference does.

    ``F.interpolate(mode="nearest")`` samples source index ``floor(i · H / h)``: the top-left
    pixel of each block (PIL's nearest, used for dataset resizes, takes the block centre).

    Args:
        labels: integer label maps.
        size: target ``(h, w)``, usually the feature map size.

    Returns:
        The resized labels as int64.

    Shape:
        labels: (B, H, W) → (B, h, w).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if tuple(labels.shape[1:]) == tuple(size):
        return labels.long()
    # float32 holds every label value exactly (they are < 2**24)
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


def reliable_mask(labels: Tensor, logits: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Keep only the labelled pixels the model predicts correctly (the reference's source mask).

    Args:
        labels: ground truth already at the logits' size (see :func:`downsample_labels`).
        logits: class scores at feature size.
        ignore_index: label written where the prediction disagrees with the label.

    Returns:
        ``labels`` (int64) with ``ignore_index`` wherever ``logits.argmax(1) != labels``.

    Shape:
        labels: (B, h, w); logits: (B, K, h, w) → (B, h, w).
    """
    _check_features_labels(logits, labels)
    labels = labels.long()
    return labels.masked_fill(logits.detach().argmax(dim=1) != labels, ignore_index)


def _one_hot_masks(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """(B, h, w) labels → (B, K, h·w) bool one-hot; ignored/out-of-range pixels are all False."""
    classes = torch.arange(num_classes, device=labels.device)
    flat = labels.reshape(labels.shape[0], 1, -1)  # (B, 1, n)
    return (flat == classes[None, :, None]) & (flat != ignore_index)  # (B, K, n)


def _weighted_class_sums(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Per-image class sums of normalised features, and the one-hot masks.

    ``norm(f)`` is never materialised: each pixel's one-hot row is scaled by ``1 / ‖f‖`` and
    multiplied with the raw features (one pass to get the norms, one batched matmul), which
    equals ``F.normalize(features, dim=1)`` (eps 1e-12) summed per class, up to rounding.

    Shape:
        features: (B, C, h, w); labels: (B, h, w) → sums (B, K, C), one-hot (B, K, h·w) bool.
    """
    if features.dtype not in _STAT_DTYPES:
        features = features.float()
    feat = features.flatten(2)  # (B, C, n)
    inv_norm = 1.0 / torch.linalg.vector_norm(feat, dim=1).clamp_min(NORMALIZE_EPS)  # (B, n)
    one_hot = _one_hot_masks(labels, num_classes, ignore_index)  # (B, K, n)
    weights = one_hot.to(feat.dtype) * inv_norm[:, None, :]  # (B, K, n)
    return torch.bmm(weights, feat.transpose(1, 2)), one_hot  # (B, K, C)


@torch.no_grad()
def class_feature_sums(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Per-class sums of L2-normalised features and pixel counts, over the whole batch.

    A batched product of a one-hot label matrix, scaled by each pixel's inverse norm, with the
    raw features: no per-class loop, no normalised copy, deterministic (no atomics).
    Runs without gradient and outside autocast, in float32 (float64 if the features are).

    Args:
        features: feature maps; normalised over channels here.
        labels: labels at feature size; ``ignore_index`` and values outside ``[0, K)`` are skipped.
        num_classes: K.
        ignore_index: label of pixels to skip.

    Returns:
        ``(sums, counts)``: sums of normalised features per class and pixel counts per class
        (int64). Both can be all-reduced across processes before use.

    Shape:
        features: (B, C, h, w); labels: (B, h, w) → sums (K, C), counts (K,).
    """
    _check_features_labels(features, labels)
    with torch.autocast(device_type=features.device.type, enabled=False):
        image_sums, one_hot = _weighted_class_sums(features, labels, num_classes, ignore_index)
    return image_sums.sum(dim=0), one_hot.sum(dim=(0, 2))  # (K, C), (K,) int64


@torch.no_grad()
def class_feature_means(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Per-class means of L2-normalised features over the batch; zeros for absent classes.

    Args:
        features: feature maps.
        labels: labels at feature size.
        num_classes: K.
        ignore_index: label of pixels to skip.

    Returns:
        ``(means, counts)``; ``means[k]`` is 0 where ``counts[k] == 0``.

    Shape:
        features: (B, C, h, w); labels: (B, h, w) → means (K, C), counts (K,).
    """
    sums, counts = class_feature_sums(features, labels, num_classes, ignore_index)
    return sums / counts.clamp(min=1)[:, None].to(sums.dtype), counts


class PrototypeBank(nn.Module):
    """Class prototypes updated by exponential moving average from batch class means.

    ``P ← α·P + (1 − α)·batch_mean`` with ``α = momentum`` (0.1 in the reference: only 10% of
    the old prototype survives a step). Prototypes are not re-normalised, as in the reference.

    ``absent_policy`` decides what happens to a class with no pixel in the batch:
    ``"zero_fill"`` (reference) uses a zero batch mean, so its prototype is multiplied by α;
    ``"keep"`` leaves its prototype unchanged. ``initialized[k]`` records whether class k ever
    had a prototype (from :meth:`initialize` or a batch); it is informational (e.g. to warn about
    classes the source never showed) and does not change the update.

    Device: the buffers move with ``.to()`` like any module and are saved by ``state_dict()``.
    The bank follows the features: an update with statistics on another device first moves the
    bank there (so a bank built on CPU and loaded from a file just works on the GPU).

    Args:
        num_classes: K.
        dim: feature channels C.
        momentum: α, the weight of the old prototype.
        absent_policy: ``"zero_fill"`` (reference) or ``"keep"``.
        device: where the buffers start (CPU if None).
    """

    prototypes: Tensor
    initialized: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        momentum: float = REFERENCE_MOMENTUM,
        absent_policy: AbsentPolicy = "zero_fill",
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if absent_policy not in _ABSENT_POLICIES:
            raise ValueError(f"absent_policy={absent_policy!r}; expected one of {_ABSENT_POLICIES}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.num_classes = num_classes
        self.dim = dim
        self.momentum = momentum
        self.absent_policy = absent_policy
        self.register_buffer("prototypes", torch.zeros(num_classes, dim, device=device))
        self.register_buffer(
            "initialized", torch.zeros(num_classes, dtype=torch.bool, device=device)
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}, "
            f"absent_policy={self.absent_policy!r}"
        )

    def _check_stats(self, sums: Tensor, counts: Tensor) -> None:
        expected = (self.num_classes, self.dim)
        if tuple(sums.shape) != expected or tuple(counts.shape) != (self.num_classes,):
            raise ValueError(
                f"expected sums {expected} and counts ({self.num_classes},), "
                f"got {tuple(sums.shape)} and {tuple(counts.shape)}"
            )
        if self.prototypes.device != sums.device:
            self.to(sums.device)  # the bank follows the features' device

    @torch.no_grad()
    def initialize(self, prototypes: Tensor, seen: Tensor | None = None) -> None:
        """Set the prototypes, e.g. from :meth:`PrototypeAccumulator.prototypes`.

        Args:
            prototypes: initial prototypes, (K, C).
            seen: (K,) bool, which classes have a real prototype (all if None).
        """
        if seen is None:
            seen = torch.ones(self.num_classes, dtype=torch.bool, device=prototypes.device)
        self._check_stats(prototypes, seen)
        self.prototypes.copy_(prototypes)
        self.initialized.copy_(seen)

    @torch.no_grad()
    def update_from_sums(self, sums: Tensor, counts: Tensor) -> None:
        """Apply one EMA step from (possibly all-reduced) class sums and counts.

        Args:
            sums: per-class sums of normalised features, as from :func:`class_feature_sums`.
            counts: per-class pixel counts.

        Shape:
            sums: (K, C); counts: (K,).
        """
        self._check_stats(sums, counts)
        present = counts > 0
        batch_mean = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        updated = self.momentum * self.prototypes + (1.0 - self.momentum) * batch_mean
        if self.absent_policy == "keep":
            updated = torch.where(present[:, None], updated, self.prototypes)
        self.prototypes.copy_(updated)
        self.initialized |= present

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
        """Apply one EMA step from a batch (single process; see :meth:`update_from_sums` for DDP).

        Args:
            features: feature maps.
            labels: labels at feature size, e.g. from :func:`reliable_mask`.
            ignore_index: label of pixels to skip.

        Returns:
            The per-class pixel counts of the batch, (K,).

        Shape:
            features: (B, C, h, w); labels: (B, h, w).
        """
        sums, counts = class_feature_sums(features, labels, self.num_classes, ignore_index)
        self.update_from_sums(sums, counts)
        return counts


class PrototypeAccumulator:
    """Streaming stage-2 prototypes: the mean over images of per-image class means.

    For every image and every class present in it, the mean of the normalised features over the
    class's pixels is taken; a prototype is the average of these per-image means over the images
    that contain the class (not the mean over all pixels: big regions do not outweigh small ones).
    Memory is (K, C) whatever the number of images.

    State (``mean_sums`` (K, C) float64 and ``image_counts`` (K,) int64) follows the features'
    device; :meth:`sums_and_counts` returns the state tensors themselves, so all-reducing them in
    place merges the accumulators of several processes.

    Args:
        num_classes: K.
        dim: feature channels C.
        ignore_index: label of pixels to skip.
    """

    def __init__(self, num_classes: int, dim: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.dim = dim
        self.ignore_index = ignore_index
        self.mean_sums = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.image_counts = torch.zeros(num_classes, dtype=torch.int64)

    @torch.no_grad()
    def add(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch of images; each image contributes its own per-class means.

        Shape:
            features: (B, C, h, w) with C = dim; labels: (B, h, w) at feature size.
        """
        _check_features_labels(features, labels)
        if features.shape[1] != self.dim:
            raise ValueError(f"features have {features.shape[1]} channels, expected {self.dim}")
        if self.mean_sums.device != features.device:
            self.mean_sums = self.mean_sums.to(features.device)
            self.image_counts = self.image_counts.to(features.device)
        with torch.autocast(device_type=features.device.type, enabled=False):
            sums, one_hot = _weighted_class_sums(
                features, labels, self.num_classes, self.ignore_index
            )  # (B, K, C), (B, K, n)
        counts = one_hot.sum(dim=2)  # (B, K) int64
        means = sums / counts.clamp(min=1)[..., None].to(sums.dtype)  # absent classes: 0
        self.mean_sums += means.sum(dim=0).double()
        self.image_counts += (counts > 0).sum(dim=0)

    def sums_and_counts(self) -> tuple[Tensor, Tensor]:
        """The state itself: (sum of per-image means (K, C), images per class (K,))."""
        return self.mean_sums, self.image_counts

    def prototypes(self) -> tuple[Tensor, Tensor]:
        """Prototypes (K, C) float32 (zeros for classes never seen) and the seen mask (K,) bool."""
        seen = self.image_counts > 0
        protos = self.mean_sums / self.image_counts.clamp(min=1)[:, None].double()
        return protos.float(), seen

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean_sums": self.mean_sums, "image_counts": self.image_counts}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key in ("mean_sums", "image_counts"):
            if key not in state:
                raise KeyError(f"PrototypeAccumulator state lacks {key!r}; has {sorted(state)}")
        expected = (self.num_classes, self.dim)
        if tuple(state["mean_sums"].shape) != expected:
            raise ValueError(
                f"mean_sums has shape {tuple(state['mean_sums'].shape)}, expected {expected}"
            )
        self.mean_sums = state["mean_sums"].to(torch.float64).clone()
        self.image_counts = state["image_counts"].to(torch.int64).clone()
