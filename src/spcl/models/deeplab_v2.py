"""DeepLab-v2: a dilated ResNet followed by the ASPP-v2 classifier (summed dilated 3×3 convs).

This is the segmenter of SPCL (arXiv 2111.12358, Sec. 4.1) and of the AdaptSegNet/FADA line of
work. The model returns both the class logits and the backbone features, because SPCL's contrastive
loss works on the features ``f(x)`` while the segmentation loss works on the logits ``g(f(x))``:
``forward`` returns :class:`SegOutput` so that nobody runs the backbone twice.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from spcl.models.input_conventions import PIPELINE_CONVENTION, InputAdapter, InputConvention
from spcl.models.projection import ProjectionHead
from spcl.models.resnet import ResNet

__all__ = ["ASPP_DILATIONS", "ASPP_INIT_STD", "ASPPClassifierV2", "DeepLabV2", "SegOutput"]

ASPP_DILATIONS = (6, 12, 18, 24)  # DeepLab-v2's four atrous rates (padding equals dilation)
ASPP_INIT_STD = 0.01  # weights ~ N(0, 0.01); biases keep PyTorch's default init (reference quirk)
ASPP_KERNEL = 3


class SegOutput(NamedTuple):
    """What a segmenter returns.

    Attributes:
        logits: Class scores at feature resolution (not upsampled), shape (B, K, h, w).
        features: Backbone feature map the logits were computed from, shape (B, C, h, w).
    """

    logits: Tensor
    features: Tensor


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


class DeepLabV2(nn.Module):
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

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable parameters split for the optimiser: (backbone, head).

        The reference trains the head with 10× the backbone's learning rate. Parameters with
        ``requires_grad=False`` (such as the backbone's unused ``fc``) are left out.
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        if self.projection is not None:  # SePiCo's auxiliary head: the head's lr
            head += [p for p in self.projection.parameters() if p.requires_grad]
        return backbone, head
