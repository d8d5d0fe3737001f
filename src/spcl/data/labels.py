"""Class tables: names, palettes and id → train-id maps for Cityscapes and the SYNTHIA subsets.

The Cityscapes 19-class train-id table follows the official definitions in cityscapesscripts'
``labels.py`` (checked in ``tests/data/test_labels.py``). SYNTHIA's 16-class and 13-class subsets
are those used by the SPCL paper and the UDA literature (16: no terrain, truck, train; 13:
additionally no wall, fence, pole). A model's own table (:func:`class_table_for`) keeps the
Cityscapes colours and label ids of its Cityscapes classes and generates colours for others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spcl.base import IGNORE_INDEX

__all__ = [
    "CITYSCAPES",
    "SYNTHIA_13_NAMES",
    "SYNTHIA_16_NAMES",
    "ClassTable",
    "class_subset_indices",
    "class_table_for",
]

BITS_PER_CHANNEL = 8  # generated palettes spread each class index over 8 bits per channel
RGB = 3


@dataclass(frozen=True)
class ClassTable:
    """A label space: class names in train-id order, their colours, and raw id → train id.

    Attributes:
        names: class names; train id ``i`` is ``names[i]``.
        palette: one RGB triple per class.
        id_to_train: raw dataset id → train id; every other id maps to ``ignore_index``.
        ignore_index: the train id of ignored pixels.
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    id_to_train: dict[int, int] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def id_lut(self, size: int = 65536) -> np.ndarray:
        """Lookup array mapping raw ids (0..size-1) to train ids, ``ignore_index`` elsewhere."""
        lut = np.full(size, self.ignore_index, dtype=np.uint8)
        for raw, train in self.id_to_train.items():
            lut[raw] = train
        return lut

    def train_to_id(self) -> np.ndarray:
        """Lookup array mapping train ids (0..255) back to raw ids; ignore → 0 (unlabelled)."""
        lut = np.zeros(256, dtype=np.uint8)
        for raw, train in sorted(self.id_to_train.items(), reverse=True):
            lut[train] = raw  # smallest raw id wins where several map to one train id
        return lut

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 colour table: class colours, black for ignore and unused ids."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return table

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Train-id map (H, W) → RGB image (H, W, 3) in this table's palette."""
        return self.palette_array()[labels]


# Cityscapes: (name, label id, colour). Colours are the official ones; sky is (70, 130, 180)
# (the SPCL reference palette's (0, 130, 180) is a known error).
_CITYSCAPES_CLASSES: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CITYSCAPES = ClassTable(
    names=tuple(name for name, _, _ in _CITYSCAPES_CLASSES),
    palette=tuple(colour for _, _, colour in _CITYSCAPES_CLASSES),
    id_to_train={label_id: i for i, (_, label_id, _) in enumerate(_CITYSCAPES_CLASSES)},
)

SYNTHIA_16_NAMES: tuple[str, ...] = tuple(
    n for n in CITYSCAPES.names if n not in ("terrain", "truck", "train")
)
SYNTHIA_13_NAMES: tuple[str, ...] = tuple(
    n for n in SYNTHIA_16_NAMES if n not in ("wall", "fence", "pole")
)


def class_subset_indices(names: tuple[str, ...], subset: tuple[str, ...]) -> list[int]:
    """Indices of ``subset``'s classes within ``names``.

    Raises:
        KeyError: a class of ``subset`` is not in ``names`` (the message lists both).
    """
    missing = [n for n in subset if n not in names]
    if missing:
        raise KeyError(f"classes {missing} are not in the class table {list(names)}")
    return [names.index(n) for n in subset]


def class_table_for(
    class_names: Sequence[str],
    num_classes: int,
    source: str | Path = "the model file",
    palette: Sequence[Sequence[int]] = (),
) -> ClassTable:
    """The class table of a model: its names, and its palette or Cityscapes colours.

    Classes that are all Cityscapes classes (19, or a subset such as SYNTHIA's 16) get their
    Cityscapes label ids, and their Cityscapes colours unless ``palette`` is given; other names
    get ``palette`` or a generated one, and no label ids; no names at all get ``class_0 …``.

    Raises:
        CheckpointError: ``class_names`` does not hold ``num_classes`` names.
    """
    names = tuple(class_names) or tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        # imported here: the label tables (and the synthetic generator) stay free of torch
        from spcl.base import CheckpointError

        raise CheckpointError(
            f"{source}: {len(names)} class names for a {num_classes}-class model: {list(names)}"
        )
    if palette and len(palette) != num_classes:
        raise CheckpointError(f"{source}: {len(palette)} colours for {num_classes} classes")
    own = tuple((int(c[0]), int(c[1]), int(c[2])) for c in palette)
    if names == CITYSCAPES.names and own in ((), CITYSCAPES.palette):
        return CITYSCAPES
    colours = dict(zip(CITYSCAPES.names, CITYSCAPES.palette, strict=True))
    if not all(n in colours for n in names):
        return ClassTable(names=names, palette=own or _generated_palette(num_classes))
    id_map = {
        raw: names.index(CITYSCAPES.names[train])
        for raw, train in CITYSCAPES.id_to_train.items()
        if CITYSCAPES.names[train] in names
    }
    colour_list = own or tuple(colours[n] for n in names)
    return ClassTable(names=names, palette=colour_list, id_to_train=id_map)


def _generated_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours: the bits of ``index + 1`` spread over R, G, B from the high bit down."""
    palette = []
    for index in range(count):
        code, rgb = index + 1, [0, 0, 0]
        for bit in range(BITS_PER_CHANNEL - 1, -1, -1):
            for channel in range(RGB):
                rgb[channel] |= ((code >> channel) & 1) << bit
            code >>= RGB
        palette.append((rgb[0], rgb[1], rgb[2]))
    return tuple(palette)
