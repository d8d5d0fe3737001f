"""Config → objects, for the stages: models, datasets, loaders, optimisers.

This is where the config stops: below it (models, data, method, engine) only keyword arguments.
The run's class table and its checks live in :mod:`spcl.stages.class_sets` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from spcl.base import CheckpointError, MissingFileError
from spcl.config_schema import DomainConfig, HRDAConfig, OptimConfig
from spcl.context import RunContext
from spcl.data.lists import SegmentationList
from spcl.data.loaders import InfiniteLoader, build_eval_loader
from spcl.data.registry import build_dataset
from spcl.data.sampling import EpochOrder
from spcl.data.transforms import build_eval_transform, build_train_transform
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.engine.loop import LoopConfig
from spcl.engine.optim import optimizer_from_groups, param_groups, poly_scheduler
from spcl.models.build import build_model
from spcl.models.files import save_model_file
from spcl.models.hrda import HRDASegmenter, HRDASettings
from spcl.models.segmenter import SegOutput
from spcl.run_dir import CHECKPOINT_FILE
from spcl.stages.class_sets import (
    check_class_sets,
    check_model_classes,
    check_model_name,
    class_table,
    run_class_table,
)
from spcl.stages.source_order import source_order

__all__ = [
    "PairOutput",
    "build_segmenter",
    "check_class_sets",
    "check_model_classes",
    "check_model_name",
    "class_table",
    "domain_dataset",
    "eval_loader",
    "forward_pair",
    "load_weights",
    "loop_config",
    "optimizer_and_schedule",
    "pseudo_labelled_dataset",
    "run_class_table",
    "save_weights",
    "scaled_optim",
    "skip_missing_labels",
    "source_order",
    "source_stream",
    "target_train_images",
    "train_loader",
    "wrap_ddp",
]


def build_segmenter(
    ctx: RunContext, *, freeze_bn: bool | None = None, hrda: HRDAConfig | None = None
) -> nn.Module:
    """The configured segmenter on the run's device (BN frozen as configured unless overridden),
    inside HRDA's two-scale model when ``hrda`` is given and enabled (the online stage's)."""
    cfg = ctx.config.model
    model = build_model(
        cfg.name,
        ctx.config.data.num_classes,
        width=cfg.width,
        pretrained=cfg.pretrained,
        freeze_bn=cfg.freeze_bn if freeze_bn is None else freeze_bn,
        bn_eps_frozen=cfg.frozen_bn_eps,
        options=cfg.options,
    )
    if hrda is not None and hrda.enabled:  # HRDA: a scale-attention head beside the model
        model = HRDASegmenter(model, HRDASettings.from_mapping(dataclasses.asdict(hrda)))
    trainable_bn = not (cfg.freeze_bn if freeze_bn is None else freeze_bn)
    if ctx.world > 1 and trainable_bn and ctx.device.type == "cuda":
        # SyncBN needs CUDA; on CPU (gloo) each rank normalises its own batch and DDP keeps the
        # running statistics in step by broadcasting rank 0's buffers
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    if ctx.config.run.channels_last and ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_ddp(ctx: RunContext, model: nn.Module) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise.

    Wrapping gives every rank rank 0's parameters and buffers (each rank seeded its own random
    init): build whatever must be the same on every rank from the model (an EMA teacher) after
    this call, never before.
    """
    if ctx.world <= 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


class PairOutput(NamedTuple):
    """The segmenter's outputs on a source and a target batch.

    Attributes:
        src, tgt: each domain's logits and features.
        feature_maps: the feature maps the logits were computed from (one joint map when both
            batches ran as one; the per-domain slices of it are not on the logits' path).
    """

    src: SegOutput
    tgt: SegOutput
    feature_maps: tuple[torch.Tensor, ...]


def forward_pair(net: nn.Module, src_images: torch.Tensor, tgt_images: torch.Tensor) -> PairOutput:
    """Run source and target batches through the segmenter, as one batch when their sizes match.

    With frozen BatchNorm (the reference) this is the same computation as two forwards, in one
    pass. With trainable BatchNorm the batch statistics mix both domains, which keeps the running
    statistics used at test time from being source-only.
    """
    if src_images.shape[1:] != tgt_images.shape[1:]:
        src, tgt = net(src_images), net(tgt_images)
        return PairOutput(src, tgt, (src.features, tgt.features))
    out = net(torch.cat([src_images, tgt_images]))
    split = src_images.shape[0]
    return PairOutput(
        SegOutput(out.logits[:split], out.features[:split]),
        SegOutput(out.logits[split:], out.features[split:]),
        (out.features,),
    )


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a stage's ``model.pth`` into ``model`` (frozen BN has no num_batches_tracked).

    A file of HRDA's two-scale model (``arch.hrda``, the online stage's with ``online.hrda``)
    wraps a one-scale ``model`` in it first, so the evaluate stage scores it as it was trained;
    the wrapped model is returned.
    """
    loaded = load_state(path, map_location="cpu")
    arch = loaded.get("arch")
    settings = arch.get("hrda") if isinstance(arch, Mapping) else None
    if settings is not None and not isinstance(model, HRDASegmenter):
        try:
            hrda = HRDASettings.from_mapping(settings)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: arch.hrda is not HRDA's settings: {exc}") from exc
        device = next(model.parameters()).device
        model = HRDASegmenter(model, hrda).to(device)  # type: ignore[arg-type]
    state = clean_state_dict(loaded["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in [*missing, *unexpected] if not k.endswith("num_batches_tracked")]
    if bad:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {bad[:5]}")
    return model


def save_weights(ctx: RunContext, model: nn.Module, path: Path) -> Path:
    """Write a stage's final ``model.pth`` (weights, architecture, class table) on rank 0."""
    if ctx.is_main:
        cfg, table = ctx.config, class_table(ctx)
        save_model_file(
            model,
            path,
            name=cfg.model.name,
            num_classes=cfg.data.num_classes,
            width=cfg.model.width,
            class_names=table.names,
            palette=table.palette,
            options=cfg.model.options,
        )
    return path


