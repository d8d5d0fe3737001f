"""DeepLab-v2: a dilated ResNet followed by the ASPP-v2 classifier (summed dilated 3×3 convs).

This is the segmenter of SPCL (arXiv 2111.12358, Sec. 4.1) and of the AdaptSegNet/FADA line of
work. The model returns both the class logits and the backbone features, because SPCL's contrastive
loss works on the features ``f(x)`` while the segmentation loss works on the logits ``g(f(x))``:
``forward`` returns :class:`~spcl.models.segmenter.SegOutput` so that nobody runs the backbone
twice.

The family's registry entries (:data:`MODELS`: ``deeplabv2_resnet{18,34,50,101}``) load
pretrained ResNet files of every layout of :mod:`spcl.models.weight_layouts`; a file's layout may
imply constructor options (the DeepLab-v2 COCO initialisation: ``style="caffe"``,
``input_convention="caffe_bgr"``), which the model keeps in ``layout_options``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from spcl.base import CheckpointError
from spcl.models.input_conventions import PIPELINE_CONVENTION, InputAdapter, InputConvention
from spcl.models.projection import ProjectionHead
from spcl.models.resnet import DEFAULT_WIDTH, RESNET_DEPTHS, ResNet, ResNetStyle
from spcl.models.segmenter import Build, ModelEntry, Segmenter, SegOutput
from spcl.models.weight_layouts import (
    fit_problems,
    layout_error,
    load_deeplab_weights,
    merge_layout_options,
    read_resnet_weights,
)

__all__ = [
    "ASPP_DILATIONS",
    "ASPP_INIT_STD",
    "MODELS",
    "ASPPClassifierV2",
    "DeepLabV2",
    "deeplabv2_resnet",
    "load_backbone_weights",
    "load_deeplab_pretrained",
]

logger = logging.getLogger(__name__)

ASPP_DILATIONS = (6, 12, 18, 24)  # DeepLab-v2's four atrous rates (padding equals dilation)
ASPP_INIT_STD = 0.01  # weights ~ N(0, 0.01); biases keep PyTorch's default init (reference quirk)
ASPP_KERNEL = 3
SEG_OUTPUT_STRIDE = 8  # DeepLab-v2's output stride (layer3/layer4 dilated)
RESNET_STEM = ("conv1", "bn1")  # layer id 0: the stem before layer1
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")  # layer ids 1 … 4
RESNET_TOP = ("fc",)  # ImageNet classifier after layer4 (never run, frozen): the top id
UNUSED_BACKBONE_PREFIXES = ("fc.",)  # ImageNet head: kept for strict loading, never run


class ASPPClassifierV2(nn.Module):
    """ASPP-v2 classifier: parallel dilated 3×3 convolutions to K classes whose outputs are summed.

    The branch list is named ``conv2d_list`` as in the reference codebase, so that its classifier
    weights load without renaming.

    Args:
        in_channels: Feature channels C.
        num_classes: Number of classes K.
        dilations: Atrous rate of each branch (the padding equals it, keeping the size).
        init_std: Standard deviation of the normal weight init (mean 0).

    Shape:
        - Input: (B, C, h, w).
        - Output: (B, K, h, w).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: tuple[int, ...] = ASPP_DILATIONS,
        init_std: float = ASPP_INIT_STD,
    ) -> None:
        super().__init__()
        if not dilations:
            raise ValueError("ASPPClassifierV2 needs at least one dilation")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, ASPP_KERNEL, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, mean=0.0, std=init_std)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(Segmenter):
    """DeepLab-v2 segmenter: ``backbone`` (a dilated ResNet) then :class:`ASPPClassifierV2`.

    Args:
        backbone: Feature extractor with an ``out_channels`` attribute and ``forward_features``.
        num_classes: Number of classes K.
        dilations: ASPP atrous rates.
        projection_dim: > 0 adds SePiCo's projection head (:class:`ProjectionHead`, 2048 → 2048
            → this size for ResNet-101): ``SegOutput.features`` is then the L2-normalised
            projection of the backbone features (what prototypes and the contrast use), and the
            logits still come from the backbone features; 0 (SPCL) returns those features.
        input_convention: What the backbone's weights expect (:mod:`spcl.models.input_conventions`);
            ``"caffe_bgr"`` for the DeepLab-v2 COCO initialisation. The model always takes spcl's
            pipeline tensors (ImageNet-normalised RGB) and converts them first.

    Attributes:
        backbone: The feature extractor (the 1× learning-rate group).
        classifier: The ASPP head (the 10× learning-rate group).
        num_classes: K.
        feature_channels: Channels of ``SegOutput.features`` (the backbone's output).
        output_stride: The backbone's (8 for the registered models).
        num_layers: 4: the stem is layer 0, layer1 … layer4 are 1 … 4, the head 4
            (:meth:`layer_id`).
        head_prefixes: State-dict prefixes of the head parameters (the 10× learning-rate group).
    """

    head_prefixes: tuple[str, ...] = ("classifier.", "projection.")

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        dilations: tuple[int, ...] = ASPP_DILATIONS,
        projection_dim: int = 0,
        input_convention: InputConvention = PIPELINE_CONVENTION,
    ) -> None:
        super().__init__()
        if projection_dim < 0:
            raise ValueError(f"projection_dim must be 0 (off) or positive, got {projection_dim}")
        self.input_adapter = InputAdapter(input_convention)
        self.backbone = backbone
        self.classifier = ASPPClassifierV2(backbone.out_channels, num_classes, dilations)
        self.projection = (
            ProjectionHead(backbone.out_channels, projection_dim) if projection_dim else None
        )
        self.num_classes = num_classes
        self.feature_channels = projection_dim or backbone.out_channels
        self.output_stride = backbone.output_stride
        self.num_layers = len(RESNET_STAGES)

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone features ``f(x)`` of pipeline-normalised images.

        Shape:
            - x: (B, 3, H, W).
            - Output: (B, C, h, w), h ≈ H/8 and w ≈ W/8 at output stride 8.
        """
        return self.backbone.forward_features(self.input_adapter(x))

    def forward_head(self, features: Tensor) -> Tensor:
        """Class logits ``g(f)`` from backbone features, at feature resolution.

        Shape:
            - features: (B, C, h, w).
            - Output: (B, K, h, w).
        """
        return self.classifier(features)

    def forward(self, x: Tensor) -> SegOutput:
        """Logits and the features they came from, in one pass.

        Shape:
            - x: (B, 3, H, W).
            - Output: SegOutput(logits (B, K, h, w), features (B, C, h, w)).
        """
        features = self.forward_features(x)
        logits = self.forward_head(features)
        if self.projection is not None:
            features = self.projection(features)
        return SegOutput(logits=logits, features=features)

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay, by ResNet stage.

        ``backbone.conv1``/``bn1`` (the stem) → 0, ``backbone.layerN.*`` → N, the unused ``fc``
        and the head (``classifier.``, ``projection.``) → ``num_layers`` (4).

        Raises:
            ValueError: ``name`` is neither a backbone nor a head parameter name.
        """
        if self.is_head(name):
            return self.num_layers
        parts = name.split(".")
        part = parts[1] if parts[0] == "backbone" and len(parts) > 2 else ""
        if part in RESNET_STAGES:
            return RESNET_STAGES.index(part) + 1
        if part in RESNET_STEM:
            return 0
        if part in RESNET_TOP:
            return self.num_layers
        raise ValueError(
            f"{name!r}: no layer id (expected backbone.{{conv1,bn1,layer1-4,fc}}.* or a head "
            f"parameter {self.head_prefixes})"
        )


