"""Pixel-to-prototype contrastive loss (SPCL stage 4.5, the paper's contribution).

Every pixel's normalised feature is scored against all K class prototypes,
``logits = norm(f) · Pᵀ / τ``, and a cross-entropy pulls it toward the prototype of its own class
and away from the others. SPCL applies it on source (reliable ground-truth pixels) and on target
(pseudo-labelled pixels) and sums the two terms:
``L_cl = CE(norm(src_feat)·Pᵀ/τ, src_mask) + CE(norm(tgt_feat)·Pᵀ/τ, tgt_mask)``.

Temperature: the reference code divides the cosine by 100 (``REFERENCE_TEMPERATURE``), i.e. τ = 100
used as a divisor, which makes every logit lie in [-0.01, 0.01] and the softmax nearly uniform
(the loss sits near ln K). The paper describes a temperature-scaled softmax without this value;
the authors' follow-up (SePiCo) uses the same convention, so we keep 100 as the reference default
and expose τ (a value such as 0.1 gives a sharp softmax).

Prototypes are statistics, not parameters: the loss detaches them, so gradients reach only the
features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from spcl.base import IGNORE_INDEX

__all__ = [
    "REFERENCE_CONTRASTIVE_WEIGHT",
    "REFERENCE_TEMPERATURE",
    "ContrastiveLosses",
    "pixel_prototype_logits",
    "pixel_prototype_loss",
    "spcl_contrastive_loss",
]

REFERENCE_TEMPERATURE = 100.0  # the reference's divisor of the cosine ("/100."): logits ∈ ±0.01
REFERENCE_CONTRASTIVE_WEIGHT = 1.0  # λ_cl, the weight of L_cl beside the source CE
NORMALIZE_EPS = 1e-12  # F.normalize's default floor on the norm


def pixel_prototype_logits(features: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """Scores of every pixel against every prototype: ``norm(features) · Pᵀ / temperature``.

    Computed as ``(P · f) / (‖f‖ · temperature)``, which equals ``F.normalize(features, dim=1)``
    (eps 1e-12) times Pᵀ up to rounding, without a normalised copy of the features (about twice
    as fast forward + backward on CPU).

    Args:
        features: feature maps, L2-normalised over channels here.
        prototypes: one prototype per class (used as given, detached).
        temperature: divisor of the similarities (the reference uses 100).

    Returns:
        The prototype logits.

    Shape:
        features: (B, C, h, w); prototypes: (K, C) → (B, K, h, w).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if prototypes.dim() != 2 or prototypes.shape[1] != features.shape[1]:
        raise ValueError(
            f"prototypes must be (K, C={features.shape[1]}), got shape {tuple(prototypes.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    batch, _, height, width = features.shape
    feat = features.flatten(2)  # (B, C, n)
    # norm(f)·Pᵀ = (P·f) / ‖f‖: scale the (B, K, n) scores, never the (B, C, n) features
    inv_norm = 1.0 / torch.linalg.vector_norm(feat, dim=1, keepdim=True).clamp_min(NORMALIZE_EPS)
    scores = torch.matmul(prototypes.detach().to(feat.dtype), feat)  # (B, K, n)
    logits = scores * (inv_norm / temperature)
    return logits.view(batch, prototypes.shape[0], height, width)


def pixel_prototype_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    temperature: float = REFERENCE_TEMPERATURE,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Cross-entropy of the prototype logits against the labels, mean over non-ignored pixels.

    When every pixel is ignored the result is a zero still attached to the graph (not NaN), so
    a step with an empty mask back-propagates zeros instead of failing.

    Args:
        features: feature maps (gradient flows to them).
        labels: class per pixel at feature size, ``ignore_index`` where unused.
        prototypes: class prototypes (detached).
        temperature: divisor of the similarities; default: the reference's 100.
        ignore_index: label of pixels to skip.

    Returns:
        A scalar loss.

    Shape:
        features: (B, C, h, w); labels: (B, h, w); prototypes: (K, C) → ().
    """
    expected = (features.shape[0], *features.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must be (B, h, w) = {expected} to match features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    labels = labels.long()
    logits = pixel_prototype_logits(features, prototypes, temperature)
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    num_valid = (labels != ignore_index).sum().clamp(min=1)
    return total / num_valid


class ContrastiveLosses(NamedTuple):
    """The two terms of SPCL's contrastive loss; ``total`` is their sum (L_cl)."""

    source: Tensor
    target: Tensor

    @property
    def total(self) -> Tensor:
        return self.source + self.target


def spcl_contrastive_loss(
    src_feat: Tensor,
    src_mask: Tensor,
    tgt_feat: Tensor,
    tgt_mask: Tensor,
    prototypes: Tensor,
    temperature: float = REFERENCE_TEMPERATURE,
    ignore_index: int = IGNORE_INDEX,
) -> ContrastiveLosses:
    """SPCL's L_cl: the pixel-prototype loss on source (reliable GT) and on target (pseudo-labels).

    Args:
        src_feat: source features.
        src_mask: reliable source labels at feature size (see ``reliable_mask``).
        tgt_feat: target features.
        tgt_mask: target pseudo-labels at feature size.
        prototypes: class prototypes (detached).
        temperature: divisor of the similarities; default: the reference's 100.
        ignore_index: label of pixels to skip.

    Returns:
        ``ContrastiveLosses(source, target)``; ``.total`` is L_cl.

    Shape:
        src_feat, tgt_feat: (B, C, h, w); src_mask, tgt_mask: (B, h, w); prototypes: (K, C).
    """
    return ContrastiveLosses(
        source=pixel_prototype_loss(src_feat, src_mask, prototypes, temperature, ignore_index),
        target=pixel_prototype_loss(tgt_feat, tgt_mask, prototypes, temperature, ignore_index),
    )
