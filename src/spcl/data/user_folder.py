"""Folder datasets: the image ↔ label pairing every layout shares, and the user's own data.

Every reader in ``spcl.data`` (GTA5, SYNTHIA, Synscapes, Cityscapes and this one) lists its files
into a :class:`DatasetFiles`: paired images and labels, the images without a label and the labels
without an image, the class table and a :class:`LabelDecoder` (raw label file → train ids, refusing
values the table does not know). ``DatasetFiles.dataset()`` builds the
:class:`~spcl.data.folder.SegmentationList`; ``spcl.data.doctor`` checks the same lists.

The user's own data (kind ``folder``)::

    ROOT/classes.yaml                          the class table (see load_class_table)
    ROOT/images/<split>/**/<name>.<jpg|png|...>
    ROOT/labels/<split>/**/<name>.png          optional; single channel (8/16-bit grey or palette)

``classes.yaml``::

    names: [road, building, sky]               # required: class names in train-id order
    palette: [[128, 64, 128], [70, 70, 70], [70, 130, 180]]   # optional: one RGB per class
    id_to_train: {7: 0, 11: 1, 23: 2, 0: 255}  # optional; default: label values are train ids
    ignore_index: 255                          # optional: the label value meaning "ignore"

Labels come out as train ids with 255 for ignored pixels. A label value that is neither a key of
``id_to_train`` nor ``ignore_index`` (nor 255) is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from spcl.data.folder import IMAGE_SUFFIXES, SegmentationList
from spcl.data.labels import CITYSCAPES, IGNORE_INDEX, ClassTable
from spcl.data.transforms import PairTransform

__all__ = [
    "CLASS_FILE",
    "DatasetFiles",
    "LabelDecoder",
    "LabelValueError",
    "MissingLabels",
    "describe_ids",
    "item_names",
    "list_files",
    "load_class_table",
    "pair_files",
    "quote_paths",
    "read_id_label",
    "require_dir",
    "scan_folder",
    "scan_pairs",
    "table_valid_ids",
]

CLASS_FILE = "classes.yaml"  # default class table of a user folder, at its root
LUT_SIZE = 65536  # one entry per value of a 16-bit label
INVALID = 0xFFFF  # decoder table entry of a raw value outside the class table
MAX_CLASSES = 255  # train ids 0..254 fit the uint8 label maps beside IGNORE_INDEX 255
MAX_COLOUR = 255  # palette channels are 8-bit
MAX_LISTED = 50  # file names quoted in a warning or an error before "... and N more"
PALETTE_SEED = 0  # colours of classes beyond the Cityscapes palette's 19
SINGLE_CHANNEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")
YAML_KEYS = ("names", "palette", "id_to_train", "ignore_index")

MissingLabels = Literal["skip", "error"]  # an image without a label: skip it (warned) or fail


def quote_paths(paths: Sequence[Path | str], limit: int = MAX_LISTED) -> str:
    """``a.png, b.png, ... and 3 more``: the first ``limit`` names of a list, for messages."""
    shown = ", ".join(Path(p).name if isinstance(p, Path) else p for p in paths[:limit])
    return shown + (f" ... and {len(paths) - limit} more" if len(paths) > limit else "")


def describe_ids(ids: Sequence[int]) -> str:
    """Sorted ids as runs: ``[0, 1, 2, 3, 7, 255]`` → ``0..3, 7, 255``."""
    runs: list[str] = []
    values = sorted(set(ids))
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            lo, hi = values[start], values[i - 1]
            runs.append(f"{lo}..{hi}" if hi > lo + 1 else ", ".join(map(str, range(lo, hi + 1))))
            start = i
    return ", ".join(runs)


def read_id_label(path: Path) -> np.ndarray:
    """A single-channel label file (8/16-bit grey or palette indices) as stored, (H, W).

    Palette PNGs (GTA5's labels) give their indices, never colours or grey levels.

    Raises:
        ValueError: unreadable, truncated or not single-channel (names the file).
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in SINGLE_CHANNEL_MODES:
                raise ValueError(
                    f"label {path} has mode {image.mode}: expected a single-channel image of "
                    "class ids (8- or 16-bit greyscale or palette PNG)"
                )
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read label {path}: {exc}") from exc


class LabelValueError(ValueError):
    """A label holds values outside its class table (the message names the file and values)."""


def table_valid_ids(table: ClassTable) -> list[int]:
    """Raw values a label may hold under ``table``: its mapped ids and the ignore index."""
    return sorted({*table.id_to_train, table.ignore_index})


class LabelDecoder:
    """Raw label file → train ids (H, W) uint8, refusing raw values outside the table.

    Args:
        table: the class table (raw id → train id, ignore index).
        valid_ids: raw values a label may contain (unmapped ones become ``ignore_index``).
        read_raw: decodes a file into raw ids (H, W); the default reads single-channel PNGs.
    """

    def __init__(
        self,
        table: ClassTable,
        valid_ids: Sequence[int],
        read_raw: Callable[[Path], np.ndarray] = read_id_label,
    ) -> None:
        self.table = table
        self.read_raw = read_raw
        self.valid_ids = sorted({*valid_ids, *table.id_to_train})
        self.lut = np.full(LUT_SIZE, INVALID, dtype=np.uint16)
        self.lut[self.valid_ids] = table.ignore_index
        for raw, train in table.id_to_train.items():
            self.lut[raw] = train

    @property
    def expected(self) -> str:
        return describe_ids(self.valid_ids)

    def to_train(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map raw ids to train ids; ``path`` names the file in the error."""
        if raw.dtype.kind == "i" and raw.size and (raw.min() < 0 or raw.max() >= LUT_SIZE):
            raise LabelValueError(f"label {path} has values outside 0..{LUT_SIZE - 1}")
        mapped = self.lut[raw]
        if raw.size and mapped.max() == INVALID:
            bad = np.unique(raw[mapped == INVALID])
            raise LabelValueError(
                f"label {path} has values {describe_ids(bad.tolist())} outside the class table; "
                f"expected {self.expected}"
            )
        return mapped.astype(np.uint8)

    def __call__(self, path: Path) -> np.ndarray:
        return self.to_train(self.read_raw(path), path)


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

    def dataset(self, transform: PairTransform | None = None) -> SegmentationList:
        """The dataset of these files: items ``{"image", "label" (train ids), "name"}``."""
        return self.dataset_type(
            self.images, self.labels, transform, label_reader=self.decoder, names=self.names
        )


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it is a folder, else FileNotFoundError saying what was expected there."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a folder{hint}")
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
            raise ValueError(f"{found[key]} and {path} are two files for one item {key!r}")
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
        raise ValueError(
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
        raise ValueError(f"no {kind} images ({pattern}) in {image_dir}")
    if list_file is not None:
        images = _filter_by_list(images, list_file)
        if not images:
            raise ValueError(f"list file {list_file} names no image")
    if label_dir is None:
        names = item_names(list(images))
        return DatasetFiles(kind, root, split, table, decoder, list(images.values()), names, None)
    labels = list_files(label_dir, (".png",), recursive=recursive, strip=label_strip)
    keys, label_paths, unlabelled, orphans = pair_files(images, labels)
    if list_file is not None:
        orphans = []  # labels of images left out on purpose
    if unlabelled and missing_labels == "error":
        raise ValueError(
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
        raise ValueError(f"no {kind} image in {image_dir} has a label in {label_dir}")
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


def _yaml_error(path: Path, key: str, message: str) -> ValueError:
    return ValueError(f"{path}: key {key!r}: {message}")


def _read_palette(path: Path, raw: Any, count: int) -> tuple[tuple[int, int, int], ...]:
    if raw is None:
        # Cityscapes colours first, then seeded random ones for any further class
        colours = np.random.default_rng(PALETTE_SEED).integers(0, 256, size=(count, 3)).tolist()
        colours[: len(CITYSCAPES.palette)] = [list(c) for c in CITYSCAPES.palette][:count]
        return tuple((int(c[0]), int(c[1]), int(c[2])) for c in colours)
    if not isinstance(raw, list) or len(raw) != count:
        raise _yaml_error(path, "palette", f"expected a list of {count} [r, g, b] colours")
    for i, colour in enumerate(raw):
        ok = isinstance(colour, list) and len(colour) == 3
        if not ok or not all(isinstance(v, int) and 0 <= v <= MAX_COLOUR for v in colour):
            raise _yaml_error(
                path, "palette", f"entry {i} is {colour!r}, expected [r, g, b] 0..255"
            )
    return tuple((c[0], c[1], c[2]) for c in raw)


def _read_id_map(path: Path, raw: Any, count: int, ignore: int) -> dict[int, int]:
    """Label value → train id, with the file's ignore value mapped to IGNORE_INDEX."""
    if raw is None:
        if ignore < count:
            raise _yaml_error(
                path, "ignore_index", f"{ignore} is also class {ignore}'s value; add id_to_train"
            )
        raw = {i: i for i in range(count)}
    if not isinstance(raw, dict) or not raw:
        raise _yaml_error(path, "id_to_train", "expected a mapping {label value: train id}")
    mapping: dict[int, int] = {}
    for key, value in raw.items():
        if not isinstance(key, int) or not 0 <= key < LUT_SIZE:
            raise _yaml_error(path, "id_to_train", f"label value {key!r} is not in 0..65535")
        if not isinstance(value, int) or not (0 <= value < count or value == IGNORE_INDEX):
            expected = f"a train id 0..{count - 1} or {IGNORE_INDEX} (ignore)"
            raise _yaml_error(path, "id_to_train", f"{key}: {value!r} is not {expected}")
        mapping[key] = value
    if mapping.get(ignore, IGNORE_INDEX) != IGNORE_INDEX:
        raise _yaml_error(path, "ignore_index", f"{ignore} is mapped to class {mapping[ignore]}")
    mapping[ignore] = IGNORE_INDEX
    return mapping


def load_class_table(yaml_path: str | Path) -> ClassTable:
    """Read a user class table (see the module docstring for the format).

    The table's ignore index is always spcl's ``IGNORE_INDEX`` (255); the YAML's
    ``ignore_index`` is the label value that means "ignore" in the user's files.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, unknown key, or a bad value (names the file and the key).
    """
    path = Path(yaml_path)
    if not path.is_file():
        raise FileNotFoundError(f"class table not found: {path} (see docs/datasets.md)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with keys {list(YAML_KEYS)}")
    unknown = sorted(set(raw) - set(YAML_KEYS))
    if unknown:
        raise _yaml_error(path, unknown[0], f"unknown key; valid keys: {list(YAML_KEYS)}")
    names = raw.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _yaml_error(path, "names", "expected a non-empty list of class names")
    if len(set(names)) != len(names) or len(names) > MAX_CLASSES:
        raise _yaml_error(path, "names", f"expected at most {MAX_CLASSES} unique class names")
    ignore = raw.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or not 0 <= ignore < LUT_SIZE:
        raise _yaml_error(path, "ignore_index", f"{ignore!r} is not a label value 0..65535")
    return ClassTable(
        names=tuple(names),
        palette=_read_palette(path, raw.get("palette"), len(names)),
        id_to_train=_read_id_map(path, raw.get("id_to_train"), len(names), ignore),
    )


def scan_folder(
    root: str | Path,
    split: str = "train",
    *,
    with_labels: bool = True,
    class_file: str | Path | None = None,
    list_file: str | Path | None = None,
    missing_labels: MissingLabels = "error",
    warn: bool = True,
) -> DatasetFiles:
    """The user's own data: ``ROOT/images/<split>`` (+ ``ROOT/labels/<split>``) and a class YAML.

    The class table is ``class_file`` or ``ROOT/classes.yaml`` (required when labels are read).

    Raises:
        FileNotFoundError: no root, image folder, split, label folder (``with_labels``) or table.
        ValueError: a bad class table, no images, or images without labels.
    """
    root = require_dir(Path(root), "dataset root")
    images_root = require_dir(root / "images", "image folder")
    splits = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    image_dir = require_dir(images_root / split, f"split {split!r}", f"; splits found: {splits}")
    label_dir = None
    if with_labels:
        hint = " (unlabelled images: with_labels=False)"
        label_dir = require_dir(root / "labels" / split, "label folder", hint)
    table_path = Path(class_file) if class_file is not None else root / CLASS_FILE
    if with_labels or table_path.is_file():
        table = load_class_table(table_path)
    else:
        table = ClassTable(names=(), palette=())  # unlabelled images need no class table
    return scan_pairs(
        "folder",
        root,
        split,
        image_dir=image_dir,
        label_dir=label_dir,
        table=table,
        decoder=LabelDecoder(table, table_valid_ids(table)),
        recursive=True,
        list_file=list_file,
        missing_labels=missing_labels,
        warn=warn,
    )
