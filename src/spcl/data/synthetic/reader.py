"""The synthetic pair on disk as the dataset kind ``synthetic`` (like every other reader).

Layout (written by :func:`spcl.data.synthetic.generate_pair`)::

    ROOT/manifest.json
    ROOT/{source,target}/images/{train,val}/NAME.png    RGB
    ROOT/{source,target}/labels/{train,val}/NAME.png    Cityscapes train ids, 255 = ignore

The reader option ``domain`` picks the half: ``source`` (the "game") or ``target`` (the "real"
images). Labels are stored as train ids, so the class table is Cityscapes' 19 classes with the
identity id map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from spcl.base import IGNORE_INDEX, DatasetError
from spcl.data.label_decoder import LabelDecoder, table_valid_ids
from spcl.data.labels import CITYSCAPES, ClassTable
from spcl.data.layout import DatasetFiles, MissingLabels, require_dir, scan_pairs

__all__ = ["SYNTHETIC_TABLE", "scan_synthetic"]

Domain = Literal["source", "target"]
DOMAIN_NAMES: tuple[str, ...] = ("source", "target")
SYNTHETIC_TABLE = ClassTable(
    names=CITYSCAPES.names,
    palette=CITYSCAPES.palette,
    id_to_train={**{i: i for i in range(CITYSCAPES.num_classes)}, IGNORE_INDEX: IGNORE_INDEX},
)  # label files hold train ids already


def scan_synthetic(
    root: str | Path,
    split: str = "train",
    *,
    domain: Domain = "source",
    missing_labels: MissingLabels = "error",
    with_labels: bool = True,
    warn: bool = True,
) -> DatasetFiles:
    """One domain and split of a generated pair: ``ROOT/<domain>/images/<split>`` (+ labels).

    ``missing_labels``: an image without label is an error (default; the generator writes every
    label) or skipped with a warning.

    Raises:
        DatasetError: ``domain`` is not source/target, no images, or images without labels.
        MissingFileError: no root, domain, split or label folder.
    """
    if domain not in DOMAIN_NAMES:
        raise DatasetError(
            f"synthetic pair: option domain must be one of {list(DOMAIN_NAMES)}, got {domain!r}"
        )
    root = require_dir(Path(root), "synthetic pair root", " (spcl synth --out DIR makes one)")
    images_root = require_dir(root / domain / "images", f"{domain} image folder")
    splits = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    image_dir = require_dir(images_root / split, f"split {split!r}", f"; splits found: {splits}")
    labels = root / domain / "labels" / split
    label_dir = require_dir(labels, "label folder") if with_labels else None
    return scan_pairs(
        "synthetic",
        root,
        split,
        image_dir=image_dir,
        label_dir=label_dir,
        table=SYNTHETIC_TABLE,
        decoder=LabelDecoder(SYNTHETIC_TABLE, table_valid_ids(SYNTHETIC_TABLE)),
        missing_labels=missing_labels,
        warn=warn,
    )
