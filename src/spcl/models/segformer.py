"""MiT encoder + DAFormer or SegFormer decoder, as one segmenter returning :class:`SegOutput`.

DAFormer (Hoyer et al., CVPR 2022) and its successors MIC and SePiCo train a MiT-B5 encoder with
the :class:`~spcl.models.segformer_heads.DAFormerHead`; SegFormer (Xie et al., NeurIPS 2021) uses
the all-MLP head. Both predict at stride 4.

**Which feature SPCL uses.** ``SegOutput.features`` is the decoder's fused map, the input of the
classifier (after fusion and ReLU, before dropout): (B, 256, H/4, W/4) for DAFormer. This is the
map whose linear read-out gives the logits, the same role the ResNet features play in DeepLab-v2
(whose classifier reads them directly), so SPCL's prototypes, pseudo-labels and pixel-to-prototype
contrast see the features the classifier separates. With ``projection_dim`` > 0 the features are
instead SePiCo's L2-normalised projection of the concatenated encoder maps (Sec. 4.2 of SePiCo;
the logits still come from the decoder), so a contrast on them does not reach the decoder, as in
SePiCo.

**Weights.** The family's registry entries (:data:`MODELS`) fill the encoder from an official
SegFormer ImageNet file (``mit_bX.pth``, width 64 only: :func:`load_mit_weights`) or from another
run's spcl model file (:class:`~spcl.models.pretrained.EncoderWeightLoader`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from torch import Tensor

from spcl.base import CheckpointError, MissingFileError
from spcl.models.mit import (
    DEFAULT_WIDTH,
    DROP_PATH_RATE,
    MIT_VARIANTS,
    NUM_STAGES,
    MixVisionTransformer,
    mit_variant_of,
)
from spcl.models.pretrained import EncoderWeightLoader, read_state_dict
from spcl.models.segformer_heads import (
    DAFORMER_CHANNELS,
    DECODER_DROPOUT,
    DAFormerHead,
    Fusion,
    ProjectionHead,
    SegFormerHead,
)
from spcl.models.segmenter import ModelEntry, Segmenter, SegOutput
from spcl.models.weight_layouts import fit_problems

__all__ = [
    "MODELS",
    "SEGFORMER_CHANNELS",
    "SEGMENTER_OUTPUT_STRIDE",
    "SegFormerSegmenter",
    "daformer_mit",
    "load_mit_weights",
    "segformer_mit",
]

SEGMENTER_OUTPUT_STRIDE = 4  # logits and features at the resolution of the first MiT stage
MIT_STAGE_PARAMETER = re.compile(r"^backbone\.(?:patch_embed|block|norm)(\d+)\.")  # stage N
MIT_IMAGENET_HEAD = "head."  # official mit_bX.pth hold a 1000-class Linear: read, never built
# SegFormer's decoder embed_dim (NVlabs local_configs/segformer/B*/: 256 for B0/B1, 768 for B2-B5)
SEGFORMER_CHANNELS = {"b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}

Decoder = DAFormerHead | SegFormerHead


class SegFormerSegmenter(Segmenter):
    """A MiT encoder, a fusion decoder and optionally SePiCo's projection head.

    Args:
        backbone: The MiT encoder (four maps).
        decode_head: A :class:`DAFormerHead` or :class:`SegFormerHead` on those maps.
        num_classes: K (the decoder's classifier outputs).
        projection: When given, ``SegOutput.features`` is its output instead of the fused map.

    Attributes:
        head_prefixes: State-dict prefixes of the head parameters (the 10× learning-rate group).
        feature_channels: Channels of ``SegOutput.features``.
        output_stride: 4 (logits and features).
        num_layers: 4: encoder stage N is layer N, the head 4 (:meth:`layer_id`).
    """

    head_prefixes: tuple[str, ...] = ("decode_head.", "projection.")

    def __init__(
        self,
        backbone: MixVisionTransformer,
        decode_head: Decoder,
        num_classes: int,
        projection: ProjectionHead | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.projection = projection
        self.num_classes = num_classes
        self.feature_channels = decode_head.channels if projection is None else projection.out_dim
        self.output_stride = SEGMENTER_OUTPUT_STRIDE
        self.num_layers = NUM_STAGES

    def forward_features(self, x: Tensor) -> Tensor:
        """The decoder's fused map, the input of :meth:`forward_head`.

        Shape:
            - x: (B, 3, H, W).
            - Output: (B, C, h, w) with h = ⌊(H − 1)/4⌋ + 1, w alike (stride 4).
        """
        return self.decode_head.fuse(self.backbone(x))

    def forward_head(self, features: Tensor) -> Tensor:
        """Class logits from the fused map (dropout in training, then the 1×1 classifier).

        Shape:
            - features: (B, C, h, w); output: (B, K, h, w).
        """
        return self.decode_head.classify(features)

    def forward(self, x: Tensor) -> SegOutput:
        """Logits at stride 4 and the features SPCL uses (see the module docstring), in one pass.

        Shape:
            - x: (B, 3, H, W).
            - Output: SegOutput(logits (B, K, h, w), features (B, feature_channels, h, w)).
        """
        maps = self.backbone(x)
        fused = self.decode_head.fuse(maps)
        features = fused if self.projection is None else self.projection(maps)
        return SegOutput(logits=self.forward_head(fused), features=features)

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay, by MiT stage.

        ``backbone.patch_embedN``/``blockN``/``normN`` → N (1 … 4); the head (``decode_head.``,
        ``projection.``) → ``num_layers`` (4).

        Raises:
            ValueError: ``name`` is neither an encoder nor a head parameter name.
        """
        if self.is_head(name):
            return self.num_layers
        match = MIT_STAGE_PARAMETER.match(name)
        if match and 1 <= int(match.group(1)) <= NUM_STAGES:
            return int(match.group(1))
        raise ValueError(
            f"{name!r}: no layer id (expected backbone.{{patch_embed,block,norm}}N.* with N in "
            f"1-{NUM_STAGES}, or a head parameter {self.head_prefixes})"
        )


def _encoder(variant: str, width: int, drop_path_rate: float) -> MixVisionTransformer:
    if variant not in MIT_VARIANTS:
        raise KeyError(f"unknown MiT variant {variant!r}; valid: {sorted(MIT_VARIANTS)}")
    return MixVisionTransformer(MIT_VARIANTS[variant].scaled(width), drop_path_rate=drop_path_rate)


def _scaled_channels(channels: int, width: int) -> int:
    """Decoder channels × width / 64 (the encoder's scaling), at least 1."""
    return max(1, channels * width // DEFAULT_WIDTH)


def _projection(maps: Sequence[int], projection_dim: int) -> ProjectionHead | None:
    if projection_dim < 0:
        raise ValueError(f"projection_dim must be 0 (off) or positive, got {projection_dim}")
    return ProjectionHead(maps, projection_dim) if projection_dim else None


def daformer_mit(
    variant: str,
    num_classes: int,
    width: int = DEFAULT_WIDTH,
    *,
    fusion: Fusion = "sepaspp",
    decoder_channels: int | None = None,
    projection_dim: int = 0,
    drop_path_rate: float = DROP_PATH_RATE,
    dropout: float = DECODER_DROPOUT,
) -> SegFormerSegmenter:
    """DAFormer: MiT-``variant`` + :class:`DAFormerHead`.

    Args:
        variant: ``"b0"`` … ``"b5"``.
        num_classes: K.
        width: Channel scale, 64 = published (every encoder and decoder width × width / 64).
        fusion: ``"sepaspp"`` (DAFormer), ``"aspp"`` or ``"conv1"`` (DAFormer Tab. 7 variants).
        decoder_channels: Decoder width; default 256 × width / 64.
        projection_dim: SePiCo projection dimension for the features (512 in SePiCo); 0 = off.
        drop_path_rate: Encoder stochastic depth at the last block (0.1 published).
        dropout: Dropout2d before the classifier (0.1 published).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    encoder = _encoder(variant, width, drop_path_rate)
    channels = decoder_channels or _scaled_channels(DAFORMER_CHANNELS, width)
    head = DAFormerHead(encoder.out_channels, num_classes, channels, fusion, dropout=dropout)
    projection = _projection(encoder.out_channels, projection_dim)
    return SegFormerSegmenter(encoder, head, num_classes, projection)


def segformer_mit(
    variant: str,
    num_classes: int,
    width: int = DEFAULT_WIDTH,
    *,
    decoder_channels: int | None = None,
    projection_dim: int = 0,
    drop_path_rate: float = DROP_PATH_RATE,
    dropout: float = DECODER_DROPOUT,
) -> SegFormerSegmenter:
    """SegFormer: MiT-``variant`` + :class:`SegFormerHead`.

    Args:
        variant: ``"b0"`` … ``"b5"``.
        num_classes: K.
        width: Channel scale, 64 = published (every encoder and decoder width × width / 64).
        decoder_channels: Embedding dimension; default :data:`SEGFORMER_CHANNELS` × width / 64.
        projection_dim: SePiCo projection dimension for the features; 0 = off.
        drop_path_rate: Encoder stochastic depth at the last block (0.1 published).
        dropout: Dropout2d before the classifier (0.1 published).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    encoder = _encoder(variant, width, drop_path_rate)
    channels = decoder_channels or _scaled_channels(SEGFORMER_CHANNELS[variant], width)
    head = SegFormerHead(encoder.out_channels, num_classes, channels, dropout=dropout)
    projection = _projection(encoder.out_channels, projection_dim)
    return SegFormerSegmenter(encoder, head, num_classes, projection)


def _fill_mit(encoder: MixVisionTransformer, ckpt: Mapping[str, Tensor], path: Path) -> list[str]:
    """Load official MiT weights strictly (the ImageNet head accepted and returned)."""
    ignored = [k for k in ckpt if k.startswith(MIT_IMAGENET_HEAD)]
    weights = {k: v for k, v in ckpt.items() if not k.startswith(MIT_IMAGENET_HEAD)}
    own = encoder.state_dict()
    looks = mit_variant_of(weights)
    looks_like = f"the file looks like mit_{looks}" if looks else "the file matches no mit_bX"
    found = fit_problems(own, weights)  # strict below: every key and shape must fit
    wrong, missing, unexpected = found["shape mismatch"], found["missing"], found["unexpected"]
    if wrong or missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit this MiT ({looks_like}): shapes {wrong[:3]}, "
            f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} "
            f"({len(unexpected)}); pick the model of the file's variant at width 64"
        )
    encoder.load_state_dict(weights, strict=True)
    return ignored


