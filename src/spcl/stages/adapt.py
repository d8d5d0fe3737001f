"""Stage 4 (``04_adapt``), SPCL adaptation: source CE + pixel-to-prototype contrast on both domains.

Per iteration (docs/method.md, stage 4; docs/recipes.md, "SPCL adaptation iteration"): the
segmenter runs on a source and a target batch; the source
CE uses logits ÷ ``source_temperature``; the prototype bank takes one EMA step from the class means
of the normalised source features over reliable pixels (ground truth = prediction), all-reduced
over ranks so every process holds the same prototypes; then every source pixel (reliable ground
truth) and target pixel (pseudo-label) is classified against the prototypes,
``norm(f)·P / temperature``, with a cross-entropy. Total: CE + λ_cl·(L_src + L_tgt); each
contrastive term can be switched off. ``target_ce`` adds a plain CE on the target pseudo-labels
(not the reference: with both contrastive terms off it is the bench's self-training control), and
``freeze_bn`` overrides ``model.freeze_bn`` for this stage.

:func:`adapt_forward` (forward pass, masks, prototype step) and :func:`adapt_terms` (the loss
terms) are what the stage's step binds; ``benchmarks/contrast_diagnostics.py`` replays
:func:`adapt_forward` on the parts and streams of :func:`setup`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from spcl.config_schema import AdaptConfig
from spcl.context import RunContext
from spcl.engine.checkpoint import load_state
from spcl.engine.distributed import all_reduce_sum_
from spcl.engine.loop import Stateful
from spcl.method.contrastive import pixel_prototype_loss
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.method.prototypes import (
    PrototypeBank,
    class_feature_sums,
    downsample_labels,
    reliable_mask,
)
from spcl.run_dir import MODEL_FILE, PROTOTYPES_FILE
from spcl.stages.builders import (
    PairOutput,
    build_segmenter,
    forward_pair,
    load_weights,
    loop_config,
    optimizer_and_schedule,
    pseudo_labelled_dataset,
    skip_missing_labels,
    source_stream,
    train_loader,
    wrap_ddp,
)
from spcl.stages.target_labels import with_target_labels
from spcl.stages.training import RankAgreement, TrainingSetup, train

__all__ = [
    "PLAIN_CE",
    "SOURCE_STREAM",
    "TARGET_STREAM",
    "AdaptParts",
    "AdaptPass",
    "adapt_forward",
    "adapt_step",
    "adapt_terms",
    "adapt_weights",
    "run",
    "setup",
]

SOURCE_STREAM, TARGET_STREAM = 11, 12  # loader seed salts
PLAIN_CE = 1.0  # the target CE term (target_ce) uses untempered logits
Batch = dict[str, Tensor]


@dataclass
class AdaptParts:
    """What the adaptation step works with."""

    cfg: AdaptConfig  # the stage's config section
    net: nn.Module  # the segmenter (DDP-wrapped under torchrun)
    bank: PrototypeBank  # the prototypes, updated by every step
    device: torch.device


class AdaptPass(NamedTuple):
    """One adaptation forward pass: outputs, labels, feature-size masks, the prototypes used."""

    out: PairOutput
    src_labels: Tensor  # (B, H, W) source ground truth
    tgt_labels: Tensor  # (B, H, W) target pseudo-labels
    src_mask: Tensor  # (B, h, w) reliable source pixels (ground truth = prediction), else 255
    tgt_mask: Tensor  # (B, h, w) pseudo-labels at feature size
    prototypes: Tensor  # (K, C) the bank after this step's EMA update, detached


def adapt_forward(parts: AdaptParts, src: Batch, tgt: Batch) -> AdaptPass:
    """Forward both batches, build the masks and take the prototype bank's EMA step."""
    src_labels = src["label"].to(parts.device, non_blocking=True)
    tgt_labels = tgt["label"].to(parts.device, non_blocking=True)
    out = forward_pair(
        parts.net,
        src["image"].to(parts.device, non_blocking=True),
        tgt["image"].to(parts.device, non_blocking=True),
    )
    feat_size = out.src.features.shape[-2:]
    src_mask = reliable_mask(downsample_labels(src_labels, feat_size), out.src.logits)
    tgt_mask = downsample_labels(tgt_labels, out.tgt.features.shape[-2:])
    sums, counts = class_feature_sums(
        out.src.features.detach().float(), src_mask, parts.bank.num_classes
    )
    parts.bank.update_from_sums(all_reduce_sum_(sums), all_reduce_sum_(counts))
    protos = parts.bank.prototypes.detach()
    return AdaptPass(out, src_labels, tgt_labels, src_mask, tgt_mask, protos)


