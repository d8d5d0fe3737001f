"""Decoders on the four MiT maps: DAFormer's context-aware fusion, SegFormer's all-MLP head, and
SePiCo's projection head.

* :class:`DAFormerHead` (Hoyer et al., CVPR 2022, Sec. 3.3; lhoyer/DAFormer
  ``mmseg/models/decode_heads/daformer_head.py`` and ``configs/_base_/models/daformer_*_mitb5.py``):
  each level embedded to 256 channels by a Linear, levels 2-4 upsampled (bilinear,
  align_corners=False) to stride 4, concatenated in level order, fused by ``fusion``:
  ``"sepaspp"`` (DAFormer: a 1×1 branch and depthwise-separable 3×3 branches at dilations
  6, 12, 18, then a 3×3 bottleneck), ``"aspp"`` (the same with plain dilated 3×3 convs) or
  ``"conv1"`` (one 1×1 conv, "SegFormer with C_e = 256"); then Dropout2d(0.1) and a 1×1 classifier.
* :class:`SegFormerHead` (Xie et al., NeurIPS 2021; DAFormer's copy
  ``mmseg/models/decode_heads/segformer_head.py``): Linear embeddings, concatenation in level order
  c1..c4 (as DAFormer's copy; NVlabs concatenates c4..c1), a 1×1 conv + BN + ReLU, dropout and a
  1×1 classifier.
* :class:`ProjectionHead` (Xie et al., SePiCo, TPAMI 2023; BIT-DA/SePiCo
  ``mmseg/models/decode_heads/proj_head.py``,
  ``configs/_base_/models/daformer_sepaspp_proj_mitb5.py``): the four maps resized to stride 4
  and concatenated, 1×1 conv-BN-ReLU to sum/4 channels, 1×1 conv-BN-ReLU to ``out_dim``,
  L2-normalised over channels.

On the CPU the depthwise *dilated* convolutions of the sep-ASPP fusion compute their weight
gradient by :class:`DepthwiseDilatedConv2d`'s own backward (the sum over the nine shifted input
copies): PyTorch's CPU kernel for that gradient took 4.2 s with 2 threads against 0.009 s with 1
for a (4, 128, 16, 32) input here, so a CPU demo of DAFormer would spend most of its time in it.
Forward and input gradient are PyTorch's; on other devices all of it is.

Every conv + BN + ReLU is :class:`ConvBNReLU` with sub-modules ``conv`` and ``bn``, as mmcv's
``ConvModule`` names them, so mmseg checkpoints of these heads map by prefix alone
(:mod:`spcl.models.mmseg_import`). Init as mmcv/mmseg: those convs Kaiming normal (fan_out, ReLU),
BN weight 1 and bias 0; DAFormer's ``conv_seg`` normal std 0.01, bias 0; Linear embeddings and
SegFormer's ``linear_pred`` keep PyTorch's default (mmseg does not re-initialise them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "DAFORMER_CHANNELS",
    "DAFORMER_DILATIONS",
    "ASPPFusion",
    "ConvBNReLU",
    "DAFormerHead",
    "DepthwiseDilatedConv2d",
    "DepthwiseSeparableConvBNReLU",
    "Fusion",
    "LinearEmbed",
    "ProjectionHead",
    "SegFormerHead",
    "resize_concat",
]

Fusion = Literal["sepaspp", "aspp", "conv1"]
FUSIONS: tuple[str, ...] = ("sepaspp", "aspp", "conv1")
DAFORMER_CHANNELS = 256  # embed_dims = channels = 256 in every DAFormer config
DAFORMER_DILATIONS = (1, 6, 12, 18)  # fusion_cfg dilations; rate 1 is a 1×1 branch
DECODER_DROPOUT = 0.1  # dropout_ratio of every head (nn.Dropout2d before the classifier)
CLASSIFIER_INIT_STD = 0.01  # BaseDecodeHead init_cfg: Normal(std=0.01) on conv_seg
BOTTLENECK_KERNEL = 3  # ASPPWrapper.bottleneck: 3×3, padding 1
ASPP_KERNEL = 3


def resize_concat(feats: Sequence[Tensor]) -> Tensor:
    """Upsample every map to the first one's size (bilinear, align_corners=False) and concatenate.

    Shape:
        - feats: maps (B, C_i, H_i, W_i).
        - Output: (B, ΣC_i, H_1, W_1).
    """
    size = feats[0].shape[-2:]

    def resized(f: Tensor) -> Tensor:
        if f.shape[-2:] == size:
            return f
        return F.interpolate(f, size, mode="bilinear", align_corners=False)

    return torch.cat([resized(f) for f in feats], dim=1)


class _DepthwiseDilatedConvFunction(torch.autograd.Function):
    """Depthwise conv (stride 1, same-size padding); weight gradient as a sum of shifted copies."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, dilation: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        padding = dilation * (weight.shape[-1] // 2)
        return F.conv2d(x, weight, padding=padding, dilation=dilation, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        dilation, kernel = ctx.dilation, weight.shape[-1]
        padding = dilation * (kernel // 2)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(
                x.shape, weight, grad_out, padding=padding, dilation=dilation, groups=x.shape[1]
            )
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (padding,) * 4)
            height, width = grad_out.shape[-2:]
            # dL/dw[c, i, j] = Σ_{b,y,x} g[b, c, y, x] · x_pad[b, c, y + i·d, x + j·d]
            taps = [
                (grad_out * padded[..., i * dilation : i * dilation + height,
                                   j * dilation : j * dilation + width]).sum(dim=(0, 2, 3))
                for i in range(kernel)
                for j in range(kernel)
            ]  # fmt: skip
            grad_w = torch.stack(taps, dim=1).view_as(weight)
        return grad_x, grad_w, None