def load_mit_weights(encoder: MixVisionTransformer, path: str | Path) -> list[str]:
    """Load an official SegFormer ImageNet file (``mit_b0.pth`` … ``mit_b5.pth``) strictly.

    The file's keys must be exactly the encoder's (after stripping ``module.``/``backbone.`` and
    unwrapping ``state_dict``/``model``), except the ImageNet classifier ``head.weight`` and
    ``head.bias``, which the segmenter does not build: they are accepted and returned.

    Returns:
        The keys read but not used (the ImageNet classifier).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: A shape differs, or keys are missing or extra; the message names the
            keys and the variant the file looks like.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"MiT checkpoint not found: {path}")
    return _fill_mit(encoder, read_state_dict(path), path)


MIT_WEIGHTS = EncoderWeightLoader("MiT", _fill_mit)  # official mit_bX.pth or an spcl model file
MODELS: dict[str, ModelEntry] = {  # registry names of this family
    **{
        f"daformer_mit_{variant}": ModelEntry(partial(daformer_mit, variant), MIT_WEIGHTS)
        for variant in MIT_VARIANTS
    },
    **{
        f"segformer_mit_{variant}": ModelEntry(partial(segformer_mit, variant), MIT_WEIGHTS)
        for variant in MIT_VARIANTS
    },
}
