"""Segmentation models: dilated ResNets + DeepLab-v2, MiT + DAFormer/SegFormer, DINOv2 ViTs
(VFM-UDA; VFM-UDA++ with ViT-Adapter), D."""

from __future__ import annotations

from spcl.models.build import (
    MODEL_REGISTRY,
    build_discriminator,
    build_model,
    load_backbone_weights,
    load_dinov2_weights,
    load_mit_weights,
)
from spcl.models.deeplab_v2 import ASPPClassifierV2, DeepLabV2
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
from spcl.models.segmenter import ModelEntry, Segmenter, SegOutput
from spcl.models.vfmudapp_seg import AdapterSegmenter, adapter_segmenter
from spcl.models.vit import DINOV2_VARIANTS, DINOv2Encoder, dinov2_encoder
from spcl.models.vit_seg import LightweightUpscaleHead, ViTSegmenter, dinov2_segmenter

__all__ = [
    "DINOV2_VARIANTS",
    "MIT_VARIANTS",
    "MODEL_REGISTRY",
    "ASPPClassifierV2",
    "AdapterSegmenter",
    "BasicBlock",
    "Bottleneck",
    "DINOv2Encoder",
    "DeepLabV2",
    "FrozenBatchNorm2d",
    "LightweightUpscaleHead",
    "MixVisionTransformer",
    "ModelEntry",
    "OutputDiscriminator",
    "ResNet",
    "SegFormerSegmenter",
    "SegOutput",
    "Segmenter",
    "ViTSegmenter",
    "adapter_segmenter",
    "build_discriminator",
    "build_model",
    "daformer_mit",
    "dinov2_encoder",
    "dinov2_segmenter",
    "freeze_batchnorm",
    "load_backbone_weights",
    "load_dinov2_weights",
    "load_mit_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "segformer_mit",
]
