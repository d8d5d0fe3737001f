"""Model registry and constructors: name → segmenter, ImageNet backbone loading.

``build_model("deeplabv2_resnet101", 19, pretrained="resnet101-5d3b4d8f.pth", freeze_bn=True,
bn_eps_frozen=0.0)`` builds SPCL's segmenter (arXiv 2111.12358, Sec. 4.1) as the reference trains
it; ``build_model("daformer_mit_b5", 19, pretrained="mit_b5.pth")`` builds DAFormer's (MiT-B5 +
sep-ASPP decoder, Hoyer et al. 2022), ``segformer_mit_bX`` SegFormer's (all-MLP decoder), and
``build_model("dinov2_vitb14", 19, pretrained="dinov2_vitb14_pretrain.pth")`` a DINOv2 ViT-B/14
with VFM-UDA's lightweight head (:mod:`spcl.models.vit_seg`; ``dinov2_<v>_reg`` with registers).
Backbone checkpoints are torchvision-format ResNet state dicts, the official SegFormer ImageNet
files ``mit_bX.pth`` or the official DINOv2 files, read from a local file with
``torch.load(weights_only=True)``; a URL is downloaded into the torch hub cache only when one is
passed explicitly.

``width`` is the ResNet base width, or for MiT and DINOv2 models a channel scale (64 = published,
the only width official weights load at); ``freeze_bn`` freezes the *backbone's* BatchNorm, so it
changes nothing in a MiT or ViT encoder (LayerNorm only; the decoders' BatchNorm always trains, as
in DAFormer). ``options`` are further constructor keywords (e.g. ``fusion``, ``projection_dim``,
``dilations``; DINOv2: ``feature_blocks``, ``freeze_backbone``, ``input_scale``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from spcl.base import CheckpointError, ConfigError, UnknownNameError
from spcl.models.deeplab_v2 import ASPP_DILATIONS, DeepLabV2
from spcl.models.discriminator import DISC_NDF, OutputDiscriminator
from spcl.models.input_conventions import PIPELINE_CONVENTION, InputConvention
from spcl.models.mit import MIT_VARIANTS
from spcl.models.pretrained import (
    load_dinov2_weights,
    load_encoder_weights,
    load_mit_weights,
    resolve_pretrained,
)
from spcl.models.resnet import (
    BN_EPS,
    DEFAULT_WIDTH,
    RESNET_DEPTHS,
    ResNet,
    ResNetStyle,
    freeze_batchnorm,
)
from spcl.models.segformer import SegFormerSegmenter, daformer_mit, segformer_mit
from spcl.models.vit import DINOV2_VARIANTS
from spcl.models.vit_seg import ViTSegmenter, dinov2_segmenter
from spcl.models.weight_layouts import (
    fit_problems,
    layout_error,
    load_deeplab_weights,
    merge_layout_options,
    read_resnet_weights,
)

__all__ = [
    "MODEL_REGISTRY",
    "build_discriminator",
    "build_model",
    "load_backbone_weights",
    "load_dinov2_weights",
    "load_mit_weights",
]

SEG_OUTPUT_STRIDE = 8  # DeepLab-v2's output stride (layer3/layer4 dilated)
DEEPLAB_PREFIX = "deeplabv2_"  # registry names of the ResNet segmenters
UNUSED_BACKBONE_PREFIXES = ("fc.",)  # ImageNet head: kept for strict loading, never run
BUILD_ARGUMENTS = ("num_classes", "width")  # passed by build_model itself, not via options

logger = logging.getLogger(__name__)


def _deeplabv2_resnet(
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


MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **{f"deeplabv2_resnet{depth}": partial(_deeplabv2_resnet, depth) for depth in RESNET_DEPTHS},
    **{f"daformer_mit_{variant}": partial(daformer_mit, variant) for variant in MIT_VARIANTS},
    **{f"segformer_mit_{variant}": partial(segformer_mit, variant) for variant in MIT_VARIANTS},
    **{
        f"dinov2_{variant}{suffix}": partial(dinov2_segmenter, variant, registers=bool(suffix))
        for variant in DINOV2_VARIANTS
        for suffix in ("", "_reg")
    },
}


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load a ResNet checkpoint of any supported layout from a local file into ``backbone``.

    Layouts (:mod:`spcl.models.weight_layouts`): a torchvision state dict (``module.`` and
    ``backbone.`` prefixes stripped, optionally under ``state_dict``/``model``), the DeepLab-v2
    COCO initialisation (``Scale.*``; needs a ``style="caffe"`` ResNet) or a reference SPCL/FADA
    checkpoint (its ``feature_extractor``). ``num_batches_tracked`` counters may be present or
    absent on either side (FrozenBatchNorm2d has none). The ImageNet ``fc`` is never run, so a
    feature-extractor checkpoint without it is accepted (the keys are still reported missing).

    Args:
        backbone: The module to fill (e.g. ``model.backbone``).
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
    if getattr(backbone, "style", style) != style:
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


def _construct(name: str, num_classes: int, width: int, options: Mapping[str, Any]) -> nn.Module:
    """Call the registered constructor, refusing options it does not take (named)."""
    constructor = MODEL_REGISTRY[name]
    bound = getattr(constructor, "keywords", {})  # fixed by the registry entry (e.g. registers)
    accepted = [
        p
        for p in inspect.signature(constructor).parameters
        if p not in BUILD_ARGUMENTS and p not in bound
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option(s) {unknown}; its options: {accepted or 'none'}"
        )
    try:
        return constructor(num_classes, width=width, **options)
    except (ValueError, TypeError) as exc:  # an option of the right name but a value it refuses
        raise ConfigError(
            f"model {name!r} cannot be built with width={width!r}, {num_classes!r} classes and "
            f"options {dict(options)}: {exc}"
        ) from exc


def build_model(
    name: str,
    num_classes: int,
    *,
    width: int = DEFAULT_WIDTH,
    pretrained: str | Path | None = None,
    freeze_bn: bool = False,
    bn_eps_frozen: float = BN_EPS,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build a registered segmenter.

    Args:
        name: A key of :data:`MODEL_REGISTRY`, e.g. ``"deeplabv2_resnet101"``,
            ``"daformer_mit_b5"``.
        num_classes: Number of classes K.
        width: ResNet base channels (64 = torchvision; smaller for CPU demos); for MiT models the
            channel scale (64 = published; other values cannot load official weights).
        pretrained: Local ResNet weights of a layout of :mod:`spcl.models.weight_layouts`
            (torchvision, the DeepLab-v2 COCO initialisation, which sets ``style="caffe"`` and
            ``input_convention="caffe_bgr"``, or a reference SPCL/FADA checkpoint, head
            included), official ``mit_bX.pth`` (MiT models) or DINOv2 files (width 64), an spcl
            model file (its backbone, at any width), or an http(s) URL downloaded into the torch
            hub cache; ``None`` or ``""`` keeps the random init. The options a file implies are
            kept in ``model.layout_options`` (saved in the model file).
        freeze_bn: Replace the backbone's BatchNorm by FrozenBatchNorm2d (after loading weights);
            a MiT backbone has none, so this changes nothing there.
        bn_eps_frozen: eps of the frozen layers; the reference trains with ``0.0``.
        options: Further constructor keywords of the model (MiT models: ``fusion``,
            ``decoder_channels``, ``projection_dim``, ``drop_path_rate``, ``dropout``).

    Returns:
        The segmenter (DeepLabV2 or SegFormerSegmenter), on the CPU.

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).
        ValueError: an option the model does not take or a value it refuses (``ConfigError``),
            a width it cannot have, or official MiT/DINOv2 weights at a width other than 64.
        CheckpointError: ``pretrained`` does not fit, is unreadable, or is a URL that cannot be
            fetched (the message says where to place the file).
    """
    if name not in MODEL_REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; valid names: {sorted(MODEL_REGISTRY)}")
    options = dict(options or {})
    checkpoint = resolve_pretrained(pretrained)  # None for None and ""
    if checkpoint is not None and name.startswith(DEEPLAB_PREFIX):
        weights = read_resnet_weights(checkpoint)  # its layout decides style / input convention
        options = merge_layout_options(name, options, weights, checkpoint)
        model = _construct(name, num_classes, width, options)
        for note in load_deeplab_weights(model, weights, checkpoint):
            logger.info("%s: %s", checkpoint, note)
        model.layout_options = dict(weights.options)  # recorded in the model file
    else:
        model = _construct(name, num_classes, width, options)
    if checkpoint is not None and isinstance(model, ViTSegmenter | SegFormerSegmenter):
        load_encoder_weights(model, name, width, checkpoint)
    if freeze_bn:
        freeze_batchnorm(model.backbone, eps=bn_eps_frozen)
    return model


def build_discriminator(num_classes: int, ndf: int = DISC_NDF) -> OutputDiscriminator:
    """Build the output-space discriminator for ``num_classes``-channel probability maps."""
    return OutputDiscriminator(num_classes, ndf=ndf)
