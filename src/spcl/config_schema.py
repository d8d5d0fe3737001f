"""The typed configuration schema: one dataclass per section, a comment beside every default.

Defaults are the reference recipe (BinhuiXie/SPCL, GTA5 → Cityscapes, DeepLab-v2 ResNet-101) unless
a comment says otherwise; ``configs/*.yaml`` override what differs. Loading, overrides and
validation live in :mod:`spcl.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "REQUIRED",
    "AdaptConfig",
    "Config",
    "DataConfig",
    "DomainConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "PseudoLabelConfig",
    "RunConfig",
    "SelfTrainConfig",
    "SynthConfig",
    "WarmupConfig",
]

REQUIRED: str = "???"  # a value the user must set; loading fails naming the key if it is left


@dataclass
class ModelConfig:
    name: str = "deeplabv2_resnet101"  # registry name, see spcl.models.build
    width: int = 64  # base channels of the ResNet (64 = torchvision; the CPU demo uses less);
    # for dinov2_* models the head dimension (64 = published, the only width weights load at)
    pretrained: str | None = None  # local path (or URL) of torchvision ImageNet ResNet weights,
    # or of an official DINOv2 file (dinov2_vitb14_pretrain.pth …) for dinov2_* models
    freeze_bn: bool = True  # reference: BatchNorm frozen in warm-up and adaptation
    frozen_bn_eps: float = 0.0  # reference quirk: frozen BN without eps during training


@dataclass
class DomainConfig:
    kind: str = "synthetic"  # synthetic, gta5, synthia, synscapes, cityscapes, folder (spcl.data)
    root: str = REQUIRED  # dataset root folder
    split: str = "train"  # split to read
    size: list[int] = field(default_factory=list)  # resize to [H, W]; empty keeps the file size
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {classes: 16},
    # {domain: target} for the synthetic pair (`spcl data check KIND ROOT` lists a kind's options)
    sampling: Literal["uniform", "class_balanced"] = "uniform"  # reference: class_balanced source
    class_index: str = ""  # class-balanced sampling cache; "" = beside the data (else run dir)


@dataclass
class SynthConfig:
    generate: bool = False  # generate the built-in synthetic pair at data root if it is absent
    seed: int = 0  # generator seed
    preset: Literal["mild", "strong"] = "strong"  # domain-shift preset
    n_train: int = 300  # train images per domain
    n_val: int = 100  # val images per domain
    size: list[int] = field(default_factory=lambda: [128, 256])  # generated [H, W]


@dataclass
class DataConfig:
    num_classes: int = 19  # Cityscapes train ids
    source: DomainConfig = field(default_factory=DomainConfig)  # labelled source, train split
    target: DomainConfig = field(default_factory=DomainConfig)  # unlabelled target, train split
    target_val: DomainConfig = field(default_factory=DomainConfig)  # target labels, evaluation
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    num_workers: int = 2  # DataLoader worker processes
    hflip: bool = False  # random horizontal flip on training images (reference: off in warm-up)
    color_jitter: float = 0.0  # brightness/contrast/saturation jitter on source (reference: 0.5)


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # reference: SGD; DAFormer, VFM-UDA: adamw
    lr: float = 2.5e-4  # backbone learning rate (reference warm-up and adaptation; DAFormer 6e-5)
    head_lr_mult: float = 10.0  # classifier lr = 10 × backbone lr (reference; DAFormer head
    # lr_mult 10, configs/_base_/schedules/adamw.py)
    momentum: float = 0.9  # SGD momentum (reference)
    weight_decay: float = 5e-4  # (reference; DAFormer and VFM-UDA AdamW: 0.01)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW (torch
    # default; DAFormer configs/_base_/schedules/adamw.py: (0.9, 0.999))
    backbone_lr_mult: float = 1.0  # backbone lr = lr × this (VFM-UDA lr_multiplier 0.1 with the
    # head at lr, training/uda_vit/uda_vit_generic.py; same as lr × 0.1, head_lr_mult × 10)
    layer_decay: float = 1.0  # ViT lr × decay^(depth − layer id), from the last block down (VFM-UDA
    # layerwise_lr_decay 1.0, uda_vit_generic.py; VFM-UDA++ 0.9, training/uda/uda.py)
    norm_decay_mult: float = 1.0  # weight decay × this on backbone norm layers (DAFormer 0:
    # paramwise_cfg custom_keys norm decay_mult 0, adamw.py; VFM-UDA 1)
    embed_decay_mult: float = 1.0  # weight decay × this on position embeddings and tokens
    # (DAFormer 0: custom_keys pos_block decay_mult 0, adamw.py; VFM-UDA 1)
    power: float = 0.9  # poly schedule exponent (reference; DAFormer 1.0, poly10warm.py)
    min_lr: float = 0.0  # poly floor, absolute for every group (DAFormer 0, poly10warm.py;
    # its no-warm-up ablation poly10.py: 1e-4)
    warmup_iters: int = 0  # linear warm-up iterations, 0 = none (reference; DAFormer 1500,
    # configs/_base_/schedules/poly10warm.py; VFM-UDA 1500)
    warmup_ratio: float = 1e-6  # warm-up starts at lr × this (DAFormer 1e-6, poly10warm.py)
    max_iter: int = 62_500  # poly decay horizon (reference MAX_ITER)
    stop_iter: int = 40_000  # training stops here, before the lr reaches 0 (reference STOP_ITER)
    batch_size: int = 4  # images per domain per step (reference: 4 source + 4 target over 4 GPUs)
    grad_accum: int = 1  # micro-batches per optimiser step (fit the reference batch on one GPU)
    clip_grad_norm: float = 0.0  # 0 disables clipping (reference: none)


@dataclass
class WarmupConfig:
    adversarial: bool = True  # reference: output-space adversarial warm-up; False = source-only
    lambda_adv: float = 0.001  # weight of the adversarial term (reference)
    source_temperature: float = 1.8  # source logits ÷ 1.8 before the CE (reference quirk)
    disc_lr: float = 1e-4  # discriminator Adam lr (reference)
    disc_width: int = 64  # channels of the discriminator's first conv (reference: 64)
    disc_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # (reference)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class PseudoLabelConfig:
    cap: float = 0.9  # per-class threshold = min(median confidence, cap) (reference)
    adabn: bool = False  # re-estimate BatchNorm statistics on target images first (not reference)


@dataclass
class AdaptConfig:
    momentum: float = 0.1  # α: P ← α·P + (1 − α)·batch mean (reference keeps 10% of the old)
    absent_policy: Literal["zero_fill", "keep"] = "zero_fill"  # reference: zero batch mean
    temperature: float = 100.0  # prototype logits = cosine / temperature (reference: / 100)
    lambda_cl: float = 1.0  # weight of the contrastive loss (reference)
    contrast_source: bool = True  # contrastive term on source pixels (reference: yes)
    contrast_target: bool = True  # contrastive term on target pseudo-labels (reference: yes)
    target_ce: float = 0.0  # weight of a plain CE on target pseudo-labels (reference: 0; 1 in the
    # bench's self-training control, which has no contrastive term)
    freeze_bn: bool | None = None  # BN frozen in this stage; None follows model.freeze_bn (the
    # bench's "bn" ablation flips it for adaptation only)
    source_temperature: float = 1.8  # source logits ÷ 1.8 before the CE (reference quirk)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class SelfTrainConfig:
    freeze_bn: bool = False  # reference: BN trainable (SyncBN with several GPUs)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])  # random scale (reference)
    crop: list[int] = field(default_factory=lambda: [512, 1024])  # random crop [H, W] (reference)
    hflip: bool = True  # (reference)
    color_jitter: float = 0.5  # (reference)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-4, max_iter=31_250, stop_iter=20_000)
    )  # reference self-training schedule


@dataclass
class EvalConfig:
    flip: bool = False  # average the softmax with the horizontally flipped image
    scales: list[float] = field(default_factory=lambda: [1.0])  # multi-scale test
    slide: list[int] = field(
        default_factory=list
    )  # [crop_h, crop_w, stride_h, stride_w]; empty=off
    adabn: bool = False  # re-estimate BatchNorm statistics on target train images before
    # evaluating (AdaBN, a control of the bench; not the reference)


@dataclass
class RunConfig:
    out: str = "runs/spcl"  # run directory
    seed: int = 0  # training seed
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    deterministic: bool = False  # deterministic kernels (bit-exact resume on CPU)
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast on CUDA
    channels_last: bool = False  # NHWC memory format on CUDA
    log_every: int = 20  # iterations between logged scalars
    ckpt_every: int = 500  # iterations between resumable checkpoints
    progress: bool = True  # tqdm progress bars
    stages: list[str] = field(
        default_factory=lambda: [
            "warmup",
            "prototypes",
            "pseudo_labels",
            "adapt",
            "pseudo_labels_2",
            "self_train",
            "evaluate",
        ]
    )  # the stages this run has, in pipeline order (see spcl.pipeline)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
