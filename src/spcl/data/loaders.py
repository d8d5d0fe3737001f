"""Data loaders that can be resumed exactly: an infinite, seeded, rank-sharded batch stream.

The order of every epoch and the augmentation seed of every sample are functions of
``(seed, epoch, position)``, so a stream restored from ``state_dict()`` yields the same batches as
one that never stopped, whatever the number of worker processes. Under torchrun each rank reads its
own share of the same permutation (every ``world``-th sample). A stream draws nothing from the
global torch RNG, which Dropout and DropPath use: each DataLoader has a generator of its own, set
from ``(seed, epoch)`` when an epoch's iterator is made, so a resumed stream, whose iterators are
made at other moments, leaves the model's random draws exactly as an uninterrupted one does.

An unreadable image or label (corrupt, truncated, zero bytes) is caught where it is read, in a
worker process or not, and reported to the main process: with ``on_error="fail"`` the loader
raises one :class:`~spcl.base.DatasetError` naming the file; with ``"skip"`` the sample is left
out of its batch and named once through ``warn``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from spcl.base import DatasetError
from spcl.data.sampling import EpochOrder

__all__ = ["InfiniteLoader", "OnError", "SeededBatchSampler", "build_eval_loader"]

OnError = Literal["fail", "skip"]  # what a loader does with an unreadable file
UNREADABLE = "unreadable"  # batch key: messages of the samples that could not be read
MIXED_SIZES = "mixed_sizes"  # batch key: why the samples could not be batched (sizes differ)
ITERATOR_SALT = 0x10AD  # keeps the DataLoader's worker-seed generator apart from the sample seeds


class _Reporting(Dataset):
    """A dataset whose unreadable samples come back as ``{UNREADABLE: message}``, not raised."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> dict[str, Any]:
        try:
            return self.dataset[item]
        except DatasetError as exc:
            return {UNREADABLE: str(exc)}


def _collate(samples: list[Any]) -> Any:
    """The readable samples collated as usual, plus the messages of the unreadable ones."""
    if not all(isinstance(s, dict) for s in samples):
        return default_collate(samples)  # not a segmentation dataset: nothing to report
    good = [s for s in samples if UNREADABLE not in s]
    sizes = {tuple(s["image"].shape[-2:]): s for s in good if "image" in s}
    if len(sizes) > 1:  # raised in the main process as one line (not a worker's traceback)
        return {MIXED_SIZES: _mixed_sizes_message(list(sizes.values())[:2])}
    batch = default_collate(good) if good else {}
    bad = [s[UNREADABLE] for s in samples if UNREADABLE in s]
    if bad:
        batch[UNREADABLE] = bad
    return batch


def _mixed_sizes_message(two: list[dict[str, Any]]) -> str:
    (h1, w1), (h2, w2) = (tuple(s["image"].shape[-2:]) for s in two)
    first, second = (s["name"] for s in two)
    return (
        f"images of one batch differ in size: '{first}' is {w1}x{h1} and '{second}' is "
        f"{w2}x{h2} (after the resize and crop, if any); a batch needs one size: give the "
        f"dataset a size (data.source.size, data.target.size: [H, W], every image resized to it) "
        f"or the stage a crop (online.crop, self_train.crop)"
    )


class _Unreadable:
    """The main-process side: raise, or warn once per file and drop it."""

    def __init__(self, on_error: OnError, warn: Callable[[str], None] | None) -> None:
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        self.on_error, self.warn = on_error, warn
        self.skipped: dict[str, None] = {}  # each file's message once, in the order met

    def check(self, batch: Any) -> bool:
        """Whether ``batch`` still holds samples (raises on an unreadable one when failing)."""
        if not isinstance(batch, dict):
            return True
        if MIXED_SIZES in batch:  # not a file's fault: on_error does not skip it
            raise DatasetError(batch[MIXED_SIZES])
        messages = batch.pop(UNREADABLE, [])
        if messages and self.on_error == "fail":
            raise DatasetError(f"{messages[0]} (on_error: skip would leave such files out)")
        for message in messages:
            if message in self.skipped:
                continue
            if self.warn is not None:
                self.warn(f"skipped an unreadable file: {message}")
            self.skipped[message] = None
        return bool(batch)


class _SkippingLoader:
    """An evaluation DataLoader that leaves out (or fails on) unreadable samples."""

    def __init__(self, loader: DataLoader, unreadable: _Unreadable) -> None:
        self.loader, self.unreadable = loader, unreadable

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if self.unreadable.check(batch):
                yield batch


