"""Segmentation models: dilated ResNets, DeepLab-v2, DINOv2 ViTs, the output discriminator."""

from __future__ import annotations

from spcl.models.build import (
    MODEL_REGISTRY,
    build_discriminator,
    build_model,
    load_backbone_weights,
    load_dinov2_weights,
)
from spcl.models.deeplab_v2 import ASPPClassifierV2, DeepLabV2, SegOutput
from spcl.models.discriminator import OutputDiscriminator
from spcl.models.resnet import (
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm2d,
    ResNet,
    freeze_batchnorm,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from spcl.models.vit import DINOV2_VARIANTS, DINOv2Encoder, dinov2_encoder
from spcl.models.vit_seg import LightweightUpscaleHead, ViTSegmenter, dinov2_segmenter

__all__ = [
    "DINOV2_VARIANTS",
    "MODEL_REGISTRY",
    "ASPPClassifierV2",
    "BasicBlock",
    "Bottleneck",
    "DINOv2Encoder",
    "DeepLabV2",
    "FrozenBatchNorm2d",
    "LightweightUpscaleHead",
    "OutputDiscriminator",
    "ResNet",
    "SegOutput",
    "ViTSegmenter",
    "build_discriminator",
    "build_model",
    "dinov2_encoder",
    "dinov2_segmenter",
    "freeze_batchnorm",
    "load_backbone_weights",
    "load_dinov2_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]
