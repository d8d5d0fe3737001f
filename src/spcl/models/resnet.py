"""Dilated ResNet backbones (output stride 8) with torchvision-compatible state-dict keys.

SPCL (arXiv 2111.12358, Sec. 4.1) uses DeepLab-v2 on an ImageNet-initialised ResNet-101: ResNet v1.5
(stride on the 3×3 conv of a bottleneck), with layer3 and layer4 dilated instead of strided, as
torchvision's ``replace_stride_with_dilation=[False, True, True]``. The parameter and buffer names
and shapes here are exactly torchvision's, ``fc`` included, so an ImageNet checkpoint loads with
``strict=True``; ``forward`` nevertheless stops at layer4 and returns the feature map.

The reference trains with BatchNorm frozen and *without* eps; :class:`FrozenBatchNorm2d` and
:func:`freeze_batchnorm` provide that (``eps=0.0``) as well as the ordinary ``eps=1e-5``.

``style="caffe"`` builds instead the ResNet of the DeepLab-v2 "COCO" initialisation used by
AdaptSegNet, ADVENT and DACS (converted from Caffe): the stride sits on the *first* 1×1 conv of a
bottleneck, the max-pool rounds up (``ceil_mode=True``), and every block of a dilated layer uses
that layer's dilation (torchvision keeps the previous dilation in the first block). The
parameter names and shapes are the same in both styles.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "BN_EPS",
    "RESNET_DEPTHS",
    "RESNET_STYLES",
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm2d",
    "ResNet",
    "freeze_batchnorm",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]

BN_EPS = 1e-5  # nn.BatchNorm2d's default; the eval-mode passes (prototypes, pseudo-labels) use it
DEFAULT_WIDTH = 64  # torchvision's base channel count (conv1 output, layer1 planes)
ResNetStyle = Literal["pytorch", "caffe"]
RESNET_STYLES: tuple[str, ...] = ("pytorch", "caffe")  # stride on the 3×3 (v1.5) / first 1×1 conv
IMAGENET_CLASSES = 1000  # fc output size of torchvision's ImageNet checkpoints
STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 7, 2, 3  # conv1: 7×7 stride 2
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1  # maxpool: 3×3 stride 2
# Which of layer2..layer4 trade their stride-2 for dilation, per output stride (torchvision's
# ``replace_stride_with_dilation``); the stem and layer1 always downsample by 4.
DILATE_BY_OUTPUT_STRIDE: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),  # DeepLab-v2 / SPCL
    16: (False, False, True),
    32: (False, False, False),  # the plain classification network
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    Computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, in train
    and eval mode alike; nothing is learned or updated. The state-dict keys are those of
    ``nn.BatchNorm2d`` minus ``num_batches_tracked``, which is accepted and ignored when loading, so
    a torchvision checkpoint loads strictly.

    Args:
        num_features: Number of channels C.
        eps: Added to the variance. The reference trains with ``0.0``; ``1e-5`` matches an
            ``nn.BatchNorm2d`` in eval mode.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = BN_EPS) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"FrozenBatchNorm2d eps must be >= 0, got {eps}")
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # nn.BatchNorm2d checkpoints carry a step counter that a frozen layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _frozen_copy(bn: nn.modules.batchnorm._BatchNorm, eps: float) -> FrozenBatchNorm2d:
    """Return a FrozenBatchNorm2d holding ``bn``'s statistics and affine parameters."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot freeze {bn!r}: it keeps no running statistics")
    frozen = FrozenBatchNorm2d(bn.num_features, eps=eps).to(bn.running_mean)
    with torch.no_grad():
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
        if bn.weight is not None:
            frozen.weight.copy_(bn.weight)
        if bn.bias is not None:
            frozen.bias.copy_(bn.bias)
    return frozen


