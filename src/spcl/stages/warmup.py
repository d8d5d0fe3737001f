"""Stage 1, warm-up: source cross-entropy, optionally with output-space adversarial alignment.

Source logits are upsampled to the label size and divided by ``source_temperature`` (1.8 in the
reference) before the CE. With ``adversarial``, a discriminator D learns to tell the softmax maps of
source (label 0) from target (label 1) images, and the segmenter is pushed to make target maps look
like source ones (weight ``lambda_adv``), as AdaptSegNet and the SPCL reference do. The same stage
trains the target-supervised oracle when the source data points at target labels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spcl.context import RunContext
from spcl.engine.loop import train_loop
from spcl.engine.optim import poly_scheduler
from spcl.method.adversarial import adversarial_generator_loss, discriminator_loss
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.models.build import build_discriminator
from spcl.stages.builders import (
    build_segmenter,
    domain_dataset,
    forward_pair,
    loop_config,
    optimizer_and_schedule,
    save_weights,
    source_stream,
    train_loader,
    wrap_ddp,
)

__all__ = ["run"]

SOURCE_STREAM, TARGET_STREAM = 1, 2  # loader seed salts


def _set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(flag)


def run(ctx: RunContext, out_dir: Path) -> Path:
    """Train the warm-up model; returns the path of its final weights (``model.pth``)."""
    cfg, data = ctx.config.warmup, ctx.config.data
    model = build_segmenter(ctx)
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim)
    source = source_stream(
        ctx,
        cfg.optim.batch_size,
        SOURCE_STREAM,
        hflip=data.hflip,
        color_jitter=data.color_jitter,
    )
    state: dict = {"model": model, "optimizer": optimizer, "schedule": schedule, "source": source}
    optimizers, schedules = [optimizer], [schedule]
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
    model.train()

    def step() -> dict[str, torch.Tensor]:
        batch = next(source)
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        if not cfg.adversarial:
            src_logits = upsample_logits(net(images).logits, labels.shape[-2:])
            loss_seg = tempered_cross_entropy(src_logits, labels, cfg.source_temperature)
            return {"loss": loss_seg, "seg": loss_seg}
        tgt_images = next(target)["image"].to(ctx.device, non_blocking=True)
        src_out, tgt_out = forward_pair(net, images, tgt_images)
        src_logits = upsample_logits(src_out.logits, labels.shape[-2:])
        loss_seg = tempered_cross_entropy(src_logits, labels, cfg.source_temperature)
        tgt_logits = upsample_logits(tgt_out.logits, tgt_images.shape[-2:])
        src_probs = (src_logits / cfg.source_temperature).softmax(1)  # reference quirk
        tgt_probs = tgt_logits.softmax(1)
        # the segmenter's adversarial term must not train D: D's weights are frozen for it
        _set_requires_grad(disc, False)
        loss_adv = adversarial_generator_loss(disc_net(tgt_probs))
        _set_requires_grad(disc, True)
        loss_disc = discriminator_loss(disc_net(src_probs.detach()), disc_net(tgt_probs.detach()))
        loss = loss_seg + cfg.lambda_adv * loss_adv + loss_disc
        return {"loss": loss, "seg": loss_seg, "adv": loss_adv, "disc": loss_disc}

    train_loop(
        step,
        state=state,
        optimizers=optimizers,
        schedulers=schedules,
        config=loop_config(ctx, cfg.optim, out_dir, "warmup"),
        tracker=ctx.tracker,
    )
    return save_weights(ctx, model, out_dir / "model.pth")
