"""A DINOv2 segmenter: VFM-UDA's lightweight upscaling head on one or several ViT blocks.

The head is that of VFM-UDA (Englert et al., "Exploring the Benefits of Vision Foundation Models
for Unsupervised Domain Adaptation", CVPRW 2024; tue-mps/vfm-uda
``models/vit_variants/vit_lightweight_head.py``): the patch-token map (stride 14) →
ConvTranspose2d(D → D/2, 2, stride 2, no bias) → LayerNorm2d → GELU → ConvTranspose2d(D/2 → D/4)
→ LayerNorm2d → Conv2d 3×3 (D/4 → D/4, no bias) → LayerNorm2d (stride 3.5), then a 1×1 conv to
the classes (no bias, weights N(0, 0.1)). ``feature_blocks`` may name several blocks: their
normalised maps are concatenated on channels before the head (as DINOv2's multi-layer
segmentation heads read their last four blocks); the default is the last block alone, VFM-UDA.

**Which feature SPCL uses.** ``SegOutput.features`` is the head's last hidden map (D/4 channels,
192 for ViT-B, 256 for ViT-L, at stride 3.5), the input of the 1×1 classifier: the logits are a
linear read-out of it, as in DeepLab-v2 (ResNet features → ASPP) and the MiT segmenters, so
SPCL's prototypes and contrast act on the features the classifier separates, at the logits'
resolution. The encoder's token map (D channels, stride 14) is not used: it has 4× fewer pixels
per side than the logits.

**Inputs whose sides are not multiples of 14** are resized bilinearly (VFM-UDA's rule: side
× ``input_scale``, rounded down to a multiple of 14, at least 14; VFM-UDA uses
``input_scale = 1.1`` on 1024² crops → 1120²). The logits then cover the whole input, so the
usual bilinear upsampling to the label size stays aligned. Sides already multiples of 14 at
scale 1 are not touched.

**Frozen or fine-tuned.** VFM-UDA and VFM-UDA++ fine-tune the ViT (at 0.1 × the head's lr);
``freeze_backbone=True`` stops its gradients instead (``param_groups`` then returns no backbone
parameters). Blocks after the deepest feature block are never run and are frozen.

**Weights.** The family's registry entries (:data:`MODELS`: ``dinov2_vit{s,b,l,g}14[_reg]``)
fill the encoder from an official DINOv2 file (width 64 only: :func:`load_dinov2_weights`) or
from another run's spcl model file (:class:`~spcl.models.pretrained.EncoderWeightLoader`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.base import CheckpointError, MissingFileError
from spcl.models.pretrained import SHOWN_KEYS, EncoderWeightLoader, read_state_dict
from spcl.models.segmenter import ModelEntry, Segmenter
from spcl.models.vfm_checkpoints import is_vfm_network, vfm_encoder_tensors
from spcl.models.vit import (
    DEFAULT_WIDTH,
    DINOV2_VARIANTS,
    PATCH_SIZE,
    DINOv2Encoder,
    dinov2_encoder,
)
from spcl.models.weight_layouts import fit_problems

__all__ = [
    "HEAD_OUT_STD",
    "MODELS",
    "LayerNorm2d",
    "LightweightUpscaleHead",
    "ViTSegmenter",
    "backbone_layer_id",
    "dinov2_segmenter",
    "fill_dinov2",
    "load_dinov2_weights",
]

HEAD_UPSAMPLE = 4  # two stride-2 transposed convs: logits at stride 14 / 4 = 3.5
HEAD_OUT_STD = 0.1  # torch.nn.init.normal_(out.weight, 0, std=0.1) (vit_lightweight_head.py)
LN2D_EPS = 1e-6  # timm LayerNorm2d default eps (VFM-UDA imports it from timm.layers)
LAST_BLOCK = (-1,)  # VFM-UDA: the head reads the last block (after the final norm)
STEM_LAYER = 0  # layer id of tokens, position embedding, patch embedding and final norm
STEM_NAMES = ("cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed", "norm")
# VFM-UDA's param_defs_encoder_stems: these get the most-decayed lr, below block 0 (the final
# norm included, unlike BEiT-style layer decay)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm ``LayerNorm2d``); a LayerNorm by type."""

    def __init__(self, num_channels: int, eps: float = LN2D_EPS) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        )
        return x.permute(0, 3, 1, 2)


