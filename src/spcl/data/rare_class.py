"""Rare-Class Sampling (RCS) of source images, DAFormer's scheme, as a resumable epoch order.

DAFormer (lhoyer/DAFormer:mmseg/datasets/uda_dataset.py ``get_rcs_class_probs``,
``UDADataset.get_rare_class_sample``; statistics from tools/convert_datasets/gta.py):

* ``n_c`` = pixels of class c over the whole source set (full-resolution label maps), for the
  classes that occur at all; ``f_c = n_c / Σ n``; ``P(c) = softmax((1 − f_c) / T)``, T = 0.01.
* pool of c = the images with **more than** ``min_pixels`` = 3000 pixels of c.
* each sample: ``c ~ P``, then an image uniformly from c's pool, then a random crop, re-drawn up
  to 10 times until it holds > ``min_pixels × min_crop_ratio`` = 1500 pixels of c (the loader
  passes c with each draw, :class:`spcl.data.loaders.SeededBatchSampler`; the dataset redraws,
  ``data.source.rcs_min_crop_ratio``).

:class:`RareClassOrder` returns an epoch's draws as a pure function of ``(seed, epoch)``, so the
resumable :class:`spcl.data.loaders.InfiniteLoader` (``order=``) reproduces it after a restart.
Differences from the reference, each documented: classes are listed in train-id order (the
reference sorts them by ``n_c``: the same distribution, another random stream); a class with an
empty pool is an error by default, as the reference's ``assert`` (``empty_pools="drop"`` removes it
and renormalises P over the others).

``min_pixels`` belongs to the resolution of the counts in the :class:`ClassIndex`. DAFormer's 3000
is at GTA's full resolution (1914×1052 ≈ 2.0 MP); for counts at another resolution scale it by the
ratio of pixel counts, :func:`scaled_min_pixels` (3000 → 1373 for 1280×720 labels, 343 for
640×360).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from spcl.base import DatasetError
from spcl.data.sampling import ClassIndex

__all__ = [
    "GTA_FULL_RESOLUTION_PIXELS",
    "RCS_MIN_PIXELS",
    "RCS_TEMPERATURE",
    "EmptyPoolPolicy",
    "RareClassOrder",
    "rare_class_pools",
    "rare_class_probabilities",
    "scaled_min_pixels",
]

RCS_TEMPERATURE = 0.01  # data.train.rare_class_sampling.class_temp
RCS_MIN_PIXELS = 3000  # data.train.rare_class_sampling.min_pixels (full-resolution counts)
GTA_FULL_RESOLUTION_PIXELS = 1914 * 1052  # GTA5 label size the statistics were counted at
RCS_SALT = 0x5C5  # keeps the RCS stream apart from the batch sampler's and the SPCL order's
EmptyPoolPolicy = Literal["raise", "drop"]
_EMPTY_POOL_POLICIES: tuple[str, ...] = ("raise", "drop")


def scaled_min_pixels(
    label_pixels: int,
    min_pixels: int = RCS_MIN_PIXELS,
    reference_pixels: int = GTA_FULL_RESOLUTION_PIXELS,
) -> int:
    """``min_pixels`` for counts made on labels of ``label_pixels`` pixels (area ratio, rounded)."""
    if label_pixels <= 0 or reference_pixels <= 0:
        raise ValueError(f"pixel counts must be > 0, got {label_pixels}, {reference_pixels}")
    return round(min_pixels * label_pixels / reference_pixels)


def rare_class_probabilities(
    pixel_counts: np.ndarray, temperature: float = RCS_TEMPERATURE
) -> tuple[np.ndarray, np.ndarray]:
    """RCS class probabilities ``softmax((1 − f_c) / T)`` over the classes that occur.

    Args:
        pixel_counts: (N, K) pixels of class k in image n (``ClassIndex.pixel_counts``).
        temperature: T (0.01); smaller favours rare classes more.

    Returns:
        ``(classes, probs)``: the train ids with ``n_c > 0`` (ascending) and their P (float64,
        summing to 1).

    Raises:
        ValueError: T ≤ 0, or no class has any pixel.
    """
    if temperature <= 0:
        raise ValueError(f"RCS temperature must be > 0, got {temperature}")
    totals = np.asarray(pixel_counts, dtype=np.int64).sum(axis=0)  # (K,)
    classes = np.flatnonzero(totals > 0)
    if classes.size == 0:
        raise DatasetError("no class has any pixel in the class index: RCS is impossible")
    frequency = totals[classes] / totals[classes].sum()
    logits = (1.0 - frequency) / temperature
    weights = np.exp(logits - logits.max())  # stable softmax
    return classes, weights / weights.sum()


def rare_class_pools(
    pixel_counts: np.ndarray, min_pixels: int = RCS_MIN_PIXELS
) -> list[np.ndarray]:
    """Per class k, the images with more than ``min_pixels`` pixels of k (strict, as DAFormer).

    Returns:
        K arrays of image indices (int64, ascending); empty where no image qualifies.
    """
    counts = np.asarray(pixel_counts)
    return [np.flatnonzero(counts[:, k] > min_pixels) for k in range(counts.shape[1])]


class RareClassOrder:
    """``epoch → source image indices`` drawn by Rare-Class Sampling (an ``EpochOrder``).

    Args:
        index: the source set's class index (per-image per-class pixel counts).
        seed: sampling seed; ``(seed, epoch)`` fixes an epoch's draws.
        temperature: T of the class softmax (0.01).
        min_pixels: an image joins class c's pool with more than this many pixels of c, at the
            resolution the index was counted (see :func:`scaled_min_pixels`).
        length: draws per epoch (default: the number of images).
        empty_pools: ``"raise"`` (reference: every occurring class must have a pool) or
            ``"drop"`` (leave such classes out and renormalise P).

    Attributes:
        classes: the sampled train ids; ``probs``: their probabilities; ``pools``: their images.
    """

    def __init__(
        self,
        index: ClassIndex,
        seed: int,
        temperature: float = RCS_TEMPERATURE,
        min_pixels: int = RCS_MIN_PIXELS,
        length: int | None = None,
        *,
        empty_pools: EmptyPoolPolicy = "raise",
    ) -> None:
        if empty_pools not in _EMPTY_POOL_POLICIES:
            raise ValueError(f"empty_pools={empty_pools!r}; expected one of {_EMPTY_POOL_POLICIES}")
        classes, probs = rare_class_probabilities(index.pixel_counts, temperature)
        pools = rare_class_pools(index.pixel_counts, min_pixels)
        empty = [int(c) for c in classes if pools[c].size == 0]
        if empty and empty_pools == "raise":
            raise DatasetError(
                f"RCS: classes {empty} occur but no image has more than {min_pixels} pixels of "
                f"them; lower min_pixels (scaled_min_pixels() for small labels) or pass "
                f"empty_pools='drop'"
            )
        keep = np.array([pools[c].size > 0 for c in classes])
        if not keep.any():
            raise DatasetError(f"RCS: no image has more than {min_pixels} pixels of any class")
        self.classes = classes[keep]
        self.probs = probs[keep] / probs[keep].sum()
        self.pools = [pools[c] for c in self.classes]
        self.seed = seed
        self.length = len(index.names) if length is None else length
        if self.length < 1:
            raise ValueError(f"RCS epoch length must be ≥ 1, got {self.length}")
        self._flat = np.concatenate(self.pools)  # all pools back to back
        sizes = np.array([pool.size for pool in self.pools])
        self._starts, self._sizes = np.cumsum(sizes) - sizes, sizes

    def __len__(self) -> int:
        return self.length

    def draw_classes(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s draws: (sampled train ids, image indices), both (length,) int64."""
        rng = np.random.default_rng([self.seed, epoch, RCS_SALT])
        which = rng.choice(len(self.classes), size=self.length, p=self.probs)
        members = rng.integers(0, self._sizes[which])  # uniform within each drawn pool
        return self.classes[which].astype(np.int64), self._flat[self._starts[which] + members]

    def __call__(self, epoch: int) -> np.ndarray:
        return self.draw_classes(epoch)[1]
