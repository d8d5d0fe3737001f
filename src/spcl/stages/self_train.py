"""Stage 6 (``06_self_train``), self-training: cross-entropy on refreshed target pseudo-labels.

Starts from the SPCL-adapted weights and trains on the target alone, with the pseudo-labels of
stage 5 (``05_pseudo_labels``); BatchNorm trainable by default (SyncBN under torchrun), with the
reference's augmentation (random scale 0.5–1.5, crop, flip, colour jitter) and schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from spcl.config_schema import SelfTrainConfig
from spcl.context import RunContext
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.run_dir import MODEL_FILE
from spcl.stages.builders import (
    build_segmenter,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    pseudo_labelled_dataset,
    skip_missing_labels,
    train_loader,
    wrap_ddp,
)
from spcl.stages.collapse import PREDICTED_SHARE, CollapseAlert
from spcl.stages.target_labels import with_target_labels
from spcl.stages.training import TrainingSetup, train

__all__ = ["SELF_TRAIN_WEIGHTS", "SelfTrainParts", "run", "self_train_step", "setup"]

TARGET_STREAM = 21  # loader seed salt
PLAIN_CE = 1.0  # self-training uses the untempered cross-entropy
SELF_TRAIN_WEIGHTS = {"seg": 1.0}  # the loss is the target CE alone


@dataclass
class SelfTrainParts:
    """What the self-training step works with."""

    cfg: SelfTrainConfig  # the stage's config section
    net: nn.Module  # the segmenter (DDP-wrapped under torchrun)
    device: torch.device
    observe: Callable[[Tensor], None] | None = None  # given each step's predictions (the
    # class-collapse alert counts them; spcl.stages.collapse)


def self_train_step(parts: SelfTrainParts, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """One self-training step's loss term: ``seg``, the CE on the pseudo-labelled batch.

    ``parts.observe`` is given the batch's predictions (the argmax of the logits the step
    computed).
    """
    labels = batch["label"].to(parts.device, non_blocking=True)
    logits = upsample_logits(parts.net(batch["image"].to(parts.device)).logits, labels.shape[-2:])
    if parts.observe is not None:
        parts.observe(logits.detach().argmax(dim=1))
    return {"seg": tempered_cross_entropy(logits, labels, PLAIN_CE)}


def setup(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> TrainingSetup:
    """The adapted model (``inputs["adapt"]``) and the target stream with the second
    pseudo-labels (``inputs["pseudo_labels_2"]``), watched by the class-collapse alert."""
    cfg, data = ctx.config.self_train, ctx.config.data
    model = load_weights(build_segmenter(ctx, freeze_bn=cfg.freeze_bn), inputs["adapt"])
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim, world=ctx.world)
    dataset = pseudo_labelled_dataset(
        data.target,
        inputs["pseudo_labels_2"],
        skip_missing_labels(ctx),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        scale_range=cfg.scale_range,
        crop=cfg.crop,
    )
    target = train_loader(ctx, dataset, cfg.optim.batch_size, TARGET_STREAM)
    alert = CollapseAlert(ctx, out_dir, "self_train", PREDICTED_SHARE, cfg.optim.stop_iter)
    model.train()
    parts = SelfTrainParts(cfg, net, ctx.device, alert.observe)
    stage = TrainingSetup(
        step=lambda _: self_train_step(parts, next(target)),
        weights=SELF_TRAIN_WEIGHTS,
        state={"model": model, "optimizer": optimizer, "schedule": schedule, "target": target},
        optimizers=[optimizer],
        schedulers=[schedule],
        loop=loop_config(ctx, cfg.optim, out_dir, "self_train"),
        outputs={MODEL_FILE: model},
        watchers=[alert.after_step],
        on_scores=alert.validated,
        parts=parts,
    )
    augment = {"hflip": cfg.hflip, "color_jitter": cfg.color_jitter, "crop": cfg.crop}
    return with_target_labels(ctx, stage, net, scale_range=cfg.scale_range, **augment)


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Self-train the adapted model on the second pseudo-labels; returns the new ``model.pth``."""
    return train(ctx, out_dir, setup(ctx, out_dir, inputs))
