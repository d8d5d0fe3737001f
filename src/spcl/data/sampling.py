"""Class-balanced source sampling (SPCL reference scheme) and its cached class → images index.

The reference (``core/datasets/gta5.py`` / ``synthia.py`` of github.com/BinhuiXie/SPCL, from
FADA) draws source images so that rare classes appear more often:

* a class → images index (which train ids each image contains) is precomputed once;
* draws come in sub-epochs of 3,000; within one, ``n_c`` counts the drawn images that contain
  class ``c`` (reset to 0 at each sub-epoch start), ``p_c = n_c / Σ n`` (all 0 at the start);
* each draw picks a class with probability ∝ ``1 / log(1.01 + p_c)``, then the next image of that
  class's list (cycled, reshuffled at each wrap), and adds that image's classes to ``n``.

Here one sub-epoch is one loader epoch: :func:`class_balanced_order` returns the draws of epoch
``e`` as a pure function of ``(seed, e)``, shuffled (the reference's DataLoader shuffles its
whole list), so a resumed run gets the same order. Differences from the reference, on purpose:
classes without any image get weight 0 (the reference raises IndexError on them); each epoch's
per-class lists start from a fresh permutation (the reference carries its cursors across
sub-epochs and, on a wrap, skips the first element of the reshuffled list). The index is an
``.npz`` (pixels per image and class) written atomically; ``spcl data check`` writes it.

An item that cannot be read (an unreadable image or label, values outside the class table, sizes
that differ) gets a row of zeros, so sampling never draws it, and is listed in the index's
``excluded`` with what is wrong: the run that uses the index refuses it or names it
(``data.on_error``, :func:`spcl.stages.builders.source_order`); nothing is left out unsaid. When a
cached index is loaded, its excluded items are read again: a file repaired since is counted.
"""

from __future__ import annotations

import contextlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from spcl.base import DatasetError, atomic_file
from spcl.data.lists import SegmentationList
from spcl.progress import progress_bar

__all__ = [
    "SUB_EPOCH_SIZE",
    "ClassBalancedOrder",
    "ClassIndex",
    "EpochOrder",
    "build_class_index",
    "class_balance_weights",
    "class_balanced_order",
    "class_pixel_counts",
    "default_class_index_path",
    "load_or_build_class_index",
]

SUB_EPOCH_SIZE = 3000  # draws per sub-epoch (reference SUB_EPOCH_SIZE)
FREQUENCY_OFFSET = 1.01  # weights 1 / log(1.01 + p) (reference: log(1 + 1e-2 + dist))
ORDER_SALT = 0x5EC1  # keeps the class-balanced stream apart from the batch sampler's seeds
INDEX_FORMAT = "spcl-class-index-2"  # bump when the file layout changes (2: excluded items;
# a format-1 index may hide unreadable items as rows of zeros, so it is counted again)
BINCOUNT_SIZE = 256  # uint8 train ids, ignore included