def deeplabv2_resnet(
    depth: int,
    num_classes: int,
    width: int = DEFAULT_WIDTH,
    projection_dim: int = 0,
    dilations: Sequence[int] = ASPP_DILATIONS,
    style: ResNetStyle = "pytorch",
    input_convention: InputConvention = PIPELINE_CONVENTION,
) -> DeepLabV2:
    """DeepLab-v2 on a ResNet of ``depth`` at output stride 8 (+ SePiCo's projection head).

    ``dilations``: the ASPP rates; DAFormer/MIC/SePiCo's ``dlv2red`` sums only (6, 12), as
    AdaptSegNet's and DACS's classifier returns after two branches. ``style`` and
    ``input_convention``: ``"caffe"`` / ``"caffe_bgr"`` for the DeepLab-v2 COCO initialisation
    (set automatically when ``pretrained`` is such a file, :mod:`spcl.models.weight_layouts`).
    """
    block, layers = RESNET_DEPTHS[depth]
    backbone = ResNet(block, layers, width=width, output_stride=SEG_OUTPUT_STRIDE, style=style)
    return DeepLabV2(
        backbone,
        num_classes,
        tuple(dilations),
        projection_dim=projection_dim,
        input_convention=input_convention,
    )


def load_deeplab_pretrained(
    build: Build, options: Mapping[str, Any], path: Path, *, name: str, width: int
) -> DeepLabV2:
    """The family's weight loader: read a ResNet file, build with the options its layout needs.

    The file's layout is read first, because it may imply constructor options (``style``,
    ``input_convention``); a configured option that contradicts them, or a ResNet of another
    depth than ``name``'s, is a ConfigError. The backbone loads strictly, a head when it fits
    (:func:`~spcl.models.weight_layouts.load_deeplab_weights`); what was not loaded is logged.
    """
    weights = read_resnet_weights(path)  # its layout decides style / input convention
    model = build(merge_layout_options(name, options, weights, path))
    if not isinstance(model, DeepLabV2):
        raise TypeError(f"{name!r} is registered with the DeepLab-v2 loader but built {model!r}")
    for note in load_deeplab_weights(model, weights, path):
        logger.info("%s: %s", path, note)
    model.layout_options = dict(weights.options)  # recorded in the model file
    return model


