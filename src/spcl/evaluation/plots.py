"""Pictures of results: confusion matrix, per-class IoU bars, prediction panels.

Everything draws on a private Agg canvas (no pyplot, no global backend change, no display needed)
and is written as PNG atomically (:func:`save_figure`). The feature embeddings are in
:mod:`spcl.evaluation.embedding`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from spcl.base import IGNORE_INDEX, atomic_write_bytes
from spcl.evaluation.metrics import SegmentationScores

__all__ = [
    "DPI",
    "error_map",
    "plot_confusion",
    "plot_iou_bars",
    "plot_model_comparison",
    "plot_prediction_panels",
    "save_figure",
]

DPI = 110
PERCENT = 100.0
CELL_INCHES = 0.42  # confusion-matrix cell size
MIN_SIDE_INCHES = 6.0
ANNOTATE_MIN = 0.01  # confusion cells below 1% stay unlabelled
DARK_CELL = 0.5  # above this fraction the cell text is white
BAR_GROUP_WIDTH = 0.8  # share of a class slot taken by its group of bars
BAR_CLASS_INCHES = 0.55
PANEL_INCHES = 3.2  # width of one prediction panel
LEGEND_COLUMNS = 10
PANEL_COLUMNS = ("image", "ground truth", "prediction", "errors: red wrong, black ignored")
CORRECT_RGB = (225, 225, 225)
WRONG_RGB = (255, 0, 0)
IGNORED_RGB = (0, 0, 0)
NO_LABEL_GREY = 245  # background of the panels of an image without ground truth
NO_LABEL = "no label"
TITLE_INCHES = 0.35  # room for a panel's title
LEGEND_INCHES = 0.8  # room for the class legend under the panels
PALETTE_SIZE = 256


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_confusion(
    scores: SegmentationScores, path: str | Path, *, title: str | None = None
) -> Path:
    """Row-normalised confusion matrix (each ground-truth row sums to 100%), names on both axes.

    A row without ground-truth pixels stays empty. Cells of at least 1% show their percentage.
    """
    counts = scores.confusion.astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)  # (K, K)
    k = len(scores.class_names)
    side = max(MIN_SIDE_INCHES, CELL_INCHES * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, j in zip(*np.nonzero(share >= ANNOTATE_MIN), strict=True):
        colour = "white" if share[i, j] > DARK_CELL else "black"
        ax.text(
            j, i, f"{PERCENT * share[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour
        )
    ax.set_xticks(range(k), scores.class_names, rotation=90)
    ax.set_yticks(range(k), scores.class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title or f"confusion (% of each ground-truth row), mIoU {scores.miou:.1f}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_iou_bars(
    runs: Mapping[str, SegmentationScores], path: str | Path, *, title: str | None = None
) -> Path:
    """Per-class IoU of several runs as grouped bars; the legend gives each run's mIoU.

    Absent classes (no IoU) get no bar.

    Raises:
        ValueError: no run, or runs with different class lists (the run is named).
    """
    if not runs:
        raise ValueError("plot_iou_bars needs at least one run")
    first_name, first = next(iter(runs.items()))
    for name, scores in runs.items():
        if scores.class_names != first.class_names:
            raise ValueError(
                f"run {name!r} has classes {list(scores.class_names)}, but run {first_name!r} "
                f"has {list(first.class_names)}"
            )
    k, count = len(first.class_names), len(runs)
    width = BAR_GROUP_WIDTH / count
    fig = Figure(figsize=(max(MIN_SIDE_INCHES, BAR_CLASS_INCHES * k + 2.0), 4.8), dpi=DPI)
    ax = fig.add_subplot()
    centres = np.arange(k)
    for index, (name, scores) in enumerate(runs.items()):
        offsets = centres - BAR_GROUP_WIDTH / 2 + width * (index + 0.5)
        ax.bar(
            offsets,
            np.nan_to_num(scores.iou, nan=0.0),
            width,
            label=f"{name} (mIoU {scores.miou:.1f})",
        )
        for x in offsets[np.isnan(scores.iou)]:  # no IoU: say so rather than draw a zero
            ax.text(
                x, 1.0, "absent", rotation=90, fontsize=6, ha="center", va="bottom", color="grey"
            )
    ax.set_xticks(centres, first.class_names, rotation=60, ha="right")
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(0.0, PERCENT)
    ax.set_ylabel("IoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "per-class IoU")
    fig.tight_layout()
    return save_figure(fig, path)


def error_map(gt: np.ndarray, pred: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """RGB map of prediction errors: wrong pixels red, ignored ones black, correct ones light grey.

    Shape:
        - gt, pred: (H, W) → (H, W, 3) uint8.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} shapes differ")
    out = np.empty((*gt.shape, 3), dtype=np.uint8)
    out[...] = CORRECT_RGB
    out[gt != pred] = WRONG_RGB
    out[gt == ignore_index] = IGNORED_RGB
    return out


