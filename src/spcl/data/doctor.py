"""Dataset checks behind ``spcl data check NAME ROOT`` and ``spcl data stats NAME ROOT``.

``check_dataset`` lists a dataset with its reader (:mod:`spcl.data.registry`), then reads every
file once, in worker processes: images fully decoded (a truncated file is an error, never
patched up), labels decoded and mapped through the class table. It reports, per file, images
without a label and labels without an image, unreadable files, label/image size disagreements and
label values outside the table, plus image sizes and a class-frequency table (pixels and images
per class), and writes the class index for class-balanced sampling atomically. Problems are
collected, not raised: a known defect such as GTA5's missing labels is a warning (the dataset skips
those images), anything that would stop training is an error and makes ``report.ok`` false.
``dataset_stats`` is the same pass without decoding images (headers only) or writing the index.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from spcl.base import DatasetError
from spcl.data.label_decoder import LabelValueError
from spcl.data.layout import DatasetFiles
from spcl.data.lists import read_image
from spcl.data.readers.synscapes import same_aspect
from spcl.data.registry import dataset_options, scan_dataset
from spcl.data.sampling import ClassIndex, class_pixel_counts, default_class_index_path
from spcl.progress import progress_bar

__all__ = ["DatasetReport", "Problem", "check_dataset", "dataset_stats"]

MAX_LISTED = 10  # files listed per kind of problem in DatasetReport.format()
MAX_WORKERS = 8  # default worker processes (capped by the CPU count)
PERCENT = 100.0
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding: ``code`` (e.g. ``size_mismatch``), the file, what is wrong, how bad."""

    code: str
    path: str
    detail: str
    severity: Severity = "error"


@dataclass
class DatasetReport:
    """What a check found: counts, image sizes, class frequencies and problems.

    Attributes:
        class_names: the table's classes in train-id order.
        num_images: images found; num_labelled: those paired with a label.
        pixel_counts / image_counts: (K,) pixels of each class / labels containing it.
        ignored_pixels: label pixels mapped to the ignore index.
        image_sizes: ``"WxH"`` → number of images.
        class_index_path: where the class index was written (None: not written).
        notes: remarks that are not problems (e.g. the index could not be written).
    """

    kind: str
    root: Path
    split: str
    class_names: tuple[str, ...]
    num_images: int
    num_labelled: int
    pixel_counts: np.ndarray
    image_counts: np.ndarray
    ignored_pixels: int
    image_sizes: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    class_index_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No problem that would stop training or evaluation (warnings allowed)."""
        return not self.errors

    def class_table_lines(self) -> list[str]:
        """The class-frequency table: name, pixels, share of labelled pixels, images."""
        total = int(self.pixel_counts.sum()) + self.ignored_pixels
        width = max([len(n) for n in self.class_names] + [len("(ignore)")])
        lines = [f"{'class':<{width}}  {'pixels':>15}  {'share':>7}  {'images':>8}"]
        rows = [
            (n, int(p), int(c))
            for n, p, c in zip(self.class_names, self.pixel_counts, self.image_counts, strict=True)
        ]
        for name, pixels, images in [*rows, ("(ignore)", self.ignored_pixels, -1)]:
            share = PERCENT * pixels / total if total else 0.0
            shown = f"{images:>8,}" if images >= 0 else ""
            lines.append(f"{name:<{width}}  {pixels:>15,}  {share:>6.2f}%  {shown}".rstrip())
        return lines

    def format(self, max_listed: int = MAX_LISTED) -> str:
        """A terminal report: summary, sizes, class table, problems grouped by kind."""
        lines = [
            f"{self.kind} {self.split!r} at {self.root}: {self.num_images:,} images, "
            f"{self.num_labelled:,} with labels",
            "image sizes: " + ", ".join(f"{s} ×{n:,}" for s, n in sorted(self.image_sizes.items())),
        ]
        if self.num_labelled:
            lines += ["", *self.class_table_lines()]
        by_code: dict[str, list[Problem]] = {}
        for problem in self.problems:
            by_code.setdefault(problem.code, []).append(problem)
        lines += ["", f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        for code, found in by_code.items():
            lines.append(f"  [{found[0].severity}] {code} ×{len(found)}")
            lines += [f"      {p.path}: {p.detail}" for p in found[:max_listed]]
            if len(found) > max_listed:
                lines.append(f"      ... and {len(found) - max_listed} more")
        if self.class_index_path is not None:
            lines.append(f"class index written to {self.class_index_path}")
        lines += self.notes
        lines.append("OK" if self.ok else "NOT OK: fix the errors above before training")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for ``--json`` output or run records)."""
        return {
            "kind": self.kind,
            "root": str(self.root),
            "split": self.split,
            "ok": self.ok,
            "num_images": self.num_images,
            "num_labelled": self.num_labelled,
            "classes": {
                name: {"pixels": int(p), "images": int(c)}
                for name, p, c in zip(
                    self.class_names, self.pixel_counts, self.image_counts, strict=True
                )
            },
            "ignored_pixels": self.ignored_pixels,
            "image_sizes": self.image_sizes,
            "problems": [vars(p) for p in self.problems],
            "class_index_path": str(self.class_index_path) if self.class_index_path else None,
        }


