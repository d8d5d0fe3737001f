"""Stage 8 (``08_evaluate``), evaluation: mIoU of each trained model on the labelled target split.

Images get the test-time resize; logits are upsampled to the full-resolution label; one
confusion matrix (all-reduced under torchrun) gives per-class IoU/accuracy, mIoU and, for a 19-class
table, the SYNTHIA 16- and 13-class means. Writes ``metrics.json`` (``miou`` in percent,
``per_class_iou``) and a plain-text table. With ``evaluate.adabn`` the stage first re-estimates the
model's BatchNorm statistics on the target training images (AdaBN, a control; every rank uses all
of them, so the statistics agree across ranks); nothing else in the model changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spcl.base import DatasetError, atomic_write_bytes
from spcl.config_schema import DomainConfig
from spcl.context import RunContext
from spcl.engine.distributed import all_reduce_sum_
from spcl.evaluation.api import evaluate, infer
from spcl.evaluation.plots import plot_confusion, plot_prediction_panels
from spcl.evaluation.reports import default_subsets, titled, write_csv, write_json, write_table
from spcl.evaluation.scores import SegmentationScores
from spcl.method.adabn import recalibrate_batchnorm
from spcl.run_dir import (
    CONFUSION_FILE,
    METRICS_CSV,
    METRICS_FILE,
    METRICS_TABLE,
    PANELS_FILE,
    SUMMARY_FILE,
)
from spcl.stages.builders import (
    build_segmenter,
    class_table,
    domain_dataset,
    eval_loader,
    load_weights,
    target_train_images,
)

__all__ = [
    "prepared_model",
    "run",
    "score_model",
    "scored_title",
    "target_val_scores",
    "write_scores",
]


def target_val_scores(
    ctx: RunContext, model: torch.nn.Module, desc: str = "evaluate"
) -> SegmentationScores:
    """Scores of ``model`` on the configured target_val split with the configured test-time
    options, summed over ranks (:func:`spcl.evaluation.api.evaluate`): what this stage reports
    and what validation during training logs."""
    options = ctx.config.evaluate
    dataset = domain_dataset(ctx.config.data.target_val, with_labels=True, train=False)
    return evaluate(
        model,
        eval_loader(ctx, dataset),
        class_table(ctx).names,
        device=ctx.device,
        flip=options.flip,
        scales=options.scales,
        slide=options.slide,
        reduce=all_reduce_sum_,
        progress=ctx.tracker.progress,
        desc=desc,
    )


def write_scores(
    scores: SegmentationScores, out_dir: Path, extra: dict | None = None, title: str | None = None
) -> None:
    """``metrics.json``, ``metrics.txt``, ``metrics.csv`` and ``confusion.png`` in ``out_dir``,
    each titled with ``title`` (the model scored) when given (``"title"`` in the JSON)."""
    extra = {**(extra or {}), **({"title": title} if title else {})}
    write_json(scores, out_dir / METRICS_FILE, extra=extra)
    write_table(scores, out_dir / METRICS_TABLE, title=title)
    write_csv(scores, out_dir / METRICS_CSV, title=title)
    confusion = f"{title}\nconfusion (% of each ground-truth row), mIoU {scores.miou:.1f}"
    plot_confusion(scores, out_dir / CONFUSION_FILE, title=confusion if title else None)


def scored_title(val: DomainConfig, weights: Path, stage: str | None = None) -> str:
    """What an evaluation of ``weights`` on the split ``val`` scores:
    ``"self_train model runs/x/06_self_train/model.pth on synthetic data/pair (split val)"``."""
    model = f"{stage} model {weights}" if stage else f"model {weights}"
    return f"{model} on {val.kind} {val.root} (split {val.split})"


def score_model(ctx: RunContext, out_dir: Path, weights: Path, stage: str | None = None) -> Path:
    """Evaluate the weights at ``weights`` (the model of ``stage``); returns ``metrics.json``.

    The console table and every file written are titled with the model they score.
    """
    model, adapted = prepared_model(ctx, weights)
    title = scored_title(ctx.config.data.target_val, weights, stage)
    extra: dict[str, object] = {"weights": str(weights), "stage": stage, **adapted}
    scores = target_val_scores(ctx, model)
    if ctx.is_main:
        extra["confusion"] = scores.confusion.tolist()  # rebuild scores/plots from the file alone
        write_scores(scores, out_dir, extra, title)
        table = scores.format_table(default_subsets(scores.class_names))
        ctx.tracker.info(f"[evaluate] {titled(table, title)}")
        _panels(ctx, model, out_dir)
    return out_dir / METRICS_FILE


def prepared_model(ctx: RunContext, weights: Path) -> tuple[torch.nn.Module, dict[str, object]]:
    """The configured model with the weights at ``weights``, as this stage scores it, and what
    was done to it for ``metrics.json``: with ``evaluate.adabn`` its BatchNorm statistics are
    re-estimated on the target training images (``adabn_layers``, ``adabn_seconds``)."""
    adabn = ctx.config.evaluate.adabn
    # AdaBN needs ordinary BatchNorm layers (frozen ones keep no statistics to re-estimate)
    model = load_weights(build_segmenter(ctx, freeze_bn=False if adabn else None), weights)
    if not adabn:
        return model, {}
    begin = time.perf_counter()
    layers = recalibrate_batchnorm(model, target_train_images(ctx))
    ctx.tracker.info(f"[evaluate] AdaBN: re-estimated {layers} BatchNorm layers on target")
    return model, {"adabn_layers": layers, "adabn_seconds": round(time.perf_counter() - begin, 2)}


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Evaluate every trained model of the run; ``summary.json`` maps stage → mIoU.

    Each table (console, log, files) is titled with the model file it scores; the log ends with
    one line per model.
    """
    summary = {}
    for name, weights in inputs.items():
        metrics = score_model(ctx, out_dir / name, weights, stage=name)
        if ctx.is_main:
            summary[name] = json.loads(metrics.read_text())["miou"]
    if ctx.is_main:
        atomic_write_bytes(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
        for name, miou in summary.items():
            ctx.tracker.info(f"[evaluate] {name:>10} model {inputs[name]}: mIoU {miou:.2f}")
    return out_dir / SUMMARY_FILE


PANEL_IMAGES = 4  # target-val images drawn in each evaluation's panels.png and TensorBoard


@torch.no_grad()
def _panels(ctx: RunContext, model: torch.nn.Module, out_dir: Path) -> None:
    """Image, ground truth, prediction, error map of the first val images (PNG, TensorBoard)."""
    dataset = domain_dataset(ctx.config.data.target_val, with_labels=True, train=False)
    rows = []
    for index in range(len(dataset)):
        if len(rows) == PANEL_IMAGES:
            break
        try:
            image, label = dataset.load(index)
        except DatasetError:
            if ctx.config.data.on_error == "skip":
                continue  # named already by the evaluation's loader
            raise
        sample = dataset[index]
        probs = infer(model.eval(), sample["image"][None].to(ctx.device), label.shape)
        rows.append((image, label, probs.argmax(1)[0].cpu().numpy(), dataset.names[index]))
    table = class_table(ctx)
    path = plot_prediction_panels(
        rows, table.palette, out_dir / PANELS_FILE, class_names=table.names
    )
    ctx.tracker.image(f"{out_dir.name}/panels", np.asarray(Image.open(path).convert("RGB")), 0)
