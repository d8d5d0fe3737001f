"""VFM-UDA++'s segmenter: DINOv2 + ViT-Adapter + the lightweight pyramid head.

The network of VFM-UDA++ (Englert et al., ICCVW 2025; tue-mps/vfm-uda-plusplus
``models/multiscale_vfm/vit_adapter_lightweight_pyramid_head.py``, ``basic_pyramid_head.py``;
docs/recipes.md, "VFM-UDA++: the network"): the input is resized bilinearly (side × 1.1, so a
1024² crop becomes 1120²), the DINOv2 ViT with its :class:`~spcl.models.vit_adapter.ViTAdapter`
gives four D-channel maps at strides 4, 8, 16, 32, and :class:`PyramidHead` fuses them top-down:
three steps of ConvTranspose2d ×2 (D → D/2 → D/4 → D/8) plus a 1×1 lateral conv of the next
level, a 3×3 smoothing conv, BatchNorm (momentum 0.01) and ReLU, then one more 3×3 conv and a
1×1 classifier without bias (weights N(0, 0.1)). Logits are at stride 4 of the resized input.

**Input size.** The adapter needs sides that are multiples of 224 (lcm of the patch 14 and the
stem's stride 32), so each side becomes ``⌊side · input_scale / 224⌋ · 224`` (at least 224). For
VFM-UDA++'s 1024² crops and windows with ``input_scale`` 1.1 this is the authors' 1120²
(``int(1024 · 1.1) // 14 · 14``); they support no other size. The logits cover the whole input,
so the usual bilinear upsampling to the label size stays aligned.

**Which feature SPCL uses.** ``SegOutput.features`` is the classifier's input, the head's last
map (D/8 channels: 96 for ViT-B, 128 for ViT-L) at the logits' resolution.
:meth:`AdapterSegmenter.forward_levels` gives the adapter's four maps (VFM-UDA++'s feature
distillation reads the stride-32 one).

**Learning rates.** The adapter and the head form the head group (``head_prefixes``: full lr,
as the authors' ``param_defs_decoder``); the ViT is the backbone, block ``i`` at layer ``i + 1``
and its embeddings at layer 0, so the optimiser's ``layer_decay`` gives the last block
``backbone_lr_mult`` and each block below one more factor of decay (VFM-UDA++: 0.1 and 0.9).

**Weights** (``model.pretrained``, :class:`AdapterWeightLoader`): an official DINOv2 file fills
the ViT (the adapter and head keep the authors' random init, :mod:`spcl.models.vit_adapter`);
the authors' ImageNet-1k adapter file or a released VFM-UDA++ checkpoint
(:mod:`spcl.models.vfm_checkpoints`) fills the ViT and the adapter; another run's spcl model file
fills them too. The head always starts from its init. docs/backbones.md says what a user without
the ImageNet-1k adapter file gets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.base import ConfigError, MissingFileError
from spcl.engine.checkpoint import load_state
from spcl.models.pretrained import OFFICIAL_WIDTH, checkpoint_tensors, fill_from_model_file
from spcl.models.segmenter import Build, ModelEntry, Segmenter
from spcl.models.vfm_checkpoints import fill_from_vfm_encoder, is_vfm_network
from spcl.models.vit import DEFAULT_WIDTH, DINOV2_VARIANTS, DINOv2Encoder, dinov2_encoder
from spcl.models.vit_adapter import ADAPTER_SIDE, STEM_CHANNELS, ViTAdapter
from spcl.models.vit_seg import HEAD_OUT_STD, backbone_layer_id, fill_dinov2
from spcl.models.weight_layouts import detect_layout

__all__ = [
    "ADAPTER_VARIANTS",
    "MODELS",
    "AdapterSegmenter",
    "AdapterWeightLoader",
    "PyramidHead",
    "adapter_segmenter",
]

ADAPTER_VARIANTS = ("vits14", "vitb14", "vitl14")  # the authors' sizes (in1k adapter files)
INPUT_SCALE = 1.1  # 1024² crops → 1120² (vit_adapter_lightweight_pyramid_head.py)
HEAD_STRIDE = 4  # logits at the stride of the finest adapter level
BN_MOMENTUM = 0.01  # SyncBatchNorm(momentum=0.01) (basic_pyramid_head.py)
PYRAMID_STEPS = 3  # top-down fusion steps: D → D/2 → D/4 → D/8


class _Upscale(nn.Module):
    """The fusion layers, named as the reference's ``_Upscale`` (its ``upscale.*`` keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        widths = [dim // 2**k for k in range(PYRAMID_STEPS + 1)]  # D, D/2, D/4, D/8
        for k in range(1, PYRAMID_STEPS + 1):
            up = nn.ConvTranspose2d(widths[k - 1], widths[k], kernel_size=2, stride=2)
            setattr(self, f"up_conv{k}", up)
            setattr(self, f"reduce_conv{k}", nn.Conv2d(dim, widths[k], kernel_size=1))
            setattr(self, f"smooth_conv{k}", nn.Conv2d(widths[k], widths[k], 3, padding=1))
            setattr(self, f"norm{k}", nn.BatchNorm2d(widths[k], momentum=BN_MOMENTUM))
        self.smooth_conv4 = nn.Conv2d(widths[-1], widths[-1], kernel_size=3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, levels: list[Tensor]) -> Tensor:
        x = levels[-1]  # stride 32
        for k in range(1, PYRAMID_STEPS + 1):
            lateral = getattr(self, f"reduce_conv{k}")(levels[-1 - k])
            x = getattr(self, f"smooth_conv{k}")(getattr(self, f"up_conv{k}")(x) + lateral)
            x = self.act(getattr(self, f"norm{k}")(x))
        return self.smooth_conv4(x)