class DepthwiseDilatedConv2d(nn.Conv2d):
    """A depthwise, bias-free, stride-1 dilated conv with 'same' padding (an ``nn.Conv2d``).

    Same parameters and results as ``nn.Conv2d(C, C, k, padding=d·(k//2), dilation=d, groups=C,
    bias=False)``; on the CPU its weight gradient avoids PyTorch's slow kernel (module docstring).
    """

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__(
            channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation,
            groups=channels, bias=False,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return super().forward(x)
        return _DepthwiseDilatedConvFunction.apply(x, self.weight, self.dilation[0])


class ConvBNReLU(nn.Module):
    """Conv2d without bias → BatchNorm2d → ReLU (mmcv ``ConvModule`` with BN, ``bias='auto'``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        *,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        padding = 0 if kernel == 1 else dilation * (kernel // 2)
        if groups == in_channels == out_channels and dilation > 1:
            self.conv: nn.Conv2d = DepthwiseDilatedConv2d(in_channels, kernel, dilation)
        else:
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel, padding=padding, dilation=dilation,
                groups=groups, bias=False,
            )  # fmt: skip
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvBNReLU(nn.Module):
    """Depthwise dilated 3×3 ConvBNReLU, then pointwise 1×1 ConvBNReLU (mmcv's module so named)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(
            in_channels, in_channels, ASPP_KERNEL, dilation=dilation, groups=in_channels
        )
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ASPPFusion(nn.Module):
    """Parallel branches at ``dilations`` (rate 1 → 1×1), concatenated, then a 3×3 bottleneck.

    Shape:
        - Input: (B, C_in, H, W); output: (B, channels, H, W).
    """

    def __init__(
        self, in_channels: int, channels: int, dilations: Sequence[int], separable: bool
    ) -> None:
        super().__init__()

        def branch(rate: int) -> nn.Module:
            if rate == 1:
                return ConvBNReLU(in_channels, channels, 1)
            if separable:
                return DepthwiseSeparableConvBNReLU(in_channels, channels, rate)
            return ConvBNReLU(in_channels, channels, ASPP_KERNEL, dilation=rate)

        self.aspp_modules = nn.ModuleList(branch(rate) for rate in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, BOTTLENECK_KERNEL)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class LinearEmbed(nn.Module):
    """A Linear over channels at every pixel (mmseg's ``MLP`` with attribute ``proj``).

    Shape:
        - Input: (B, C_in, H, W); output: (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        tokens = self.proj(x.flatten(2).transpose(1, 2))  # (B, H·W, C_out)
        return tokens.transpose(1, 2).reshape(batch, -1, height, width)


def _embed_all(layers: nn.ModuleDict, feats: Sequence[Tensor]) -> Tensor:
    """Embed level i by ``layers[str(i)]``, upsample to level 0's size, concatenate in order."""
    if len(feats) != len(layers):
        raise ValueError(f"the decoder takes {len(layers)} feature maps, got {len(feats)}")
    return resize_concat([layers[str(i)](f) for i, f in enumerate(feats)])


class DAFormerHead(nn.Module):
    """DAFormer's decoder (see the module docstring).

    Args:
        in_channels: Channels of the encoder's maps, finest first.
        num_classes: Number of classes K.
        channels: Embedding and fused channels (256 in DAFormer).
        fusion: ``"sepaspp"`` (DAFormer), ``"aspp"`` or ``"conv1"``.
        dilations: Branch rates of the ASPP fusions.
        dropout: Dropout2d probability before the classifier.

    Shape:
        - :meth:`fuse`: maps (B, C_i, H_i, W_i) → (B, channels, H_1, W_1).
        - :meth:`classify`: (B, channels, h, w) → (B, K, h, w).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = DAFORMER_CHANNELS,
        fusion: Fusion = "sepaspp",
        dilations: Sequence[int] = DAFORMER_DILATIONS,
        dropout: float = DECODER_DROPOUT,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown DAFormer fusion {fusion!r}; valid: {list(FUSIONS)}")
        self.channels = channels
        self.fusion = fusion
        self.embed_layers = nn.ModuleDict(
            {str(i): LinearEmbed(c, channels) for i, c in enumerate(in_channels)}
        )
        fused_in = channels * len(in_channels)
        if fusion == "conv1":
            self.fuse_layer: nn.Module = ConvBNReLU(fused_in, channels, 1)
        else:
            self.fuse_layer = ASPPFusion(fused_in, channels, dilations, fusion == "sepaspp")
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.conv_seg.bias)

    def fuse(self, feats: Sequence[Tensor]) -> Tensor:
        return self.fuse_layer(_embed_all(self.embed_layers, feats))

    def classify(self, features: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(features))


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder (DAFormer's copy: ``linear_c.{i}``, levels concatenated c1..c4).

    Args:
        in_channels: Channels of the encoder's maps, finest first.
        num_classes: Number of classes K.
        channels: Embedding dimension E (256 for B0/B1, 768 for B2-B5 in SegFormer's configs).
        dropout: Dropout2d probability before the classifier.

    Shape:
        - :meth:`fuse`: maps (B, C_i, H_i, W_i) → (B, E, H_1, W_1).
        - :meth:`classify`: (B, E, h, w) → (B, K, h, w).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int,
        dropout: float = DECODER_DROPOUT,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.linear_c = nn.ModuleDict(
            {str(i): LinearEmbed(c, channels) for i, c in enumerate(in_channels)}
        )
        self.linear_fuse = ConvBNReLU(channels * len(in_channels), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(channels, num_classes, 1)

    def fuse(self, feats: Sequence[Tensor]) -> Tensor:
        return self.linear_fuse(_embed_all(self.linear_c, feats))

    def classify(self, features: Tensor) -> Tensor:
        return self.linear_pred(self.dropout(features))


class ProjectionHead(nn.Module):
    """SePiCo's projection of the resize-concatenated encoder maps onto the unit sphere.

    Args:
        in_channels: Channels of the encoder's maps (their sum is the input width).
        out_dim: Projection dimension A (512 in SePiCo's MiT-B5 runs).

    Shape:
        - Input: maps (B, C_i, H_i, W_i).
        - Output: (B, A, H_1, W_1), unit L2 norm over A at every pixel (non-negative: the last
          layer ends with ReLU, as in SePiCo).
    """

    def __init__(self, in_channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"projection dimension must be positive, got {out_dim}")
        total = sum(in_channels)
        middle = total // len(in_channels)  # ProjHead: mid_channels = in_channels // len(in_index)
        self.out_dim = out_dim
        self.convs = nn.Sequential(ConvBNReLU(total, middle, 1), ConvBNReLU(middle, out_dim, 1))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return F.normalize(self.convs(resize_concat(feats)), p=2, dim=1)
