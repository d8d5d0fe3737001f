"""Segmentation models: dilated ResNets, DeepLab-v2, MiT + DAFormer/SegFormer, the discriminator."""

from __future__ import annotations

from spcl.models.build import (
    MODEL_REGISTRY,
    build_discriminator,
    build_model,
    load_backbone_weights,
    load_mit_weights,
)
from spcl.models.deeplab_v2 import ASPPClassifierV2, DeepLabV2, SegOutput
from spcl.models.discriminator import OutputDiscriminator
from spcl.models.mit import MIT_VARIANTS, MixVisionTransformer
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
from spcl.models.segformer import SegFormerSegmenter, daformer_mit, segformer_mit

__all__ = [
    "MIT_VARIANTS",
    "MODEL_REGISTRY",
    "ASPPClassifierV2",
    "BasicBlock",
    "Bottleneck",
    "DeepLabV2",
    "FrozenBatchNorm2d",
    "MixVisionTransformer",
    "OutputDiscriminator",
    "ResNet",
    "SegFormerSegmenter",
    "SegOutput",
    "build_discriminator",
    "build_model",
    "daformer_mit",
    "freeze_batchnorm",
    "load_backbone_weights",
    "load_mit_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "segformer_mit",
]