@dataclass
class _ItemResult:
    problems: list[Problem]
    size: str | None  # image "WxH"
    counts: np.ndarray | None = None  # (K,) pixels per class
    ignored: int = 0


def _image_hw(path: Path, decode: bool) -> tuple[int, int]:
    """(H, W) of an image: fully decoded (raises on truncation) or from its header."""
    if decode:
        return read_image(path).shape[:2]
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


class _ItemChecks(torch.utils.data.Dataset):
    """Item i → the problems and class counts of image i (and its label): the dataset's items,
    then the images skipped for want of a label (image checks only)."""

    def __init__(self, files: DatasetFiles, decode_images: bool) -> None:
        self.files, self.decode_images = files, decode_images
        self.images = files.images + files.unlabelled

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> _ItemResult:
        files, image_path = self.files, self.images[index]
        result = _ItemResult([], None)
        hw = None
        try:
            hw = _image_hw(image_path, self.decode_images)
            result.size = f"{hw[1]}x{hw[0]}"
        except ValueError as exc:
            result.problems.append(Problem("unreadable_image", str(image_path), str(exc)))
        if files.labels is None or index >= len(files.labels):
            return result
        label_path = files.labels[index]
        try:
            raw = files.decoder.read_raw(label_path)
            train = files.decoder.to_train(raw, label_path)
        except LabelValueError as exc:
            result.problems.append(Problem("invalid_values", str(label_path), str(exc)))
            return result
        except ValueError as exc:
            result.problems.append(Problem("unreadable_label", str(label_path), str(exc)))
            return result
        label_hw = raw.shape[:2]
        rescaled = files.labels_rescaled and hw is not None and same_aspect(hw, label_hw)
        if hw is not None and label_hw != hw and not rescaled:
            detail = f"label is {label_hw[1]}x{label_hw[0]} but image {image_path} is {result.size}"
            result.problems.append(Problem("size_mismatch", str(label_path), detail))
        result.counts = class_pixel_counts(train, files.table.num_classes)
        result.ignored = int(train.size - result.counts.sum())
        return result


def _named(problem: Problem) -> str:
    """The problem's text, with its file's path unless the text already names it."""
    return problem.detail if problem.path in problem.detail else f"{problem.path}: {problem.detail}"


def _identity(item: _ItemResult) -> _ItemResult:
    return item


def _listing_problems(files: DatasetFiles, missing: Severity) -> list[Problem]:
    found = [
        Problem("missing_label", str(p), "image has no label", missing) for p in files.unlabelled
    ]
    found += [
        Problem("orphan_label", str(p), "label has no image", "warning") for p in files.orphans
    ]
    return found


