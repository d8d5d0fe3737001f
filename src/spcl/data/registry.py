"""Dataset readers by name: ``kind`` → the function that lists its files, and ``build_dataset``.

Kinds: ``gta5``, ``synthia``, ``synscapes``, ``cityscapes`` (the official layouts, in
:mod:`spcl.data.readers`), ``folder`` (the user's own images, labels and class YAML) and
``synthetic`` (the built-in generated pair, :mod:`spcl.data.synthetic`; option ``domain``).
Each reader takes ``(root, split)`` plus keyword
options (see :func:`dataset_options`), e.g. ``classes=16`` for SYNTHIA → Cityscapes or
``image_dir="rgb"`` for Synscapes' 1440×720 images::

    dataset = build_dataset("gta5", "/data/gta5", "train", with_labels=True, transform=t)
    files = scan_dataset("cityscapes", "/data/cityscapes", "val", classes=16)  # + files.table
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spcl.base import DatasetError, MissingFileError, UnknownNameError, did_you_mean
from spcl.data.layout import DatasetFiles
from spcl.data.lists import SegmentationList
from spcl.data.readers.cityscapes import scan_cityscapes
from spcl.data.readers.folder import scan_folder
from spcl.data.readers.gta5 import scan_gta5
from spcl.data.readers.synscapes import scan_synscapes
from spcl.data.readers.synthia import scan_synthia
from spcl.data.synthetic.reader import scan_synthetic
from spcl.data.transforms import PairTransform

if TYPE_CHECKING:
    from spcl.config_schema import DomainConfig

__all__ = [
    "DATASET_KINDS",
    "SCANNERS",
    "build_dataset",
    "dataset_options",
    "get_scanner",
    "scan_dataset",
    "scan_domain",
]

SCANNERS: dict[str, Callable[..., DatasetFiles]] = {
    "gta5": scan_gta5,
    "synthia": scan_synthia,
    "synscapes": scan_synscapes,
    "cityscapes": scan_cityscapes,
    "folder": scan_folder,
    "synthetic": scan_synthetic,
}
DATASET_KINDS = tuple(SCANNERS)
DEFAULT_SPLIT = "train"
_NOT_OPTIONS = ("with_labels", "warn")  # keyword arguments set by the caller, not the config


def get_scanner(kind: str) -> Callable[..., DatasetFiles]:
    """The reader of ``kind``; KeyError listing the valid kinds otherwise."""
    if kind not in SCANNERS:
        raise UnknownNameError(
            f"unknown dataset kind {kind!r}{did_you_mean(kind, DATASET_KINDS)}; valid kinds: "
            f"{list(DATASET_KINDS)}"
        )
    return SCANNERS[kind]


def dataset_options(kind: str) -> dict[str, Any]:
    """The keyword options of ``kind``'s reader and their defaults (e.g. ``{"classes": 19}``)."""
    parameters = inspect.signature(get_scanner(kind)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_OPTIONS
    }


def scan_dataset(
    kind: str,
    root: str | Path,
    split: str | None = None,
    *,
    with_labels: bool = True,
    warn: bool = True,
    **options: Any,
) -> DatasetFiles:
    """List a dataset's files without reading them (see the readers for the layouts).

    Args:
        kind: one of :data:`DATASET_KINDS`.
        root: the dataset root folder.
        split: split to read; None = ``train``.
        with_labels: pair images with labels (False: images only, no label folder needed).
        warn: warn about images skipped for want of a label.
        **options: the reader's options (:func:`dataset_options`).

    Raises:
        KeyError: unknown kind (lists the valid ones).
        ValueError: unknown option (lists the valid ones), or a problem with the files.
        FileNotFoundError: a missing root, split or folder.
    """
    scanner = get_scanner(kind)
    valid = dataset_options(kind)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DatasetError(
            f"unknown option(s) {unknown} for dataset kind {kind!r}; valid options: {sorted(valid)}"
        )
    split = DEFAULT_SPLIT if split is None else split
    return scanner(root, split, with_labels=with_labels, warn=warn, **options)


def scan_domain(domain: DomainConfig, key: str, *, with_labels: bool) -> DatasetFiles:
    """:func:`scan_dataset` on a configured domain (kind, root, split, options), quietly.

    Raises:
        MissingFileError, DatasetError, UnknownNameError: as :func:`scan_dataset`, the message
            prefixed with the config key ``key`` and the domain's kind, root and split.
    """
    try:
        return scan_dataset(
            domain.kind, domain.root, domain.split, with_labels=with_labels, warn=False,
            **domain.options,
        )  # fmt: skip
    except (MissingFileError, DatasetError, UnknownNameError) as exc:
        where = f"{key} ({domain.kind} dataset at {domain.root}, split {domain.split!r})"
        raise type(exc)(f"{where}: {exc}") from exc


def build_dataset(
    kind: str,
    root: str | Path,
    split: str | None = None,
    *,
    with_labels: bool,
    transform: PairTransform | None = None,
    max_items: int = 0,
    **options: Any,
) -> SegmentationList:
    """The dataset of ``kind`` at ``root``: items ``{"image", "label" (train ids), "name"}``.

    Args:
        kind: one of :data:`DATASET_KINDS`.
        root: the dataset root folder.
        split: split to read; None = ``train``.
        with_labels: read labels (train ids, 255 = ignore) as well as images.
        transform: paired augmentation or test-time resize (``spcl.data.transforms``).
        max_items: > 0: only the first that many items (``data.*.max_items``, fast dev runs).
        **options: the reader's options (:func:`dataset_options`).

    Raises:
        KeyError: unknown kind. ValueError / FileNotFoundError: see :func:`scan_dataset`.
    """
    files = scan_dataset(kind, root, split, with_labels=with_labels, **options)
    return files.dataset(transform, max_items)
