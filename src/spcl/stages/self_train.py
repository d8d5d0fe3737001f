"""Stage 5, self-training: cross-entropy on the refreshed target pseudo-labels, target only.

Starts from the SPCL-adapted weights; BatchNorm trainable by default (SyncBN under torchrun), with
the reference's augmentation (random scale 0.5–1.5, crop, flip, colour jitter) and schedule.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spcl.context import RunContext
from spcl.engine.loop import train_loop
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.stages.builders import (
    build_segmenter,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    pseudo_labelled_dataset,
    save_weights,
    train_loader,
    wrap_ddp,
)

__all__ = ["run"]

TARGET_STREAM = 21  # loader seed salt
PLAIN_CE = 1.0  # self-training uses the untempered cross-entropy


def run(ctx: RunContext, out_dir: Path, weights: Path, labels_dir: Path) -> Path:
    """Self-train the model at ``weights`` on ``labels_dir``; returns the new ``model.pth``."""
    cfg, data = ctx.config.self_train, ctx.config.data
    model = load_weights(build_segmenter(ctx, freeze_bn=cfg.freeze_bn), weights)
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim)
    dataset = pseudo_labelled_dataset(
        data.target,
        labels_dir,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        scale_range=cfg.scale_range,
        crop=cfg.crop,
    )
    target = train_loader(ctx, dataset, cfg.optim.batch_size, TARGET_STREAM)
    model.train()

    def step() -> dict[str, torch.Tensor]:
        batch = next(target)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        logits = upsample_logits(net(batch["image"].to(ctx.device)).logits, labels.shape[-2:])
        loss = tempered_cross_entropy(logits, labels, PLAIN_CE)
        return {"loss": loss, "seg": loss}

    train_loop(
        step,
        state={"model": model, "optimizer": optimizer, "schedule": schedule, "target": target},
        optimizers=[optimizer],
        schedulers=[schedule],
        config=loop_config(ctx, cfg.optim, out_dir, "self_train"),
        tracker=ctx.tracker,
    )
    return save_weights(ctx, model, out_dir / "model.pth")
