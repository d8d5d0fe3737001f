"""Stage 6 (``06_self_train``), self-training: cross-entropy on refreshed target pseudo-labels.

Starts from the SPCL-adapted weights and trains on the target alone, with the pseudo-labels of
stage 5 (``05_pseudo_labels``); BatchNorm trainable by default (SyncBN under torchrun), with the
reference's augmentation (random scale 0.5–1.5, crop, flip, colour jitter) and schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from spcl.context import RunContext
from spcl.engine.loop import train_loop
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.run_dir import MODEL_FILE
from spcl.stages.builders import (
    build_segmenter,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    pseudo_labelled_dataset,
    save_weights,
    skip_missing_labels,
    train_loader,
    wrap_ddp,
)
from spcl.stages.collapse import PREDICTED_SHARE, CollapseAlert
from spcl.stages.validation import validation_hooks

__all__ = ["SELF_TRAIN_WEIGHTS", "run", "self_train_step"]

TARGET_STREAM = 21  # loader seed salt
PLAIN_CE = 1.0  # self-training uses the untempered cross-entropy
SELF_TRAIN_WEIGHTS = {"seg": 1.0}  # the loss is the target CE alone


def self_train_step(
    net: nn.Module,
    device: torch.device,
    batch: dict[str, Tensor],
    observe: Callable[[Tensor], None] | None = None,
) -> dict:
    """One self-training step's loss term: ``seg``, the CE on the pseudo-labelled batch.

    ``observe`` is given the batch's predictions (the argmax of the logits the step computed;
    the class-collapse alert counts them).
    """
    labels = batch["label"].to(device, non_blocking=True)
    logits = upsample_logits(net(batch["image"].to(device)).logits, labels.shape[-2:])
    if observe is not None:
        observe(logits.detach().argmax(dim=1))
    return {"seg": tempered_cross_entropy(logits, labels, PLAIN_CE)}


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Self-train the adapted model on the second pseudo-labels; returns the new ``model.pth``."""
    weights, labels_dir = inputs["adapt"], inputs["pseudo_labels_2"]
    cfg, data = ctx.config.self_train, ctx.config.data
    model = load_weights(build_segmenter(ctx, freeze_bn=cfg.freeze_bn), weights)
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim)
    dataset = pseudo_labelled_dataset(
        data.target,
        labels_dir,
        skip_missing_labels(ctx),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        scale_range=cfg.scale_range,
        crop=cfg.crop,
    )
    target = train_loader(ctx, dataset, cfg.optim.batch_size, TARGET_STREAM)
    alert = CollapseAlert(ctx, out_dir, "self_train", PREDICTED_SHARE, cfg.optim.stop_iter)
    model.train()
    train_loop(
        lambda: self_train_step(net, ctx.device, next(target), alert.observe),
        weights=SELF_TRAIN_WEIGHTS,
        state={"model": model, "optimizer": optimizer, "schedule": schedule, "target": target},
        optimizers=[optimizer],
        schedulers=[schedule],
        config=loop_config(ctx, cfg.optim, out_dir, "self_train"),
        tracker=ctx.tracker,
        after_step=[*validation_hooks(ctx, model, "self_train", alert.validated), alert.after_step],
    )
    return save_weights(ctx, model, out_dir / MODEL_FILE)