class LightweightUpscaleHead(nn.Module):
    """VFM-UDA's head: two ×2 transposed convs and a 3×3 conv with LayerNorm2d, 1×1 classifier.

    ``upscale`` keeps VFM-UDA's module indices (0, 1, 3, 4, 5, 6 hold weights) so its
    ``network.upscale.*`` / ``network.out.*`` weights map onto ``upscale.*`` / ``out.*``.

    Args:
        in_channels: Channels of the concatenated block maps (n_blocks × D).
        embed_dim: D; the hidden maps have D/2 and D/4 channels.
        num_classes: K.

    Shape:
        - Input of :meth:`forward`: (B, in_channels, h, w).
        - Output: hidden map (B, D/4, 4h, 4w); :meth:`classify` → (B, K, 4h, 4w).
    """

    def __init__(self, in_channels: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        if embed_dim % HEAD_UPSAMPLE:
            raise ValueError(f"the head needs an embed dim divisible by 4, got {embed_dim}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        half, quarter = embed_dim // 2, embed_dim // 4
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(quarter),
            nn.Conv2d(quarter, quarter, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(quarter),
        )
        self.out = nn.Conv2d(quarter, num_classes, kernel_size=1, bias=False)
        nn.init.normal_(self.out.weight, mean=0.0, std=HEAD_OUT_STD)
        self.out_channels = quarter

    def forward(self, x: Tensor) -> Tensor:
        return self.upscale(x)

    def classify(self, features: Tensor) -> Tensor:
        return self.out(features)


class ViTSegmenter(Segmenter):
    """DINOv2 encoder + :class:`LightweightUpscaleHead`, returning ``SegOutput``.

    Args:
        backbone: The DINOv2 trunk (its state dict is an official file's).
        num_classes: K.
        feature_blocks: Blocks whose normalised maps feed the head, Python-style indices
            (``(-1,)`` = the last, VFM-UDA; e.g. ``(-4, -3, -2, -1)`` for the last four).
        freeze_backbone: No gradients into the encoder (default: fine-tuned, as VFM-UDA).
        input_scale: Input resize factor before rounding down to a multiple of 14 (VFM-UDA 1.1).

    Attributes:
        backbone, decode_head, num_classes.
        feature_channels: Channels of ``SegOutput.features`` (D/4).
        output_stride: 3.5 (14 / 4), of the input resized to multiples of 14.
        num_layers: Depth of the encoder, for layer-wise lr decay (:meth:`layer_id`).
        head_prefixes: State-dict prefixes of the head parameters (``decode_head.``).
    """

    head_prefixes: tuple[str, ...] = ("decode_head.",)

    def __init__(
        self,
        backbone: DINOv2Encoder,
        num_classes: int,
        *,
        feature_blocks: Sequence[int] = LAST_BLOCK,
        freeze_backbone: bool = False,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if input_scale <= 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.feature_blocks = _resolve_blocks(feature_blocks, backbone.depth)
        self.backbone = backbone
        self.decode_head = LightweightUpscaleHead(
            backbone.embed_dim * len(self.feature_blocks), backbone.embed_dim, num_classes
        )
        self.num_classes = num_classes
        self.feature_channels = self.decode_head.out_channels
        self.output_stride = PATCH_SIZE / HEAD_UPSAMPLE
        self.num_layers = backbone.depth
        self.input_scale = input_scale
        deepest = max(self.feature_blocks)
        for index, block in enumerate(backbone.blocks):
            if freeze_backbone or index > deepest:
                block.requires_grad_(False)
        if freeze_backbone:
            backbone.requires_grad_(False)

    def fit_to_patches(self, x: Tensor) -> Tensor:
        """Resize ``x`` so that both sides are multiples of 14 (VFM-UDA's floor rule)."""
        size = tuple(
            max(1, math.floor(side * self.input_scale / PATCH_SIZE)) * PATCH_SIZE
            for side in x.shape[-2:]
        )
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward_features(self, x: Tensor) -> Tensor:
        """The head's last hidden map, the classifier's input.

        Shape:
            - x: (B, 3, H, W).
            - Output: (B, D/4, 4·h, 4·w) with h = ⌊H·input_scale/14⌋ (at least 1), w likewise.
        """
        maps = self.backbone.forward_maps(self.fit_to_patches(x), self.feature_blocks)
        return self.decode_head(maps[0] if len(maps) == 1 else torch.cat(maps, dim=1))

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits (B, K, h', w') from :meth:`forward_features`'s map (B, D/4, h', w')."""
        return self.decode_head.classify(features)

    def layer_id(self, name: str) -> int:
        """Layer index of an encoder parameter for layer-wise lr decay (0 … num_layers).

        ``backbone.blocks.i.*`` → i + 1; tokens, position and patch embeddings and the final
        norm → 0 (VFM-UDA/VFM-UDA++: the "stems", decayed most); the head → ``num_layers``. The
        optimiser scales the lr by ``decay ** (num_layers − layer_id)``.

        Raises:
            ValueError: ``name`` is neither an encoder nor a head parameter name.
        """
        if self.is_head(name):
            return self.num_layers
        return backbone_layer_id(name)


def backbone_layer_id(name: str) -> int:
    """Layer of a DINOv2 encoder parameter: ``backbone.blocks.i.*`` → i + 1, the stems → 0.

    Raises:
        ValueError: ``name`` is not a ``backbone.`` parameter name of a DINOv2 encoder.
    """
    parts = name.split(".")
    if parts[0] != "backbone" or len(parts) < 2:
        raise ValueError(f"{name!r} is not an encoder parameter (names start 'backbone.')")
    if parts[1] == "blocks" and len(parts) > 2 and parts[2].isdigit():
        return int(parts[2]) + 1
    if parts[1] in STEM_NAMES:
        return STEM_LAYER
    raise ValueError(f"{name!r}: no layer id (expected blocks.N.* or one of {STEM_NAMES})")


def _resolve_blocks(feature_blocks: Sequence[int], depth: int) -> tuple[int, ...]:
    """Python-style block indices → 0-based, checked, duplicates refused."""
    blocks = tuple(int(b) + depth if int(b) < 0 else int(b) for b in feature_blocks)
    if not blocks or any(not 0 <= b < depth for b in blocks) or len(set(blocks)) != len(blocks):
        raise ValueError(
            f"feature_blocks must be distinct block indices in [-{depth}, {depth - 1}], "
            f"got {list(feature_blocks)}"
        )
    return blocks


def dinov2_segmenter(
    variant: str,
    num_classes: int,
    *,
    registers: bool = False,
    width: int = DEFAULT_WIDTH,
    feature_blocks: Sequence[int] = LAST_BLOCK,
    freeze_backbone: bool = False,
    input_scale: float = 1.0,
) -> ViTSegmenter:
    """The registered DINOv2 segmenters (``dinov2_vits14`` … ``dinov2_vitg14_reg``).

    Args:
        variant: "vits14", "vitb14", "vitl14" or "vitg14".
        num_classes: K.
        registers: The ``_reg`` checkpoint's architecture.
        width: Head dimension (64 = published); the head needs heads × width divisible by 4
            (ViT-S: an even width).
        feature_blocks, freeze_backbone, input_scale: See :class:`ViTSegmenter`.
    """
    encoder = dinov2_encoder(variant, registers=registers, width=width)
    if encoder.embed_dim % HEAD_UPSAMPLE:
        raise ValueError(
            f"dinov2_{variant} at width {width} has embed dim {encoder.embed_dim}, which the "
            f"head cannot split in quarters; use an even width"
        )
    return ViTSegmenter(
        encoder,
        num_classes,
        feature_blocks=feature_blocks,
        freeze_backbone=freeze_backbone,
        input_scale=input_scale,
    )


def _dinov2_file_shape(state: Mapping[str, Tensor]) -> str:
    """What a DINOv2 state dict looks like: its embed dim, depth and registers (for errors)."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else "?"
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") > 1}
    registers = tuple(state["register_tokens"].shape) if "register_tokens" in state else "none"
    return f"embed dim {dim}, {len(blocks)} blocks, register_tokens {registers}"


def fill_dinov2(encoder: DINOv2Encoder, ckpt: Mapping[str, Tensor], path: Path) -> None:
    """Load official DINOv2 weights strictly (keys and shapes exactly the encoder's).

    A VFM-UDA checkpoint (:mod:`spcl.models.vfm_checkpoints`) gives its student's encoder.
    """
    if is_vfm_network(ckpt):
        ckpt = vfm_encoder_tensors(ckpt, path)
    own = encoder.state_dict()
    found = fit_problems(own, ckpt)  # strict below: every key and shape must fit
    if any(found.values()):
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:SHOWN_KEYS])}"
            for label, keys in found.items()
            if keys
        ]
        raise CheckpointError(
            f"{path} does not fit the DINOv2 encoder ({_dinov2_file_shape(own)}); the file has "
            f"{_dinov2_file_shape(ckpt)}. {'; '.join(problems)}. Pick the registry name of the "
            f"file's variant (dinov2_vit{{s,b,l,g}}14, *_reg for *_reg4 files) at width 64"
        )
    encoder.load_state_dict(dict(ckpt), strict=True)


def load_dinov2_weights(encoder: DINOv2Encoder, path: str | Path) -> None:
    """Load an official DINOv2 file (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``) strictly.

    The file's keys and shapes must equal the encoder's exactly, as the hub's
    ``load_state_dict(strict=True)`` demands (after unwrapping a ``state_dict``/``model`` level
    and stripping ``module.``/``backbone.``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: A shape differs, or keys are missing or extra; the message names the
            first keys that do not fit, the file's apparent shape and the encoder's.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"DINOv2 checkpoint not found: {path}")
    fill_dinov2(encoder, read_state_dict(path), path)


DINOV2_WEIGHTS = EncoderWeightLoader("DINOv2", fill_dinov2)  # official file or spcl model file
MODELS: dict[str, ModelEntry] = {  # registry names of this family
    f"dinov2_{variant}{suffix}": ModelEntry(
        partial(dinov2_segmenter, variant, registers=bool(suffix)), DINOV2_WEIGHTS
    )
    for variant in DINOV2_VARIANTS
    for suffix in ("", "_reg")
}
