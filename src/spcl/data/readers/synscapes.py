"""Synscapes (Wrenninge & Unger, 2018) as distributed: ``img/rgb[-2k]/`` + ``img/class/``.

Layout (``ROOT`` may also be the folder that contains ``Synscapes/``)::

    ROOT/img/rgb/1.png ... 25000.png        1440×720 RGB
    ROOT/img/rgb-2k/1.png ...               2048×1024 RGB (what the SPCL reference reads)
    ROOT/img/class/1.png ...                1440×720 Cityscapes label ids (8-bit grey)

The class maps are stored at 1440×720 whatever the image folder, so with ``rgb-2k`` images each
label is resized to its image with nearest neighbour (pixel centres, as PIL's NEAREST) when the
two have the same aspect ratio; any other size disagreement is an error. The reference resizes
image and label straight to 1280×720 instead, which can differ from ours by one pixel along
class boundaries. Label ids map to the 19 Cityscapes train ids (0..33 accepted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from spcl.base import DatasetError
from spcl.data.layout import DatasetFiles, MissingLabels, require_dir, scan_pairs
from spcl.data.lists import SegmentationList, read_image
from spcl.data.readers.cityscapes import cityscapes_decoder, cityscapes_table

__all__ = [
    "SYNSCAPES_IMAGE_DIRS",
    "SYNSCAPES_SPLITS",
    "RescaledLabelList",
    "fit_label",
    "scan_synscapes",
]

SYNSCAPES_IMAGE_DIRS = ("rgb-2k", "rgb")  # 2048×1024 (reference) or 1440×720 images
SYNSCAPES_SPLITS = ("train",)  # all 25,000 images, as in the UDA literature
SUBFOLDER = "Synscapes"  # the archive's top folder


def same_aspect(image_hw: tuple[int, int], label_hw: tuple[int, int]) -> bool:
    """Whether a label of size ``label_hw`` is an exact rescale of ``image_hw`` (H, W)."""
    return image_hw[0] * label_hw[1] == image_hw[1] * label_hw[0]


def fit_label(
    label: np.ndarray, image_hw: tuple[int, int], label_path: Path, image_path: Path
) -> np.ndarray:
    """Resize ``label`` (H', W') to ``image_hw`` with nearest neighbour if the aspect agrees.

    Raises:
        ValueError: the sizes differ in aspect ratio (names both files).
    """
    if label.shape[:2] == tuple(image_hw):
        return label
    if not same_aspect(image_hw, label.shape[:2]):
        raise DatasetError(
            f"label {label_path} is {label.shape[1]}x{label.shape[0]} but image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}: not the same aspect ratio"
        )
    return cv2.resize(label, image_hw[::-1], interpolation=cv2.INTER_NEAREST_EXACT)


class RescaledLabelList(SegmentationList):
    """A :class:`SegmentationList` whose labels may be stored at a rescaled size."""

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(self.images[index])
        if not self.labels:
            return image, None
        label = self.label_reader(self.labels[index])
        label = fit_label(label, image.shape[:2], self.labels[index], self.images[index])
        return image, label if self.id_lut is None else self.id_lut[label]


def scan_synscapes(
    root: str | Path,
    split: str = "train",
    *,
    with_labels: bool = True,
    classes: int = 19,
    image_dir: Literal["rgb-2k", "rgb"] = "rgb-2k",
    list_file: str | Path | None = None,
    missing_labels: MissingLabels = "error",
    warn: bool = True,
) -> DatasetFiles:
    """Synscapes images (and class maps) under ``root``.

    Args:
        root: folder holding ``img/`` (or its parent holding ``Synscapes/``).
        split: ``train`` (all images).
        with_labels: pair each image with ``img/class/<same name>``.
        classes: 19 (Cityscapes), or 16/13 for SYNTHIA's label space.
        image_dir: ``rgb-2k`` (2048×1024, the reference) or ``rgb`` (1440×720).
        list_file: optional list of image names (e.g. the reference's synscapes_train_list.txt).
        missing_labels: an image without label is an error (default) or skipped with a warning.
        warn: warn about skipped images.

    Raises:
        FileNotFoundError: no root, image or class folder.
        ValueError: another split or image folder, unknown ``classes``, no images.
    """
    root = require_dir(Path(root), "Synscapes root")
    if (root / SUBFOLDER).is_dir():
        root = root / SUBFOLDER
    if split not in SYNSCAPES_SPLITS:
        raise DatasetError(
            f"Synscapes has the single split 'train' (all images), got {split!r}; "
            "pass list_file to use a subset"
        )
    if image_dir not in SYNSCAPES_IMAGE_DIRS:
        raise DatasetError(f"image_dir must be one of {SYNSCAPES_IMAGE_DIRS}, got {image_dir!r}")
    images = require_dir(root / "img" / image_dir, "Synscapes image folder")
    labels = require_dir(root / "img" / "class", "Synscapes class folder") if with_labels else None
    files = scan_pairs(
        "synscapes",
        root,
        split,
        image_dir=images,
        label_dir=labels,
        table=cityscapes_table(classes),
        decoder=cityscapes_decoder(classes),
        list_file=list_file,
        missing_labels=missing_labels,
        warn=warn,
    )
    files.dataset_type = RescaledLabelList
    files.labels_rescaled = True
    return files