def _inspect(
    kind: str,
    root: str | Path,
    split: str | None,
    *,
    decode_images: bool,
    with_labels: bool,
    progress: bool,
    num_workers: int | None,
    options: dict[str, Any],
) -> tuple[DatasetReport, list[_ItemResult], DatasetFiles]:
    policy = options.pop("missing_labels", dataset_options(kind).get("missing_labels", "error"))
    files = scan_dataset(
        kind, root, split, with_labels=with_labels, warn=False, missing_labels="skip", **options
    )
    workers = min(MAX_WORKERS, os.cpu_count() or 1) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _ItemChecks(files, decode_images),
        batch_size=None,
        num_workers=workers,
        collate_fn=_identity,
    )
    num_classes = files.table.num_classes
    report = DatasetReport(
        kind,
        files.root,
        files.split,
        files.table.names,
        num_images=len(files.images) + len(files.unlabelled),
        num_labelled=len(files.images) if files.labels is not None else 0,
        pixel_counts=np.zeros(num_classes, np.int64),
        image_counts=np.zeros(num_classes, np.int64),
        ignored_pixels=0,
        image_sizes={},
        problems=_listing_problems(files, "warning" if policy == "skip" else "error"),
    )
    sizes: Counter[str] = Counter()
    items: list[_ItemResult] = []
    bar = progress_bar(loader, desc=f"{kind} {files.split}", disable=not progress, unit="img")
    for result in bar:
        report.problems += result.problems
        sizes.update([result.size] if result.size else [])
        if len(items) < len(files.images):  # the dataset's items come first
            items.append(result)
        if result.counts is not None:
            report.pixel_counts += result.counts
            report.image_counts += result.counts > 0
            report.ignored_pixels += result.ignored
    report.image_sizes = dict(sizes)
    return report, items, files


def check_dataset(
    kind: str,
    root: str | Path,
    split: str | None = None,
    *,
    with_labels: bool = True,
    class_index_out: str | Path | None = None,
    write_class_index: bool = True,
    progress: bool = True,
    num_workers: int | None = None,
    **options: Any,
) -> DatasetReport:
    """Read every file of a dataset once and report what is wrong with it.

    Args:
        kind: ``gta5``, ``synthia``, ``synscapes``, ``cityscapes`` or ``folder``.
        root: dataset root; split: None = ``train``.
        with_labels: check labels too (False: images only, e.g. an unlabelled target split).
        class_index_out: where to write the class index (default: beside the data, see
            :func:`~spcl.data.sampling.default_class_index_path`).
        write_class_index: write it at all (labelled datasets only). Items with an error get
            all-zero rows, so class-balanced sampling never draws them, and are listed in the
            index with their errors: a run that uses it refuses them, or names each one it
            leaves out (``data.on_error: skip``).
        progress: show a progress bar.
        num_workers: reader processes (default: up to 8, capped by the CPU count).
        **options: the reader's options (e.g. ``classes=16``, ``class_file=...``).

    Raises:
        KeyError: unknown kind. FileNotFoundError / ValueError: the layout cannot be listed
        (missing root, split or folder; no images; unknown option).
    """
    report, items, files = _inspect(
        kind,
        root,
        split,
        decode_images=True,
        with_labels=with_labels,
        progress=progress,
        num_workers=num_workers,
        options=dict(options),
    )
    if write_class_index and files.labels is not None:
        num_classes = files.table.num_classes
        path = default_class_index_path(files.root, kind, files.split, num_classes)
        path = Path(class_index_out) if class_index_out is not None else path
        empty = np.zeros(num_classes, np.int64)
        counts = np.stack([empty if r.problems else r.counts for r in items])
        excluded = {  # a run using the index refuses or names these (data.on_error)
            name: "; ".join(_named(p) for p in r.problems)
            for name, r in zip(files.names, items, strict=True)
            if r.problems
        }
        try:
            ClassIndex(list(files.names), counts, excluded).save(path)
            report.class_index_path = path
        except OSError as exc:
            report.notes.append(f"class index not written ({exc}); pass class_index_out")
    return report


def dataset_stats(
    kind: str,
    root: str | Path,
    split: str | None = None,
    *,
    with_labels: bool = True,
    progress: bool = True,
    num_workers: int | None = None,
    **options: Any,
) -> DatasetReport:
    """Class frequencies and sizes quickly: labels decoded, images read from their headers only.

    Same arguments and errors as :func:`check_dataset`; writes nothing.
    """
    report, _, _ = _inspect(
        kind,
        root,
        split,
        decode_images=False,
        with_labels=with_labels,
        progress=progress,
        num_workers=num_workers,
        options=dict(options),
    )
    return report
