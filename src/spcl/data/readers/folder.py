"""The user's own data (dataset kind ``folder``): images, optional labels and a class table.

Layout on disk::

    ROOT/classes.yaml                          the class table (see load_class_table)
    ROOT/images/<split>/**/<name>.<jpg|png|...>
    ROOT/labels/<split>/**/<name>.png          optional; single channel (8/16-bit grey or palette)

``classes.yaml``::

    names: [road, building, sky]               # required: class names in train-id order
    palette: [[128, 64, 128], [70, 70, 70], [70, 130, 180]]   # optional: one RGB per class
    id_to_train: {7: 0, 11: 1, 23: 2, 0: 255}  # optional; default: label values are train ids
    ignore_index: 255                          # optional: the label value meaning "ignore"

Labels come out as train ids with 255 for ignored pixels. A label value that is neither a key of
``id_to_train`` nor ``ignore_index`` (nor 255) is an error. The pairing of images and labels is
shared with every other reader (:mod:`spcl.data.layout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from spcl.base import IGNORE_INDEX, DatasetError, MissingFileError, load_yaml
from spcl.data.label_decoder import LUT_SIZE, LabelDecoder, table_valid_ids
from spcl.data.labels import CITYSCAPES, ClassTable
from spcl.data.layout import DatasetFiles, MissingLabels, require_dir, scan_pairs

__all__ = ["CLASS_FILE", "load_class_table", "scan_folder"]

CLASS_FILE = "classes.yaml"  # default class table of a user folder, at its root
MAX_CLASSES = 255  # train ids 0..254 fit the uint8 label maps beside IGNORE_INDEX 255
MAX_COLOUR = 255  # palette channels are 8-bit
PALETTE_SEED = 0  # colours of classes beyond the Cityscapes palette's 19
YAML_KEYS = ("names", "palette", "id_to_train", "ignore_index")


def _yaml_error(path: Path, key: str, message: str) -> DatasetError:
    return DatasetError(f"{path}: key {key!r}: {message}")


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
        raise MissingFileError(f"class table not found: {path} (see docs/datasets.md)")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping with keys {list(YAML_KEYS)}")
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
        hint = " (images without labels: `spcl data check folder ROOT --no-labels`)"
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
