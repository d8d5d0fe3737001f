"""Stage 1 (``01_warmup``), warm-up: source cross-entropy, optionally output-space adversarial.

Source logits are upsampled to the label size and divided by ``source_temperature`` (1.8 in the
reference) before the CE. With ``adversarial``, a discriminator D learns to tell the softmax maps of
source (label 0) from target (label 1) images, and the segmenter is pushed to make target maps look
like source ones (weight ``lambda_adv``), as AdaptSegNet and the SPCL reference do. The same stage
trains the target-supervised oracle when the source data points at target labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from spcl.config_schema import WarmupConfig
from spcl.context import RunContext
from spcl.engine.optim import poly_scheduler
from spcl.method.adversarial import adversarial_generator_loss, discriminator_loss
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.models.build import build_discriminator
from spcl.run_dir import MODEL_FILE
from spcl.stages.builders import (
    build_segmenter,
    domain_dataset,
    forward_pair,
    loop_config,
    optimizer_and_schedule,
    source_stream,
    train_loader,
    wrap_ddp,
)
from spcl.stages.target_labels import with_target_labels
from spcl.stages.training import TrainingSetup, train

__all__ = ["WarmupParts", "run", "setup", "warmup_step", "warmup_weights"]

SOURCE_STREAM, TARGET_STREAM = 1, 2  # loader seed salts
Batch = dict[str, Tensor]


@dataclass
class WarmupParts:
    """What the warm-up step works with (the discriminator only when adversarial)."""

    cfg: WarmupConfig  # the stage's config section
    net: nn.Module  # the segmenter (DDP-wrapped under torchrun)
    device: torch.device
    disc: nn.Module | None = None  # the discriminator module (its weights are frozen for G)
    disc_net: nn.Module | None = None  # the same, DDP-wrapped under torchrun


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(flag)


def warmup_step(parts: WarmupParts, src: Batch, tgt: Batch | None = None) -> dict[str, Tensor]:
    """One warm-up step's loss terms: ``seg`` and, with a target batch, ``adv`` and ``disc``."""
    temperature = parts.cfg.source_temperature  # source logits ÷ this before the CE
    images = src["image"].to(parts.device, non_blocking=True)
    labels = src["label"].to(parts.device, non_blocking=True)
    if tgt is None:
        src_logits = upsample_logits(parts.net(images).logits, labels.shape[-2:])
        return {"seg": tempered_cross_entropy(src_logits, labels, temperature)}
    assert parts.disc is not None and parts.disc_net is not None
    tgt_images = tgt["image"].to(parts.device, non_blocking=True)
    out = forward_pair(parts.net, images, tgt_images)
    src_logits = upsample_logits(out.src.logits, labels.shape[-2:])
    loss_seg = tempered_cross_entropy(src_logits, labels, temperature)
    tgt_logits = upsample_logits(out.tgt.logits, tgt_images.shape[-2:])
    src_probs = (src_logits / temperature).softmax(1)  # reference quirk
    tgt_probs = tgt_logits.softmax(1)
    # the segmenter's adversarial term must not train D: D's weights are frozen for it
    _set_requires_grad(parts.disc, False)
    loss_adv = adversarial_generator_loss(parts.disc_net(tgt_probs))
    _set_requires_grad(parts.disc, True)
    loss_disc = discriminator_loss(
        parts.disc_net(src_probs.detach()), parts.disc_net(tgt_probs.detach())
    )
    return {"seg": loss_seg, "adv": loss_adv, "disc": loss_disc}


def warmup_weights(cfg: WarmupConfig) -> dict[str, float]:
    """The total loss: source CE, plus λ_adv·adversarial + the discriminator's own loss."""
    if not cfg.adversarial:
        return {"seg": 1.0}
    return {"seg": 1.0, "adv": cfg.lambda_adv, "disc": 1.0}


def setup(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> TrainingSetup:
    """The warm-up model, its source stream and, when adversarial, the target stream and the
    discriminator with its own optimiser (built in this order: the inits draw from the RNG)."""
    cfg, data = ctx.config.warmup, ctx.config.data
    model = build_segmenter(ctx)
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim, world=ctx.world)
    source = source_stream(
        ctx,
        cfg.optim.batch_size,
        SOURCE_STREAM,
        hflip=data.hflip,
        color_jitter=data.color_jitter,
    )
    state: dict = {"model": model, "optimizer": optimizer, "schedule": schedule, "source": source}
    optimizers, schedules = [optimizer], [schedule]
    target = disc = disc_net = None
    if cfg.adversarial:
        target = train_loader(
            ctx,
            domain_dataset(data.target, with_labels=False, train=True, hflip=data.hflip),
            cfg.optim.batch_size,
            TARGET_STREAM,
        )
        disc = build_discriminator(data.num_classes, ndf=cfg.disc_width).to(ctx.device)
        disc_net = wrap_ddp(ctx, disc)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=tuple(cfg.disc_betas))
        disc_schedule = poly_scheduler(disc_opt, cfg.optim.max_iter, cfg.optim.power)
        state |= {
            "target": target,
            "disc": disc,
            "disc_optimizer": disc_opt,
            "disc_schedule": disc_schedule,
        }
        optimizers.append(disc_opt)
        schedules.append(disc_schedule)
    parts = WarmupParts(cfg, net, ctx.device, disc, disc_net)
    model.train()
    stage = TrainingSetup(
        step=lambda _: warmup_step(parts, next(source), None if target is None else next(target)),
        weights=warmup_weights(cfg),
        state=state,
        optimizers=optimizers,
        schedulers=schedules,
        loop=loop_config(ctx, cfg.optim, out_dir, "warmup"),
        outputs={MODEL_FILE: model},
        parts=parts,
    )
    return with_target_labels(ctx, stage, net, hflip=data.hflip, color_jitter=data.color_jitter)


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Train the warm-up model (it reads no stage); returns its final weights (``model.pth``)."""
    return train(ctx, out_dir, setup(ctx, out_dir, inputs))
