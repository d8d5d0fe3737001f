"""Score a folder of prediction PNGs against a folder of ground-truth PNGs (``spcl evaluate``).

Files are matched by name, understanding Cityscapes naming: the image ``X_leftImg8bit.png`` has the
ground truth ``X_gtFine_labelIds.png`` / ``X_gtFine_labelTrainIds.png`` (``gtCoarse`` too), and its
prediction may be called ``X.png`` or ``X_leftImg8bit.png``. Both folders are searched recursively
(Cityscapes keeps one sub-folder per city). Other folders use the plain file stem.

Label spaces. ``classes`` picks the evaluation classes: Cityscapes' 19, or SYNTHIA's 16 or 13
(the paper's Tables 1–2). Ground truth is always in Cityscapes ids: ``labelIds`` (raw ids, mapped
with the official table) or ``trainIds`` (Cityscapes' 19 train ids); classes outside the evaluated
subset become ignored pixels. Predictions in ``labelIds`` are mapped the same way; predictions in
``trainIds`` are class indices of the evaluated class list (0..K-1, as a K-class model writes them).

A predicted pixel that names no evaluated class (255 in a train-id map, an ignored or unknown label
id, or a class outside the subset) on a counted ground-truth pixel is a miss: a false negative of
the ground-truth class, a false positive of none, exactly as cityscapesscripts' pixel-level
evaluation counts predictions of ignored ids. The confusion matrix therefore gets one extra
"unlabelled" column while counting; the returned scores hold the K×K part and the report the
per-class counts of that column (``unlabelled_predictions``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from spcl.base import IGNORE_INDEX, DatasetError, MissingFileError
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.evaluation.metrics import ConfusionMatrix, SegmentationScores, scores_from_confusion

__all__ = [
    "CLASS_LISTS",
    "IdFormat",
    "OnError",
    "evaluate_folders",
    "match_files",
    "read_id_map",
    "scores_without_unlabelled",
]

IdFormat = Literal["trainIds", "labelIds"]
OnError = Literal["fail", "skip"]

CLASS_LISTS: dict[int, tuple[str, ...]] = {  # ``classes=`` → evaluated class names, in id order
    CITYSCAPES.num_classes: CITYSCAPES.names,
    len(SYNTHIA_16_NAMES): SYNTHIA_16_NAMES,
    len(SYNTHIA_13_NAMES): SYNTHIA_13_NAMES,
}
FORMATS: tuple[str, ...] = ("trainIds", "labelIds")
ON_ERROR: tuple[str, ...] = ("fail", "skip")
PNG = ".png"
IMAGE_TAG = "_leftImg8bit"  # Cityscapes image suffix, also accepted on prediction files
GT_TAGS = ("_gtFine_", "_gtCoarse_")  # a file with one of these marks a Cityscapes-style GT folder
GT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "labelIds": ("_gtFine_labelIds", "_gtCoarse_labelIds"),
    "trainIds": ("_gtFine_labelTrainIds", "_gtCoarse_labelTrainIds"),
}
UNLABELLED = "<unlabelled>"  # name of the extra confusion column while counting
SHOWN_NAMES = 5  # how many file names an error message lists


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    pred_format: IdFormat = "trainIds",
    gt_format: IdFormat = "labelIds",
    classes: int = CITYSCAPES.num_classes,
    on_error: OnError = "fail",
    progress: bool = True,
) -> tuple[SegmentationScores, dict[str, Any]]:
    """Per-class IoU/accuracy and mIoU of the prediction PNGs in ``pred_dir``.

    Args:
        pred_dir: folder of single-channel prediction PNGs (searched recursively).
        gt_dir: folder of single-channel ground-truth PNGs, e.g. Cityscapes ``gtFine/val``.
        pred_format: ``"trainIds"`` (indices into the evaluated classes, 255 = no prediction) or
            ``"labelIds"`` (Cityscapes label ids).
        gt_format: ``"labelIds"`` (Cityscapes label ids) or ``"trainIds"`` (Cityscapes' 19 train
            ids, 255 = ignore).
        classes: 19 (Cityscapes), 16 or 13 (SYNTHIA subsets).
        on_error: ``"fail"`` raises on the first bad pair and on ground truth without a
            prediction; ``"skip"`` leaves them out and lists them in the report.
        progress: show a tqdm bar.

    Returns:
        ``(scores, report)``. ``report`` is JSON-ready: the folders and formats, ``num_images``,
        ``unmatched_predictions`` (no ground truth; never scored), ``missing_predictions``
        (ground truth without prediction), ``skipped`` ([{"prediction", "ground_truth", "error"}])
        and ``unlabelled_predictions`` ({class: pixels of that class predicted as nothing}).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: bad arguments, no matching pair, two files with the same key, and with
            ``on_error="fail"``: a missing prediction, an unreadable file, sizes that differ or
            ids out of range (the message names both files).
    """
    names = _check_arguments(pred_format, gt_format, classes, on_error)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs, unmatched, missing = match_files(pred_dir, gt_dir, gt_format)
    if missing and on_error == "fail":
        raise DatasetError(
            f"{len(missing)} ground-truth file(s) in {gt_dir} have no prediction in {pred_dir}, "
            f"e.g. {', '.join(missing[:SHOWN_NAMES])}; pass on_error='skip' to score the rest"
        )
    k = len(names)
    pred_lut, gt_lut = _pred_lut(pred_format, names), _gt_lut(gt_format, names)
    confusion = ConfusionMatrix(k + 1)  # column k: predictions that name no evaluated class
    skipped: list[dict[str, str]] = []
    for pred_path, gt_path in tqdm(pairs, desc="evaluate", unit="img", disable=not progress):
        try:
            pred, target = _load_pair(pred_path, gt_path, pred_lut, gt_lut, pred_format)
        except ValueError as exc:
            if on_error == "fail":
                raise
            skipped.append(
                {"prediction": str(pred_path), "ground_truth": str(gt_path), "error": str(exc)}
            )
            continue
        confusion.update(torch.from_numpy(pred), torch.from_numpy(target))
    if len(skipped) == len(pairs):
        raise DatasetError(
            f"every one of the {len(pairs)} pairs failed, e.g. {skipped[0]['error']}"
        )
    scores = scores_without_unlabelled(confusion.matrix, names)
    report = {
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "pred_format": pred_format,
        "gt_format": gt_format,
        "classes": k,
        "num_images": len(pairs) - len(skipped),
        "unmatched_predictions": unmatched,
        "missing_predictions": missing,
        "skipped": skipped,
        "unlabelled_predictions": dict(zip(names, confusion.matrix[:k, k].tolist(), strict=True)),
    }
    return scores, report


def _check_arguments(
    pred_format: str, gt_format: str, classes: int, on_error: str
) -> tuple[str, ...]:
    """The evaluated class names; ValueError naming a bad argument."""
    for name, value, valid in (
        ("pred_format", pred_format, FORMATS),
        ("gt_format", gt_format, FORMATS),
        ("on_error", on_error, ON_ERROR),
    ):
        if value not in valid:
            raise DatasetError(f"{name} must be one of {valid}, got {value!r}")
    if classes not in CLASS_LISTS:
        raise DatasetError(f"classes must be one of {sorted(CLASS_LISTS)}, got {classes!r}")
    return CLASS_LISTS[classes]


def scores_without_unlabelled(
    matrix: torch.Tensor | np.ndarray, class_names: Sequence[str]
) -> SegmentationScores:
    """Scores of a (K+1)×(K+1) matrix whose last column counts predictions of no class.

    The last row must be empty (ground truth is always a class or ignored). Those predictions lower
    the recall and IoU of the ground-truth class and are nobody's false positive.

    Shape:
        - matrix: (K+1, K+1) with K = ``len(class_names)``.
    """
    full = scores_from_confusion(matrix, (*class_names, UNLABELLED))
    k = len(class_names)
    if full.confusion[k].any():
        raise DatasetError("the unlabelled row of the confusion matrix must be empty")
    iou, acc = full.iou[:k], full.acc[:k]
    return SegmentationScores(
        class_names=tuple(class_names),
        confusion=full.confusion[:k, :k],
        iou=iou,
        acc=acc,
        miou=_nan_mean(iou),
        macc=_nan_mean(acc),
        pixel_acc=full.pixel_acc,
        absent_classes=tuple(n for n in full.absent_classes if n != UNLABELLED),
    )


def _nan_mean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


# ---- matching files ----------------------------------------------------------------------------


def match_files(
    pred_dir: Path, gt_dir: Path, gt_format: IdFormat
) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """Pair prediction and ground-truth PNGs by key.

    Returns:
        ``(pairs, unmatched_predictions, missing_predictions)``: (prediction, ground truth) paths
        sorted by key; prediction files without ground truth; ground-truth files without a
        prediction (both as path strings).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no pair matches, or two files of one folder have the same key.
    """
    for role, folder in (("prediction", pred_dir), ("ground-truth", gt_dir)):
        if not folder.is_dir():
            raise MissingFileError(f"{role} folder not found: {folder}")
    preds = _keyed(sorted(pred_dir.rglob(f"*{PNG}")), _pred_key, pred_dir)
    gts = _keyed(_gt_files(gt_dir, gt_format), _gt_key, gt_dir)
    common = sorted(preds.keys() & gts.keys())
    unmatched = [str(preds[k]) for k in sorted(preds.keys() - gts.keys())]
    missing = [str(gts[k]) for k in sorted(gts.keys() - preds.keys())]
    if not common:
        raise DatasetError(
            f"no prediction in {pred_dir} ({len(preds)} PNGs) matches a ground-truth file in "
            f"{gt_dir} ({len(gts)} {gt_format} PNGs); predictions are matched as X.png or "
            f"X{IMAGE_TAG}.png to X.png or X_gtFine_labelIds.png / X_gtFine_labelTrainIds.png; "
            f"e.g. predictions {[p.name for p in list(preds.values())[:3]]}, "
            f"ground truth {[p.name for p in list(gts.values())[:3]]}"
        )
    return [(preds[k], gts[k]) for k in common], unmatched, missing


def _gt_files(gt_dir: Path, gt_format: IdFormat) -> list[Path]:
    """The ground-truth PNGs of ``gt_format`` (Cityscapes layout) or all PNGs (plain layout)."""
    files = sorted(gt_dir.rglob(f"*{PNG}"))
    if not any(tag in p.name for p in files for tag in GT_TAGS):
        return files
    chosen = [p for p in files if p.stem.endswith(GT_SUFFIXES[gt_format])]
    if not chosen:
        other = "trainIds" if gt_format == "labelIds" else "labelIds"
        raise DatasetError(
            f"{gt_dir} is a Cityscapes ground-truth folder without any "
            f"*{GT_SUFFIXES[gt_format][0]}.png; pass gt_format={other!r} (or create train-id "
            f"labels with cityscapesscripts' csCreateTrainIdLabelImgs)"
        )
    return chosen


def _pred_key(path: Path) -> str:
    stem = path.stem
    return stem[: -len(IMAGE_TAG)] if stem.endswith(IMAGE_TAG) else stem


def _gt_key(path: Path) -> str:
    stem = path.stem
    for suffix in (*GT_SUFFIXES["labelIds"], *GT_SUFFIXES["trainIds"]):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _keyed(files: list[Path], key_of: Callable[[Path], str], folder: Path) -> dict[str, Path]:
    """Key → file; ValueError naming both files when two share a key."""
    keyed: dict[str, Path] = {}
    for path in files:
        key = key_of(path)
        if key in keyed:
            raise DatasetError(
                f"{keyed[key]} and {path} in {folder} both stand for image {key!r}; "
                f"keep one of them"
            )
        keyed[key] = path
    return keyed


# ---- reading and mapping ids -------------------------------------------------------------------


def read_id_map(path: Path) -> np.ndarray:
    """A single-channel id PNG (8- or 16-bit, grey or palette indices) as an integer (H, W) array.

    Raises:
        ValueError: unreadable file, or a colour image (the message names the file).
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode, ids = image.mode, np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if ids.ndim != 2:
        raise DatasetError(
            f"{path} is a {mode} image with {ids.shape[-1]} channels; expected a single-channel "
            f"PNG of class ids (colour masks cannot be scored)"
        )
    return ids.astype(np.int64)


