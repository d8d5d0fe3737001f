"""The pictures of a demo or bench report.

Bench-style: mean mIoU per row with error bars (:func:`plot_miou_bars`) and a rows × classes IoU
heatmap (:func:`plot_class_heatmap`). From the models themselves: per-class IoU bars of a few rows
(:func:`plot_row_iou_bars`), predictions of a few rows side by side on target-val images
(:func:`plot_row_predictions`) and PCA embeddings of source/target pixel features with the
prototypes, before and after SPCL adaptation (:func:`plot_feature_embeddings`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from spcl.data.labels import ClassTable, class_table_for
from spcl.data.lists import SegmentationList
from spcl.engine.checkpoint import load_state
from spcl.evaluation.embedding import plot_feature_embedding
from spcl.evaluation.inference import predict_probs
from spcl.evaluation.metrics import scores_from_confusion
from spcl.evaluation.plots import plot_iou_bars, plot_model_comparison, save_figure
from spcl.experiments.payload import PERCENT
from spcl.experiments.rows import HIGH_ROW, LOW_ROW
from spcl.method.prototypes import downsample_labels
from spcl.models.files import load_model_file

__all__ = [
    "model_table",
    "plot_class_heatmap",
    "plot_feature_embeddings",
    "plot_miou_bars",
    "plot_row_iou_bars",
    "plot_row_predictions",
]

DPI = 110
BAR_ROW_INCHES = 0.42  # height per row of the bar chart
CELL_INCHES = 0.5  # heatmap cell
KIND_COLOURS = {
    "baseline": "#9e9e9e",
    "control": "#e69f00",
    "method": "#0072b2",
    "online": "#d55e00",
    "bound": "#009e73",
    "ablation": "#cc79a7",
}
DARK_CELL = 55.0  # heatmap cells above this IoU get white text
ABSENT_GREY = "#eeeeee"
PANEL_IMAGES = 4  # validation images shown in the prediction panels
FEATURE_IMAGES = 8  # images per domain whose pixel features are embedded


def plot_miou_bars(payload: Mapping[str, Any], path: Path) -> Path:
    """Horizontal bars of mean mIoU per row with ± std error bars; source-only/oracle lines."""
    names = list(payload["rows"])
    rows = [payload["rows"][n] for n in names]
    means = np.array([r["miou_mean"] if r["miou_mean"] is not None else np.nan for r in rows])
    stds = np.array([r["miou_std"] if r["miou_std"] is not None else 0.0 for r in rows])
    fig = Figure(figsize=(8.0, 1.2 + BAR_ROW_INCHES * len(names)), dpi=DPI)
    ax = fig.add_subplot()
    positions = np.arange(len(names))[::-1]  # first row on top
    colours = [KIND_COLOURS.get(r["kind"], "black") for r in rows]
    ax.barh(positions, np.nan_to_num(means), xerr=stds, color=colours, capsize=3)
    for y, mean, std in zip(positions, means, stds, strict=True):
        if not np.isnan(mean):
            ax.text(mean + std + 0.5, y, f"{mean:.1f}", va="center", fontsize=8)
    for key, style in ((LOW_ROW, ":"), (HIGH_ROW, "--")):
        value = payload["rows"].get(key, {}).get("miou_mean")
        if value is not None:
            ax.axvline(value, color="black", linestyle=style, linewidth=0.8, label=key)
    ax.set_yticks(positions, names)
    ax.set_xlabel(f"target-val mIoU (mean ± std over {len(payload['_meta']['seeds'])} seed(s))")
    ax.set_xlim(0.0, max(PERCENT / 2, float(np.nanmax(means + stds, initial=0.0)) + 8.0))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_class_heatmap(payload: Mapping[str, Any], path: Path) -> Path:
    """Rows × classes mean IoU; absent classes grey."""
    names, classes = list(payload["rows"]), payload["classes"]
    values = np.array(
        [
            [
                np.nan if (v := payload["rows"][n]["per_class_mean"][c]) is None else v
                for c in classes
            ]
            for n in names
        ],
        dtype=np.float64,
    )  # (rows, classes)
    fig = Figure(
        figsize=(3.0 + CELL_INCHES * len(classes), 1.6 + CELL_INCHES * len(names)), dpi=DPI
    )
    ax = fig.add_subplot()
    ax.set_facecolor(ABSENT_GREY)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=PERCENT)
    for i, j in zip(*np.nonzero(~np.isnan(values)), strict=True):
        colour = "black" if values[i, j] > DARK_CELL else "white"
        ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("per-class IoU, mean over seeds (grey: class absent)")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return save_figure(fig, path)


def model_table(model_file: Path) -> ClassTable:
    """The class table saved in a model file (names and palette of its dataset)."""
    _, info = load_model_file(model_file)
    return class_table_for(
        info["class_names"], info["arch"]["num_classes"], model_file, info["palette"]
    )


def plot_row_iou_bars(metrics: Mapping[str, Path], path: Path) -> Path:
    """Per-class IoU of a few rows as grouped bars, from their evaluation ``metrics.json``."""
    runs = {}
    for row, file in metrics.items():
        data = json.loads(file.read_text())
        names = tuple(data["per_class_iou"])  # class order of the file
        runs[row] = scores_from_confusion(np.asarray(data["confusion"]), names)
    return plot_iou_bars(runs, path, title="target val, per-class IoU")


@torch.no_grad()
def plot_row_predictions(models: Mapping[str, Path], dataset: SegmentationList, path: Path) -> Path:
    """Image, ground truth and each row's prediction for the first target-val images."""
    loaded = {row: load_model_file(file)[0] for row, file in models.items()}
    table = model_table(next(iter(models.values())))
    rows = []
    for index in range(min(PANEL_IMAGES, len(dataset))):
        image, label = dataset.load(index)
        batch = dataset[index]["image"][None]
        preds = {
            row: predict_probs(model, batch, label.shape if label is not None else None)
            .argmax(1)[0]
            .numpy()
            .astype(np.uint8)
            for row, model in loaded.items()
        }
        rows.append((image, label, preds, dataset.names[index]))
    return plot_model_comparison(rows, table.palette, path, class_names=table.names)


@torch.no_grad()
def plot_feature_embeddings(
    models: Sequence[tuple[Path, Path]],
    datasets: Mapping[str, SegmentationList],
    paths: Sequence[Path],
) -> list[Path]:
    """PCA of pixel features of each domain's first images with the prototypes, per model.

    Args:
        models: ``(model.pth, prototypes.pth)`` pairs, e.g. after warm-up and after adaptation.
        datasets: domain name → labelled dataset (test-time transform).
        paths: one output PNG per model.
    """
    written = []
    for (model_file, prototypes), path in zip(models, paths, strict=True):
        model, _ = load_model_file(model_file)
        table = model_table(model_file)
        features, labels = {}, {}
        for domain, dataset in datasets.items():
            items = [dataset[i] for i in range(min(FEATURE_IMAGES, len(dataset)))]
            feats = model(torch.stack([item["image"] for item in items])).features
            gt = torch.stack([item["label"] for item in items])
            features[domain] = feats
            labels[domain] = downsample_labels(gt, feats.shape[-2:])
        plot_feature_embedding(
            features,
            labels,
            load_state(prototypes)["prototypes"],
            path,
            class_names=table.names,
            palette=table.palette,
        )
        written.append(path)
    return written
