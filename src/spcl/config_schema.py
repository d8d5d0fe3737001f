"""The typed configuration schema: one dataclass per section, a comment beside every default.

Defaults are the reference recipe (BinhuiXie/SPCL, GTA5 → Cityscapes, DeepLab-v2 ResNet-101) unless
a comment says otherwise; ``configs/*.yaml`` override what differs. Loading and overrides live in
:mod:`spcl.config`.

Each value's valid range is part of its type, declared beside it (:mod:`spcl.config_types`):
``batch_size: Count`` (1, 2, …), ``cap: Fraction`` ([0, 1]), ``betas: Annotated[list[Beta],
Length(2)]``; values that must go together are checked by a section's ``problems()`` (e.g.
``stop_iter ≤ max_iter``). Loading checks both and names the key and where its value came from.
What needs the files on disk (class ids against the dataset's class table, paths, image heights)
is checked when a run starts (:mod:`spcl.stages.start_checks`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from spcl.config_types import (
    Beta,
    Count,
    Fraction,
    Length,
    NonNegative,
    NonNegativeInt,
    Positive,
    Range,
    Size2,
)
from spcl.model_catalog import option_problems
from spcl.recipe import STAGE_NAMES

__all__ = [
    "REQUIRED",
    "AdaptConfig",
    "Beta",
    "Config",
    "Count",
    "DataConfig",
    "DomainConfig",
    "EvalConfig",
    "FeatureDistanceConfig",
    "Fraction",
    "HRDAConfig",
    "Length",
    "MaskingConfig",
    "MixConfig",
    "ModelConfig",
    "NonNegative",
    "NonNegativeInt",
    "OnlineConfig",
    "OnlineContrastConfig",
    "OnlineDistillConfig",
    "OnlinePseudoConfig",
    "OptimConfig",
    "Positive",
    "PseudoLabelConfig",
    "Range",
    "RunConfig",
    "SelfTrainConfig",
    "SynthConfig",
    "TargetLabelsConfig",
    "TeacherConfig",
    "WarmupConfig",
]

REQUIRED: str = "???"  # a value the user must set; loading fails naming the key if it is left


@dataclass
class HRDAConfig:
    enabled: bool = False  # HRDA multi-resolution training and inference of the online stage's
    # model (spcl.models.hrda; its model file keeps the settings); off: one scale. Defaults:
    # lhoyer/HRDA configs/hrda/gtaHR2csHR_hrda.py
    context_scale: Annotated[float, Range(0, 1, low_open=True)] = 0.5  # context view = the
    # crop × this (HRDA `scales=[1, 0.5]`)
    detail_crop: Annotated[list[Count], Length((2,))] = field(default_factory=lambda: [512, 512])
    # detail window [H, W] of the full-resolution crop (HRDA `hr_crop_size`)
    crop_divisible: Count = 8  # detail-window corners on multiples of this (`crop_coord_divisible`)
    detail_loss_weight: Fraction = 0.1  # λ_d: fused CE × (1 − λ_d) + detail CE × λ_d
    # (`hr_loss_weight`)
    attention: Literal["classwise", "single"] = "classwise"  # a scale attention per class
    # (`attention_classwise=True`) or one for all classes
    slide_overlap: bool = True  # inference detail windows at half-window stride
    # (`hr_slide_overlapping=True`); false: side by side


@dataclass
class ModelConfig:
    name: str = "deeplabv2_resnet101"  # registry name, see spcl.models.build
    width: Count = 64  # base channels of the ResNet (64 = torchvision; the CPU demo uses less);
    # for dinov2_* models the head dimension (64 = published, the only width weights load at)
    pretrained: str | None = None  # local path (or URL) of torchvision ImageNet ResNet weights,
    # the DeepLab-v2 COCO init (Scale.* keys: sets options style=caffe, input_convention=caffe_bgr)
    # or a reference SPCL/FADA checkpoint (docs/weights.md); an official DINOv2 file
    # (dinov2_vitb14_pretrain.pth …) for dinov2_* models, mit_bX.pth for MiT models
    freeze_bn: bool = True  # reference: BatchNorm frozen in warm-up and adaptation
    frozen_bn_eps: NonNegative = 0.0  # reference quirk: frozen BN without eps during training
    options: dict[str, Any] = field(default_factory=dict)  # constructor keywords of the model,
    # e.g. {fusion: sepaspp, projection_dim: 512} for daformer_mit_b5 (spcl.models.build)

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """An unknown model name, or options the model does not take (spcl.model_catalog)."""
        for key, message in option_problems(self.name, self.options):
            yield (key,), message


@dataclass
class DomainConfig:
    kind: str = "synthetic"  # synthetic, gta5, synthia, synscapes, cityscapes, folder (spcl.data)
    root: str = REQUIRED  # dataset root folder
    split: str = "train"  # split to read
    size: Size2 = field(default_factory=list)  # resize to [H, W]; empty keeps the file size
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {classes: 16},
    # {domain: target} for the synthetic pair (`spcl data check KIND ROOT` lists a kind's options)
    sampling: Literal["uniform", "class_balanced", "rare_class"] = "uniform"  # SPCL reference:
    # class_balanced source; DAFormer: rare_class (RCS)
    class_index: str = ""  # class-statistics cache of both; "" = beside the data (else run dir)
    max_items: NonNegativeInt = 0  # use only the first N files of this split (0: all); set by
    # spcl run --fast-dev-run, handy to try a config on a few images
    rcs_temperature: Positive = 0.01  # RCS: P(c) = softmax((1 − f_c) / T) (DAFormer class_temp
    # 0.01)
    rcs_min_pixels: NonNegativeInt = 3000  # RCS: images with more pixels of c than this
    # (DAFormer, 1914×1052 GTA5 labels; scale it with the label area for smaller images)
    rcs_min_crop_ratio: NonNegative = 0.0  # RCS: the sample is drawn again (new crop, up to 10
    # times) until it holds more than rcs_min_pixels × this many pixels of its class (DAFormer
    # min_crop_ratio 0.5); 0: one draw
    rcs_joint_tries: NonNegativeInt = 0  # VFM-UDA's rule instead: up to N crops until one holds
    # both (enough of its class, top class below online.source_crop_max_share), else one
    # unchecked crop (VFM-UDA/VFM-UDA++ 20, rare_class_sampler_dataset.py); 0: DAFormer's nested
    # redraws above


@dataclass
class SynthConfig:
    generate: bool = False  # generate the built-in synthetic pair at data root if it is absent
    seed: NonNegativeInt = 0  # generator seed
    preset: Literal["mild", "strong"] = "strong"  # domain-shift preset
    n_train: Count = 300  # train images per domain
    n_val: Count = 100  # val images per domain
    size: Annotated[list[Count], Length((2,))] = field(default_factory=lambda: [128, 256])
    # generated [H, W]


@dataclass
class TargetLabelsConfig:
    """Target-train images whose labels join training (few-label adaptation; off by default)."""

    list_file: str = ""  # a text file naming labelled target-train images, one per line (name,
    # file name or path under data.target.root); "" = none
    fraction: Fraction = 0.0  # or: this share of the target-train split, at least 1 image,
    # round(share × images) (0 = none); drawn with `seed`
    seed: NonNegativeInt = 0  # seed of the fraction's draw, apart from run.seed: the same images
    # whatever the training seed
    weight: NonNegative = 1.0  # weight of their CE ("tgt_gt") in every training stage

    @property
    def enabled(self) -> bool:
        return bool(self.list_file) or self.fraction > 0

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """A list and a fraction together."""
        if self.list_file and self.fraction > 0:
            yield (
                ("list_file", "fraction"),
                "name the labelled target images with a list file or draw a fraction, not both",
            )


@dataclass
class DataConfig:
    num_classes: Annotated[int, Range(1, 255)] | None = None  # None: the source's class table
    # decides when a run starts (19 for GTA5/Cityscapes, a folder's classes.yaml); a number is
    # checked against it (255 is the ignore label)
    source: DomainConfig = field(default_factory=DomainConfig)  # labelled source, train split
    target: DomainConfig = field(default_factory=DomainConfig)  # unlabelled target, train split
    target_val: DomainConfig = field(default_factory=DomainConfig)  # target labels, evaluation
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    target_labels: TargetLabelsConfig = field(default_factory=TargetLabelsConfig)  # few-label
    # adaptation: labelled target-train images (docs/few_labels.md)
    num_workers: NonNegativeInt = 2  # DataLoader worker processes
    on_error: Literal["fail", "skip"] = "fail"  # an unreadable (corrupt, truncated, empty) image
    # or label: fail stops the stage naming the file; skip leaves it out, named once in log.txt
    hflip: bool = False  # random horizontal flip on training images (reference: off in warm-up)
    color_jitter: NonNegative = 0.0  # brightness/contrast/saturation jitter on source (ref.: 0.5)


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # reference: SGD; DAFormer, VFM-UDA: adamw
    lr: NonNegative = 2.5e-4  # backbone learning rate (reference warm-up and adaptation;
    # DAFormer 6e-5)
    head_lr_mult: NonNegative = 10.0  # classifier lr = 10 × backbone lr (reference; DAFormer head
    # lr_mult 10, configs/_base_/schedules/adamw.py)
    momentum: Beta = 0.9  # SGD momentum (reference)
    weight_decay: NonNegative = 5e-4  # (reference; DAFormer and VFM-UDA AdamW: 0.01)
    betas: Annotated[list[Beta], Length((2,))] = field(default_factory=lambda: [0.9, 0.999])
    # Adam/AdamW (torch default; DAFormer configs/_base_/schedules/adamw.py: (0.9, 0.999))
    backbone_lr_mult: NonNegative = 1.0  # backbone lr = lr × this (VFM-UDA lr_multiplier 0.1 with
    # the head at lr, training/uda_vit/uda_vit_generic.py; same as lr × 0.1, head_lr_mult × 10)
    layer_decay: Annotated[float, Range(0, 1, low_open=True)] = 1.0  # ViT lr × decay^(depth −
    # layer id), from the last block down (VFM-UDA layerwise_lr_decay 1.0, uda_vit_generic.py;
    # VFM-UDA++ 0.9, training/uda/uda.py)
    norm_decay_mult: NonNegative = 1.0  # weight decay × this on backbone norm layers (DAFormer 0:
    # paramwise_cfg custom_keys norm decay_mult 0, adamw.py; VFM-UDA 1)
    embed_decay_mult: NonNegative = 1.0  # weight decay × this on position embeddings and tokens
    # (DAFormer 0: custom_keys pos_block decay_mult 0, adamw.py; VFM-UDA 1)
    power: NonNegative = 0.9  # poly schedule exponent (reference; DAFormer 1.0, poly10warm.py)
    min_lr: NonNegative = 0.0  # poly floor, absolute for every group (DAFormer 0, poly10warm.py;
    # its no-warm-up ablation poly10.py: 1e-4)
    warmup_iters: NonNegativeInt = 0  # linear warm-up iterations, 0 = none (reference; DAFormer
    # 1500, configs/_base_/schedules/poly10warm.py; VFM-UDA 1500)
    warmup_ratio: Fraction = 1e-6  # warm-up starts at lr × this (DAFormer 1e-6, poly10warm.py)
    warmup_mode: Literal["mmcv", "vfmuda"] = "mmcv"  # mmcv: the warm-up scales the decayed lr
    # (DAFormer); vfmuda: lr × linspace(warmup_ratio, 1, warmup_iters), the decay after it
    # (VFM-UDA/VFM-UDA++ WarmupAndLinearScheduler)
    max_iter: Count = 62_500  # poly decay horizon (reference MAX_ITER)
    stop_iter: Count = 40_000  # training stops here, before the lr reaches 0 (reference STOP_ITER);
    # at most max_iter
    batch_size: Count = 4  # images per domain per step (reference: 4 source + 4 target over 4 GPUs)
    grad_accum: Count = 1  # micro-batches per optimiser step (fit the reference batch on one GPU)
    clip_grad_norm: NonNegative = 0.0  # 0 disables clipping (reference: none)
    lr_batch_scaling: Literal["none", "sqrt"] = "none"  # sqrt: every lr × √(batch_size × ranks
    # × grad_accum), the total batch (VFM-UDA/VFM-UDA++ lr × √(batch · devices · nodes))

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """(keys, what is wrong) for values that do not go together."""
        if self.stop_iter > self.max_iter:
            yield (
                ("stop_iter", "max_iter"),
                f"stop_iter ({self.stop_iter}) must be <= max_iter ({self.max_iter}): the poly "
                f"schedule decays the lr to its floor at max_iter; raise max_iter or lower "
                f"stop_iter",
            )


@dataclass
class WarmupConfig:
    adversarial: bool = True  # reference: output-space adversarial warm-up; False = source-only
    lambda_adv: NonNegative = 0.001  # weight of the adversarial term (reference)
    source_temperature: Positive = 1.8  # source logits ÷ 1.8 before the CE (reference quirk)
    disc_lr: NonNegative = 1e-4  # discriminator Adam lr (reference)
    disc_width: Count = 64  # channels of the discriminator's first conv (reference: 64)
    disc_betas: Annotated[list[Beta], Length((2,))] = field(default_factory=lambda: [0.9, 0.99])
    # (reference)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class PseudoLabelConfig:
    cap: Annotated[float, Range(0, 1, low_open=True)] = 0.9  # per-class threshold = min(median
    # confidence, cap) (reference)
    adabn: bool = False  # re-estimate BatchNorm statistics on target images first (not reference)


@dataclass
class AdaptConfig:
    momentum: Fraction = 0.1  # α: P ← α·P + (1 − α)·batch mean (reference keeps 10% of the old)
    absent_policy: Literal["zero_fill", "keep"] = "zero_fill"  # reference: zero batch mean
    temperature: Positive = 100.0  # prototype logits = cosine / temperature (reference: / 100)
    lambda_cl: NonNegative = 1.0  # weight of the contrastive loss (reference)
    contrast_source: bool = True  # contrastive term on source pixels (reference: yes)
    contrast_target: bool = True  # contrastive term on target pseudo-labels (reference: yes)
    target_ce: NonNegative = 0.0  # weight of a plain CE on target pseudo-labels (reference: 0; 1 in
    # the bench's self-training control, which has no contrastive term)
    freeze_bn: bool | None = None  # BN frozen in this stage; None follows model.freeze_bn (the
    # bench's "bn" ablation flips it for adaptation only)
    source_temperature: Positive = 1.8  # source logits ÷ 1.8 before the CE (reference quirk)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class SelfTrainConfig:
    freeze_bn: bool = False  # reference: BN trainable (SyncBN with several GPUs)
    scale_range: Annotated[list[Positive], Length((0, 2))] = field(
        default_factory=lambda: [0.5, 1.5]
    )  # random scale [low, high] (reference); empty: none
    crop: Size2 = field(default_factory=lambda: [512, 1024])  # random crop [H, W] (reference)
    hflip: bool = True  # (reference)
    color_jitter: NonNegative = 0.5  # (reference)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-4, max_iter=31_250, stop_iter=20_000)
    )  # reference self-training schedule

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """(keys, what is wrong) for values that do not go together."""
        if len(self.scale_range) == 2 and self.scale_range[0] > self.scale_range[1]:
            yield ("scale_range",), f"[low, high] with low <= high, got {self.scale_range}"


@dataclass
class TeacherConfig:
    alpha: Fraction = 0.999  # EMA α, α_t = min(1 − 1/(t+1), α) (DAFormer final configs `uda.alpha`;
    # the DACS base config has 0.99)
    ema_buffers: bool = False  # DAFormer: parameters only, BN statistics not averaged; True
    # averages floating buffers too (VFM-UDA)


@dataclass
class OnlinePseudoConfig:
    threshold: Fraction = 0.968  # τ of the confidence weight (DAFormer `pseudo_threshold`)
    weight: Literal["batch_quality", "sample_quality", "hard_threshold", "none"] = "batch_quality"
    # batch_quality: DAFormer's one scalar per batch, the share of pixels with p ≥ τ;
    # sample_quality: that share per image; hard_threshold: 1 where p ≥ τ else 0; none: 1
    crop_top: NonNegativeInt = 0  # rows of the pseudo-label weight zeroed at the top (DAFormer: 15
    # at 512 px)
    crop_bottom: NonNegativeInt = 0  # rows zeroed at the bottom: the ego car (DAFormer: 120 at
    # 512 px)
    margins: Annotated[list[NonNegativeInt], Length((0, 4))] = field(default_factory=list)
    # [top, bottom, left, right] pixels of the whole target image (at data.target.size) whose
    # pseudo-labels get weight 0, cut with the crop: zeroed only where a crop reaches the border
    # (HRDA's PL crop v2 `crop_pseudo_margins`: [30, 240, 30, 30] at 1024x2048); [] = off
    class_balanced_crop: bool = False  # SePiCo's CBC (`pseudo_random_crop`): target images come
    # whole (data.target.size, no loader crop) and are cut to online.crop where the teacher's
    # labels score best of 10 boxes (>= 2 classes, top share < 0.75, sum of log counts)
    regenerate: bool = True  # with CBC: the teacher labels the crop again (SePiCo
    # `regen_pseudo`); False cuts the whole image's labels and weights
    flip_average: bool = False  # labels from the mean softmax of the image and its mirror image
    # (VFM-UDA/VFM-UDA++ get_pseudo_label_and_weight); False: the image alone (DAFormer)


@dataclass
class MixConfig:
    enabled: bool = True  # cross-domain ClassMix (DACS; DAFormer `mix='class'`)
    color_jitter: NonNegative = 0.2  # strength of the strong augmentation's jitter (DAFormer 0.2)
    color_jitter_p: Fraction = 0.8  # jitter applied when U(0,1) > 0.2 (DAFormer
    # `color_jitter_probability=0.2` is that threshold)
    blur: bool = True  # Gaussian blur with probability 0.5, σ ~ U(0.15, 1.15) (DAFormer blur=True)
    exclude_ignore: bool = False  # the authors draw the pasted classes among the batch's label
    # values including 255; True leaves 255 out
    augment: Literal["dacs", "torchvision"] = "dacs"  # the jitter and blur of the mixed and
    # masked images: DACS's kornia-style operators (DAFormer, MIC, HRDA, SePiCo), or VFM-UDA(++)'s
    # torchvision ones (`random_aug_uda`: the strengths above, hue too, random order, blur
    # p 0.5), the target weakly jittered before mixing (`random_aug_weak`)


@dataclass
class MaskingConfig:
    enabled: bool = False  # masked image consistency (MIC, `mask_mode='separatetrgaug'`)
    block_size: Count = 32  # pixels per mask block (MIC: 32 for 512×512 crops, 64 for HRDA)
    ratio: Fraction = 0.7  # share of blocks masked (MIC 0.7)
    weight: NonNegative = 1.0  # λ of the masked loss (MIC `mask_lambda` 1)
    color_aug: bool = True  # colour jitter and blur before masking ("aug" in MIC's mode)


@dataclass
class FeatureDistanceConfig:
    weight: NonNegative = 0.005  # λ_FD (DAFormer `imnet_feature_dist_lambda`); used only when the
    # model starts from ImageNet weights (model.pretrained set)
    classes: list[NonNegativeInt] = field(
        default_factory=lambda: [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]
    )  # thing classes (DAFormer `imnet_feature_dist_classes`: Cityscapes train ids)
    scale_min_ratio: Fraction = 0.75  # downscaled label kept where ≥ 75% of its block agrees


@dataclass
class OnlineContrastConfig:
    source: bool = False  # pixel-to-prototype contrast on source ground-truth pixels (SePiCo)
    target: bool = False  # and on target pseudo-labelled pixels (pixels with weight > 0)
    weight: NonNegative = 1.0  # λ of each term (SePiCo `loss_weight` 1.0)
    temperature: Positive = 100.0  # logits = cosine / temperature (SePiCo `contrast_temp` 100, the
    # SPCL reference's divisor too)
    start_iter: NonNegativeInt = 3000  # the terms start at this iteration (SePiCo
    # `start_distribution_iter`); the prototypes are updated from the first
    momentum: Fraction = 0.1  # prototype EMA α from teacher features (SPCL's α; SePiCo keeps
    # cumulative class means instead). The contrast works on the model's features, which are
    # SePiCo's projection when the model has one (model.options.projection_dim: 512)
    loss: Literal["proto", "dist", "bank"] = "proto"  # SePiCo's ProtoCL (cosine to the class
    # means), DistCL (means and variances; its headline) or BankCL (banked batch means);
    # dist and bank need statistics: cumulative
    statistics: Literal["ema", "cumulative"] = "ema"  # ema: SPCL's prototype EMA (momentum);
    # cumulative: SePiCo's running mean and diagonal variance of every source pixel so far
    memory_length: Count = 200  # BankCL: batch means kept per class (SePiCo `memory_length`)
    regularizer: NonNegative = 0.0  # weight of SePiCo's regulariser Σ log softmax(mean f·μ/τ)
    # / (K ln K), added to each term with the authors' sign (SePiCo `use_reg`: 1.0)
    labels: Literal["nearest", "ratio"] = "nearest"  # labels at feature size: nearest
    # neighbour, or SePiCo's average pooling where a class holds label_min_ratio of the block
    label_min_ratio: Fraction = 0.75  # SePiCo `scale_min_ratio`
    augment_source: bool = False  # strong augmentation (colour jitter, blur) of the student's
    # source batch, as SePiCo's `enable_strong_aug`; statistics and mixing keep the weak images


@dataclass
class OnlineDistillConfig:
    weight_source: NonNegative = 0.0  # λ of the feature distillation on source images, 0: none
    # (VFM-UDA++ fd_weight_source 0.1, cfgs/vfmudaplusplus_*.yaml)
    weight_target: NonNegative = 0.0  # λ on target images (VFM-UDA++ fd_weight_target 0.1)
    model: str = "dinov2_vitl14_reg"  # the frozen DINOv2 (VFM-UDA++ fd_model_name)
    pretrained: str = ""  # its official weights, a path or URL (dinov2_vitl14_reg4_pretrain.pth);
    # needed when a weight is > 0
    input_size: Count = 406  # the frozen model's square input side (VFM-UDA++ vit_in_img_size:
    # 29 × 29 tokens of 14 px)
    student_augment: Literal["none", "weak"] = "weak"  # the student's input: weakly jittered
    # (VFM-UDA++ random_aug_weak) or as loaded; the frozen model sees it as loaded

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """A frozen model name that is not a DINOv2 trunk, or no weights for it."""
        if self.weight_source == 0 and self.weight_target == 0:
            return
        if not re.fullmatch(r"dinov2_vit[slbg]14(_reg)?", self.model):
            yield ("model",), f"a DINOv2 name, dinov2_vit{{s,b,l,g}}14[_reg], got {self.model!r}"
        if not self.pretrained:
            yield (
                ("pretrained",),
                "feature distillation needs the frozen model's weights: set "
                "online.distill.pretrained to dinov2_vitl14_reg4_pretrain.pth (path or URL)",
            )


@dataclass
class OnlineConfig:
    init: Literal["pretrained", "warmup"] = "pretrained"  # DAFormer starts from the ImageNet init
    # (model.pretrained); "warmup" starts student and teacher from stage 1's model
    hand_on: Literal["student", "teacher"] = "student"  # the model evaluated and handed on as
    # model.pth (DAFormer evaluates the student; both are saved)
    freeze_bn: bool | None = False  # DAFormer's DeepLab-v2 trains BatchNorm; None follows
    # model.freeze_bn
    source_only: bool = False  # the recipe's own source-only baseline: same model, init,
    # sampling, crops and schedule, trained on the source alone (no pseudo-labels, no target term)
    source_temperature: Positive = 1.0  # DAFormer: a plain CE on source (SPCL's warm-up uses 1.8)
    backward: Literal["joint", "per_pass"] = "joint"  # per_pass: each student pass's terms are
    # backpropagated before the next pass (the authors' separate backward calls), so one pass's
    # activations are held at a time, not all; the same gradient up to rounding (under
    # torchrun reduced over the ranks once per iteration: docs/online.md)
    ce_over_all_pixels: bool = True  # DAFormer quirk: CE means over all B·H·W pixels, ignored ones
    # counting 0; False means over the labelled pixels only
    hflip: bool = True  # random horizontal flip of source and target crops (DAFormer p = 0.5)
    source_sampling: Literal["data", "uniform", "class_balanced", "rare_class"] = "data"  # the
    # source order of this stage: "data" follows data.source.sampling; rare_class is DAFormer's
    # RCS (data.source.rcs_*), set here to keep a shared warm-up's sampling unchanged
    crop: Size2 = field(default_factory=lambda: [512, 512])  # random [H, W] crop of source
    # and target after the resize (DAFormer 512×512); empty: whole images
    scale_range: Annotated[list[Positive], Length((0, 2))] = field(default_factory=list)  # random
    # rescale [low, high] of source and target images after the resize, before the crop
    # (VFM-UDA++ UDATransform: short side × U(0.9, 1.1)); empty: none (DAFormer, HRDA)
    pad: Literal["center", "bottom_right"] = "center"  # where an image smaller than the crop
    # is padded (image 0, label ignored): center, on every side (half each); bottom_right, to
    # the right and below (mmseg's Pad, VFM-UDA++'s UDATransform)
    source_augment: Literal["none", "weak", "strong"] = "none"  # the student's source batch
    # with VFM-UDA's weak or VFM-UDA++'s strong torchvision-style augmentation (spcl.method.
    # vfm_augment); none: as loaded (DAFormer)
    source_crop_max_share: Annotated[float, Range(low=0, low_open=True, high=1)] = 1.0  # below
    # 1, a source crop is drawn again (up to 10 times) while one class holds this share or more
    # of its labelled pixels (DAFormer/SePiCo RandomCrop cat_max_ratio 0.75); 1: one draw
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pseudo: OnlinePseudoConfig = field(default_factory=OnlinePseudoConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    feature_distance: FeatureDistanceConfig = field(default_factory=FeatureDistanceConfig)
    contrast: OnlineContrastConfig = field(default_factory=OnlineContrastConfig)
    hrda: HRDAConfig = field(default_factory=HRDAConfig)  # HRDA's two-scale model and step (off)
    distill: OnlineDistillConfig = field(default_factory=OnlineDistillConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            optimizer="adamw",
            lr=6e-5,
            weight_decay=0.01,
            power=1.0,
            warmup_iters=1500,
            max_iter=40_000,
            stop_iter=40_000,
            batch_size=2,
        )
    )  # DAFormer: AdamW lr 6e-5, wd 0.01, head ×10, 1500 warm-up iterations, poly power 1 over
    # 40k iterations of 2 source + 2 target crops (schedules/adamw.py, poly10warm.py)

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """(keys, what is wrong) for values that do not go together."""
        contrast = self.contrast
        if len(self.scale_range) == 2 and self.scale_range[0] > self.scale_range[1]:
            yield ("scale_range",), f"[low, high] with low <= high, got {self.scale_range}"
        if self.mix.augment == "torchvision" and self.mix.color_jitter > 0.5:
            yield (
                ("mix.color_jitter", "mix.augment"),
                f"torchvision's hue jitter is the strength, at most 0.5, got "
                f"{self.mix.color_jitter}",
            )
        if self.scale_range and self.pseudo.class_balanced_crop:
            yield (
                ("scale_range", "pseudo.class_balanced_crop"),
                "the class-balanced crop batches whole target images of data.target.size: a "
                "random scale would give them different sizes; set online.scale_range: []",
            )
        if (contrast.source or contrast.target) and contrast.start_iter >= self.optim.stop_iter:
            yield (
                ("contrast.start_iter", "optim.stop_iter"),
                f"the contrast starts at iteration {contrast.start_iter} but the stage stops at "
                f"{self.optim.stop_iter}: its terms would stay 0; lower contrast.start_iter or "
                f"turn contrast.source/target off",
            )
        if contrast.loss != "proto" and contrast.statistics != "cumulative":
            yield (
                ("contrast.loss", "contrast.statistics"),
                f"the {contrast.loss} contrast needs class variances or banked means: set "
                f"contrast.statistics: cumulative",
            )
        if self.crop:
            yield from pseudo_crop_problems(self.pseudo, self.crop[0], "online.crop")
        if self.pseudo.margins and self.pseudo.class_balanced_crop:
            yield (
                ("pseudo.margins", "pseudo.class_balanced_crop"),
                "the pseudo-label margins follow the loader's crop, and the class-balanced crop "
                "is cut later, in the step: use one of them",
            )
        if contrast.augment_source and self.source_augment != "none":
            yield (
                ("contrast.augment_source", "source_augment"),
                "two augmentations of the source batch: keep contrast.augment_source (SePiCo's) "
                "or source_augment (VFM-UDA's), not both",
            )


def pseudo_crop_problems(
    pseudo: OnlinePseudoConfig, height: int, source: str
) -> Iterator[tuple[tuple[str, ...], str]]:
    """The pseudo-label crop rows must leave rows of a ``height``-pixel target crop (``source``
    names where the height comes from); otherwise every pseudo-label weight is 0."""
    rows = pseudo.crop_top + pseudo.crop_bottom
    if rows >= height:
        yield (
            ("pseudo.crop_top", "pseudo.crop_bottom"),
            f"{pseudo.crop_top} + {pseudo.crop_bottom} rows zeroed of a target crop "
            f"{height} pixels high ({source}) leave no pseudo-label: every weight would be 0; "
            f"give rows at the crop's scale (DAFormer: 15 and 120 of 512)",
        )


@dataclass
class EvalConfig:
    flip: bool = False  # average the softmax with the horizontally flipped image
    scales: Annotated[list[Positive], Length(minimum=1)] = field(default_factory=lambda: [1.0])
    # multi-scale test
    slide: Annotated[list[Count], Length((0, 4))] = field(
        default_factory=list
    )  # [crop_h, crop_w, stride_h, stride_w]; empty=off
    adabn: bool = False  # re-estimate BatchNorm statistics on target train images before
    # evaluating (AdaBN, a control of the bench; not the reference)


@dataclass
class RunConfig:
    out: str = "runs/spcl"  # run directory
    seed: NonNegativeInt = 0  # training seed
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    deterministic: bool = False  # deterministic kernels (bit-exact resume on CPU)
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast: bf16 on CUDA or CPU, fp16 on CUDA
    # only (ignored on CPU)
    channels_last: bool = False  # NHWC memory format on CUDA
    log_every: Count = 20  # iterations between logged scalars
    ckpt_every: Count = 500  # iterations between resumable checkpoints
    val_every: NonNegativeInt = (
        0  # iterations between validations on target_val during training (mIoU and
    )
    # per-class IoU to TensorBoard and log.txt; 0 = off; the model handed on is the last one)
    progress: bool = True  # progress bars (on a terminal; plain lines every 30 s to a file)
    collapse_every: NonNegativeInt = 500  # iterations per class-collapse check of the online
    # and self-training stages: each class's share of the teacher's pseudo-labels (self-training:
    # of the model's predictions) over those iterations, with bincount; 0 = off. Watching only:
    # training is the same with any value (spcl.method.collapse)
    collapse_checks: Count = 3  # a class seen above collapse_share that stays below it this many
    # checks in a row (or validations, for its val IoU) is named in log.txt, TensorBoard and the
    # stage's collapse.json (a seed that loses a class, lhoyer/MIC#9, is seen early)
    collapse_share: Fraction = 1e-4  # "about zero": a share of pixels, or an IoU as a fraction
    stages: Annotated[list[str], Length(minimum=1)] = field(
        default_factory=lambda: [n for n in STAGE_NAMES if n != "online"]
    )  # the stages this run has, in pipeline order (see spcl.pipeline): the SPCL chain by
    # default; the online recipe is [online, evaluate] (or [warmup, online, evaluate])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
