"""GTA5 ("Playing for Data", Richter et al., ECCV 2016) as distributed: ``images/`` + ``labels/``.

Layout::

    ROOT/images/00001.png ... 24966.png     RGB, mostly 1914×1052
    ROOT/labels/00001.png ... 24966.png     palette PNGs whose indices are Cityscapes label ids

The UDA literature trains on all 24,966 names (the reference's ``gta5_train_list.txt``), so the
only split is ``train``; a list file selects a subset. Labels are read as raw palette indices
(converting a palette PNG to grey would map ids through the colours) and mapped to Cityscapes
train ids with :func:`~spcl.data.readers.cityscapes.cityscapes_table` (ids 0..33; other values
are an error). Known defect of the download: a few names are incomplete on disk (25 reported, e.g.
02154–02158, 04634–04637, 07115–07119, 09683–09688, 12050–12054; IAST-ECCV2020 issue #2). Images
without a label are skipped with a warning that lists them (``missing_labels="skip"``); ``spcl
data check gta5 ROOT`` lists them and any label without an image.
"""

from __future__ import annotations

from pathlib import Path

from spcl.base import DatasetError
from spcl.data.layout import DatasetFiles, MissingLabels, require_dir, scan_pairs
from spcl.data.readers.cityscapes import cityscapes_decoder, cityscapes_table

__all__ = ["GTA5_NUM_IMAGES", "GTA5_SPLITS", "scan_gta5"]

GTA5_NUM_IMAGES = 24_966  # names in the official release and the reference's list
GTA5_SPLITS = ("train",)  # every image; UDA methods never hold GTA5 images out


def scan_gta5(
    root: str | Path,
    split: str = "train",
    *,
    with_labels: bool = True,
    classes: int = 19,
    list_file: str | Path | None = None,
    missing_labels: MissingLabels = "skip",
    warn: bool = True,
) -> DatasetFiles:
    """GTA5 images (and labels) under ``root``.

    Args:
        root: folder holding ``images/`` and ``labels/``.
        split: ``train`` (all images).
        with_labels: pair each image with ``labels/<same name>``.
        classes: 19 (Cityscapes), or 16/13 to train in SYNTHIA's label space.
        list_file: optional list of image names to use (e.g. the reference's list).
        missing_labels: images without a label are skipped with a warning (default) or an error.
        warn: warn about skipped images.

    Raises:
        FileNotFoundError: no root, ``images/`` or ``labels/``.
        ValueError: another split, unknown ``classes``, no images, or a list name without image.
    """
    root = require_dir(Path(root), "GTA5 root")
    if split not in GTA5_SPLITS:
        raise DatasetError(
            f"GTA5 has the single split 'train' (all images), got {split!r}; "
            "pass list_file to use a subset"
        )
    image_dir = require_dir(root / "images", "GTA5 image folder")
    label_dir = require_dir(root / "labels", "GTA5 label folder") if with_labels else None
    return scan_pairs(
        "gta5",
        root,
        split,
        image_dir=image_dir,
        label_dir=label_dir,
        table=cityscapes_table(classes),
        decoder=cityscapes_decoder(classes),
        list_file=list_file,
        missing_labels=missing_labels,
        warn=warn,
    )