class SeededBatchSampler:
    """Batches of ``(index, sample_seed)`` for one epoch, starting at batch ``offset``.

    ``order`` (optional) gives epoch ``e``'s index sequence as a pure function of ``e``, e.g.
    :class:`spcl.data.sampling.ClassBalancedOrder` (class-balanced draws, repeats allowed); its
    ``len()`` is the epoch length and ``shuffle`` is then unused. An order that draws a class
    for each image (:class:`spcl.data.rare_class.RareClassOrder`, ``draw_classes``) gives
    ``(index, sample_seed, class)`` items, so the dataset can check the sample's crop for it.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
        order: EpochOrder | None = None,
    ) -> None:
        size = len(order) if order is not None else size
        if size < batch_size * world:
            raise DatasetError(
                f"dataset of {size} images is smaller than one batch ({batch_size} × {world} ranks)"
            )
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world, self.order = rank, world, order
        self.epoch = 0
        self.offset = 0  # batches already consumed in this epoch

    def __len__(self) -> int:
        return self.size // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = None
        if self.order is None:
            order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
            seeds = rng.integers(0, 2**31 - 1, size=self.size)[order]  # one per image
        else:
            if hasattr(self.order, "draw_classes"):  # rare-class sampling: each draw's class too
                classes, order = self.order.draw_classes(self.epoch)
            else:
                order = np.asarray(self.order(self.epoch))
            seeds = rng.integers(0, 2**31 - 1, size=len(order))  # one per draw
        mine = np.arange(len(order))[self.rank :: self.world]  # this rank's positions
        for b in range(self.offset, len(self)):
            chunk = mine[b * self.batch_size : (b + 1) * self.batch_size]
            if classes is None:
                yield [(int(order[p]), int(seeds[p])) for p in chunk]
            else:
                yield [(int(order[p]), int(seeds[p]), int(classes[p])) for p in chunk]


class InfiniteLoader:
    """An endless stream of batches; ``state_dict()`` records the position for exact resume."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_workers: int = 0,
        rank: int = 0,
        world: int = 1,
        pin_memory: bool = False,
        order: EpochOrder | None = None,
        on_error: OnError = "fail",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.sampler = SeededBatchSampler(
            len(dataset), batch_size, seed, shuffle, rank, world, order=order
        )
        # a new iterator draws its workers' base seed from this generator, not the global RNG
        self.generator = torch.Generator()
        self.loader = DataLoader(
            _Reporting(dataset),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            collate_fn=_collate,
            generator=self.generator,
        )
        self.unreadable = _Unreadable(on_error, warn)
        self._iterator: Iterator | None = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:  # past batches of nothing but skipped files
            batch = self._next_batch()
            if self.unreadable.check(batch):
                return batch

    def _new_iterator(self) -> Iterator:
        """An iterator from the sampler's position; its base seed a function of the epoch."""
        sampler = self.sampler
        self.generator.manual_seed(
            int(
                np.random.SeedSequence([sampler.seed, sampler.epoch, ITERATOR_SALT]).generate_state(
                    1
                )[0]
            )
        )
        return iter(self.loader)

    def _next_batch(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._new_iterator()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.sampler.epoch += 1
            self.sampler.offset = 0
            self._iterator = self._new_iterator()
            batch = next(self._iterator)
        self.sampler.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "offset": self.sampler.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = int(state["epoch"])
        self.sampler.offset = int(state["offset"])
        self._iterator = None  # rebuilt from the restored position on the next batch


def build_eval_loader(
    dataset: Dataset,
    *,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
    on_error: OnError = "fail",
    warn: Callable[[str], None] | None = None,
) -> _SkippingLoader:
    """One pass, one image per batch (sizes may differ), this rank's share of the images.

    Like the training streams it draws nothing from the global torch RNG (a generator of its own
    seeds the workers, which draw nothing), so scoring or labelling images between or during
    training steps leaves the model's Dropout and DropPath draws as they were.
    """
    indices = list(range(rank, len(dataset), world))
    subset = torch.utils.data.Subset(_Reporting(dataset), indices)
    loader = DataLoader(
        subset,
        batch_size=1,
        num_workers=num_workers,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(0),
    )
    return _SkippingLoader(loader, _Unreadable(on_error, warn))
