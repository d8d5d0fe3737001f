"""Config → objects, for the stages: models, datasets, loaders, optimisers.

This is where the config stops: below it (models, data, method, engine) only keyword arguments.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from spcl.config_schema import DomainConfig, OptimConfig
from spcl.context import RunContext
from spcl.data.folder import ImageLabelFolder, SegmentationList
from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.data.loaders import InfiniteLoader, build_eval_loader
from spcl.data.registry import DATASET_KINDS, build_dataset
from spcl.data.sampling import (
    ClassBalancedOrder,
    default_class_index_path,
    load_or_build_class_index,
)
from spcl.data.transforms import build_eval_transform, build_train_transform
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.engine.distributed import barrier
from spcl.engine.loop import LoopConfig
from spcl.engine.optim import build_optimizer, poly_scheduler
from spcl.models.build import build_model
from spcl.models.deeplab_v2 import SegOutput
from spcl.models.files import save_model_file

__all__ = [
    "build_segmenter",
    "class_names",
    "domain_dataset",
    "eval_loader",
    "forward_pair",
    "load_weights",
    "loop_config",
    "optimizer_and_schedule",
    "pseudo_labelled_dataset",
    "save_weights",
    "source_order",
    "source_stream",
    "target_train_images",
    "train_loader",
    "wrap_ddp",
]


def build_segmenter(ctx: RunContext, *, freeze_bn: bool | None = None) -> nn.Module:
    """The configured DeepLab-v2 on the run's device (BN frozen as configured unless overridden)."""
    cfg = ctx.config.model
    model = build_model(
        cfg.name,
        ctx.config.data.num_classes,
        width=cfg.width,
        pretrained=cfg.pretrained,
        freeze_bn=cfg.freeze_bn if freeze_bn is None else freeze_bn,
        bn_eps_frozen=cfg.frozen_bn_eps,
    )
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
    """DistributedDataParallel under torchrun, the model itself otherwise."""
    if ctx.world <= 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def forward_pair(
    net: nn.Module, src_images: torch.Tensor, tgt_images: torch.Tensor
) -> tuple[SegOutput, SegOutput]:
    """Run source and target batches through the segmenter, as one batch when their sizes match.

    With frozen BatchNorm (the reference) this is the same computation as two forwards, in one
    pass. With trainable BatchNorm the batch statistics mix both domains, which keeps the running
    statistics used at test time from being source-only.
    """
    if src_images.shape[1:] != tgt_images.shape[1:]:
        return net(src_images), net(tgt_images)
    out = net(torch.cat([src_images, tgt_images]))
    split = src_images.shape[0]
    return (
        SegOutput(out.logits[:split], out.features[:split]),
        SegOutput(out.logits[split:], out.features[split:]),
    )


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a stage's ``model.pth`` into ``model`` (frozen BN has no num_batches_tracked)."""
    state = clean_state_dict(load_state(path, map_location="cpu")["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in [*missing, *unexpected] if not k.endswith("num_batches_tracked")]
    if bad:
        raise KeyError(f"{path}: weights do not fit the configured model: {bad[:5]}")
    return model


def save_weights(ctx: RunContext, model: nn.Module, path: Path) -> Path:
    """Write a stage's final ``model.pth`` (weights + architecture) on the main process."""
    if ctx.is_main:
        cfg = ctx.config
        save_model_file(
            model,
            path,
            name=cfg.model.name,
            num_classes=cfg.data.num_classes,
            width=cfg.model.width,
            class_names=class_names(cfg.data.num_classes),
        )
    return path


def class_names(num_classes: int) -> tuple[str, ...]:
    """Cityscapes names for 19 classes (or its SYNTHIA-16 subset); generic names otherwise."""
    if num_classes == CITYSCAPES.num_classes:
        return CITYSCAPES.names
    if num_classes == len(SYNTHIA_16_NAMES):
        return SYNTHIA_16_NAMES
    if num_classes == len(SYNTHIA_13_NAMES):
        return SYNTHIA_13_NAMES
    return tuple(f"class_{i}" for i in range(num_classes))


def _synthetic_folders(domain: DomainConfig, with_labels: bool) -> tuple[Path, Path | None]:
    if domain.domain not in ("source", "target"):
        raise ValueError(
            f"data.*.domain must be 'source' or 'target' for the synthetic pair, got "
            f"{domain.domain!r}"
        )
    base = Path(domain.root) / domain.domain
    labels = base / "labels" / domain.split if with_labels else None
    return base / "images" / domain.split, labels


def domain_dataset(
    domain: DomainConfig,
    *,
    with_labels: bool,
    train: bool,
    hflip: bool = False,
    color_jitter: float = 0.0,
    scale_range: list[float] | tuple[float, ...] = (),
    crop: list[int] | tuple[int, ...] = (),
) -> SegmentationList:
    """A dataset for one domain/split, with training augmentation or the test-time resize.

    ``kind: synthetic`` reads the built-in pair; every other kind goes to
    :func:`spcl.data.registry.build_dataset` with ``domain.options``.
    """
    if train:
        transform = build_train_transform(
            size=domain.size,
            hflip=hflip,
            color_jitter=color_jitter,
            scale_range=scale_range,
            crop=crop,
        )
    else:
        transform = build_eval_transform(domain.size)
    if domain.kind == "synthetic":
        images, labels = _synthetic_folders(domain, with_labels)
        return ImageLabelFolder(images, labels, transform)
    if domain.kind not in DATASET_KINDS:
        kinds = ["synthetic", *DATASET_KINDS]
        raise ValueError(f"unknown dataset kind {domain.kind!r}; valid kinds: {kinds}")
    return build_dataset(
        domain.kind,
        domain.root,
        domain.split,
        with_labels=with_labels,
        transform=transform,
        **domain.options,
    )


def source_order(
    ctx: RunContext, domain: DomainConfig, dataset: SegmentationList, salt: int
) -> ClassBalancedOrder | None:
    """Class-balanced epoch order for a source stream when ``domain.sampling`` asks for it.

    The class → images index is built once (rank 0), cached at ``domain.class_index`` or beside
    the data (the run directory when the data folder is read-only), and read by every rank.
    """
    if domain.sampling != "class_balanced":
        return None
    k = ctx.config.data.num_classes
    path = Path(domain.class_index) if domain.class_index else None
    if path is None:
        path = default_class_index_path(domain.root, domain.kind, domain.split, k)
        if not os.access(path.parent, os.W_OK):
            path = ctx.run_dir / path.name
    if ctx.is_main:
        load_or_build_class_index(dataset, k, path, progress=ctx.config.run.progress)
    barrier()
    index = load_or_build_class_index(dataset, k, path)
    return ClassBalancedOrder(index, seed=ctx.config.run.seed * 1000 + salt)


def pseudo_labelled_dataset(
    domain: DomainConfig, labels_dir: Path, **augment: Any
) -> SegmentationList:
    """The target training images paired with the pseudo-label PNGs in ``labels_dir``.

    Raises:
        FileNotFoundError: an image has no pseudo-label (names the first few).
    """
    images = domain_dataset(domain, with_labels=False, train=True, **augment)
    labels = [labels_dir / f"{name}.png" for name in images.names]
    missing = [p.name for p in labels if not p.is_file()]
    if missing:
        raise FileNotFoundError(
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
        checkpoint=out_dir / "checkpoint.pth",
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
    order: ClassBalancedOrder | None = None,
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
    )


def source_stream(ctx: RunContext, batch_size: int, salt: int, **augment: Any) -> InfiniteLoader:
    """The labelled source training stream (class-balanced when ``data.source.sampling`` asks)."""
    domain = ctx.config.data.source
    dataset = domain_dataset(domain, with_labels=True, train=True, **augment)
    return train_loader(ctx, dataset, batch_size, salt, source_order(ctx, domain, dataset, salt))


def target_train_images(ctx: RunContext) -> Iterator[torch.Tensor]:
    """Every target training image (test-time resize) on every rank, e.g. for AdaBN.

    Not sharded by rank: statistics computed from it are the same on every process.
    """
    dataset = domain_dataset(ctx.config.data.target, with_labels=False, train=False)
    for batch in build_eval_loader(dataset, num_workers=ctx.config.data.num_workers):
        yield batch["image"].to(ctx.device)


def eval_loader(ctx: RunContext, dataset: SegmentationList) -> torch.utils.data.DataLoader:
    return build_eval_loader(
        dataset, num_workers=ctx.config.data.num_workers, rank=ctx.rank, world=ctx.world
    )


def optimizer_and_schedule(
    model: nn.Module, optim: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The stage optimiser (head at ``head_lr_mult`` × lr) and its poly schedule over max_iter."""
    backbone, head = model.param_groups()
    optimizer = build_optimizer(
        backbone,
        head,
        kind=optim.optimizer,
        lr=optim.lr,
        head_lr_mult=optim.head_lr_mult,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
    )
    return optimizer, poly_scheduler(optimizer, optim.max_iter, optim.power)