def domain_dataset(
    domain: DomainConfig,
    *,
    with_labels: bool,
    train: bool,
    hflip: bool = False,
    color_jitter: float = 0.0,
    scale_range: list[float] | tuple[float, ...] = (),
    crop: list[int] | tuple[int, ...] = (),
    crop_max_share: float = 1.0,
    pad: str = "center",
) -> SegmentationList:
    """A dataset for one domain/split, with training augmentation or the test-time resize.

    Every kind (the synthetic pair included) goes to :func:`spcl.data.registry.build_dataset`
    with ``domain.options``.
    """
    if train:
        transform = build_train_transform(
            size=domain.size,
            hflip=hflip,
            color_jitter=color_jitter,
            scale_range=scale_range,
            crop=crop,
            crop_max_share=crop_max_share,
            pad=pad,
        )
    else:
        transform = build_eval_transform(domain.size)
    return build_dataset(
        domain.kind,
        domain.root,
        domain.split,
        with_labels=with_labels,
        transform=transform,
        max_items=domain.max_items,
        **domain.options,
    )


def pseudo_labelled_dataset(
    domain: DomainConfig,
    labels_dir: Path,
    skip_missing: Callable[[str], None] | None = None,
    **augment: Any,
) -> SegmentationList:
    """The target training images paired with the pseudo-label PNGs in ``labels_dir``.

    ``skip_missing`` (``data.on_error: skip``): images without a pseudo-label (unreadable when
    the labels were made) are left out and named through it, instead of an error.

    Raises:
        FileNotFoundError: an image has no pseudo-label (names the first few).
    """
    images = domain_dataset(domain, with_labels=False, train=True, **augment)
    labels = [labels_dir / f"{name}.png" for name in images.names]
    missing = [p.name for p in labels if not p.is_file()]
    if missing and skip_missing is not None:
        keep = [i for i, p in enumerate(labels) if p.is_file()]
        skip_missing(f"left out {len(missing)} target image(s) without a pseudo-label: {missing}")
        return SegmentationList(
            [images.images[i] for i in keep],
            [labels[i] for i in keep],
            images.transform,
            names=[images.names[i] for i in keep],
        )
    if missing:
        raise MissingFileError(
            f"{len(missing)} target image(s) have no pseudo-label in {labels_dir}, "
            f"e.g. {', '.join(missing[:5])}"
        )
    return SegmentationList(images.images, labels, images.transform, names=images.names)


def loop_config(
    ctx: RunContext,
    optim: OptimConfig,
    out_dir: Path,
    tag: str,
    extra_scalars: Callable[[], Mapping[str, float]] | None = None,
) -> LoopConfig:
    """Loop settings of a training stage: its schedule's stop, the run's logging and precision."""
    run = ctx.config.run
    return LoopConfig(
        stop_iter=optim.stop_iter,
        checkpoint=out_dir / CHECKPOINT_FILE,
        tag=tag,
        ckpt_every=run.ckpt_every,
        log_every=run.log_every,
        grad_accum=optim.grad_accum,
        clip_grad_norm=optim.clip_grad_norm,
        amp=run.amp,
        device_type=ctx.device.type,
        extra_scalars=extra_scalars,
    )


def train_loader(
    ctx: RunContext,
    dataset: SegmentationList,
    batch_size: int,
    salt: int,
    order: EpochOrder | None = None,
) -> InfiniteLoader:
    """A resumable batch stream seeded from the run seed and a per-stream ``salt``."""
    return InfiniteLoader(
        dataset,
        batch_size,
        seed=ctx.config.run.seed * 1000 + salt,
        num_workers=ctx.config.data.num_workers,
        rank=ctx.rank,
        world=ctx.world,
        pin_memory=ctx.device.type == "cuda",
        order=order,
        **_unreadable(ctx),
    )


