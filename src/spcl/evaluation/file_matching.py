"""Which prediction PNG goes with which ground-truth PNG (folder evaluation, ``spcl evaluate``).

Both folders are searched recursively. Cityscapes naming is understood: the image
``X_leftImg8bit.png`` has the ground truth ``X_gtFine_labelIds.png`` /
``X_gtFine_labelTrainIds.png`` (``gtCoarse`` too), and its prediction may be called ``X.png`` or
``X_leftImg8bit.png``; other folders pair files by their stem. ``spcl predict``'s output folder is
read from its ``trainIds/`` (or ``labelIds/``) sub-folder (:func:`predictions_in`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from spcl.base import DatasetError, MissingFileError

__all__ = ["GT_SUFFIXES", "IMAGE_TAG", "IdFormat", "match_files", "predictions_in"]

logger = logging.getLogger(__name__)

IdFormat = Literal["trainIds", "labelIds"]

PNG = ".png"
IMAGE_TAG = "_leftImg8bit"  # Cityscapes image suffix, also accepted on prediction files
GT_TAGS = ("_gtFine_", "_gtCoarse_")  # a file with one of these marks a Cityscapes-style GT folder
GT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "labelIds": ("_gtFine_labelIds", "_gtCoarse_labelIds"),
    "trainIds": ("_gtFine_labelTrainIds", "_gtCoarse_labelTrainIds"),
}
PREDICT_PICTURES = ("color", "overlay")  # what spcl predict writes beside trainIds/ (spcl.predict)
ID_FOLDERS = ("trainIds", "labelIds")  # its id maps, one per --pred-format


def predictions_in(pred_dir: Path, pred_format: str) -> Path:
    """``pred_dir``, or its ``trainIds/`` (``labelIds/``) when it is ``spcl predict``'s ``--out``.

    Its colour pictures would otherwise be matched too (``color/x.png`` and ``overlay/x.png``
    both standing for image ``x``).
    """
    own = pred_dir / pred_format
    pictures = any((pred_dir / kind).is_dir() for kind in PREDICT_PICTURES)
    id_maps = [kind for kind in ID_FOLDERS if (pred_dir / kind).is_dir()]
    if not (pictures and id_maps):
        return pred_dir
    if not own.is_dir():
        raise DatasetError(
            f"{pred_dir} is the output of spcl predict but has no {pred_format}/ (it holds "
            f"{', '.join(f'{k}/' for k in id_maps)}): pass --pred-format {id_maps[0]}"
        )
    logger.info("%s is the output of spcl predict: scoring %s", pred_dir, own)
    return own


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
            f"*{GT_SUFFIXES[gt_format][0]}.png; pass --gt-format {other} (or create train-id "
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