def freeze_batchnorm(module: nn.Module, eps: float = BN_EPS) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` in ``module`` by a FrozenBatchNorm2d.

    Statistics and affine parameters are copied; the replacement happens in place on the children.
    Existing FrozenBatchNorm2d layers get the new ``eps``.

    Args:
        module: Any module; if it is itself a batch-norm layer, its frozen copy is returned.
        eps: Variance epsilon of the frozen layers (``0.0`` as in the reference's training).

    Returns:
        ``module`` (modified in place), or the frozen copy when ``module`` is a batch-norm layer.
    """
    if isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm):
        return _frozen_copy(module, eps)
    if isinstance(module, FrozenBatchNorm2d):
        module.eps = eps
        return module
    for name, child in module.named_children():
        frozen = freeze_batchnorm(child, eps)
        if frozen is not child:
            setattr(module, name, frozen)
    return module


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution whose padding keeps the size (up to the stride)."""
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34).

    Unlike torchvision's, this block supports dilation (applied to both 3×3 convs), so that
    ResNet-18/34 can also run at output stride 8.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (dilated) → 1×1 convolutions with a residual (ResNet-50/101).

    ``style="pytorch"`` (ResNet v1.5, torchvision) strides the 3×3 conv; ``"caffe"`` (the
    original ResNet, DeepLab-v2's Caffe models) strides the first 1×1 conv.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: ResNetStyle = "pytorch",
    ) -> None:
        super().__init__()
        if style not in RESNET_STYLES:
            raise ValueError(f"ResNet style must be one of {RESNET_STYLES}, got {style!r}")
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet backbone with torchvision's module names, optionally dilated (output stride 8/16).

    ``fc`` exists only so that torchvision ImageNet checkpoints load strictly; it is never used by
    ``forward`` and its parameters are frozen (``requires_grad=False``), so every trainable
    parameter receives a gradient (DDP needs no ``find_unused_parameters``).

    Args:
        block: BasicBlock or Bottleneck.
        layers: Number of blocks in layer1..layer4.
        width: Base channel count; 64 is torchvision's. Every layer scales with it.
        output_stride: 8 (DeepLab-v2), 16 or 32 (no dilation).
        num_classes: Output size of the unused ``fc`` (1000 for ImageNet checkpoints).
        style: ``"pytorch"`` (torchvision, v1.5) or ``"caffe"`` (the DeepLab-v2 COCO
            initialisation: stride on the first 1×1 conv, ceil-mode max-pool, full dilation in
            the first block of a dilated layer); Bottleneck ResNets only.

    Attributes:
        out_channels: Channels of the layer4 feature map, ``8 * width * block.expansion``.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int] | list[int],
        width: int = DEFAULT_WIDTH,
        output_stride: Literal[8, 16, 32] = 8,
        num_classes: int = IMAGENET_CLASSES,
        style: ResNetStyle = "pytorch",
    ) -> None:
        super().__init__()
        if style not in RESNET_STYLES:
            raise ValueError(f"ResNet style must be one of {RESNET_STYLES}, got {style!r}")
        if style == "caffe" and block is not Bottleneck:
            raise ValueError("style='caffe' exists for Bottleneck ResNets (50/101) only")
        self.style = style
        if output_stride not in DILATE_BY_OUTPUT_STRIDE:
            raise ValueError(
                f"output_stride must be one of {sorted(DILATE_BY_OUTPUT_STRIDE)}, "
                f"got {output_stride}"
            )
        if width < 1:
            raise ValueError(f"ResNet width must be a positive channel count, got {width}")
        if len(layers) != len(RESNET_DEPTHS[18][1]):
            raise ValueError(f"ResNet needs block counts for 4 layers, got {list(layers)}")
        self.output_stride = output_stride
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(
            3, width, STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(
            POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING, ceil_mode=style == "caffe"
        )
        dilate = DILATE_BY_OUTPUT_STRIDE[output_stride]
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2, dilate[2])
        self.out_channels = 8 * width * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.out_channels, num_classes)
        self._init_weights()
        self.fc.requires_grad_(False)

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        num_blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        """Stack ``num_blocks`` blocks; a dilated layer keeps the size and multiplies dilation."""
        first_dilation = self.dilation  # torchvision: the first block keeps the previous dilation
        if dilate:
            self.dilation *= stride
            stride = 1
            if self.style == "caffe":  # DeepLab-v2: the whole layer at the new dilation
                first_dilation = self.dilation
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        style = {"style": self.style} if block is Bottleneck else {}
        blocks = [block(self.inplanes, planes, stride, first_dilation, downsample, **style)]
        self.inplanes = planes * block.expansion
        blocks += [
            block(self.inplanes, planes, 1, self.dilation, **style) for _ in range(1, num_blocks)
        ]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """He-normal (fan-out) convolutions, unit-scale zero-shift BatchNorm, as torchvision."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Run the stem and layer1..layer4.

        Args:
            x: Normalised images.

        Returns:
            The layer4 feature map.

        Shape:
            - x: (B, 3, H, W).
            - Output: (B, out_channels, ⌈H/s⌉, ⌈W/s⌉) for output stride s (exactly so when H and W
              are multiples of s; otherwise as the strided convolutions round).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward_features` (``fc`` is kept for checkpoint loading only)."""
        return self.forward_features(x)


def _resnet(depth: int, width: int, output_stride: Literal[8, 16, 32]) -> ResNet:
    block, layers = RESNET_DEPTHS[depth]
    return ResNet(block, layers, width=width, output_stride=output_stride)


def resnet18(width: int = DEFAULT_WIDTH, output_stride: Literal[8, 16, 32] = 8) -> ResNet:
    """ResNet-18 backbone (BasicBlock, [2, 2, 2, 2]); dilated to ``output_stride``."""
    return _resnet(18, width, output_stride)


def resnet34(width: int = DEFAULT_WIDTH, output_stride: Literal[8, 16, 32] = 8) -> ResNet:
    """ResNet-34 backbone (BasicBlock, [3, 4, 6, 3]); dilated to ``output_stride``."""
    return _resnet(34, width, output_stride)


def resnet50(width: int = DEFAULT_WIDTH, output_stride: Literal[8, 16, 32] = 8) -> ResNet:
    """ResNet-50 v1.5 backbone (Bottleneck, [3, 4, 6, 3]); dilated to ``output_stride``."""
    return _resnet(50, width, output_stride)


def resnet101(width: int = DEFAULT_WIDTH, output_stride: Literal[8, 16, 32] = 8) -> ResNet:
    """ResNet-101 v1.5 backbone (Bottleneck, [3, 4, 23, 3]); dilated to ``output_stride``."""
    return _resnet(101, width, output_stride)
