"""Score a folder of prediction PNGs against a folder of ground-truth PNGs (``spcl evaluate``).

Files are matched by name (:mod:`spcl.evaluation.file_matching`), understanding Cityscapes naming:
the image ``X_leftImg8bit.png`` has the ground truth ``X_gtFine_labelIds.png`` /
``X_gtFine_labelTrainIds.png`` (``gtCoarse`` too), and its prediction may be called ``X.png`` or
``X_leftImg8bit.png``. Both folders are searched recursively (Cityscapes keeps one sub-folder per
city). Other folders use the plain file stem.

Label spaces. ``classes`` picks the evaluation classes: Cityscapes' 19, or SYNTHIA's 16 or 13
(the paper's Tables 1–2), or a dataset's own class table (a :class:`~spcl.data.labels.ClassTable`,
e.g. read from a folder dataset's ``classes.yaml``). With 19/16/13 the ground truth is in
Cityscapes ids: ``labelIds`` (raw ids, mapped with the official table) or ``trainIds``
(Cityscapes' 19 train ids); classes outside the evaluated subset become ignored pixels. Predictions
in ``labelIds`` are mapped the same way; predictions in ``trainIds`` are class indices of the
evaluated class list (0..K-1, as a K-class model writes them). With an own table both sides are in
that table's values: ``trainIds`` its class indices (255 = ignore / no prediction), ``labelIds``
the raw label values its ``id_to_train`` maps (as the folder reader reads them). A value outside
the label space (a Cityscapes label id above 33 other than 255, a train id of no class) is an error
naming the file, the value and ``--classes`` (:mod:`spcl.evaluation.pair_counts`).

A predicted pixel that names no evaluated class (255 in a train-id map, an ignored label id, or a
class outside the subset) on a counted ground-truth pixel is a miss: a false negative of
the ground-truth class, a false positive of none, exactly as cityscapesscripts' pixel-level
evaluation counts predictions of ignored ids. The confusion matrix therefore gets one extra
"unlabelled" column while counting; the returned scores hold the K×K part and the report the
per-class counts of that column (``unlabelled_predictions``).

``spcl predict``'s output folder (``--out``: ``color/``, ``overlay/``, ``trainIds/``, ...) given as
``pred_dir`` is read from its sub-folder of ``pred_format`` (``trainIds/`` or ``labelIds/``); the
report's ``pred_dir`` names the folder scored.

Unmatched files, both ways. Ground truth without a prediction is an error (``on_error="skip"``
scores the rest); a prediction without ground truth is never scored: a warning names it (and the
count), ``strict=True`` makes it an error. The report lists every file left out and why.

Speed: pairs are counted in threads (OpenCV decodes and counts without the GIL), one joint
histogram per pair (:mod:`spcl.evaluation.pair_counts`); nothing here imports torch. Every pair
allocates a few 2-8 MB arrays, which glibc's malloc maps fresh from the kernel and returns on
every free, so each pair page-faults its buffers in again (~1,250 faults per 1024×2048 pair, and
the threads' faults queue on one lock). ``spcl evaluate`` therefore calls
:func:`retain_freed_memory` first: on 500 pairs that cut system time from 0.47 s to 0.10 s and
wall time by ~8% (``benchmarks/eval_speed.py``); a library caller may do the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from spcl.base import DatasetError
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES, ClassTable
from spcl.evaluation.file_matching import IdFormat, match_files, predictions_in
from spcl.evaluation.pair_counts import IdTables, id_tables, pair_confusion
from spcl.evaluation.scores import SegmentationScores, scores_from_confusion

__all__ = [
    "CLASS_LISTS",
    "IdFormat",
    "OnError",
    "evaluate_folders",
    "match_files",
    "predictions_in",
    "retain_freed_memory",
    "scores_without_unlabelled",
]

logger = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]

CLASS_LISTS: dict[int, tuple[str, ...]] = {  # ``classes=`` → evaluated class names, in id order
    CITYSCAPES.num_classes: CITYSCAPES.names,
    len(SYNTHIA_16_NAMES): SYNTHIA_16_NAMES,
    len(SYNTHIA_13_NAMES): SYNTHIA_13_NAMES,
}
FORMATS: tuple[str, ...] = ("trainIds", "labelIds")
ON_ERROR: tuple[str, ...] = ("fail", "skip")
UNLABELLED = "<unlabelled>"  # name of the extra confusion column while counting
SHOWN_NAMES = 5  # how many file names an error about missing predictions lists
LISTED_UNMATCHED = 50  # how many predictions without ground truth a warning or error lists
NO_GROUND_TRUTH, NO_PREDICTION, BAD_PAIR = "no_ground_truth", "no_prediction", "bad_pair"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap (glibc's largest allowed)
TRIM_THRESHOLD = 256 << 20  # free heap memory kept for reuse, up to this much


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    pred_format: IdFormat = "trainIds",
    gt_format: IdFormat = "labelIds",
    classes: int | ClassTable = CITYSCAPES.num_classes,
    on_error: OnError = "fail",
    strict: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[SegmentationScores, dict[str, Any]]:
    """Per-class IoU/accuracy and mIoU of the prediction PNGs in ``pred_dir``.

    Args:
        pred_dir: folder of single-channel prediction PNGs (searched recursively).
        gt_dir: folder of single-channel ground-truth PNGs, e.g. Cityscapes ``gtFine/val``.
        pred_format: ``"trainIds"`` (indices into the evaluated classes, 255 = no prediction) or
            ``"labelIds"`` (Cityscapes label ids).
        gt_format: ``"labelIds"`` (Cityscapes label ids) or ``"trainIds"`` (Cityscapes' 19 train
            ids, 255 = ignore).
        classes: 19 (Cityscapes), 16 or 13 (SYNTHIA subsets), or a dataset's own class table
            (the files are then in its ids, see the module docstring).
        on_error: ``"fail"`` raises on the first bad pair and on ground truth without a
            prediction; ``"skip"`` leaves them out and lists them in the report.
        strict: predictions without ground truth are an error instead of a warning.
        workers: threads counting pairs; None = the CPUs this process may use.
        progress: show a tqdm bar; None = when stderr is a terminal.

    Returns:
        ``(scores, report)``. ``report`` is JSON-ready: the folders and formats, ``num_images``
        (pairs scored), ``num_skipped`` and ``skipped`` (every file left out:
        [{"prediction", "ground_truth", "reason", "error"}], reason ``"no_ground_truth"``,
        ``"no_prediction"`` or ``"bad_pair"``, the absent side None), ``unmatched_predictions``
        (no ground truth), ``missing_predictions`` (ground truth without prediction) and
        ``unlabelled_predictions`` ({class: pixels of that class predicted as nothing}).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: bad arguments, no matching pair, two files with the same key, with
            ``strict`` a prediction without ground truth, and with ``on_error="fail"``: a missing
            prediction, an unreadable file, sizes that differ or ids out of range (the message
            names both files).
    """
    names = _check_arguments(pred_format, gt_format, classes, on_error)
    own = classes if isinstance(classes, ClassTable) else None
    pred_dir, gt_dir = predictions_in(Path(pred_dir), pred_format), Path(gt_dir)
    pairs, unmatched, missing = match_files(pred_dir, gt_dir, gt_format)
    if missing and on_error == "fail":
        raise DatasetError(
            f"{len(missing)} ground-truth file(s) in {gt_dir} have no prediction in {pred_dir}, "
            f"e.g. {', '.join(missing[:SHOWN_NAMES])}; pass --on-error skip to score the rest"
        )
    if unmatched:
        _unmatched_predictions(unmatched, pred_dir, gt_dir, strict)
    k = len(names)
    tables = id_tables(pred_format, gt_format, names, own)
    confusion = np.zeros((k + 1, k + 1), dtype=np.int64)  # column k: predictions of no class
    bad: list[dict[str, str | None]] = []
    with contextlib.closing(_counted(pairs, tables, workers, progress)) as counted:
        for (pred_path, gt_path), counts in counted:  # closing: a raise stops the threads now
            if isinstance(counts, ValueError):
                if on_error == "fail":
                    raise counts
                bad.append(_skip(pred_path, gt_path, BAD_PAIR, str(counts)))
                continue
            confusion += counts
    if len(bad) == len(pairs):
        raise DatasetError(f"every one of the {len(pairs)} pairs failed, e.g. {bad[0]['error']}")
    scores = scores_without_unlabelled(confusion, names)
    skipped = [
        *(_skip(None, m, NO_PREDICTION, f"no prediction in {pred_dir}") for m in missing),
        *(_skip(u, None, NO_GROUND_TRUTH, f"no ground truth in {gt_dir}") for u in unmatched),
        *bad,
    ]
    report = {
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "pred_format": pred_format,
        "gt_format": gt_format,
        "classes": k,
        "num_images": len(pairs) - len(bad),
        "num_skipped": len(skipped),
        "unmatched_predictions": unmatched,
        "missing_predictions": missing,
        "skipped": skipped,
        "unlabelled_predictions": dict(zip(names, confusion[:k, k].tolist(), strict=True)),
    }
    return scores, report


def _skip(
    prediction: str | Path | None, ground_truth: str | Path | None, reason: str, error: str
) -> dict[str, str | None]:
    """One entry of the report's ``skipped`` list."""
    return {
        "prediction": None if prediction is None else str(prediction),
        "ground_truth": None if ground_truth is None else str(ground_truth),
        "reason": reason,
        "error": error,
    }


