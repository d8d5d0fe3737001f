"""Stage 4, SPCL adaptation: source CE + pixel-to-prototype contrast on source and target.

Per iteration (SPCL.md, stage 4): the segmenter runs on a source and a target batch; the source
CE uses logits ÷ ``source_temperature``; the prototype bank takes one EMA step from the class means
of the normalised source features over reliable pixels (ground truth = prediction), all-reduced
over ranks so every process holds the same prototypes; then every source pixel (reliable ground
truth) and target pixel (pseudo-label) is classified against the prototypes,
``norm(f)·P / temperature``, with a cross-entropy. Total: CE + λ_cl·(L_src + L_tgt); each
contrastive term can be switched off. ``target_ce`` adds a plain CE on the target pseudo-labels
(not the reference: with both contrastive terms off it is the bench's self-training control), and
``freeze_bn`` overrides ``model.freeze_bn`` for this stage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spcl.context import RunContext
from spcl.engine.checkpoint import load_state, save_state
from spcl.engine.distributed import all_reduce_sum_, max_difference_across_ranks
from spcl.engine.loop import train_loop
from spcl.method.contrastive import pixel_prototype_loss
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.method.prototypes import (
    PrototypeBank,
    class_feature_sums,
    downsample_labels,
    reliable_mask,
)
from spcl.stages.builders import (
    build_segmenter,
    forward_pair,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    pseudo_labelled_dataset,
    save_weights,
    source_stream,
    train_loader,
    wrap_ddp,
)

__all__ = ["run"]

SOURCE_STREAM, TARGET_STREAM = 11, 12  # loader seed salts
PLAIN_CE = 1.0  # the target CE term (target_ce) uses untempered logits


def run(ctx: RunContext, out_dir: Path, weights: Path, prototypes: Path, labels_dir: Path) -> Path:
    """Adapt the model at ``weights``; returns the path of the adapted ``model.pth``."""
    cfg, data = ctx.config.adapt, ctx.config.data
    model = load_weights(build_segmenter(ctx, freeze_bn=cfg.freeze_bn), weights)
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim)
    init = load_state(prototypes)
    bank = PrototypeBank(
        data.num_classes, init["prototypes"].shape[1], cfg.momentum, cfg.absent_policy
    ).to(ctx.device)
    bank.initialize(init["prototypes"].to(ctx.device), init["seen"].to(ctx.device))
    augment = {"hflip": data.hflip}
    source = source_stream(
        ctx, cfg.optim.batch_size, SOURCE_STREAM, color_jitter=data.color_jitter, **augment
    )
    target = train_loader(
        ctx,
        pseudo_labelled_dataset(data.target, labels_dir, **augment),
        cfg.optim.batch_size,
        TARGET_STREAM,
    )
    model.train()
    last = bank.prototypes.clone()
    tau = cfg.temperature

    def step() -> dict[str, torch.Tensor]:
        src, tgt = next(source), next(target)
        src_labels = src["label"].to(ctx.device, non_blocking=True)
        tgt_labels = tgt["label"].to(ctx.device, non_blocking=True)
        src_out, tgt_out = forward_pair(
            net,
            src["image"].to(ctx.device, non_blocking=True),
            tgt["image"].to(ctx.device, non_blocking=True),
        )
        src_logits = upsample_logits(src_out.logits, src_labels.shape[-2:])
        loss_seg = tempered_cross_entropy(src_logits, src_labels, cfg.source_temperature)
        feat_size = src_out.features.shape[-2:]
        src_mask = reliable_mask(downsample_labels(src_labels, feat_size), src_out.logits)
        tgt_mask = downsample_labels(tgt_labels, tgt_out.features.shape[-2:])
        sums, counts = class_feature_sums(
            src_out.features.detach().float(), src_mask, data.num_classes
        )
        bank.update_from_sums(all_reduce_sum_(sums), all_reduce_sum_(counts))
        protos = bank.prototypes.detach()
        terms = {"seg": loss_seg}
        if cfg.contrast_source:
            terms["cl_src"] = pixel_prototype_loss(src_out.features, src_mask, protos, tau)
        if cfg.contrast_target:
            terms["cl_tgt"] = pixel_prototype_loss(tgt_out.features, tgt_mask, protos, tau)
        if cfg.target_ce > 0:
            tgt_logits = upsample_logits(tgt_out.logits, tgt_labels.shape[-2:])
            terms["tgt_ce"] = tempered_cross_entropy(tgt_logits, tgt_labels, PLAIN_CE)
        contrast = sum(v for k, v in terms.items() if k.startswith("cl_"))
        loss = loss_seg + cfg.lambda_cl * contrast + cfg.target_ce * terms.get("tgt_ce", 0.0)
        return {"loss": loss, **terms}

    def prototype_scalars() -> dict[str, float]:
        drift = (bank.prototypes - last).norm(dim=1).mean()
        last.copy_(bank.prototypes)
        return {
            "prototype_norm": float(bank.prototypes.norm(dim=1).mean()),
            "prototype_drift": float(drift),
        }

    train_loop(
        step,
        state={
            "model": model,
            "optimizer": optimizer,
            "schedule": schedule,
            "bank": bank,
            "source": source,
            "target": target,
        },
        optimizers=[optimizer],
        schedulers=[schedule],
        config=loop_config(ctx, cfg.optim, out_dir, "adapt", prototype_scalars),
        tracker=ctx.tracker,
    )
    if ctx.world > 1:
        spread = max_difference_across_ranks(bank.prototypes)
        ctx.tracker.info(f"[adapt] prototype banks of {ctx.world} ranks: max difference {spread:g}")
        if spread != 0.0:
            raise RuntimeError(f"prototype banks diverged across ranks (max difference {spread})")
    if ctx.is_main:
        final = {"prototypes": bank.prototypes.cpu(), "seen": bank.initialized.cpu()}
        save_state(final, out_dir / "prototypes.pth")
    return save_weights(ctx, model, out_dir / "model.pth")