def _palette_table(palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """(256, 3) uint8 colours: the palette, black elsewhere (ignore included)."""
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table = np.zeros((PALETTE_SIZE, 3), dtype=np.uint8)
    table[: len(colours)] = colours
    return table


Cell = tuple[np.ndarray, str, str]  # (RGB panel, title, text drawn over it or "")


def plot_prediction_panels(
    rows: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray, str]],
    palette: Sequence[Sequence[int]] | np.ndarray,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Path:
    """One row per image: image, ground truth, prediction, error map.

    Args:
        rows: ``(image uint8 (H, W, 3), gt (H, W) or None, pred (H, W), name)`` per row; labels
            are train ids.
        palette: RGB colour per class id.
        path: destination PNG.
        class_names: when given, a legend of the classes shown.
        ignore_index: ground-truth value drawn black.

    Raises:
        ValueError: no rows, or a label whose size differs from its image (the row is named).
    """
    table = _palette_table(palette)
    grid, labels = [], []
    for image, gt, pred, name in rows:
        _check_sizes(image, {"ground truth": gt, "prediction": pred}, name)
        cells = [(image, name, ""), _label_cell(image, gt, table, PANEL_COLUMNS[1])]
        cells.append((table[pred], PANEL_COLUMNS[2], ""))
        if gt is None:
            cells.append((np.full_like(image, NO_LABEL_GREY), PANEL_COLUMNS[3], NO_LABEL))
        else:
            cells.append((error_map(gt, pred, ignore_index), PANEL_COLUMNS[3], ""))
        grid.append(cells)
        labels += [gt, pred]
    return _draw_grid(grid, path, table, _legend_classes(labels, class_names, ignore_index))


def plot_model_comparison(
    rows: Sequence[tuple[np.ndarray, np.ndarray | None, Mapping[str, np.ndarray], str]],
    palette: Sequence[Sequence[int]] | np.ndarray,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Path:
    """One row per image: image, ground truth, then each model's prediction side by side.

    Args:
        rows: ``(image uint8 (H, W, 3), gt (H, W) or None, {model name: pred (H, W)}, name)``.
        palette, path, class_names, ignore_index: as in :func:`plot_prediction_panels`.

    Raises:
        ValueError: no rows, or a label whose size differs from its image (the row is named).
    """
    table = _palette_table(palette)
    grid, labels = [], []
    for image, gt, preds, name in rows:
        _check_sizes(image, {"ground truth": gt, **preds}, name)
        cells = [(image, name, ""), _label_cell(image, gt, table, PANEL_COLUMNS[1])]
        cells += [(table[pred], model, "") for model, pred in preds.items()]
        grid.append(cells)
        labels += [gt, *preds.values()]
    return _draw_grid(grid, path, table, _legend_classes(labels, class_names, ignore_index))


def _check_sizes(image: np.ndarray, maps: Mapping[str, np.ndarray | None], name: str) -> None:
    for role, label in maps.items():
        if label is not None and label.shape != image.shape[:2]:
            raise ValueError(
                f"row {name!r}: {role} is {label.shape} but the image is {image.shape[:2]}"
            )


def _label_cell(image: np.ndarray, gt: np.ndarray | None, table: np.ndarray, title: str) -> Cell:
    if gt is None:
        return np.full_like(image, NO_LABEL_GREY), title, NO_LABEL
    return table[gt], title, ""


def _legend_classes(
    labels: list[np.ndarray | None], class_names: Sequence[str] | None, ignore_index: int
) -> list[tuple[int, str]]:
    """(class id, name) of every class shown, for the legend; none without names."""
    if not class_names:
        return []
    shown = {int(v) for label in labels if label is not None for v in np.unique(label)}
    return [(i, class_names[i]) for i in sorted(shown - {ignore_index}) if i < len(class_names)]


def _draw_grid(
    grid: list[list[Cell]], path: str | Path, table: np.ndarray, legend: list[tuple[int, str]]
) -> Path:
    """Draw rows of panels (images keep their aspect) with an optional class legend below."""
    if not grid:
        raise ValueError("no rows to draw")
    columns = max(len(cells) for cells in grid)
    ratio = max(cell[0].shape[0] / cell[0].shape[1] for cells in grid for cell in cells)
    legend_h = LEGEND_INCHES if legend else 0.0
    height = (PANEL_INCHES * ratio + TITLE_INCHES) * len(grid) + legend_h
    fig = Figure(figsize=(PANEL_INCHES * columns, height), dpi=DPI)
    axes = fig.subplots(len(grid), columns, squeeze=False)
    for cells, row_axes in zip(grid, axes, strict=True):
        for ax in row_axes:
            ax.set_axis_off()
        for ax, (panel, title, text) in zip(row_axes, cells, strict=False):
            ax.set_title(title, fontsize=9)
            ax.imshow(panel, interpolation="nearest")
            if text:
                ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    if legend:
        handles = [Patch(color=table[i] / 255.0, label=name) for i, name in legend]
        ncol = min(len(handles), LEGEND_COLUMNS)
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, legend_h / height, 1.0, 1.0))
    return save_figure(fig, path)