def class_pixel_counts(train_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each train id 0..K-1 in a label map (ignore and other values not counted).

    Shape:
        train_ids: (H, W) uint8. Returns (K,) int64.
    """
    counts = np.bincount(train_ids.ravel(), minlength=BINCOUNT_SIZE)
    return counts[:num_classes].astype(np.int64)


@dataclass
class ClassIndex:
    """Which classes each image contains, with pixel counts.

    Attributes:
        names: the dataset's item names, in item order (checked against the dataset on load).
        pixel_counts: (N, K) int64, pixels of class k in image n (0 for unreadable images).
        excluded: item name → what is wrong with it, for the items that could not be read (their
            rows are zeros: never drawn).
    """

    names: list[str]
    pixel_counts: np.ndarray
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.pixel_counts.shape[1])

    @property
    def presence(self) -> np.ndarray:
        """(N, K) bool: image n contains class k."""
        return self.pixel_counts > 0

    def images_of(self, class_id: int) -> np.ndarray:
        """Indices of the images that contain ``class_id``."""
        return np.flatnonzero(self.pixel_counts[:, class_id] > 0)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (.npz) atomically."""
        with atomic_file(Path(path)) as handle:
            np.savez(
                handle,
                format=np.array(INDEX_FORMAT),
                names=np.array(self.names, dtype=str),
                pixel_counts=self.pixel_counts,
                excluded_names=np.array(list(self.excluded), dtype=str),
                excluded_reasons=np.array(list(self.excluded.values()), dtype=str),
            )

    @classmethod
    def load(cls, path: str | Path) -> ClassIndex:
        """Read an index written by :meth:`save`; ValueError naming the file if it is not one."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                if str(data["format"]) != INDEX_FORMAT:
                    raise DatasetError(f"format {data['format']!s}, expected {INDEX_FORMAT}")
                names, counts = data["names"].tolist(), data["pixel_counts"].astype(np.int64)
                reasons = data["excluded_reasons"].tolist()
                excluded = dict(zip(data["excluded_names"].tolist(), reasons, strict=True))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"cannot read class index {path}: {exc}") from exc
        if counts.ndim != 2 or counts.shape[0] != len(names):
            raise DatasetError(f"class index {path} is inconsistent: {counts.shape}, {len(names)}")
        return cls(names, counts, excluded)


Counted = tuple[np.ndarray | None, str]  # an item's (K,) pixel counts, or None and what is wrong


class _LabelCounts(torch.utils.data.Dataset):
    """Item i → its label's per-class pixel counts (reads labels only), or what is wrong."""

    def __init__(self, dataset: SegmentationList, num_classes: int) -> None:
        self.dataset, self.num_classes = dataset, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Counted:
        try:
            label = self.dataset.label_reader(self.dataset.labels[index])
        except ValueError as exc:  # unreadable, or values outside the class table (names it)
            return None, str(exc)
        if self.dataset.id_lut is not None:
            label = self.dataset.id_lut[label]
        return class_pixel_counts(label, self.num_classes), ""


def _identity(item: Counted) -> Counted:
    return item


def build_class_index(
    dataset: SegmentationList, num_classes: int, *, num_workers: int = 0, progress: bool = False
) -> ClassIndex:
    """Read every label of ``dataset`` once and count its classes.

    A label that cannot be read, or holds values outside the class table, gets a row of zeros
    and is listed in ``excluded`` with the reason (which names the file).

    Its loader has a generator of its own: building the index (the first run only; later ones
    read the cached file) draws nothing from the global torch RNG, which a model's Dropout and
    DropPath use, so a run that builds it trains exactly as one that reads it.

    Raises:
        ValueError: the dataset has no labels.
    """
    if not dataset.labels:
        raise DatasetError("a class index needs a labelled dataset (with_labels=True)")
    loader = torch.utils.data.DataLoader(
        _LabelCounts(dataset, num_classes),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        generator=torch.Generator().manual_seed(0),  # the workers' seeds: unused, no draw
    )
    items = list(progress_bar(loader, desc="class index", disable=not progress, unit="label"))
    empty = np.zeros(num_classes, np.int64)
    rows = [empty if counts is None else counts for counts, _ in items]
    names = list(dataset.names)
    excluded = {n: why for n, (counts, why) in zip(names, items, strict=True) if counts is None}
    return ClassIndex(names, np.stack(rows).astype(np.int64), excluded)


def _recount_excluded(index: ClassIndex, dataset: SegmentationList) -> bool:
    """Read the excluded items again (image and label); count those that read now. Returns
    whether any was repaired."""
    position = {name: i for i, name in enumerate(index.names)}
    repaired = []
    for name in index.excluded:
        try:
            _, label = dataset.load(position[name])
        except ValueError:
            continue  # still unusable: stays excluded, with the reason found first
        index.pixel_counts[position[name]] = class_pixel_counts(label, index.num_classes)
        repaired.append(name)
    for name in repaired:
        del index.excluded[name]
    return bool(repaired)


def load_or_build_class_index(
    dataset: SegmentationList,
    num_classes: int,
    path: str | Path,
    *,
    num_workers: int = 0,
    progress: bool = False,
) -> ClassIndex:
    """The cached index at ``path`` if it matches ``dataset``, else a new one written there.

    The cached index's excluded items are read again; those repaired since are counted and the
    index is written back.
    """
    path = Path(path)
    if path.is_file():
        with contextlib.suppress(ValueError):
            index = ClassIndex.load(path)
            if index.names == list(dataset.names) and index.num_classes == num_classes:
                if index.excluded and _recount_excluded(index, dataset):
                    index.save(path)
                return index
    index = build_class_index(dataset, num_classes, num_workers=num_workers, progress=progress)
    index.save(path)
    return index


def default_class_index_path(root: str | Path, kind: str, split: str, num_classes: int) -> Path:
    """Where the class index of a dataset is cached by default: beside the data."""
    return Path(root) / f"spcl_class_index_{kind}_{split}_{num_classes}cls.npz"


def class_balance_weights(counts: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Class probabilities ∝ ``1 / log(1.01 + p_c)``, ``p = counts / Σ counts`` (0 if Σ = 0).

    Classes not ``available`` (no image contains them) get probability 0.

    Shape:
        counts: (K,) float; available: (K,) bool. Returns (K,) summing to 1.
    """
    total = counts.sum()
    frequency = counts / total if total > 0 else np.zeros_like(counts, dtype=float)
    weights = np.where(available, 1.0 / np.log(FREQUENCY_OFFSET + frequency), 0.0)
    return weights / weights.sum()


def class_balanced_order(
    presence: np.ndarray, seed: int, epoch: int, length: int = SUB_EPOCH_SIZE
) -> np.ndarray:
    """The image indices drawn in sub-epoch ``epoch`` (see the module docstring), shuffled.

    Args:
        presence: (N, K) bool, image n contains class k (``ClassIndex.presence``).
        seed: the run's sampling seed.
        epoch: the loader epoch; each gives an independent sub-epoch.
        length: draws per sub-epoch (reference 3,000).

    Returns:
        (length,) int64 image indices; images that contain no class are never drawn.

    Raises:
        ValueError: no image contains any class.
    """
    rng = np.random.default_rng([seed, epoch, ORDER_SALT])
    members = [np.flatnonzero(presence[:, k]) for k in range(presence.shape[1])]
    available = np.array([len(m) > 0 for m in members])
    if not available.any():
        raise DatasetError("no image contains any class: class-balanced sampling is impossible")
    last_available = int(np.flatnonzero(available)[-1])
    queues = [rng.permutation(m) for m in members]
    cursors = [0] * len(members)
    counts = np.zeros(presence.shape[1])
    order = np.empty(length, dtype=np.int64)
    uniforms = rng.random(length)
    for step in range(length):
        cdf = np.cumsum(class_balance_weights(counts, available))
        k = int(np.searchsorted(cdf, uniforms[step] * cdf[-1], side="right"))
        k = min(k, last_available)  # guards the u · cdf[-1] → cdf[-1] rounding edge
        if cursors[k] == len(queues[k]):
            queues[k], cursors[k] = rng.permutation(members[k]), 0
        order[step] = queues[k][cursors[k]]
        cursors[k] += 1
        counts += presence[order[step]]
    return rng.permutation(order)


class EpochOrder(Protocol):
    """An epoch's index sequence as a pure function of the epoch, and its length."""

    def __len__(self) -> int: ...

    def __call__(self, epoch: int) -> np.ndarray: ...


class ClassBalancedOrder:
    """``epoch → image indices`` for a resumable sampler: class-balanced sub-epochs.

    Args:
        index: the dataset's class index.
        seed: sampling seed (the run seed and a per-stream salt).
        length: draws per epoch (reference sub-epoch: 3,000).
    """

    def __init__(self, index: ClassIndex, seed: int, length: int = SUB_EPOCH_SIZE) -> None:
        self.presence = index.presence
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __call__(self, epoch: int) -> np.ndarray:
        return class_balanced_order(self.presence, self.seed, epoch, self.length)
