"""A few target labels in every training stage: their stream, their CE term, their selection.

With ``data.target_labels`` set (a list file or a share of the target-train split,
:mod:`spcl.data.target_labels`), each training stage (warm-up, adapt, self-training, online)
draws a batch of labelled target images per micro-batch, beside its own batches, and adds the CE
of its model on them as the term ``tgt_gt`` (weight ``data.target_labels.weight``): beside the
source CE in the warm-up, SPCL's adaptation and the online stage, beside the pseudo-label CE in
self-training. The batch has the stage's batch size (at most the number of labelled images) and
the stage's geometric augmentation; its stream is checkpointed with the stage, so a resumed run
draws what an uninterrupted one draws. Off (the default) nothing changes: no stream, no draw.

The run checks at its start (:func:`check_target_labels`) that the list names target-train
images and that the evaluation split holds none of the labelled ones.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spcl.base import DatasetError, MissingFileError, UnknownNameError
from spcl.config_schema import Config, DomainConfig
from spcl.context import RunContext
from spcl.data.lists import SegmentationList
from spcl.data.registry import scan_domain
from spcl.data.target_labels import check_kept_out, draw_fraction, select_from_list
from spcl.engine.loop import StepFn, Terms
from spcl.method.losses import tempered_cross_entropy, upsample_logits
from spcl.stages.builders import domain_dataset, train_loader
from spcl.stages.training import TrainingSetup

__all__ = ["LABELLED_TERM", "check_target_labels", "labelled_dataset", "with_target_labels"]

LABELLED_TERM = "tgt_gt"  # the loss term of the labelled target images
LABELLED_STREAM = {"warmup": 3, "adapt": 13, "self_train": 22, "online": 35}  # seed salts
MMSEG_STAGES = ("online",)  # logits resized with align_corners=False, as the online step does
KEY = "data.target_labels.list_file"
PLAIN_CE = 1.0  # no temperature on target labels


def _files(domain: DomainConfig, key: str, *, with_labels: bool) -> tuple[list[Path], list[str]]:
    """A split's images and names (``max_items`` applied); errors name ``key``."""
    files = scan_domain(domain, key, with_labels=with_labels)
    keep = slice(None if domain.max_items <= 0 else domain.max_items)
    return files.images[keep], files.names[keep]


def _selected(config: Config, images: list[Path], names: list[str]) -> list[int]:
    """Indices of the labelled images among the target-train ``images``."""
    labels, data = config.data.target_labels, config.data
    if not labels.list_file:
        return draw_fraction(len(images), labels.fraction, labels.seed)
    val = data.target_val
    try:  # only to tell a line that names an evaluation image so; a run that evaluates
        # nothing need not have that split (check_target_labels checks it where it is scored)
        val_files = (*_files(val, "data.target_val", with_labels=False), Path(val.root))
    except (MissingFileError, DatasetError, UnknownNameError):
        val_files = None
    train = (images, names, Path(data.target.root))
    return select_from_list(Path(labels.list_file), KEY, train, val_files)


def check_target_labels(config: Config, evaluates: bool) -> list[Path]:
    """The labelled target images; with ``evaluates``, none of them in ``data.target_val``.

    Raises:
        MissingFileError: no list file, or the target-train split has no labels (names the key).
        ConfigError: a list line that names no target-train image or an evaluation image; an
            evaluation split that holds labelled images.
    """
    if not config.data.target_labels.enabled:
        return []
    key = "data.target (data.target_labels reads its labels)"
    images, names = _files(config.data.target, key, with_labels=True)
    labelled = [images[i] for i in _selected(config, images, names)]
    if evaluates:
        val = config.data.target_val
        scored, _ = _files(val, "data.target_val", with_labels=False)
        check_kept_out(labelled, scored, f"data.target_val ({val.root}, split {val.split!r})")
    return labelled


def labelled_dataset(config: Config, **augment: Any) -> SegmentationList:
    """The labelled target images with their labels and the stage's ``augment``."""
    full = domain_dataset(config.data.target, with_labels=True, train=True, **augment)
    keep = _selected(config, full.images, full.names)
    subset = copy.copy(full)
    subset.images = [full.images[i] for i in keep]
    subset.labels = [full.labels[i] for i in keep]
    subset.names = [full.names[i] for i in keep]
    return subset


def _labelled_step(
    inner: StepFn, stream: Any, net: nn.Module, device: torch.device, align_corners: bool
) -> StepFn:
    """The stage's step, then the CE of ``net`` on one labelled target batch: in the step's
    mapping, or as a part of its own after the parts of a per-pass step."""

    def labelled() -> dict[str, torch.Tensor]:
        batch = next(stream)
        labels = batch["label"].to(device, non_blocking=True)
        logits = net(batch["image"].to(device, non_blocking=True)).logits
        up = upsample_logits(logits, labels.shape[-2:], align_corners=align_corners)
        return {LABELLED_TERM: tempered_cross_entropy(up, labels, PLAIN_CE)}

    def parts(inner_parts: Iterator[Terms]) -> Iterator[Terms]:
        yield from inner_parts
        yield labelled()

    def step(iteration: int) -> Terms | Iterator[Terms]:
        terms = inner(iteration)
        if isinstance(terms, Mapping):
            return {**terms, **labelled()}
        return parts(terms)

    return step


def with_target_labels(
    ctx: RunContext, setup: TrainingSetup, net: nn.Module, **augment: Any
) -> TrainingSetup:
    """``setup`` with the labelled target term when ``data.target_labels`` is set (else itself).

    Args:
        ctx: the run; setup: the stage's setup (its loop tag names the stage).
        net: the module the stage trains (DDP-wrapped under torchrun).
        augment: the stage's geometric augmentation (``hflip``, ``crop``, ...).
    """
    labels = ctx.config.data.target_labels
    if not labels.enabled:
        return setup
    tag = setup.loop.tag
    dataset = labelled_dataset(ctx.config, **augment)
    stage_batch = getattr(ctx.config, tag).optim.batch_size
    batch = max(1, min(stage_batch, len(dataset) // max(1, ctx.world)))
    stream = train_loader(ctx, dataset, batch, LABELLED_STREAM[tag])
    ctx.tracker.info(
        f"[{tag}] {len(dataset)} labelled target images join training as '{LABELLED_TERM}' "
        f"(weight {labels.weight:g}, batch {batch}), e.g. {', '.join(dataset.names[:3])}"
    )
    step = _labelled_step(setup.step, stream, net, ctx.device, tag not in MMSEG_STAGES)
    return dataclasses.replace(
        setup,
        step=step,
        weights={**setup.weights, LABELLED_TERM: labels.weight},
        state={**setup.state, "target_labelled": stream},
    )
