"""Segmentation models: dilated ResNets, DeepLab-v2, the output-space discriminator."""

from __future__ import annotations

from spcl.models.build import (
    MODEL_REGISTRY,
    build_discriminator,
    build_model,
    load_backbone_weights,
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

__all__ = [
    "MODEL_REGISTRY",
    "ASPPClassifierV2",
    "BasicBlock",
    "Bottleneck",
    "DeepLabV2",
    "FrozenBatchNorm2d",
    "OutputDiscriminator",
    "ResNet",
    "SegOutput",
    "build_discriminator",
    "build_model",
    "freeze_batchnorm",
    "load_backbone_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]