class PyramidHead(nn.Module):
    """VFM-UDA++'s lightweight pyramid head: ``upscale`` (fusion) and ``out`` (1×1 classifier).

    Args:
        dim: D, the channels of every adapter level (divisible by 8).
        num_classes: K.

    Shape:
        - :meth:`forward`: four maps (B, D, ·) at strides 4, 8, 16, 32 → (B, D/8, H/4, W/4);
          :meth:`classify` → (B, K, H/4, W/4).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if dim % 2**PYRAMID_STEPS:
            raise ValueError(f"the pyramid head needs a width divisible by 8, got {dim}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.upscale = _Upscale(dim)
        self.upscale.apply(_init_head)
        self.out_channels = dim // 2**PYRAMID_STEPS
        self.out = nn.Conv2d(self.out_channels, num_classes, kernel_size=1, bias=False)
        nn.init.normal_(self.out.weight, mean=0.0, std=HEAD_OUT_STD)

    def forward(self, levels: list[Tensor]) -> Tensor:
        return self.upscale(levels)

    def classify(self, features: Tensor) -> Tensor:
        return self.out(features)


@torch.no_grad()
def _init_head(module: nn.Module) -> None:
    """The reference head's init: Kaiming-uniform (ReLU; convs fan-in, transposed fan-out)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        mode = "fan_in" if isinstance(module, nn.Conv2d) else "fan_out"
        nn.init.kaiming_uniform_(module.weight, mode=mode, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class AdapterSegmenter(Segmenter):
    """DINOv2 encoder (``backbone``) + ViT-Adapter (``adapter``) + :class:`PyramidHead`.

    Args:
        backbone: The DINOv2 trunk; its final ``norm`` is not used (frozen).
        num_classes: K.
        freeze_backbone: No gradients into the ViT (the authors' ``freeze_vit``; default:
            fine-tuned, as VFM-UDA++).
        input_scale: Input resize factor before rounding down to a multiple of 224.

    Attributes:
        backbone, adapter, decode_head, num_classes.
        feature_channels: D/8. output_stride: 4, of the resized input.
        num_layers: The ViT's depth (:meth:`layer_id`).
    """

    head_prefixes: tuple[str, ...] = ("adapter.", "decode_head.")

    def __init__(
        self,
        backbone: DINOv2Encoder,
        num_classes: int,
        *,
        heads: int,
        stem_channels: int,
        freeze_backbone: bool = False,
        input_scale: float = INPUT_SCALE,
    ) -> None:
        super().__init__()
        if input_scale <= 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.backbone = backbone
        self.adapter = ViTAdapter(backbone.embed_dim, heads, backbone.depth, stem_channels)
        self.decode_head = PyramidHead(backbone.embed_dim, num_classes)
        self.num_classes = num_classes
        self.feature_channels = self.decode_head.out_channels
        self.output_stride = HEAD_STRIDE
        self.num_layers = backbone.depth
        self.input_scale = input_scale
        backbone.norm.requires_grad_(False)  # the adapter reads the blocks, not the final norm
        if freeze_backbone:
            backbone.requires_grad_(False)

    def fit_to_adapter(self, x: Tensor) -> Tensor:
        """Resize ``x`` so both sides are multiples of 224 (the authors' 1024 → 1120)."""
        size = tuple(
            max(1, math.floor(side * self.input_scale / ADAPTER_SIDE)) * ADAPTER_SIDE
            for side in x.shape[-2:]
        )
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        """The adapter's four maps (B, D, ·) at strides 4, 8, 16, 32 of the resized input."""
        return self.adapter(self.fit_to_adapter(x), self.backbone)

    def forward_features(self, x: Tensor) -> Tensor:
        """The classifier's input (B, D/8, H'/4, W'/4), H' × W' the resized input."""
        return self.decode_head(self.forward_levels(x))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.decode_head.classify(features)

    def layer_id(self, name: str) -> int:
        """ViT block i → i + 1, its embeddings → 0; adapter and head → ``num_layers``.

        Raises:
            ValueError: ``name`` is no parameter name of this model.
        """
        if self.is_head(name):
            return self.num_layers
        return backbone_layer_id(name)


def adapter_segmenter(
    variant: str,
    num_classes: int,
    *,
    width: int = DEFAULT_WIDTH,
    freeze_backbone: bool = False,
    input_scale: float = INPUT_SCALE,
) -> AdapterSegmenter:
    """The registered VFM-UDA++ segmenters (``vfmudapp_vits14``, ``_vitb14``, ``_vitl14``).

    Args:
        variant: "vits14", "vitb14" or "vitl14".
        num_classes: K.
        width: Head dimension (64 = published); every width scales with it, the stem's too.
            Heads × width must be divisible by 8 and the width even.
        freeze_backbone, input_scale: See :class:`AdapterSegmenter`.
    """
    if variant not in ADAPTER_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(ADAPTER_VARIANTS)}")
    encoder = dinov2_encoder(variant, width=width)
    if encoder.embed_dim % 8 or width % 2:
        raise ValueError(
            f"vfmudapp_{variant} at width {width}: embed dim {encoder.embed_dim} must be "
            f"divisible by 8 and the width even (value heads are half as wide)"
        )
    return AdapterSegmenter(
        encoder,
        num_classes,
        heads=DINOV2_VARIANTS[variant].num_heads,
        stem_channels=max(1, STEM_CHANNELS * width // DEFAULT_WIDTH),
        freeze_backbone=freeze_backbone,
        input_scale=input_scale,
    )


@dataclass(frozen=True)
class AdapterWeightLoader:
    """``model.pretrained`` of the VFM-UDA++ family (:class:`~spcl.models.segmenter.WeightLoader`).

    Reads an spcl model file (ViT and adapter, at its width), a VFM-UDA++ checkpoint or the
    authors' ImageNet-1k adapter file (ViT and adapter; ``network.encoder.*``), or an official
    DINOv2 file (the ViT; the adapter keeps its init). The head is never filled.
    """

    def __call__(
        self, build: Build, options: Mapping[str, Any], path: Path, *, name: str, width: int
    ) -> Segmenter:
        if not path.is_file():
            raise MissingFileError(f"model.pretrained not found: {path}")
        model = build(options)
        loaded = load_state(path)
        if detect_layout(loaded) == "spcl_model_file":
            for prefix in ("backbone.", "adapter."):
                module = getattr(model, prefix[:-1])
                fill_from_model_file(module, loaded, path, name, width, prefix=prefix)
            return model
        if width != OFFICIAL_WIDTH:
            raise ConfigError(
                f"{name}: official DINOv2 and VFM-UDA++ weights exist at width {OFFICIAL_WIDTH} "
                f"only, got width={width} with pretrained={str(path)!r}"
            )
        tensors = checkpoint_tensors(loaded, path)
        if is_vfm_network(tensors):
            fill_from_vfm_encoder(model, tensors, path)
        else:
            fill_dinov2(model.backbone, tensors, path)
        return model


MODELS: dict[str, ModelEntry] = {  # registry names of this family
    f"vfmudapp_{variant}": ModelEntry(partial(adapter_segmenter, variant), AdapterWeightLoader())
    for variant in ADAPTER_VARIANTS
}