def _unmatched_predictions(
    unmatched: list[str], pred_dir: Path, gt_dir: Path, strict: bool
) -> None:
    """Warn about (or, ``strict``, refuse) predictions without ground truth, naming them."""
    shown = [str(Path(u).relative_to(pred_dir)) for u in unmatched[:LISTED_UNMATCHED]]
    more = len(unmatched) - len(shown)
    listing = ", ".join(shown) + (f" and {more} more" if more else "")
    message = (
        f"{len(unmatched)} prediction file(s) in {pred_dir} have no ground truth in {gt_dir} "
        f"and are not scored: {listing}"
    )
    if strict:
        raise DatasetError(f"{message} (strict: remove them, or drop --strict to only warn)")
    logger.warning(message)


def _counted(
    pairs: list[tuple[Path, Path]], tables: IdTables, workers: int | None, progress: bool | None
) -> Iterator[tuple[tuple[Path, Path], np.ndarray | ValueError]]:
    """Each pair with its counts (or its error), in order, counted by ``workers`` threads."""

    def count(pair: tuple[Path, Path]) -> np.ndarray | ValueError:
        try:
            return pair_confusion(pair[0], pair[1], tables)
        except ValueError as exc:
            return exc

    threads = max(1, min(workers or _usable_cpus(), len(pairs)))
    show = sys.stderr.isatty() if progress is None else progress
    if show:
        from tqdm import tqdm  # imported only for a bar: its import costs ~0.15 s

        def bar(items: Iterator) -> Iterator:
            return iter(tqdm(items, total=len(pairs), desc="evaluate", unit="img"))
    else:

        def bar(items: Iterator) -> Iterator:
            return items

    if threads == 1:
        yield from zip(pairs, bar(map(count, pairs)), strict=True)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="evaluate")
    try:
        futures = [pool.submit(count, pair) for pair in pairs]
        yield from zip(pairs, bar(f.result() for f in futures), strict=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def retain_freed_memory() -> bool:
    """Let this process keep freed memory for reuse instead of unmapping it (glibc only).

    Sets glibc malloc's mmap threshold to 32 MB and its trim threshold to 256 MB, for the whole
    process: the image-sized buffers of one pair are reused by the next instead of being mapped and
    page-faulted again. Meant for a short-lived process that scores many files (``spcl
    evaluate``); the process then holds on to up to 256 MB it no longer uses. Returns whether
    the settings took effect (False on other C libraries, where nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _usable_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_arguments(
    pred_format: str, gt_format: str, classes: int | ClassTable, on_error: str
) -> tuple[str, ...]:
    """The evaluated class names; ValueError naming a bad argument."""
    for name, value, valid in (
        ("pred_format", pred_format, FORMATS),
        ("gt_format", gt_format, FORMATS),
        ("on_error", on_error, ON_ERROR),
    ):
        if value not in valid:
            raise DatasetError(f"{name} must be one of {valid}, got {value!r}")
    if isinstance(classes, ClassTable):
        return classes.names
    if classes not in CLASS_LISTS:
        raise DatasetError(f"classes must be one of {sorted(CLASS_LISTS)}, got {classes!r}")
    return CLASS_LISTS[classes]


def scores_without_unlabelled(matrix: Any, class_names: Sequence[str]) -> SegmentationScores:
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
