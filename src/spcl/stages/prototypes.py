"""Stage 2 (``02_prototypes``), source semantic prototypes: one no-grad pass over source images.

With the warm-up model in eval mode (ordinary BatchNorm, eps 1e-5, as the reference rebuilds it),
each image's reliable pixels (downsampled ground truth equal to the prediction) give per-class means
of the normalised features; a class's prototype is the mean of those over the images containing it.
Writes ``prototypes.pth`` = ``{"prototypes": (K, C), "seen": (K,) bool}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from spcl.context import RunContext
from spcl.engine.checkpoint import save_state
from spcl.engine.distributed import all_reduce_sum_
from spcl.method.prototypes import PrototypeAccumulator, downsample_labels, reliable_mask
from spcl.run_dir import PROTOTYPES_FILE
from spcl.stages.builders import (
    build_segmenter,
    class_table,
    domain_dataset,
    eval_loader,
    load_weights,
)

__all__ = ["run"]


@torch.no_grad()
def run(ctx: RunContext, out_dir: Path, inputs: Mapping[str, Path]) -> Path:
    """Compute the source prototypes with the warm-up model; returns ``prototypes.pth``."""
    weights = inputs["warmup"]
    data = ctx.config.data
    model = load_weights(build_segmenter(ctx, freeze_bn=False), weights).eval()
    # training-size images and labels, no augmentation
    dataset = domain_dataset(data.source, with_labels=True, train=True)
    loader = eval_loader(ctx, dataset)
    accumulator: PrototypeAccumulator | None = None
    bar = ctx.tracker.bar(len(loader), desc="prototypes")
    for batch in loader:
        out = model(batch["image"].to(ctx.device))
        labels = downsample_labels(batch["label"].to(ctx.device), out.features.shape[-2:])
        if accumulator is None:
            accumulator = PrototypeAccumulator(data.num_classes, out.features.shape[1])
        accumulator.add(out.features.float(), reliable_mask(labels, out.logits))
        bar.update(1)
    bar.close()
    assert accumulator is not None  # the dataset is never empty
    for tensor in accumulator.sums_and_counts():
        all_reduce_sum_(tensor)
    prototypes, seen = accumulator.prototypes()
    names = class_table(ctx).names
    unseen = [n for n, s in zip(names, seen.tolist(), strict=True) if not s]
    if unseen:
        ctx.tracker.info(f"[prototypes] no reliable source pixel for: {', '.join(unseen)}")
    path = out_dir / PROTOTYPES_FILE
    if ctx.is_main:
        save_state({"prototypes": prototypes.cpu(), "seen": seen.cpu()}, path)
    return path