def load_backbone_weights(
    backbone: ResNet, path: str | Path, *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load a ResNet checkpoint of any supported layout from a local file into ``backbone``.

    Layouts (:mod:`spcl.models.weight_layouts`): a torchvision state dict (``module.`` and
    ``backbone.`` prefixes stripped, optionally under ``state_dict``/``model``), the DeepLab-v2
    COCO initialisation (``Scale.*``; needs a ``style="caffe"`` ResNet) or a reference SPCL/FADA
    checkpoint (its ``feature_extractor``). ``num_batches_tracked`` counters may be present or
    absent on either side (FrozenBatchNorm2d has none). The ImageNet ``fc`` is never run, so a
    feature-extractor checkpoint without it is accepted (the keys are still reported missing).

    Args:
        backbone: The ResNet to fill (e.g. ``model.backbone``).
        path: Local ``.pth`` file.
        strict: Raise if any parameter or buffer of ``backbone`` other than ``fc`` is missing.

    Returns:
        (missing, unexpected): backbone keys the file lacks, and file keys the backbone lacks
        (for a torchvision file, its non-backbone keys; heads of other layouts are not counted).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: A shape differs, or ``strict`` and keys are missing, or the file's
            style does not match the backbone's; the message names the file, its layout and the
            first keys that do not fit.
    """
    weights = read_resnet_weights(path)
    style = weights.options.get("style", "pytorch")
    if backbone.style != style:
        raise CheckpointError(
            f"{path}: looks like {weights.description}, which needs a style={style!r} ResNet; "
            f"the backbone has style={backbone.style!r}"
        )
    own = backbone.state_dict()
    problems = fit_problems(own, weights.backbone)
    missing, unexpected = problems["missing"], problems["unexpected"]
    required = [k for k in missing if not k.startswith(UNUSED_BACKBONE_PREFIXES)]
    if problems["shape mismatch"] or (strict and required):
        shown = {**problems, "missing": required}
        raise layout_error(path, weights.description, f"this {type(backbone).__name__}", shown)
    backbone.load_state_dict({k: v for k, v in weights.backbone.items() if k in own}, strict=False)
    return missing, unexpected


MODELS: dict[str, ModelEntry] = {  # registry names of this family
    f"deeplabv2_resnet{depth}": ModelEntry(
        partial(deeplabv2_resnet, depth), load_deeplab_pretrained
    )
    for depth in RESNET_DEPTHS
}