def _space_lut(names: Sequence[str]) -> np.ndarray:
    """Cityscapes train id (0..255) → index in ``names``; ignore for classes not in ``names``."""
    lut = np.full(IGNORE_INDEX + 1, IGNORE_INDEX, dtype=np.int64)
    for train_id, name in enumerate(CITYSCAPES.names):
        if name in names:
            lut[train_id] = names.index(name)
    return lut


def _gt_lut(gt_format: IdFormat, names: Sequence[str]) -> np.ndarray:
    """Ground-truth file value → evaluated class index or ignore (-1: an invalid value)."""
    space = _space_lut(names)
    if gt_format == "labelIds":
        return space[CITYSCAPES.id_lut().astype(np.int64)]
    lut = np.full(IGNORE_INDEX + 1, -1, dtype=np.int64)  # Cityscapes train ids: 0..18 or 255
    lut[: CITYSCAPES.num_classes] = space[: CITYSCAPES.num_classes]
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def _pred_lut(pred_format: IdFormat, names: Sequence[str]) -> np.ndarray:
    """Prediction file value → evaluated class index, K for "no class" (-1: an invalid value)."""
    k = len(names)
    if pred_format == "labelIds":
        space = _space_lut(names)[CITYSCAPES.id_lut().astype(np.int64)]
        return np.where(space == IGNORE_INDEX, k, space)
    lut = np.full(IGNORE_INDEX + 1, -1, dtype=np.int64)
    lut[:k] = np.arange(k)
    lut[IGNORE_INDEX] = k
    return lut


def _load_pair(
    pred_path: Path, gt_path: Path, pred_lut: np.ndarray, gt_lut: np.ndarray, pred_format: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read and map one pair; ValueError naming both files on any problem."""
    pred, target = read_id_map(pred_path), read_id_map(gt_path)
    if pred.shape != target.shape:
        raise DatasetError(
            f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth "
            f"{gt_path} is {target.shape[1]}x{target.shape[0]} (width x height)"
        )
    for role, ids, lut, path in (
        ("ground truth", target, gt_lut, gt_path),
        ("prediction", pred, pred_lut, pred_path),
    ):
        bad = (ids < 0) | (ids >= lut.size)
        bad[~bad] = lut[ids[~bad]] < 0
        if bad.any():
            hint = (
                f"train ids must be 0..{int(pred_lut.max()) - 1} or {IGNORE_INDEX}"
                if role == "prediction" and pred_format == "trainIds"
                else "check the format and classes arguments"
            )
            raise DatasetError(
                f"{role} {path} (paired with {pred_path if role != 'prediction' else gt_path}) "
                f"holds id {int(ids[bad][0])}, which is not valid here: {hint}"
            )
    return pred_lut[pred], gt_lut[target]
