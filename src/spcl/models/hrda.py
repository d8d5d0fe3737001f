"""HRDA's multi-resolution segmenter: any spcl segmenter, a scale-attention head, two views fused.

:class:`HRDASegmenter` wraps a built segmenter (``segmenter.*`` in its state dict) and adds the
scale-attention head (``scale_attention.*``), as HRDA's ``HRDAEncoderDecoder`` and ``HRDAHead``
do (lhoyer/HRDA; docs/recipes.md, "HRDA multi-resolution training"; the math is in
:mod:`spcl.method.hrda`):

- ``model(x, box=b)`` (training): the context view (``x`` downscaled ×``context_scale``) and the
  detail view (the window ``b`` of ``x``) through the same network, fused; :class:`HRDAOutput`
  carries the fused logits, the detail logits and the window for HRDA's loss.
- ``model(x)`` (teacher pseudo-labels, ``spcl evaluate``, ``spcl predict``): the context view and
  the whole ``x`` as detail, predicted by (overlapping) ``detail_crop`` windows in one batch whose
  logits are averaged, then fused.

``features`` are the context view's (HRDA computes the feature distance on them,
``feature_scale=0.5``). The attention head copies the family's decoder, as the authors configure
it per backbone: for DAFormer a DAFormer decoder whose sep-ASPP fusion is a 1×1 conv+BN+ReLU
(``hrda_head.py``), for DeepLab-v2 the ASPP classifier with the model's dilations (``DLV2Head``);
spcl's own choice elsewhere: SegFormer's all-MLP decoder for SegFormer, a 1×1 conv on the head's
last map for DINOv2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.method.hrda import (
    HRDA_ALIGN_CORNERS,
    HRDA_CROP_DIVISIBLE,
    HRDA_DETAIL_LOSS_WEIGHT,
    Box,
    assemble_windows,
    crop_to_box,
    detail_box,
    fuse_scales,
    window_boxes,
)
from spcl.models.deeplab_v2 import ASPPClassifierV2, DeepLabV2
from spcl.models.segformer import SegFormerSegmenter
from spcl.models.segformer_heads import DAFormerHead, SegFormerHead
from spcl.models.segmenter import Segmenter, SegOutput

__all__ = ["ContextView", "DetailCropStudent", "HRDAOutput", "HRDASegmenter", "HRDASettings"]

INNER = "segmenter."  # state-dict prefix of the wrapped segmenter
ATTENTION = "scale_attention."  # state-dict prefix of the scale-attention head
ATTENTION_FUSION = "conv1"  # HRDA replaces the DAFormer attention head's sep-ASPP by a 1×1 conv


@dataclass(frozen=True)
class HRDASettings:
    """HRDA's geometry and loss weight (``online.hrda`` of the config; the model file's
    ``arch["hrda"]``), defaults from ``configs/hrda/gtaHR2csHR_hrda.py``."""

    context_scale: float = 0.5  # context view = crop × 0.5 (HRDA `scales=[1, 0.5]`)
    detail_crop: tuple[int, int] = (512, 512)  # detail window [H, W] (HRDA `hr_crop_size`)
    crop_divisible: int = HRDA_CROP_DIVISIBLE  # window corners on multiples of this (8)
    detail_loss_weight: float = HRDA_DETAIL_LOSS_WEIGHT  # λ_d (HRDA `hr_loss_weight` 0.1)
    attention: Literal["classwise", "single"] = "classwise"  # one attention per class (HRDA
    # `attention_classwise=True`) or one for all
    slide_overlap: bool = True  # inference windows at half-crop stride (`hr_slide_overlapping`)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a model file (lists, not tuples)."""
        return {**asdict(self), "detail_crop": list(self.detail_crop)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HRDASettings:
        """Settings from a config section or a model file's ``arch["hrda"]`` (``enabled`` ignored).

        Raises:
            ValueError: an unknown key or a value of the wrong kind.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known - {"enabled"})
        if unknown:
            raise ValueError(f"unknown HRDA setting(s) {unknown}; known: {sorted(known)}")
        kept = {k: v for k, v in values.items() if k in known}
        if "detail_crop" in kept:
            kept["detail_crop"] = tuple(int(v) for v in kept["detail_crop"])
        settings = cls(**kept)
        if not 0 < settings.context_scale <= 1 or len(settings.detail_crop) != 2:
            raise ValueError(f"HRDA needs 0 < context_scale ≤ 1 and a [H, W] crop: {settings}")
        if settings.attention not in ("classwise", "single"):
            raise ValueError(f"HRDA attention must be classwise or single: {settings.attention!r}")
        return settings


class HRDAOutput(NamedTuple):
    """What :class:`HRDASegmenter` returns: ``logits`` and ``features`` as in ``SegOutput``
    (fused logits, context features), plus with a training window the detail view's logits,
    the window and λ_d for :func:`spcl.method.hrda.hrda_loss`."""

    logits: Tensor
    features: Tensor
    detail: Tensor | None = None
    box: Box | None = None
    detail_weight: float = 0.0


def scale_attention_head(inner: Segmenter, outputs: int) -> nn.Module:
    """The family's attention head with ``outputs`` channels (see the module docstring)."""
    if isinstance(inner, SegFormerSegmenter):
        head = inner.decode_head
        maps = inner.backbone.out_channels
        if isinstance(head, DAFormerHead):
            return DAFormerHead(
                maps, outputs, head.channels, ATTENTION_FUSION, dropout=head.dropout.p
            )
        return SegFormerHead(maps, outputs, head.channels, dropout=head.dropout.p)
    if isinstance(inner, DeepLabV2):
        dilations = tuple(int(conv.dilation[0]) for conv in inner.classifier.conv2d_list)
        return ASPPClassifierV2(inner.backbone.out_channels, outputs, dilations)
    return nn.Conv2d(inner.feature_channels, outputs, 1)  # on the head's last map (DINOv2)


class HRDASegmenter(Segmenter):
    """A segmenter trained and run at two resolutions (see the module docstring).

    Args:
        segmenter: The built single-scale segmenter (its pretrained weights already loaded).
        settings: HRDA's geometry and detail loss weight.
        attention: The scale-attention head; by default :func:`scale_attention_head`.
    """

    head_prefixes: tuple[str, ...] = (ATTENTION,)  # extended per instance by the segmenter's

    def __init__(
        self, segmenter: Segmenter, settings: HRDASettings, attention: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.settings = settings
        outputs = segmenter.num_classes if settings.attention == "classwise" else 1
        self.scale_attention = (
            attention if attention is not None else scale_attention_head(segmenter, outputs)
        )
        self.num_classes = segmenter.num_classes
        self.feature_channels = segmenter.feature_channels
        self.output_stride = segmenter.output_stride  # of the fused logits (features: / scale)
        self.num_layers = segmenter.num_layers
        self.layout_options = segmenter.layout_options
        self.head_prefixes = (*(INNER + p for p in segmenter.head_prefixes), ATTENTION)

    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        """The wrapped segmenter's encoder (what pretrained files fill, ``freeze_bn`` freezes)."""
        return self.segmenter.backbone

    def forward_features(self, x: Tensor) -> Tensor:
        """The wrapped segmenter's map of ``x`` itself (single scale)."""
        return self.segmenter.forward_features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """The wrapped segmenter's logits from :meth:`forward_features`'s map (single scale)."""
        return self.segmenter.forward_head(features)

    def layer_id(self, name: str) -> int:
        """The wrapped segmenter's layer of ``segmenter.<name>``; the attention head is a head."""
        if name.startswith(ATTENTION):
            return self.num_layers
        if not name.startswith(INNER):
            raise ValueError(f"{name!r}: not a parameter of an HRDA model ({INNER}*, {ATTENTION}*)")
        return self.segmenter.layer_id(name[len(INNER) :])

    def forward(self, x: Tensor, box: Box | None = None) -> HRDAOutput:  # type: ignore[override]
        """Fused logits of ``x`` (B, 3, H, W): with ``box``, the training views; without, the
        whole-image inference (see the module docstring)."""
        small = F.interpolate(
            x,
            scale_factor=self.settings.context_scale,
            mode="bilinear",
            align_corners=HRDA_ALIGN_CORNERS,
        )
        encoded = self._encode(small)
        context = self._decode(encoded)
        attention = torch.sigmoid(self._attention(encoded))
        pixels = tuple(x.shape[-2:])
        if box is not None:
            detail = self._decode(self._encode(crop_to_box(x, box))).logits
            fused = fuse_scales(context.logits, attention, detail, box=box, pixels=pixels)
            weight = self.settings.detail_loss_weight
            return HRDAOutput(fused, context.features, detail, box, weight)
        detail = self._slide_detail(x)
        fused = fuse_scales(context.logits, attention, detail, box=None, pixels=pixels)
        return HRDAOutput(fused, context.features)

    def _slide_detail(self, x: Tensor) -> Tensor:
        """The whole image's detail logits from its windows, run as one batch (the authors'
        batched slide), averaged where windows overlap."""
        pixels = tuple(x.shape[-2:])
        boxes = window_boxes(*pixels, self.settings.detail_crop, self.settings.slide_overlap)
        windows = torch.cat([crop_to_box(x, box) for box in boxes])
        logits = self._decode(self._encode(windows)).logits.split(x.shape[0])
        first = boxes[0]
        size = (
            round(logits[0].shape[-2] * pixels[0] / (first.y2 - first.y1)),
            round(logits[0].shape[-1] * pixels[1] / (first.x2 - first.x1)),
        )
        return assemble_windows(logits, boxes, pixels, size)

    def _encode(self, x: Tensor) -> Any:
        """What both the decoder and the attention head read: MiT's four maps, else the map."""
        if isinstance(self.segmenter, SegFormerSegmenter):
            return self.segmenter.backbone(x)
        return self.segmenter.forward_features(x)

    def _decode(self, encoded: Any) -> SegOutput:
        """Logits and features from :meth:`_encode`'s output (projection heads included)."""
        inner = self.segmenter
        if isinstance(inner, SegFormerSegmenter):
            fused = inner.decode_head.fuse(encoded)
            features = fused if inner.projection is None else inner.projection(encoded)
            return SegOutput(inner.forward_head(fused), features)
        projection = getattr(inner, "projection", None)  # DeepLab-v2 with SePiCo's projection
        features = encoded if projection is None else projection(encoded)
        return SegOutput(inner.forward_head(encoded), features)

    def _attention(self, encoded: Any) -> Tensor:
        """Attention logits (before the sigmoid) on the context view."""
        head = self.scale_attention
        if isinstance(head, DAFormerHead | SegFormerHead):
            return head.classify(head.fuse(encoded))
        return head(encoded)


class ContextView(nn.Module):
    """A segmenter run on its input downscaled to HRDA's context scale (the frozen ImageNet model
    of the feature distance, compared with the student's context features)."""

    def __init__(self, segmenter: nn.Module, scale: float) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.scale = scale

    def forward(self, x: Tensor) -> SegOutput:
        small = F.interpolate(
            x, scale_factor=self.scale, mode="bilinear", align_corners=HRDA_ALIGN_CORNERS
        )
        return self.segmenter(small)


class DetailCropStudent:
    """The student as the online step calls it under HRDA: each call draws a detail window
    (from the step's checkpointed generator) and returns :class:`HRDAOutput` with it.

    Args:
        net: The :class:`HRDASegmenter` (DDP-wrapped under torchrun).
        settings: Its settings (the window size and corner rule).
        generator: The online step's generator.
    """

    def __init__(self, net: nn.Module, settings: HRDASettings, generator: torch.Generator) -> None:
        self.net = net
        self.settings = settings
        self.generator = generator

    def __call__(self, images: Tensor) -> HRDAOutput:
        height, width = images.shape[-2:]
        box = detail_box(
            height, width, self.settings.detail_crop, self.settings.crop_divisible, self.generator
        )
        return self.net(images, box=box)
