"""Confusion counts of one prediction PNG against its ground truth, without torch.

The unit of work of folder evaluation (:func:`spcl.evaluation.pred_folders.evaluate_folders`):
decode both maps (:func:`spcl.data.label_png.read_label_png`, the reader of every label map),
check their sizes and ids, and count. For 8-bit maps (all Cityscapes files) counting is one joint
histogram of the raw file values (:func:`spcl.data.png_decode.pair_histogram`), folded into the
evaluated label space by the id lookup tables as a product with two one-hot matrices; the file
values are never mapped pixel by pixel. Other maps (16-bit, PIL modes) are mapped through the
tables first. Both give the same integer counts as mapping every pixel and counting with one
bincount.

The counts form a (K+1)×(K+1) matrix: rows are ground-truth classes (an extra empty row), columns
predicted classes plus column K for predictions that name no evaluated class.

Every value of both files must belong to the assumed label space, so that a folder of other classes
is never scored as if it were Cityscapes: Cityscapes label ids are 0..33 (cityscapesscripts'
``labels.py``; the licence plate's -1 is never drawn) and 255, Cityscapes train ids 0..18 and 255,
and a dataset's own table allows its own values. Any other value (e.g. 40 in a 4-class dataset's
labels scored as the default 19 classes) is an error naming the file, the value and ``--classes``.
The check reads the values off the joint histogram the counting needs anyway (no extra pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spcl.base import IGNORE_INDEX, DatasetError
from spcl.data.label_png import read_label_png
from spcl.data.labels import CITYSCAPES, ClassTable
from spcl.data.png_decode import BYTE_VALUES, pair_histogram

__all__ = ["IdTables", "id_tables", "pair_confusion"]

INVALID = -1  # lookup-table value of a file value that is not allowed
LAST_CITYSCAPES_ID = 33  # Cityscapes label ids are 0..33 (bicycle); 34..254 are no label id
CLASSES_HINT = (
    "if the files hold your own classes, pass --classes with their classes.yaml or the folder "
    "dataset's root"
)
LABEL_VALUES = 65536  # values of a 16-bit label map (a dataset's own raw label values)
SHOWN_VALUES = 12  # valid values an error message lists


@dataclass(frozen=True)
class IdTables:
    """File value → evaluated class lookup tables of one evaluation, and their one-hot forms.

    Attributes:
        num_classes: K, the evaluated classes.
        gt_lut: ground-truth value → class 0..K-1, ``IGNORE_INDEX``, or ``INVALID``.
        pred_lut: prediction value → class 0..K-1, K ("no class"), or ``INVALID``.
        gt_onehot: (256, K+1) int64, row v = one-hot class of 8-bit ground-truth value v (zero
            for ignored and invalid values).
        pred_onehot: (256, K+1) int64, row v = one-hot class of 8-bit prediction value v.
        gt_identity, pred_identity: the same for maps already mapped through the tables (value v
            is class v; ground-truth 255 is ignored, prediction K is "no class").
        gt_hint, pred_hint: what valid ground truth and predictions hold (for error messages).
    """

    num_classes: int
    gt_lut: np.ndarray
    pred_lut: np.ndarray
    gt_onehot: np.ndarray
    pred_onehot: np.ndarray
    gt_identity: np.ndarray
    pred_identity: np.ndarray
    gt_hint: str
    pred_hint: str


def id_tables(
    pred_format: str, gt_format: str, names: Sequence[str], table: ClassTable | None = None
) -> IdTables:
    """The lookup tables for file formats ``"trainIds"``/``"labelIds"`` and evaluated ``names``.

    Without ``table`` the files are in Cityscapes ids and ``names`` a subset of its classes. With
    a dataset's own ``table`` (``names`` are its names), ``trainIds`` files hold its class
    indices and ``labelIds`` files its raw label values, mapped by ``table.id_to_train`` as its
    reader maps them (any other value but 255 is invalid).
    """
    k = len(names)
    if table is None:
        gt_lut, pred_lut = _gt_lut(gt_format, names), _pred_lut(pred_format, names)
    else:
        gt_lut, pred_lut = _own_lut(table, gt_format, IGNORE_INDEX), _own_lut(table, pred_format, k)
    identity = np.arange(BYTE_VALUES)
    return IdTables(
        num_classes=k,
        gt_lut=gt_lut,
        pred_lut=pred_lut,
        gt_onehot=_onehot(gt_lut[:BYTE_VALUES], k),
        pred_onehot=_onehot(pred_lut[:BYTE_VALUES], k),
        gt_identity=_onehot(np.where(identity < k, identity, INVALID), k),
        pred_identity=_onehot(identity, k),
        gt_hint=_hint(gt_format, k, table, ground_truth=True),
        pred_hint=_hint(pred_format, k, table, ground_truth=False),
    )


def _hint(file_format: str, k: int, table: ClassTable | None, *, ground_truth: bool) -> str:
    """What a valid file of ``file_format`` holds, and what to do when the files differ."""
    option = f"--{'gt' if ground_truth else 'pred'}-format {file_format}"
    if table is not None:
        if file_format == "trainIds":
            return f"the class table allows train ids 0..{k - 1} and {IGNORE_INDEX} ({option})"
        values = sorted(table.id_to_train)
        shown = ", ".join(map(str, values[:SHOWN_VALUES])) + (
            ", ..." if len(values) > SHOWN_VALUES else ""
        )
        return f"the class table allows the label values {shown} and {IGNORE_INDEX} ({option})"
    if file_format == "labelIds":
        valid = f"Cityscapes label ids are 0..{LAST_CITYSCAPES_ID} or {IGNORE_INDEX}"
    elif ground_truth:
        valid = f"Cityscapes train ids are 0..{CITYSCAPES.num_classes - 1} or {IGNORE_INDEX}"
    else:
        valid = f"train ids must be 0..{k - 1} or {IGNORE_INDEX}"
    return f"{valid} ({option}); {CLASSES_HINT}"


def _onehot(lut: np.ndarray, k: int) -> np.ndarray:
    """(256, K+1) int64: row v has a 1 in column ``lut[v]`` when that is a class 0..K."""
    onehot = np.zeros((lut.size, k + 1), dtype=np.int64)
    counted = (lut >= 0) & (lut <= k)
    onehot[np.flatnonzero(counted), lut[counted]] = 1
    return onehot


def _space_lut(names: Sequence[str]) -> np.ndarray:
    """Cityscapes train id (0..255) → index in ``names``; ignore for classes not in ``names``."""
    lut = np.full(IGNORE_INDEX + 1, IGNORE_INDEX, dtype=np.int64)
    for train_id, name in enumerate(CITYSCAPES.names):
        if name in names:
            lut[train_id] = names.index(name)
    return lut


def _gt_lut(gt_format: str, names: Sequence[str]) -> np.ndarray:
    """Ground-truth file value → evaluated class index or ignore (-1: an invalid value)."""
    space = _space_lut(names)
    if gt_format == "labelIds":
        return _only_label_ids(space[CITYSCAPES.id_lut().astype(np.int64)])
    lut = np.full(IGNORE_INDEX + 1, INVALID, dtype=np.int64)  # Cityscapes train ids: 0..18, 255
    lut[: CITYSCAPES.num_classes] = space[: CITYSCAPES.num_classes]
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def _pred_lut(pred_format: str, names: Sequence[str]) -> np.ndarray:
    """Prediction file value → evaluated class index, K for "no class" (-1: an invalid value)."""
    k = len(names)
    if pred_format == "labelIds":
        space = _space_lut(names)[CITYSCAPES.id_lut().astype(np.int64)]
        return _only_label_ids(np.where(space == IGNORE_INDEX, k, space))
    lut = np.full(IGNORE_INDEX + 1, INVALID, dtype=np.int64)
    lut[:k] = np.arange(k)
    lut[IGNORE_INDEX] = k
    return lut


def _only_label_ids(lut: np.ndarray) -> np.ndarray:
    """``lut`` with every value that is no Cityscapes label id (34..254, 256..) made invalid."""
    values = np.arange(lut.size)
    return np.where((values > LAST_CITYSCAPES_ID) & (values != IGNORE_INDEX), INVALID, lut)


def _own_lut(table: ClassTable, file_format: str, unlabelled: int) -> np.ndarray:
    """File value → class of a dataset's own table; ignored values become ``unlabelled``."""
    k = table.num_classes
    if file_format == "trainIds":
        lut = np.full(IGNORE_INDEX + 1, INVALID, dtype=np.int64)
        lut[:k] = np.arange(k)
    else:
        lut = np.full(LABEL_VALUES, INVALID, dtype=np.int64)
        for raw, train in table.id_to_train.items():
            lut[raw] = train
    if lut[IGNORE_INDEX] == INVALID:  # 255 is "ignore" unless the table gives it a class
        lut[IGNORE_INDEX] = IGNORE_INDEX
    lut[lut == IGNORE_INDEX] = unlabelled
    return lut


