"""Cityscapes as distributed (``leftImg8bit/`` + ``gtFine/``) and the Cityscapes label-id tables.

Layout::

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png   2048×1024 RGB
    ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png    label ids

Label PNGs hold Cityscapes label ids 0..33 (cityscapesscripts' ``labels.py``). They map to the 19
train ids of :data:`~spcl.data.labels.CITYSCAPES`, or to the 16/13-class SYNTHIA subsets with
train ids in ``SYNTHIA_16_NAMES`` / ``SYNTHIA_13_NAMES`` order: the SPCL reference's
``core/datasets/cityscapes.py`` numbers the 16 classes so for SYNTHIA → Cityscapes (road 0, ...,
vegetation 8, sky 9, person 10, rider 11, car 12, bus 13, motorcycle 14, bicycle 15). GTA5 and
Synscapes labels use the same label ids, so their readers share these tables. Items are named by
the file stem without ``_leftImg8bit`` (``aachen_000000_000019``), unique over the dataset.
"""

from __future__ import annotations

from pathlib import Path

from spcl.base import DatasetError
from spcl.data.label_decoder import LabelDecoder
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES, ClassTable
from spcl.data.layout import DatasetFiles, MissingLabels, require_dir, scan_pairs

__all__ = [
    "CITYSCAPES_LABEL_IDS",
    "CITYSCAPES_SPLITS",
    "CLASS_SUBSETS",
    "cityscapes_decoder",
    "cityscapes_table",
    "scan_cityscapes",
    "subset_names",
    "subset_table",
]

CITYSCAPES_MAX_ID = 33  # largest label id in a Cityscapes labelIds PNG (bicycle)
CITYSCAPES_LABEL_IDS = tuple(range(CITYSCAPES_MAX_ID + 1))  # every id a label PNG may hold
CITYSCAPES_SPLITS = ("train", "val", "test")
CLASS_SUBSETS: dict[int, tuple[str, ...]] = {
    19: CITYSCAPES.names,  # GTA5 / Synscapes → Cityscapes
    16: SYNTHIA_16_NAMES,  # SYNTHIA → Cityscapes (no terrain, truck, train)
    13: SYNTHIA_13_NAMES,  # ... also without wall, fence, pole
}
IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtFine_labelIds"

_CITYSCAPES_ID_OF = {CITYSCAPES.names[t]: raw for raw, t in CITYSCAPES.id_to_train.items()}


def subset_names(classes: int) -> tuple[str, ...]:
    """The class names of a 19/16/13-class label space, in train-id order."""
    if classes not in CLASS_SUBSETS:
        raise DatasetError(f"classes must be one of {sorted(CLASS_SUBSETS)}, got {classes!r}")
    return CLASS_SUBSETS[classes]


def subset_table(names: tuple[str, ...], raw_id_of: dict[str, int]) -> ClassTable:
    """A table over Cityscapes classes ``names`` (train id = position) with Cityscapes colours.

    Args:
        names: class names, a subset of Cityscapes' 19, in the wanted train-id order.
        raw_id_of: each class name's raw id in the dataset's label files.
    """
    palette = tuple(CITYSCAPES.palette[CITYSCAPES.names.index(n)] for n in names)
    return ClassTable(names, palette, {raw_id_of[n]: t for t, n in enumerate(names)})


def cityscapes_table(classes: int = 19) -> ClassTable:
    """Cityscapes label ids → train ids of the 19-class space or the 16/13-class SYNTHIA subset."""
    if classes == CITYSCAPES.num_classes:
        return CITYSCAPES
    return subset_table(subset_names(classes), _CITYSCAPES_ID_OF)


def cityscapes_decoder(classes: int = 19) -> LabelDecoder:
    """Label-id PNG → train ids, accepting label ids 0..33 (others are an error)."""
    return LabelDecoder(cityscapes_table(classes), CITYSCAPES_LABEL_IDS)


def scan_cityscapes(
    root: str | Path,
    split: str = "train",
    *,
    with_labels: bool = True,
    classes: int = 19,
    list_file: str | Path | None = None,
    missing_labels: MissingLabels = "error",
    warn: bool = True,
) -> DatasetFiles:
    """Cityscapes ``split`` (train 2,975, val 500, test 1,525 images; test labels are void).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test``.
        with_labels: read ``gtFine`` labels (``*_gtFine_labelIds.png``).
        classes: 19, or 16/13 for a SYNTHIA-trained model's label space.
        list_file: optional list of the images to use (the reference's lists work as they are).
        missing_labels: an image without label is an error (default) or skipped with a warning.
        warn: warn about skipped images.

    Raises:
        FileNotFoundError: no root, no ``leftImg8bit/<split>`` or ``gtFine/<split>``.
        ValueError: unknown ``classes``, no images, or images without labels.
    """
    root = require_dir(Path(root), "Cityscapes root")
    hint = f"; Cityscapes splits: {list(CITYSCAPES_SPLITS)}"
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes split {split!r}", hint)
    label_dir = None
    if with_labels:
        label_dir = require_dir(root / "gtFine" / split, f"Cityscapes labels of {split!r}")
    return scan_pairs(
        "cityscapes",
        root,
        split,
        image_dir=image_dir,
        label_dir=label_dir,
        table=cityscapes_table(classes),
        decoder=cityscapes_decoder(classes),
        image_suffixes=(".png",),
        image_strip=IMAGE_SUFFIX,
        label_strip=LABEL_SUFFIX,
        recursive=True,
        list_file=list_file,
        missing_labels=missing_labels,
        warn=warn,
    )
