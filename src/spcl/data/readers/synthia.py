"""SYNTHIA-RAND-CITYSCAPES as distributed: ``RGB/`` + ``GT/LABELS/`` (16-bit, 3-channel PNGs).

Layout (``ROOT`` may also be the folder that contains ``RAND_CITYSCAPES/``)::

    ROOT/RGB/0000000.png ... 0009399.png          1280×760 RGB
    ROOT/GT/LABELS/0000000.png ...                16-bit 3-channel PNG: class id in the first
                                                  (red) channel, instance id in the second

PIL cannot read 16-bit RGB PNGs (it silently drops to 8 bits), so labels are decoded with OpenCV,
which returns channels in BGR order: the class id is ``[:, :, 2]``. SYNTHIA's class ids (README of
RAND_CITYSCAPES: 0 void, 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole,
8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle, 13 parking slot, 14 road work,
15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus, 20 train, 21 wall, 22 lane marking)
map to the 16 classes of the UDA literature with train ids in ``SYNTHIA_16_NAMES`` order; this
equals the SPCL reference's ``id_to_trainid`` (core/datasets/synthia.py and
datasets/generate_synthia_label_info.py of github.com/BinhuiXie/SPCL, the FADA/ProDA convention):
{3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13,
12: 14, 11: 15}. The 13-class variant drops wall, fence and pole (train ids in
``SYNTHIA_13_NAMES`` order). Ids 13, 14, 16, 18, 20, 22 and 0 are ignored; ids above 22 are an
error.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from spcl.base import DatasetError
from spcl.data.label_decoder import LabelDecoder
from spcl.data.labels import ClassTable
from spcl.data.layout import DatasetFiles, MissingLabels, require_dir, scan_pairs
from spcl.data.readers.cityscapes import subset_names, subset_table

__all__ = [
    "SYNTHIA_ID_OF",
    "SYNTHIA_LABEL_IDS",
    "SYNTHIA_SPLITS",
    "read_synthia_label",
    "scan_synthia",
    "synthia_table",
]

SYNTHIA_MAX_ID = 22  # lane marking, the largest class id of RAND_CITYSCAPES
SYNTHIA_LABEL_IDS = tuple(range(SYNTHIA_MAX_ID + 1))
SYNTHIA_SPLITS = ("train",)  # all 9,400 images, as in the UDA literature
SYNTHIA_CLASS_SUBSETS = (16, 13)
SUBFOLDER = "RAND_CITYSCAPES"  # the archive's top folder
CV2_RED = 2  # OpenCV decodes to BGR: the file's first (red) channel is the last
SYNTHIA_ID_OF: dict[str, int] = {  # Cityscapes class name → SYNTHIA class id (19 classes)
    "sky": 1,
    "building": 2,
    "road": 3,
    "sidewalk": 4,
    "fence": 5,
    "vegetation": 6,
    "pole": 7,
    "car": 8,
    "traffic sign": 9,
    "person": 10,
    "bicycle": 11,
    "motorcycle": 12,
    "traffic light": 15,
    "terrain": 16,
    "rider": 17,
    "truck": 18,
    "bus": 19,
    "train": 20,
    "wall": 21,
}


def synthia_table(classes: int = 16) -> ClassTable:
    """SYNTHIA class ids → train ids of the 16- or 13-class subset (SYNTHIA_16/13_NAMES order)."""
    if classes not in SYNTHIA_CLASS_SUBSETS:
        raise DatasetError(f"SYNTHIA classes must be 16 or 13, got {classes!r}")
    return subset_table(subset_names(classes), SYNTHIA_ID_OF)


def read_synthia_label(path: Path) -> np.ndarray:
    """The class-id channel (H, W) uint16 of a SYNTHIA ``GT/LABELS`` PNG.

    Raises:
        ValueError: unreadable or truncated file, or not a 3-channel PNG (names the file).
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read label {path}: {exc}") from exc
    label = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if label is None:
        raise DatasetError(f"cannot read label {path}: not a decodable (or a truncated) PNG")
    if label.ndim != 3 or label.shape[2] < CV2_RED + 1:
        raise DatasetError(
            f"label {path} has shape {label.shape}: expected a 3-channel 16-bit SYNTHIA label "
            "PNG with the class id in the first channel"
        )
    return label[:, :, CV2_RED]


def scan_synthia(
    root: str | Path,
    split: str = "train",
    *,
    with_labels: bool = True,
    classes: int = 16,
    list_file: str | Path | None = None,
    missing_labels: MissingLabels = "error",
    warn: bool = True,
) -> DatasetFiles:
    """SYNTHIA-RAND-CITYSCAPES images (and labels) under ``root``.

    Args:
        root: the ``RAND_CITYSCAPES`` folder (holding ``RGB/`` and ``GT/LABELS/``) or its parent.
        split: ``train`` (all images).
        with_labels: pair each image with ``GT/LABELS/<same name>``.
        classes: 16 (default) or 13.
        list_file: optional list of image names to use (e.g. the reference's list).
        missing_labels: an image without label is an error (default) or skipped with a warning.
        warn: warn about skipped images.

    Raises:
        FileNotFoundError: no root, ``RGB/`` or ``GT/LABELS/``.
        ValueError: another split, unknown ``classes``, no images, or images without labels.
    """
    root = require_dir(Path(root), "SYNTHIA root")
    if (root / SUBFOLDER).is_dir():
        root = root / SUBFOLDER
    if split not in SYNTHIA_SPLITS:
        raise DatasetError(
            f"SYNTHIA has the single split 'train' (all images), got {split!r}; "
            "pass list_file to use a subset"
        )
    table = synthia_table(classes)
    image_dir = require_dir(root / "RGB", "SYNTHIA image folder")
    label_dir = require_dir(root / "GT" / "LABELS", "SYNTHIA label folder") if with_labels else None
    return scan_pairs(
        "synthia",
        root,
        split,
        image_dir=image_dir,
        label_dir=label_dir,
        table=table,
        decoder=LabelDecoder(table, SYNTHIA_LABEL_IDS, read_raw=read_synthia_label),
        list_file=list_file,
        missing_labels=missing_labels,
        warn=warn,
    )
