"""Output-space adversarial loss terms for the warm-up (AdaptSegNet-style, SPCL stage 1).

A discriminator D looks at softmax segmentation maps and is trained to tell source (label 0)
from target (label 1); the segmenter is trained to make D call its target maps "source", with
weight λ_adv = 0.001. Both terms are binary cross-entropies on D's raw logits, averaged over
every output element. As in the reference, the caller feeds D the softmax of the *tempered*
source logits (÷ ``SOURCE_LOGIT_TEMPERATURE``, see :mod:`spcl.method.losses`) but of the raw
target logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DISCRIMINATOR_WEIGHT",
    "REFERENCE_ADV_WEIGHT",
    "SOURCE_DOMAIN_LABEL",
    "TARGET_DOMAIN_LABEL",
    "adversarial_generator_loss",
    "discriminator_loss",
]

SOURCE_DOMAIN_LABEL = 0.0  # the reference's D target for source maps
TARGET_DOMAIN_LABEL = 1.0  # the reference's D target for target maps
REFERENCE_ADV_WEIGHT = 0.001  # λ_adv: weight of the generator's adversarial term
DISCRIMINATOR_WEIGHT = 0.5  # each domain's half of the discriminator loss


def _bce_to(logits: Tensor, label: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, logits.new_full(logits.shape, label))


def discriminator_loss(d_src_logits: Tensor, d_tgt_logits: Tensor) -> Tensor:
    """D's loss: ``0.5·BCE(D(source), 0) + 0.5·BCE(D(target), 1)``.

    Pass D's outputs on *detached* segmentation maps so that this loss trains D only.

    Args:
        d_src_logits: D's logits on source maps.
        d_tgt_logits: D's logits on target maps.

    Returns:
        A scalar loss.

    Shape:
        d_src_logits, d_tgt_logits: any, e.g. (B, 1, h', w') → ().
    """
    src_term = _bce_to(d_src_logits, SOURCE_DOMAIN_LABEL)
    tgt_term = _bce_to(d_tgt_logits, TARGET_DOMAIN_LABEL)
    return DISCRIMINATOR_WEIGHT * src_term + DISCRIMINATOR_WEIGHT * tgt_term


def adversarial_generator_loss(d_tgt_logits: Tensor) -> Tensor:
    """The segmenter's adversarial term: ``BCE(D(target), 0)``, fool D into saying "source".

    Unweighted: the caller multiplies it by λ_adv (``REFERENCE_ADV_WEIGHT`` in the reference).

    Shape:
        d_tgt_logits: any, e.g. (B, 1, h', w') → ().
    """
    return _bce_to(d_tgt_logits, SOURCE_DOMAIN_LABEL)
