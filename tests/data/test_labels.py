"""Tests of the class tables against cityscapesscripts' labels and the published SYNTHIA subsets."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from spcl.base import IGNORE_INDEX
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES, class_subset_indices

MAX_CITYSCAPES_ID = 33  # largest label id in cityscapesscripts' labels.py
UINT16_VALUES = 65536  # id_lut covers every value of a 16-bit label PNG


@pytest.fixture(scope="module")
def cs_labels() -> ModuleType:
    return pytest.importorskip(
        "cityscapesscripts.helpers.labels",
        reason="cityscapesscripts not installed (pip install cityscapesscripts)",
    )


def trained_labels(cs_labels: ModuleType) -> list[Any]:
    """cityscapesscripts' labels that have a train id, in train-id order."""
    labels = [label for label in cs_labels.labels if label.trainId not in (255, -1)]
    return sorted(labels, key=lambda label: label.trainId)


def test_cityscapes_table_equals_cityscapesscripts(cs_labels: ModuleType) -> None:
    labels = trained_labels(cs_labels)
    assert [label.trainId for label in labels] == list(range(19))
    assert CITYSCAPES.num_classes == 19
    assert CITYSCAPES.names == tuple(label.name for label in labels)
    assert CITYSCAPES.palette == tuple(tuple(label.color) for label in labels)
    assert CITYSCAPES.id_to_train == {label.id: label.trainId for label in labels}
    assert CITYSCAPES.ignore_index == IGNORE_INDEX == 255
    assert CITYSCAPES.palette[CITYSCAPES.names.index("sky")] == (70, 130, 180)  # not the ref's


def test_id_lut_maps_every_cityscapes_id(cs_labels: ModuleType) -> None:
    lut = CITYSCAPES.id_lut()
    assert lut.shape == (UINT16_VALUES,) and lut.dtype == np.uint8
    official = {label.id: label.trainId for label in cs_labels.labels}
    assert set(range(MAX_CITYSCAPES_ID + 1)) <= set(official)
    for label_id in range(MAX_CITYSCAPES_ID + 1):
        expected = official[label_id] if official[label_id] not in (255, -1) else IGNORE_INDEX
        assert lut[label_id] == expected, cs_labels.id2label[label_id].name
    assert (lut[MAX_CITYSCAPES_ID + 1 :] == IGNORE_INDEX).all()  # ids no label uses
    # license plate has id -1 (trainId -1) in cityscapesscripts: it never appears in label PNGs,
    # and an index of -1 into the table lands on its last entry, which is ignore.
    assert official[-1] == -1
    assert lut[-1] == IGNORE_INDEX
    assert CITYSCAPES.id_lut(size=256).shape == (256,)


def test_train_to_id_inverts_id_lut() -> None:
    to_id = CITYSCAPES.train_to_id()
    lut = CITYSCAPES.id_lut()
    train_ids = np.arange(CITYSCAPES.num_classes)
    np.testing.assert_array_equal(lut[to_id[train_ids]], train_ids)
    assert to_id[IGNORE_INDEX] == 0  # unlabeled
    assert lut[to_id[IGNORE_INDEX]] == IGNORE_INDEX
    assert to_id[CITYSCAPES.names.index("road")] == 7
    assert to_id[CITYSCAPES.names.index("bicycle")] == 33


def test_palette_array_and_colorize(cs_labels: ModuleType) -> None:
    table = CITYSCAPES.palette_array()
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert (table[CITYSCAPES.num_classes :] == 0).all()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CITYSCAPES.num_classes, (5, 7)).astype(np.uint8)
    labels[0, :3] = IGNORE_INDEX
    image = CITYSCAPES.colorize(labels)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    by_train_id = {label.trainId: label.color for label in trained_labels(cs_labels)}
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            expected = by_train_id.get(int(labels[i, j]), (0, 0, 0))  # ignore → black
            assert tuple(image[i, j]) == expected


def test_synthia_subsets_match_the_published_subsets() -> None:
    # docs/recipes.md, "SPCL label spaces": SYNTHIA has 16 of the 19 classes (no terrain, truck,
    # train); 13 also drops wall, fence, pole. Both keep Cityscapes' train-id order.
    sixteen = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle",
    )  # fmt: skip
    thirteen = tuple(n for n in sixteen if n not in ("wall", "fence", "pole"))
    assert (len(sixteen), len(thirteen)) == (16, 13)
    assert (sixteen, thirteen) == (SYNTHIA_16_NAMES, SYNTHIA_13_NAMES)
    assert set(CITYSCAPES.names) - set(SYNTHIA_16_NAMES) == {"terrain", "truck", "train"}


def test_class_subset_indices() -> None:
    indices = class_subset_indices(CITYSCAPES.names, SYNTHIA_13_NAMES)
    assert [CITYSCAPES.names[i] for i in indices] == list(SYNTHIA_13_NAMES)
    assert class_subset_indices(CITYSCAPES.names, ("bicycle", "road")) == [18, 0]
    with pytest.raises(KeyError, match="terrain"):
        class_subset_indices(SYNTHIA_16_NAMES, ("road", "terrain"))