def adapt_terms(parts: AdaptParts, step: AdaptPass) -> dict[str, Tensor]:
    """The loss terms of a pass: ``seg``, ``cl_src``, ``cl_tgt``, ``tgt_ce`` (those switched on)."""
    cfg, out = parts.cfg, step.out
    src_logits = upsample_logits(out.src.logits, step.src_labels.shape[-2:])
    terms = {"seg": tempered_cross_entropy(src_logits, step.src_labels, cfg.source_temperature)}
    tau, protos = cfg.temperature, step.prototypes
    if cfg.contrast_source:
        terms["cl_src"] = pixel_prototype_loss(out.src.features, step.src_mask, protos, tau)
    if cfg.contrast_target:
        terms["cl_tgt"] = pixel_prototype_loss(out.tgt.features, step.tgt_mask, protos, tau)
    if cfg.target_ce > 0:  # also a plain CE on the target pseudo-labels
        tgt_logits = upsample_logits(out.tgt.logits, step.tgt_labels.shape[-2:])
        terms["tgt_ce"] = tempered_cross_entropy(tgt_logits, step.tgt_labels, PLAIN_CE)
    return terms


def adapt_step(parts: AdaptParts, src: Batch, tgt: Batch) -> dict[str, Tensor]:
    """One adaptation step's loss terms (the function the stage binds)."""
    return adapt_terms(parts, adapt_forward(parts, src, tgt))


def adapt_weights(cfg: AdaptConfig) -> dict[str, float]:
    """The total loss: CE + λ_cl·(each contrastive term switched on) + target_ce·target CE."""
    weights = {"seg": 1.0}
    if cfg.contrast_source:
        weights["cl_src"] = cfg.lambda_cl
    if cfg.contrast_target:
        weights["cl_tgt"] = cfg.lambda_cl
    if cfg.target_ce > 0:
        weights["tgt_ce"] = cfg.target_ce
    return weights


def _bank(ctx: RunContext, cfg: AdaptConfig, prototypes: Path) -> PrototypeBank:
    """The prototype bank, started from the prototypes stage's file."""
    init = load_state(prototypes)
    bank = PrototypeBank(
        ctx.config.data.num_classes, init["prototypes"].shape[1], cfg.momentum, cfg.absent_policy
    ).to(ctx.device)
    bank.initialize(init["prototypes"].to(ctx.device), init["seen"].to(ctx.device))
    return bank


class _PrototypeScalars:
    """The bank's logged scalars: mean prototype norm, and mean drift since the last log line."""

    def __init__(self, bank: PrototypeBank) -> None:
        self.bank, self.last = bank, bank.prototypes.clone()

    def __call__(self) -> dict[str, float]:
        drift = (self.bank.prototypes - self.last).norm(dim=1).mean()
        self.last.copy_(self.bank.prototypes)
        return {
            "prototype_norm": float(self.bank.prototypes.norm(dim=1).mean()),
            "prototype_drift": float(drift),
        }


def setup(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> TrainingSetup:
    """The warm-up model with its prototypes (``inputs["prototypes"]``) and the source stream and
    the target stream with its pseudo-labels (``inputs["pseudo_labels"]``); writes the final
    prototypes and ``model.pth``, the bank checked on every rank at each checkpoint."""
    cfg, data = ctx.config.adapt, ctx.config.data
    model = load_weights(build_segmenter(ctx, freeze_bn=cfg.freeze_bn), inputs["warmup"])
    net = wrap_ddp(ctx, model)
    optimizer, schedule = optimizer_and_schedule(model, cfg.optim, world=ctx.world)
    bank = _bank(ctx, cfg, inputs["prototypes"])
    augment = {"hflip": data.hflip}
    source = source_stream(
        ctx, cfg.optim.batch_size, SOURCE_STREAM, color_jitter=data.color_jitter, **augment
    )
    labels = inputs["pseudo_labels"]
    target = train_loader(
        ctx,
        pseudo_labelled_dataset(data.target, labels, skip_missing_labels(ctx), **augment),
        cfg.optim.batch_size,
        TARGET_STREAM,
    )
    model.train()
    parts = AdaptParts(cfg, net, bank, ctx.device)
    state: dict[str, Stateful] = {
        "model": model,
        "optimizer": optimizer,
        "schedule": schedule,
        "bank": bank,
        "source": source,
        "target": target,
    }
    stage = TrainingSetup(
        step=lambda _: adapt_step(parts, next(source), next(target)),
        weights=adapt_weights(cfg),
        state=state,
        optimizers=[optimizer],
        schedulers=[schedule],
        loop=loop_config(ctx, cfg.optim, out_dir, "adapt", _PrototypeScalars(bank)),
        outputs={
            PROTOTYPES_FILE: lambda: {
                "prototypes": bank.prototypes.cpu(),
                "seen": bank.initialized.cpu(),
            },
            MODEL_FILE: model,
        },
        agree=[RankAgreement("prototype banks", "prototype banks", bank)],
        parts=parts,
    )
    return with_target_labels(ctx, stage, net, color_jitter=data.color_jitter, **augment)


def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Adapt the warm-up model with its prototypes and pseudo-labels; returns ``model.pth``."""
    return train(ctx, out_dir, setup(ctx, out_dir, inputs))
