"""The paper's math, pure tensors: prototypes, contrast, pseudo-label thresholds, adversarial."""

from __future__ import annotations

from spcl.method.adversarial import (
    REFERENCE_ADV_WEIGHT,
    SOURCE_DOMAIN_LABEL,
    TARGET_DOMAIN_LABEL,
    adversarial_generator_loss,
    discriminator_loss,
)
from spcl.method.contrastive import (
    REFERENCE_CONTRASTIVE_WEIGHT,
    REFERENCE_TEMPERATURE,
    ContrastiveLosses,
    pixel_prototype_logits,
    pixel_prototype_loss,
    spcl_contrastive_loss,
)
from spcl.method.losses import SOURCE_LOGIT_TEMPERATURE, tempered_cross_entropy, upsample_logits
from spcl.method.prototypes import (
    REFERENCE_MOMENTUM,
    AbsentPolicy,
    PrototypeAccumulator,
    PrototypeBank,
    class_feature_means,
    class_feature_sums,
    downsample_labels,
    reliable_mask,
)
from spcl.method.pseudo_labels import (
    DEFAULT_THRESHOLD_BINS,
    REFERENCE_THRESHOLD_CAP,
    ThresholdEstimator,
    apply_thresholds,
    class_coverage,
    threshold_predictions,
)

__all__ = [
    "DEFAULT_THRESHOLD_BINS",
    "REFERENCE_ADV_WEIGHT",
    "REFERENCE_CONTRASTIVE_WEIGHT",
    "REFERENCE_MOMENTUM",
    "REFERENCE_TEMPERATURE",
    "REFERENCE_THRESHOLD_CAP",
    "SOURCE_DOMAIN_LABEL",
    "SOURCE_LOGIT_TEMPERATURE",
    "TARGET_DOMAIN_LABEL",
    "AbsentPolicy",
    "ContrastiveLosses",
    "PrototypeAccumulator",
    "PrototypeBank",
    "ThresholdEstimator",
    "adversarial_generator_loss",
    "apply_thresholds",
    "class_coverage",
    "class_feature_means",
    "class_feature_sums",
    "discriminator_loss",
    "downsample_labels",
    "pixel_prototype_logits",
    "pixel_prototype_loss",
    "reliable_mask",
    "spcl_contrastive_loss",
    "tempered_cross_entropy",
    "threshold_predictions",
    "upsample_logits",
]
