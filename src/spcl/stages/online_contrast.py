"""The contrast terms of the online step (``cl_src``, ``cl_tgt``): SPCL's and SePiCo's variants.

``online.contrast`` picks what the terms compare the student's features with:

- ``statistics: ema`` (SPCL's convention): a :class:`~spcl.method.prototypes.PrototypeBank`, one
  EMA step per iteration from the teacher's source features, and the pixel-to-prototype CE;
- ``statistics: cumulative`` (SePiCo): a :class:`~spcl.method.sepico.ClassStatistics` of the same
  features, all-reduced across ranks, and ``loss``: ProtoCL on its means, DistCL on means and
  variances, BankCL on its banked batch means;

with the labels brought to feature size by nearest neighbour or SePiCo's ratio rule
(``labels``), and SePiCo's regulariser when ``regularizer`` > 0. The statistics are updated every
iteration from the first, before the terms use them; the terms are 0 (no graph) before
``start_iter``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from spcl.engine.distributed import all_reduce_sum_
from spcl.method.contrastive import pixel_prototype_loss
from spcl.method.ema import kept_batchnorm_statistics
from spcl.method.prototypes import class_feature_sums
from spcl.method.pseudo_weight import pseudo_labels_with_ignore
from spcl.method.sepico import (
    bank_contrastive_loss,
    contrast_labels,
    dist_contrastive_loss,
    proto_contrastive_loss,
)

if TYPE_CHECKING:
    from spcl.stages.online_step import OnlineParts

__all__ = ["contrast_terms"]


def _labels(parts: OnlineParts, labels: Tensor, features: Tensor) -> Tensor:
    """``labels`` at the features' size by the configured rule."""
    cfg = parts.cfg.contrast
    size = (features.shape[-2], features.shape[-1])
    return contrast_labels(labels, size, cfg.labels, parts.num_classes, cfg.label_min_ratio)


@torch.no_grad()
def _update_statistics(parts: OnlineParts, src_images: Tensor, src_labels: Tensor) -> None:
    """The bank's EMA step or the cumulative statistics' update, from the teacher's features on
    the (weak) source batch.

    The teacher's BatchNorm running statistics are kept: they stay statistics of clean target
    batches (the authors evaluate the student, so this pass's effect on them never shows there).
    """
    with kept_batchnorm_statistics(parts.teacher):
        feats = parts.teacher(src_images).features
    labels = _labels(parts, src_labels, feats)
    if parts.statistics is not None:
        parts.statistics.update(feats, labels, reduce=all_reduce_sum_)
        return
    assert parts.bank is not None
    sums, counts = class_feature_sums(feats.float(), labels, parts.num_classes)
    parts.bank.update_from_sums(all_reduce_sum_(sums), all_reduce_sum_(counts))


def _loss(parts: OnlineParts, features: Tensor, labels: Tensor) -> Tensor:
    """The configured contrast of ``features`` against the current statistics."""
    cfg = parts.cfg.contrast
    tau, reg = cfg.temperature, cfg.regularizer
    stats = parts.statistics
    if stats is None:  # SPCL's EMA prototypes
        assert parts.bank is not None
        protos = parts.bank.prototypes.detach()
        if reg == 0:  # the SPCL reference's loss, computed as before
            return pixel_prototype_loss(features, labels, protos, tau)
        return proto_contrastive_loss(features, labels, protos, tau, reg)
    if cfg.loss == "dist":
        return dist_contrastive_loss(features, labels, stats.mean, stats.variance, tau, reg)
    if cfg.loss == "bank":
        return bank_contrastive_loss(
            features, labels, stats.bank, stats.filled, stats.mean, tau, reg
        )
    return proto_contrastive_loss(features, labels, stats.mean, tau, reg)


def contrast_terms(
    parts: OnlineParts,
    iteration: int,
    src: tuple[Tensor, Tensor, Tensor],
    tgt_features: Tensor | None,
    pseudo: tuple[Tensor, Tensor],
) -> dict[str, Tensor]:
    """``cl_src`` and ``cl_tgt`` of this iteration: 0 (no graph) before the start iteration.

    Args:
        parts: the online step's parts (``bank`` or ``statistics`` set).
        iteration: 0-based iteration.
        src: the weak source images, their labels and the student's source features.
        tgt_features: the student's features on the augmented target crop (None: no target term).
        pseudo: the teacher's pseudo-labels ŷ and their weights W (W = 0 → ignored).
    """
    cfg = parts.cfg.contrast
    src_images, src_labels, src_features = src
    _update_statistics(parts, src_images, src_labels)
    started = iteration >= cfg.start_iter
    terms: dict[str, Tensor] = {}
    if cfg.source:
        feats = src_features
        terms["cl_src"] = (
            _loss(parts, feats, _labels(parts, src_labels, feats))
            if started
            else feats.new_zeros(())
        )
    if cfg.target and tgt_features is not None:
        kept = pseudo_labels_with_ignore(*pseudo)
        feats = tgt_features
        terms["cl_tgt"] = (
            _loss(parts, feats, _labels(parts, kept, feats)) if started else feats.new_zeros(())
        )
    return terms
