"""Stages 3 and 5 (``03_pseudo_labels``, ``05_pseudo_labels``), target pseudo-labels.

Per-class thresholds, then one label PNG per image.

Pass 1 streams the softmax maps of every target training image (at training size) into per-class
confidence histograms (fixed memory) and takes each class's median confidence, capped (0.9 in the
reference), as its threshold. Pass 2 makes the labels at the image files' resolution: the predicted
class where its confidence reaches the class threshold, 255 elsewhere. With ``adabn`` the model's
BatchNorm statistics are first re-estimated on target images (a control, not the reference).
Writes ``labels/NAME.png``, ``thresholds.json`` and ``stats.json`` (coverage per class, and label
accuracy where the target has ground truth).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spcl.base import IGNORE_INDEX, atomic_write_bytes
from spcl.context import RunContext
from spcl.engine.distributed import all_reduce_sum_, barrier
from spcl.evaluation.inference import predict_probs
from spcl.method.adabn import recalibrate_batchnorm
from spcl.method.pseudo_labels import ThresholdEstimator, threshold_predictions
from spcl.recipe import stage_by_folder
from spcl.run_dir import STATS_FILE, THRESHOLDS_FILE
from spcl.stages.builders import (
    build_segmenter,
    class_table,
    domain_dataset,
    eval_loader,
    load_weights,
    target_train_images,
)

__all__ = ["run"]


@torch.no_grad()
def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Pseudo-label the target training split with the one model in ``inputs`` (the warm-up's or
    adapt's); returns ``labels/``."""
    cfg, data = ctx.config.pseudo_labels, ctx.config.data
    (weights,) = inputs.values()
    row = stage_by_folder(out_dir.name)  # pseudo_labels or pseudo_labels_2: the log's prefix
    stage = row.name if row is not None else out_dir.name
    model = load_weights(build_segmenter(ctx, freeze_bn=False), weights)
    if cfg.adabn:
        layers = recalibrate_batchnorm(model, target_train_images(ctx))
        ctx.tracker.info(f"[{stage}] AdaBN: re-estimated {layers} BatchNorm layers on target")
    model.eval()
    with_labels = _has_labels(ctx)
    dataset = domain_dataset(data.target, with_labels=with_labels, train=False)
    loader = eval_loader(ctx, dataset)
    estimator = ThresholdEstimator(data.num_classes, cap=cfg.cap)
    bar = ctx.tracker.bar(len(loader), desc="pseudo-labels 1/2")
    for batch in loader:
        estimator.update(predict_probs(model, batch["image"].to(ctx.device)))
        bar.update(1)
    bar.close()
    all_reduce_sum_(estimator.histograms)
    thresholds = estimator.thresholds()

    labels_dir, partial = out_dir / "labels", out_dir / "labels.partial"
    if ctx.is_main:  # one rank clears the folder; others must not delete what it already wrote
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
    barrier()
    k = data.num_classes
    counts = torch.zeros(3, k, dtype=torch.int64, device=ctx.device)  # predicted, kept, correct
    bar = ctx.tracker.bar(len(loader), desc="pseudo-labels 2/2")
    for batch in loader:
        size = batch["size"][0].tolist()
        conf, pred = predict_probs(model, batch["image"].to(ctx.device), size).max(dim=1)
        pseudo = threshold_predictions(conf, pred, thresholds)
        kept = pseudo != IGNORE_INDEX
        counts[0] += torch.bincount(pred.reshape(-1), minlength=k)
        counts[1] += torch.bincount(pred[kept], minlength=k)
        if with_labels:
            correct = kept & (pseudo == batch["label"].to(ctx.device))
            counts[2] += torch.bincount(pred[correct], minlength=k)
        image = Image.fromarray(pseudo[0].to(torch.uint8).cpu().numpy(), mode="L")
        _save_label(image, partial / f"{batch['name'][0]}.png")
        bar.update(1)
    bar.close()
    all_reduce_sum_(counts)
    barrier()
    if ctx.is_main:
        shutil.rmtree(labels_dir, ignore_errors=True)
        partial.rename(labels_dir)
        stats = _write_stats(
            out_dir, thresholds, counts.cpu().numpy(), class_table(ctx).names, with_labels
        )
        _log_stats(ctx, stage, stats)
    barrier()
    return labels_dir


def _save_label(image: Image.Image, path: Path) -> None:
    """Write one label PNG; a failed write (a full disk) names the file."""
    try:
        image.save(path)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _has_labels(ctx: RunContext) -> bool:
    """Whether the target training split has ground truth (then label accuracy is reported)."""
    try:
        domain_dataset(ctx.config.data.target, with_labels=True, train=False)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _write_stats(
    out_dir: Path,
    thresholds: torch.Tensor,
    counts: np.ndarray,
    names: tuple[str, ...],
    with_labels: bool,
) -> dict:
    predicted, kept, correct = counts
    total_kept = int(kept.sum())
    stats = {
        "coverage": float(kept.sum() / max(1, predicted.sum())),
        "per_class_coverage": {
            n: (float(kept[i] / predicted[i]) if predicted[i] else None)
            for i, n in enumerate(names)
        },
    }
    if with_labels:
        stats["accuracy"] = float(correct.sum() / max(1, total_kept))
        stats["per_class_accuracy"] = {
            n: (float(correct[i] / kept[i]) if kept[i] else None) for i, n in enumerate(names)
        }
    thresholds_json = {n: float(t) for n, t in zip(names, thresholds.tolist(), strict=True)}
    atomic_write_bytes(out_dir / THRESHOLDS_FILE, json.dumps(thresholds_json, indent=2).encode())
    atomic_write_bytes(out_dir / STATS_FILE, json.dumps(stats, indent=2).encode())
    return stats


def _log_stats(ctx: RunContext, tag: str, stats: dict) -> None:
    """Coverage (and accuracy where target labels exist) per class, in TensorBoard and the log."""
    for key in ("per_class_coverage", "per_class_accuracy"):
        values = {n: v for n, v in stats.get(key, {}).items() if v is not None}
        if values:
            ctx.tracker.scalars(f"{tag}/{key}", values, 0)
    line = f"[{tag}] pseudo-labels cover {100 * stats['coverage']:.1f}% of target pixels"
    if "accuracy" in stats:
        line += f", {100 * stats['accuracy']:.1f}% of them correct"
    ctx.tracker.info(line)