def _data_warning(ctx: RunContext) -> Callable[[str], None]:
    """How a stage names a data file it leaves out: a ``[data]`` warning line."""
    return lambda message: ctx.tracker.warning(f"[data] {message}")


def _unreadable(ctx: RunContext) -> dict[str, Any]:
    """What loaders do with an unreadable file (``data.on_error``), and where they say so."""
    return {"on_error": ctx.config.data.on_error, "warn": _data_warning(ctx)}


def skip_missing_labels(ctx: RunContext) -> Callable[[str], None] | None:
    """With ``data.on_error: skip``, how a stage names target images left without a label."""
    return _data_warning(ctx) if ctx.config.data.on_error == "skip" else None


def source_stream(
    ctx: RunContext, batch_size: int, salt: int, sampling: str = "data", **augment: Any
) -> InfiniteLoader:
    """The labelled source training stream, ordered as ``data.source.sampling`` asks, or as
    ``sampling`` when it is not ``"data"`` (``uniform``, ``class_balanced``, ``rare_class``)."""
    domain = ctx.config.data.source
    if sampling != "data":
        domain = dataclasses.replace(domain, sampling=sampling)
    joint = domain.sampling == "rare_class" and domain.rcs_joint_tries > 0  # VFM-UDA's rule
    max_share = augment.pop("crop_max_share", 1.0) if joint else 1.0  # checked by the dataset
    dataset = domain_dataset(domain, with_labels=True, train=True, **augment)
    if domain.sampling == "rare_class":  # DAFormer: a sample short of its class is drawn again
        dataset.min_class_pixels = domain.rcs_min_pixels * domain.rcs_min_crop_ratio
        dataset.joint_tries, dataset.max_share = domain.rcs_joint_tries, max_share
    return train_loader(ctx, dataset, batch_size, salt, source_order(ctx, domain, dataset, salt))


def target_train_images(ctx: RunContext) -> Iterator[torch.Tensor]:
    """Every target training image (test-time resize) on every rank, e.g. for AdaBN.

    Not sharded by rank: statistics computed from it are the same on every process.
    """
    dataset = domain_dataset(ctx.config.data.target, with_labels=False, train=False)
    loader = build_eval_loader(dataset, num_workers=ctx.config.data.num_workers, **_unreadable(ctx))
    for batch in loader:
        yield batch["image"].to(ctx.device)


def eval_loader(ctx: RunContext, dataset: SegmentationList) -> Iterable[dict[str, Any]]:
    return build_eval_loader(
        dataset,
        num_workers=ctx.config.data.num_workers,
        rank=ctx.rank,
        world=ctx.world,
        **_unreadable(ctx),
    )


def scaled_optim(optim: OptimConfig, world: int) -> OptimConfig:
    """``optim`` with ``lr`` × √(batch_size × world × grad_accum) under ``lr_batch_scaling: sqrt``
    (VFM-UDA++ ``configure_optimizers``: lr × √(batch · devices · nodes); accumulation stands in
    for devices here, so 1 GPU × 2 × 4 steps gets the lr of 4 GPUs × 2); itself otherwise."""
    if optim.lr_batch_scaling == "none":
        return optim
    total = optim.batch_size * world * optim.grad_accum
    return dataclasses.replace(optim, lr=optim.lr * math.sqrt(total))


def optimizer_and_schedule(
    model: nn.Module, optim: OptimConfig, *, world: int = 1, extra: Sequence[nn.Module] = ()
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The stage optimiser (per-parameter groups, :func:`spcl.engine.optim.param_groups`) and its
    poly schedule over max_iter (with warm-up and floor when configured). The lr is scaled by
    the total batch of ``world`` ranks when ``optim.lr_batch_scaling`` says so; ``extra`` modules
    (VFM-UDA++'s distillation head) train at the head's lr, as the authors' decoder.

    With the reference settings (all multipliers 1, no warm-up) this is SGD/Adam with the backbone
    at ``lr`` and the head at ``head_lr_mult`` × lr, as before.
    """
    optim = scaled_optim(optim, world)
    groups = param_groups(
        model,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        head_lr_mult=optim.head_lr_mult,
        backbone_lr_mult=optim.backbone_lr_mult,
        layer_decay=optim.layer_decay,
        norm_decay_mult=optim.norm_decay_mult,
        embed_decay_mult=optim.embed_decay_mult,
    )
    head_lr = optim.lr * optim.head_lr_mult
    groups += [
        {"params": list(m.parameters()), "lr": head_lr, "weight_decay": optim.weight_decay}
        for m in extra
    ]
    optimizer = optimizer_from_groups(
        groups,
        kind=optim.optimizer,
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        betas=optim.betas,
    )
    schedule = poly_scheduler(
        optimizer,
        optim.max_iter,
        optim.power,
        min_lr=optim.min_lr,
        warmup_iters=optim.warmup_iters,
        warmup_ratio=optim.warmup_ratio,
        warmup_mode=optim.warmup_mode,
    )
    return optimizer, schedule
