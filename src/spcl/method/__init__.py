"""The methods' math on tensors, apart from data loading and stage wiring (:mod:`spcl.stages`).

SPCL (the chain of stages 1–6, docs/method.md):

- :mod:`~spcl.method.losses`: the source CE with the reference's logit temperature, logit
  upsampling.
- :mod:`~spcl.method.adversarial`: the output-space adversarial terms of the warm-up.
- :mod:`~spcl.method.prototypes`: class means of normalised features, the prototype bank and its
  EMA.
- :mod:`~spcl.method.pseudo_labels`: per-class confidence thresholds in fixed memory, and labels.
- :mod:`~spcl.method.contrastive`: the pixel-to-prototype contrastive loss.
- :mod:`~spcl.method.adabn`: BatchNorm statistics re-estimated on target images (a control).

The online recipe (stage 7; DAFormer, MIC, SePiCo, docs/online.md and docs/recipes.md):

- :mod:`~spcl.method.ema`: the EMA teacher and its warm-up rule.
- :mod:`~spcl.method.pseudo_weight`: teacher pseudo-labels and the confidence weight.
- :mod:`~spcl.method.mixing`: cross-domain ClassMix masks and mixing.
- :mod:`~spcl.method.photometric`: the strong augmentation (colour jitter, Gaussian blur).
- :mod:`~spcl.method.masking`: MIC's random block mask.
- :mod:`~spcl.method.feature_distance`: the thing-class ImageNet feature distance.
- :mod:`~spcl.method.weighted_ce`: the pixel-weighted CE with mmseg's reduction.
- :mod:`~spcl.method.class_balanced_crop`: SePiCo's class-balanced crop on the teacher's labels.
- :mod:`~spcl.method.sepico`: SePiCo's class statistics and its DistCL, BankCL and ProtoCL losses.
- :mod:`~spcl.method.hrda`: HRDA's context/detail geometry, scale fusion and detail loss.
- :mod:`~spcl.method.vfm_augment`: VFM-UDA's weak and VFM-UDA++'s strong source augmentation,
  and their torchvision-style augmentation of the mixed and masked images.
- :mod:`~spcl.method.feature_distill`: VFM-UDA++'s feature distillation to a frozen DINOv2.

``__all__`` is the union of the modules' own ``__all__``.
"""

from __future__ import annotations

from spcl.method.adabn import recalibrate_batchnorm
from spcl.method.adversarial import (
    DISCRIMINATOR_WEIGHT,
    REFERENCE_ADV_WEIGHT,
    SOURCE_DOMAIN_LABEL,
    TARGET_DOMAIN_LABEL,
    adversarial_generator_loss,
    discriminator_loss,
)
from spcl.method.class_balanced_crop import (
    CBC_BOXES,
    CBC_MAX_SHARE,
    class_balanced_corners,
    crop_at,
    crop_score,
)
from spcl.method.contrastive import (
    REFERENCE_CONTRASTIVE_WEIGHT,
    REFERENCE_TEMPERATURE,
    ContrastiveLosses,
    pixel_prototype_logits,
    pixel_prototype_loss,
    spcl_contrastive_loss,
)
from spcl.method.ema import (
    REFERENCE_EMA_ALPHA,
    STOCHASTIC_DEPTH_CLASS_NAMES,
    STOCHASTIC_DEPTH_MARKER,
    disable_teacher_dropout,
    ema_alpha,
    init_teacher,
    kept_batchnorm_statistics,
    unwrap_model,
    update_teacher,
)
from spcl.method.feature_distance import (
    CITYSCAPES_THING_CLASSES,
    FD_MIN_RATIO,
    REFERENCE_FD_WEIGHT,
    downscale_label_ratio,
    masked_feature_distance,
    thing_feature_distance,
)
from spcl.method.feature_distill import (
    COSINE_WEIGHT,
    DISTILL_EXPANSION,
    SMOOTH_L1_WEIGHT,
    DistillHead,
    FrozenDINOv2,
    distill_loss,
)
from spcl.method.hrda import (
    HRDA_ALIGN_CORNERS,
    HRDA_CROP_DIVISIBLE,
    HRDA_DETAIL_LOSS_WEIGHT,
    Box,
    assemble_windows,
    cells_of,
    crop_to_box,
    detail_box,
    fuse_scales,
    hrda_loss,
    window_boxes,
)
from spcl.method.losses import (
    SOURCE_LOGIT_TEMPERATURE,
    tempered_cross_entropy,
    upsample_logits,
)
from spcl.method.masking import (
    MIC_BLOCK_SIZE,
    MIC_MASK_RATIO,
    MIC_REFERENCE_SIZE,
    block_mask,
    mask_images,
    scaled_block_size,
)
from spcl.method.mixing import (
    ClassMixMasks,
    MixedBatch,
    class_mix_masks,
    mix,
    mix_batch,
)
from spcl.method.photometric import (
    BLUR_KERNEL_FRACTION,
    BLUR_SIGMA_RANGE,
    BLUR_THRESHOLD,
    JITTER_SKIP_PROBABILITY,
    JITTER_STRENGTH,
    StrongAugParams,
    apply_strong_augment,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    gaussian_kernel1d,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_strong_augment,
    strong_augment,
)
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
from spcl.method.pseudo_weight import (
    PL_CROP_BOTTOM_ROWS,
    PL_CROP_REFERENCE_HEIGHT,
    PL_CROP_TOP_ROWS,
    REFERENCE_PSEUDO_THRESHOLD,
    PseudoLabels,
    WeightMode,
    crop_pseudo_weight,
    pl_crop_rows,
    pseudo_labels_with_ignore,
    teacher_pseudo_labels,
)
from spcl.method.sepico import (
    REFERENCE_LABEL_MIN_RATIO,
    REFERENCE_MEMORY_LENGTH,
    REFERENCE_REGULARIZER_WEIGHT,
    ClassStatistics,
    ContrastLoss,
    LabelDownscale,
    bank_contrastive_loss,
    contrast_labels,
    dist_contrastive_loss,
    proto_contrastive_loss,
    prototype_regularizer,
)
from spcl.method.vfm_augment import (
    STRONG_SOURCE,
    WEAK_SOURCE,
    TorchvisionAugment,
    torchvision_augment,
    uda_augment_recipe,
)
from spcl.method.weighted_ce import (
    CrossEntropyReduction,
    pixel_weighted_cross_entropy,
)

