"""Folder layouts: the image ↔ label pairing every dataset reader shares.

Every reader in ``spcl.data`` (GTA5, SYNTHIA, Synscapes, Cityscapes and the user's own folders)
lists its files into a :class:`DatasetFiles`: paired images and labels, the images without a
label and the labels without an image, the class table and a
:class:`~spcl.data.label_decoder.LabelDecoder` (raw label file → train ids, refusing values the
table does not know). ``DatasetFiles.dataset()`` builds the
:class:`~spcl.data.lists.SegmentationList`; ``spcl.data.doctor`` checks the same lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spcl.base import DatasetError, MissingFileError
from spcl.data.label_decoder import LabelDecoder
from spcl.data.labels import ClassTable
from spcl.data.lists import IMAGE_SUFFIXES, SegmentationList
from spcl.data.transforms import PairTransform

__all__ = [
    "DatasetFiles",
    "MissingLabels",
    "item_names",
    "list_files",
    "pair_files",
    "quote_paths",
    "require_dir",
    "scan_pairs",
]

MAX_LISTED = 50  # file names quoted in a warning or an error before "... and N more"

MissingLabels = Literal["skip", "error"]  # an image without a label: skip it (warned) or fail


def quote_paths(paths: Sequence[Path | str], limit: int = MAX_LISTED) -> str:
    """``a.png, b.png, ... and 3 more``: the first ``limit`` names of a list, for messages."""
    shown = ", ".join(Path(p).name if isinstance(p, Path) else p for p in paths[:limit])
    return shown + (f" ... and {len(paths) - limit} more" if len(paths) > limit else "")


@dataclass
class DatasetFiles:
    """What a reader found on disk: pairs, unpaired files, class table and label decoder.

    Attributes:
        kind: the reader (``gta5``, ``synthia``, ``synscapes``, ``cityscapes``, ``folder``).
        root: the dataset root; split: the split read.
        images / names: the items, in order; labels: one per image, or None when unlabelled.
        unlabelled: images that have no label (not among ``images`` when labels are used).
        orphans: labels that have no image.
        dataset_type: the list class (Synscapes 2k images use one that rescales labels).
        labels_rescaled: labels may be stored at another size of the same aspect ratio.
    """

    kind: str
    root: Path
    split: str
    table: ClassTable
    decoder: LabelDecoder
    images: list[Path]
    names: list[str]
    labels: list[Path] | None
    unlabelled: list[Path] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    dataset_type: type[SegmentationList] = SegmentationList
    labels_rescaled: bool = False

    def dataset(
        self, transform: PairTransform | None = None, max_items: int = 0
    ) -> SegmentationList:
        """The dataset of these files: items ``{"image", "label" (train ids), "name"}``;
        ``max_items`` > 0 keeps the first that many (in the reader's order)."""
        keep = slice(None if max_items <= 0 else max_items)
        labels = None if self.labels is None else self.labels[keep]
        return self.dataset_type(
            self.images[keep], labels, transform, label_reader=self.decoder, names=self.names[keep]
        )


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it is a folder, else FileNotFoundError saying what was expected there."""
    if not path.is_dir():
        raise MissingFileError(f"{what} not found: {path} is not a folder{hint}")
    return path


def list_files(
    folder: Path, suffixes: Sequence[str], *, recursive: bool = False, strip: str = ""
) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes``, keyed by relative path without suffix.

    ``strip`` is removed from the end of each key (Cityscapes' ``_leftImg8bit``); a file whose stem
    lacks it is skipped. Raises ValueError when two files share a key (``a.jpg`` and ``a.png``).
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if strip:
            if not key.endswith(strip):
                continue
            key = key[: -len(strip)]
        if key in found:
            raise DatasetError(f"{found[key]} and {path} are two files for one item {key!r}")
        found[key] = path
    return found


def item_names(keys: Sequence[str]) -> list[str]:
    """Item names: file stems (``aachen_000000_000019``), or relative keys if stems repeat."""
    stems = [Path(k).name for k in keys]
    return stems if len(set(stems)) == len(stems) else list(keys)


def pair_files(
    images: dict[str, Path], labels: dict[str, Path]
) -> tuple[list[str], list[Path], list[Path], list[Path]]:
    """Match by key: (paired keys, their labels, images without label, labels without image)."""
    keys = [k for k in images if k in labels]
    unlabelled = [images[k] for k in images if k not in labels]
    orphans = [labels[k] for k in labels if k not in images]
    return keys, [labels[k] for k in keys], unlabelled, orphans


def _filter_by_list(images: dict[str, Path], list_file: str | Path) -> dict[str, Path]:
    """Keep the images named in a list file (one per line: key, file name or relative path)."""
    lookup: dict[str, str] = {}
    for key, path in images.items():
        lookup.update({key: key, path.name: key, Path(key).name: key})
        lookup[(Path(key).parent / path.name).as_posix()] = key  # relative path of the file
    entries = [ln.strip() for ln in Path(list_file).read_text().splitlines() if ln.strip()]
    unknown = [e for e in entries if e not in lookup]
    if unknown:
        raise DatasetError(
            f"{len(unknown)} name(s) of list file {list_file} have no image: {quote_paths(unknown)}"
        )
    return {lookup[e]: images[lookup[e]] for e in entries}


def scan_pairs(
    kind: str,
    root: Path,
    split: str,
    *,
    image_dir: Path,
    label_dir: Path | None,
    table: ClassTable,
    decoder: LabelDecoder,
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    image_strip: str = "",
    label_strip: str = "",
    recursive: bool = False,
    list_file: str | Path | None = None,
    missing_labels: MissingLabels = "error",
    warn: bool = True,
) -> DatasetFiles:
    """List ``image_dir`` (and ``label_dir`` unless None), pair them and apply the policies.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: no images; a list-file name without image; images without labels when
            ``missing_labels="error"`` (all name the folder or the files).
    """
    images = list_files(image_dir, image_suffixes, recursive=recursive, strip=image_strip)
    if not images:
        pattern = f"*{image_strip}" + "|".join(image_suffixes)
        raise DatasetError(f"no {kind} images ({pattern}) in {image_dir}")
    if list_file is not None:
        images = _filter_by_list(images, list_file)
        if not images:
            raise DatasetError(f"list file {list_file} names no image")
    if label_dir is None:
        names = item_names(list(images))
        return DatasetFiles(kind, root, split, table, decoder, list(images.values()), names, None)
    labels = list_files(label_dir, (".png",), recursive=recursive, strip=label_strip)
    keys, label_paths, unlabelled, orphans = pair_files(images, labels)
    if list_file is not None:
        orphans = []  # labels of images left out on purpose
    if unlabelled and missing_labels == "error":
        raise DatasetError(
            f"{len(unlabelled)} {kind} image(s) in {image_dir} have no label in {label_dir}: "
            f"{quote_paths(unlabelled)}"
        )
    if warn and unlabelled:
        warnings.warn(
            f"skipping {len(unlabelled)} {kind} image(s) without a label in {label_dir}: "
            f"{quote_paths(unlabelled)}",
            stacklevel=3,
        )
    if not keys:
        raise DatasetError(f"no {kind} image in {image_dir} has a label in {label_dir}")
    return DatasetFiles(
        kind,
        root,
        split,
        table,
        decoder,
        [images[k] for k in keys],
        item_names(keys),
        label_paths,
        unlabelled,
        orphans,
    )