def pair_confusion(pred_path: Path, gt_path: Path, tables: IdTables) -> np.ndarray:
    """The (K+1, K+1) int64 counts of one pair; ValueError naming both files on any problem.

    Pixels of ignored ground truth are not counted; every id of both files must be valid (also
    under ignored ground truth). The ground truth is checked first, then the prediction; an error
    names the first invalid id in raster order.
    """
    pred = read_label_png(pred_path, role="prediction")
    target = read_label_png(gt_path, role="ground truth")
    if pred.shape != target.shape:
        raise DatasetError(
            f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth "
            f"{gt_path} is {target.shape[1]}x{target.shape[0]} (width x height)"
        )
    gt_raw, pred_raw = target.dtype == np.uint8, pred.dtype == np.uint8
    target8, gt_bad = (target, None) if gt_raw else _mapped(target, tables.gt_lut)
    pred8, pred_bad = (pred, None) if pred_raw else _mapped(pred, tables.pred_lut)
    hist = pair_histogram(target8, pred8)  # (256, 256): ground-truth value × prediction value
    rows, cols = np.flatnonzero(hist.any(axis=1)), np.flatnonzero(hist.any(axis=0))
    if gt_raw:
        gt_bad = _first_invalid(rows, target, tables.gt_lut)
    if pred_raw:
        pred_bad = _first_invalid(cols, pred, tables.pred_lut)
    for role, value, path, other, hint in (
        ("ground truth", gt_bad, gt_path, pred_path, tables.gt_hint),
        ("prediction", pred_bad, pred_path, gt_path, tables.pred_hint),
    ):
        if value is not None:
            raise DatasetError(
                f"{role} {path} (paired with {other}) holds id {value}, which is not valid here: "
                f"{hint}"
            )
    gt_onehot = tables.gt_onehot if gt_raw else tables.gt_identity
    pred_onehot = tables.pred_onehot if pred_raw else tables.pred_identity
    return gt_onehot[rows].T @ hist[np.ix_(rows, cols)] @ pred_onehot[cols]


def _mapped(ids: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, int | None]:
    """``lut[ids]`` as uint8 (invalid pixels → 0) and the first invalid id in raster order."""
    bad = (ids < 0) | (ids >= lut.size)
    bad[~bad] = lut[ids[~bad]] < 0
    first = int(ids[bad][0]) if bad.any() else None
    mapped = np.zeros(ids.shape, dtype=np.uint8)
    mapped[~bad] = lut[ids[~bad]]
    return mapped, first


def _first_invalid(present: np.ndarray, ids: np.ndarray, lut: np.ndarray) -> int | None:
    """The first invalid id of 8-bit ``ids`` in raster order, given the values ``present``."""
    invalid = lut[:BYTE_VALUES] < 0
    if not invalid[present].any():
        return None
    return int(ids[invalid[ids]][0])