__all__ = [
    "BLUR_KERNEL_FRACTION",
    "BLUR_SIGMA_RANGE",
    "BLUR_THRESHOLD",
    "CBC_BOXES",
    "CBC_MAX_SHARE",
    "CITYSCAPES_THING_CLASSES",
    "COSINE_WEIGHT",
    "DEFAULT_THRESHOLD_BINS",
    "DISCRIMINATOR_WEIGHT",
    "DISTILL_EXPANSION",
    "FD_MIN_RATIO",
    "HRDA_ALIGN_CORNERS",
    "HRDA_CROP_DIVISIBLE",
    "HRDA_DETAIL_LOSS_WEIGHT",
    "JITTER_SKIP_PROBABILITY",
    "JITTER_STRENGTH",
    "MIC_BLOCK_SIZE",
    "MIC_MASK_RATIO",
    "MIC_REFERENCE_SIZE",
    "PL_CROP_BOTTOM_ROWS",
    "PL_CROP_REFERENCE_HEIGHT",
    "PL_CROP_TOP_ROWS",
    "REFERENCE_ADV_WEIGHT",
    "REFERENCE_CONTRASTIVE_WEIGHT",
    "REFERENCE_EMA_ALPHA",
    "REFERENCE_FD_WEIGHT",
    "REFERENCE_LABEL_MIN_RATIO",
    "REFERENCE_MEMORY_LENGTH",
    "REFERENCE_MOMENTUM",
    "REFERENCE_PSEUDO_THRESHOLD",
    "REFERENCE_REGULARIZER_WEIGHT",
    "REFERENCE_TEMPERATURE",
    "REFERENCE_THRESHOLD_CAP",
    "SMOOTH_L1_WEIGHT",
    "SOURCE_DOMAIN_LABEL",
    "SOURCE_LOGIT_TEMPERATURE",
    "STOCHASTIC_DEPTH_CLASS_NAMES",
    "STOCHASTIC_DEPTH_MARKER",
    "STRONG_SOURCE",
    "TARGET_DOMAIN_LABEL",
    "WEAK_SOURCE",
    "AbsentPolicy",
    "Box",
    "ClassMixMasks",
    "ClassStatistics",
    "ContrastLoss",
    "ContrastiveLosses",
    "CrossEntropyReduction",
    "DistillHead",
    "FrozenDINOv2",
    "LabelDownscale",
    "MixedBatch",
    "PrototypeAccumulator",
    "PrototypeBank",
    "PseudoLabels",
    "StrongAugParams",
    "ThresholdEstimator",
    "TorchvisionAugment",
    "WeightMode",
    "adversarial_generator_loss",
    "apply_strong_augment",
    "apply_thresholds",
    "assemble_windows",
    "bank_contrastive_loss",
    "block_mask",
    "blur_kernel_size",
    "cells_of",
    "class_balanced_corners",
    "class_coverage",
    "class_feature_means",
    "class_feature_sums",
    "class_mix_masks",
    "color_jitter",
    "contrast_labels",
    "crop_at",
    "crop_pseudo_weight",
    "crop_score",
    "crop_to_box",
    "detail_box",
    "disable_teacher_dropout",
    "discriminator_loss",
    "dist_contrastive_loss",
    "distill_loss",
    "downsample_labels",
    "downscale_label_ratio",
    "ema_alpha",
    "fuse_scales",
    "gaussian_blur",
    "gaussian_kernel1d",
    "hrda_loss",
    "hsv_to_rgb",
    "init_teacher",
    "kept_batchnorm_statistics",
    "mask_images",
    "masked_feature_distance",
    "mix",
    "mix_batch",
    "pixel_prototype_logits",
    "pixel_prototype_loss",
    "pixel_weighted_cross_entropy",
    "pl_crop_rows",
    "proto_contrastive_loss",
    "prototype_regularizer",
    "pseudo_labels_with_ignore",
    "recalibrate_batchnorm",
    "reliable_mask",
    "rgb_to_hsv",
    "sample_strong_augment",
    "scaled_block_size",
    "spcl_contrastive_loss",
    "strong_augment",
    "teacher_pseudo_labels",
    "tempered_cross_entropy",
    "thing_feature_distance",
    "threshold_predictions",
    "torchvision_augment",
    "uda_augment_recipe",
    "unwrap_model",
    "update_teacher",
    "upsample_logits",
    "window_boxes",
]
