"""Tests of the one label-map reader: what it returns, the one error it raises for every problem
(naming the file, its role and what is wrong), and that each reader of label maps (datasets,
train-id lists, folder evaluation) goes through it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_png_decode import every_byte, hand_png
from test_real_datasets import make_gta5

from spcl.base import DatasetError
from spcl.data.label_decoder import LabelValueError
from spcl.data.label_png import LabelFileError, read_label_png
from spcl.data.lists import SegmentationList
from spcl.data.loaders import build_eval_loader
from spcl.data.registry import build_dataset
from spcl.evaluation.pair_counts import id_tables, pair_confusion


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_label_maps_give_their_stored_ids_as_writable_arrays(tmp_path: Path) -> None:
    ids = every_byte((10, 30), seed=3)
    colours = Image.fromarray(ids, "P")
    colours.putpalette([v for i in range(256) for v in (255 - i, 0, i)])  # colour ≠ index
    colours.save(tmp_path / "p.png")
    for max_bits in (8, 16):
        label = read_label_png(tmp_path / "p.png", max_bits=max_bits)
        assert label.dtype == np.uint8 and label.flags.writeable
        np.testing.assert_array_equal(label, ids)
    deep = save(tmp_path / "deep.png", ids.astype(np.uint16) * 257)
    got = read_label_png(deep)
    assert got.dtype == np.uint16 and got.flags.writeable
    np.testing.assert_array_equal(got, ids.astype(np.uint16) * 257)
    # files OpenCV is not given (1-bit grey, 4-bit palette) go through PIL, same contract
    save(tmp_path / "bits.png", ids > 100)
    bits = read_label_png(tmp_path / "bits.png", max_bits=8)
    assert bits.dtype == np.uint8 and bits.flags.writeable
    np.testing.assert_array_equal(bits, ids > 100)
    small = ids % 16
    four_bits = Image.fromarray(small, "P")
    four_bits.putpalette([v for i in range(16) for v in (16 * i, 0, 255 - 16 * i)])
    four_bits.save(tmp_path / "p4.png", bits=4)
    four = read_label_png(tmp_path / "p4.png")
    assert four.dtype == np.uint8 and four.flags.writeable
    np.testing.assert_array_equal(four, small)


PROBLEMS = {  # problem → (max_bits, the message's pattern)
    "missing": (16, r"cannot read {role} {path}: .*No such file"),
    "folder": (16, r"cannot read {role} {path}: .*directory"),
    "truncated": (16, r"cannot read {role} {path}: "),
    "not an image": (8, r"cannot read {role} {path}: cannot identify image file"),
    "colour": (
        16,
        r"{role} {path} has mode RGB \(3 channels\): expected a single-channel PNG of class ids "
        r"\(8- or 16-bit greyscale or palette indices\); a colour mask holds colours, not "
        r"class ids$",
    ),
    "grey + alpha": (16, r"{role} {path} has mode LA \(2 channels\): expected a single-channel"),
    "16-bit": (
        8,
        r"{role} {path} has mode I;16 \(16-bit samples\): expected a single-channel PNG of class "
        r"ids \(8-bit greyscale or palette indices\)$",
    ),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_every_problem_is_one_error_naming_the_file_its_role_and_what_is_wrong(
    tmp_path: Path, problem: str
) -> None:
    max_bits, message = PROBLEMS[problem]
    ids = every_byte((9, 31), seed=1)
    path = tmp_path / "x.png"
    if problem == "folder":
        path.mkdir()
    elif problem == "truncated":
        path.write_bytes(hand_png(ids)[:70])
    elif problem == "not an image":
        path.write_bytes(b"not a png at all")
    elif problem == "colour":
        save(path, np.stack([ids] * 3, -1))
    elif problem == "grey + alpha":
        save(path, np.stack([ids] * 2, -1))  # (H, W, 2) uint8: mode LA
    elif problem == "16-bit":
        save(path, ids.astype(np.uint16) * 200)
    for role in ("label", "prediction"):
        expected = message.format(role=role, path=re.escape(str(path)))
        with pytest.raises(LabelFileError, match=expected) as caught:
            read_label_png(path, max_bits=max_bits, role=role)
        assert isinstance(caught.value, DatasetError)  # the CLI's one line and exit 2


def test_datasets_train_id_lists_and_folder_evaluation_raise_it(tmp_path: Path) -> None:
    ids = every_byte((6, 8), seed=2)
    rgb = save(tmp_path / "rgb.png", np.stack([ids] * 3, -1))
    image = save(tmp_path / "image.png", np.stack([ids] * 3, -1))
    # a train-id list (pseudo-labels): 8-bit maps only
    deep = save(tmp_path / "deep.png", ids.astype(np.uint16) * 200)
    with pytest.raises(LabelFileError, match=r"label .*deep\.png has mode I;16 .*\(8-bit"):
        SegmentationList([image], [deep]).load(0)
    # folder evaluation: the prediction and the ground truth named as such
    tables = id_tables("trainIds", "trainIds", ("a", "b"))
    grey = save(tmp_path / "grey.png", ids % 2)
    with pytest.raises(LabelFileError, match=r"^prediction .*rgb\.png has mode RGB"):
        pair_confusion(rgb, grey, tables)
    with pytest.raises(LabelFileError, match=r"^cannot read ground truth .*absent\.png"):
        pair_confusion(grey, tmp_path / "absent.png", tables)
    # values outside a dataset's table are the same kind of error
    assert issubclass(LabelValueError, LabelFileError)


def test_a_dataset_label_gone_after_the_scan_is_skipped_or_named(tmp_path: Path) -> None:
    # main 2e030e1: the dataset decoder raised a plain ValueError for a label it could not open,
    # so data.on_error=skip crashed on it and the CLI printed a traceback instead of one line
    make_gta5(tmp_path, n=2)
    dataset = build_dataset("gta5", tmp_path, with_labels=True)
    (tmp_path / "labels" / "00001.png").unlink()
    with pytest.raises(LabelFileError, match=r"cannot read label .*00001\.png"):
        dataset[0]
    warnings: list[str] = []
    kept = list(build_eval_loader(dataset, on_error="skip", warn=warnings.append))
    assert [batch["name"] for batch in kept] == [["00002"]]
    assert len(warnings) == 1 and "00001.png" in warnings[0]
