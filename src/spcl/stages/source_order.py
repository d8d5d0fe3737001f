"""The source stream's order: class-balanced (SPCL) or rare-class (DAFormer) sampling, and what
it leaves out.

Both schemes read the class index of the source (:mod:`spcl.data.sampling`), made by
``spcl data check`` or, on first use, by the run. Items that could not be read get no draw; the
index lists them with the reason, and the run never trains around them unsaid: with
``data.on_error: fail`` it stops naming them, with ``skip`` it names each one in ``log.txt``. The
same holds for classes rare-class sampling cannot draw (no image with more than
``data.source.rcs_min_pixels`` pixels of them), and a threshold that leaves no class at all is a
one-line error with the value to try: DAFormer's 3000 pixels are counted on 1914×1052 GTA5 labels.
The threshold is not scaled by itself, because the shipped SYNTHIA configs keep DAFormer's 3000 on
their 1280×760 labels, as the authors do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from spcl.base import DatasetError
from spcl.config_schema import DomainConfig
from spcl.context import RunContext
from spcl.data.lists import SegmentationList
from spcl.data.rare_class import (
    RareClassOrder,
    rare_class_pools,
    rare_class_probabilities,
    scaled_min_pixels,
)
from spcl.data.sampling import (
    ClassBalancedOrder,
    ClassIndex,
    EpochOrder,
    default_class_index_path,
    load_or_build_class_index,
)
from spcl.engine.distributed import barrier
from spcl.stages.class_sets import class_table

__all__ = ["source_order"]

LISTED = 5  # excluded files named in the error (every one is in the class index and the check)


def _index_path(ctx: RunContext, domain: DomainConfig) -> Path:
    """``domain.class_index``, or beside the data (the run directory if that is read-only)."""
    if domain.class_index:
        return Path(domain.class_index)
    k = ctx.config.data.num_classes
    path = default_class_index_path(domain.root, domain.kind, domain.split, k)
    return path if os.access(path.parent, os.W_OK) else ctx.run_dir / path.name


def _account_for_excluded(ctx: RunContext, index: ClassIndex, path: Path) -> None:
    """Refuse the items the index leaves out (``data.on_error: fail``) or name each one."""
    if not index.excluded:
        return
    if ctx.config.data.on_error != "skip":
        shown = "; ".join(list(index.excluded.values())[:LISTED])
        more = f" (and {len(index.excluded) - LISTED} more)" if len(index.excluded) > LISTED else ""
        raise DatasetError(
            f"{len(index.excluded)} source file(s) cannot be used (class index {path}): "
            f"{shown}{more}; fix them (`spcl data check` lists them all) or set "
            f"data.on_error=skip to train without them, each named in log.txt"
        )
    for reason in index.excluded.values():
        ctx.tracker.warning(f"[data] left out of the source (class index {path}): {reason}")


def _rare_class_order(
    ctx: RunContext, domain: DomainConfig, dataset: SegmentationList, index: ClassIndex, seed: int
) -> RareClassOrder:
    """DAFormer's RCS; classes it cannot draw are named, a threshold that leaves none refused."""
    counts, minimum = index.pixel_counts, domain.rcs_min_pixels
    classes, _ = rare_class_probabilities(counts, domain.rcs_temperature)
    pools = rare_class_pools(counts, minimum)
    names = class_table(ctx).names
    empty = [names[c] for c in classes if pools[c].size == 0]
    if len(empty) == len(classes):
        with Image.open(dataset.labels[0]) as label:
            width, height = label.size
        suggested = scaled_min_pixels(width * height)
        raise DatasetError(
            f"data.source.rcs_min_pixels={minimum}: no source image has more than {minimum} "
            f"pixels of any class (the most in one image is {int(np.max(counts))}; labels of "
            f"{width}x{height}); the shipped value is DAFormer's, for 1914x1052 GTA5 labels: "
            f"scale it to your labels' area, e.g. data.source.rcs_min_pixels={suggested}"
        )
    if empty:
        ctx.tracker.info(
            f"[data] rare-class sampling leaves out class(es) {empty}: no source image has more "
            f"than {minimum} pixels of them (data.source.rcs_min_pixels)"
        )
    return RareClassOrder(index, seed, domain.rcs_temperature, minimum, empty_pools="drop")


def source_order(
    ctx: RunContext, domain: DomainConfig, dataset: SegmentationList, salt: int
) -> EpochOrder | None:
    """The source stream's epoch order when ``domain.sampling`` asks for one.

    ``class_balanced``: the SPCL reference's scheme; ``rare_class``: DAFormer's rare-class
    sampling (``rcs_temperature``, ``rcs_min_pixels``). Both read the class → images index,
    built once (rank 0), cached at ``domain.class_index`` or beside the data (the run directory
    when the data folder is read-only), and read by every rank.

    Raises:
        DatasetError: the index leaves out files and ``data.on_error`` is ``fail``, or no class
            has an image above ``rcs_min_pixels``.
    """
    if domain.sampling == "uniform":
        return None
    k, path = ctx.config.data.num_classes, _index_path(ctx, domain)
    if ctx.is_main:
        load_or_build_class_index(dataset, k, path, progress=ctx.config.run.progress)
    barrier()
    index = load_or_build_class_index(dataset, k, path)
    _account_for_excluded(ctx, index, path)
    seed = ctx.config.run.seed * 1000 + salt
    if domain.sampling == "rare_class":
        return _rare_class_order(ctx, domain, dataset, index, seed)
    return ClassBalancedOrder(index, seed=seed)
