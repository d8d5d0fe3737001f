"""The demo's Markdown report: the result table, per-class IoU, prediction panels, commands."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spcl import __version__
from spcl.data.folder import read_image, read_label, to_tensor
from spcl.data.labels import CITYSCAPES
from spcl.engine.checkpoint import atomic_write_bytes, load_state
from spcl.evaluation.embedding import plot_feature_embedding
from spcl.evaluation.inference import predict_probs
from spcl.evaluation.metrics import scores_from_confusion
from spcl.evaluation.plots import plot_iou_bars, plot_model_comparison
from spcl.method.prototypes import downsample_labels
from spcl.models.files import load_model_file

__all__ = ["write_report"]

PANEL_IMAGES = 4  # validation images shown in panels.png
PANEL_MODELS = ("source_only", "spcl_self_training")  # predictions compared in the panels


def _panels(out: Path, results: dict[str, dict[str, Any]]) -> Path:
    """Image, ground truth and each compared model's prediction for a few target-val images."""
    root = out / "data" / "target"
    names = sorted((root / "images" / "val").glob("*.png"))[:PANEL_IMAGES]
    models = {
        row: load_model_file(Path(results[row]["run"]) / _model_path(row))[0]
        for row in PANEL_MODELS
    }
    rows = []
    for path in names:
        image = read_image(path)
        label = read_label(root / "labels" / "val" / path.name)
        batch = to_tensor(image)[None]
        preds = {
            row: predict_probs(model, batch).argmax(1)[0].numpy().astype(np.uint8)
            for row, model in models.items()
        }
        rows.append((image, label, preds, path.stem))
    return plot_model_comparison(rows, CITYSCAPES.palette, out / "panels.png")


def _iou_bars(out: Path) -> Path:
    """Per-class IoU of source-only, SPCL + self-training and the oracle, as grouped bars."""
    from spcl.demo import ROWS

    runs = {}
    for row in ("source_only", "spcl_self_training", "oracle"):
        run, stage = ROWS[row]
        metrics = json.loads(
            (out / "runs" / run / "07_evaluate" / stage / "metrics.json").read_text()
        )
        runs[row] = scores_from_confusion(np.asarray(metrics["confusion"]), CITYSCAPES.names)
    return plot_iou_bars(runs, out / "per_class_iou.png", title="target val, per-class IoU")


FEATURE_IMAGES = 8  # images per domain whose pixel features are embedded


@torch.no_grad()
def _feature_plots(out: Path) -> list[Path]:
    """PCA of source and target pixel features with the prototypes, before and after SPCL."""
    run = out / "runs" / "spcl"
    domains = {
        "source": (out / "data" / "source", "val"),
        "target": (out / "data" / "target", "val"),
    }
    written = []
    for folder, protos in (
        ("01_warmup", run / "02_prototypes" / "prototypes.pth"),  # before adaptation
        ("04_adapt", run / "04_adapt" / "prototypes.pth"),  # after SPCL
    ):
        model, _ = load_model_file(run / folder / "model.pth")
        features, labels = {}, {}
        for domain, (root, split) in domains.items():
            paths = sorted((root / "images" / split).glob("*.png"))[:FEATURE_IMAGES]
            batch = torch.stack([to_tensor(read_image(p)) for p in paths])
            feats = model(batch).features
            gt = torch.stack(
                [torch.from_numpy(read_label(root / "labels" / split / p.name)) for p in paths]
            ).long()
            features[domain] = feats
            labels[domain] = downsample_labels(gt, feats.shape[-2:])
        path = out / f"features_{folder}.png"
        plot_feature_embedding(
            features,
            labels,
            load_state(protos)["prototypes"],
            path,
            class_names=CITYSCAPES.names,
            palette=CITYSCAPES.palette,
        )
        written.append(path)
    return written


def _model_path(row: str) -> str:
    from spcl.demo import ROWS

    stage = ROWS[row][1]
    folder = {"warmup": "01_warmup", "adapt": "04_adapt", "self_train": "06_self_train"}[stage]
    return f"{folder}/model.pth"


def _per_class_table(results: dict[str, dict[str, Any]]) -> str:
    from spcl.demo import ROWS

    rows = list(ROWS)
    lines = [
        "| class | " + " | ".join(rows) + " |",
        "| --- |" + " ---: |" * len(rows),
    ]
    for name in CITYSCAPES.names:
        cells = []
        for row in rows:
            value = results[row]["per_class_iou"].get(name)
            cells.append("absent" if value is None else f"{value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out: Path,
    results: dict[str, dict[str, Any]],
    commands: dict[str, str],
    seconds: float,
    seed: int,
    quick: bool,
) -> Path:
    """Write ``report.md`` and ``panels.png`` into ``out``."""
    from spcl.demo import ROWS, format_table

    panels = _panels(out, results)
    bars = _iou_bars(out)
    feature_plots = _feature_plots(out)
    reproduce = "\n".join(
        f"- `{row}`: `{commands[run]}` (model of stage `{stage}`)"
        for row, (run, stage) in ROWS.items()
    )
    text = f"""# spcl demo report

Synthetic pair seed {seed}{" (quick variant: tiny sizes, numbers mean nothing)" if quick else ""};
spcl {__version__}, torch {torch.__version__}, {platform.platform()}; wall time {seconds:.0f} s.

## Target-val mIoU

{format_table(results)}

"Gap closed" is the share of the source-only → oracle gap that the row recovers. These rows
alone do not say what SPCL's contrastive term contributes: controls such as target BatchNorm
re-estimation and plain self-training without the contrastive term need the same budget and seeds.

## Per-class IoU

{_per_class_table(results)}

## Predictions

![panels]({panels.name})

Columns: target image, ground truth, then the prediction of each of: {", ".join(PANEL_MODELS)}.

![per-class IoU]({bars.name})

## Features and prototypes

Pixel features of source and target validation images (ground-truth classes, PCA), with the class
prototypes, after the warm-up and after SPCL adaptation:

![before]({feature_plots[0].name}) ![after]({feature_plots[1].name})

## Reproduce a row

{reproduce}
"""
    path = out / "report.md"
    atomic_write_bytes(path, text.encode())
    return path
