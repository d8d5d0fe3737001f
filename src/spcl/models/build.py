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
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from spcl.base import CheckpointError, ConfigError, MissingFileError, UnknownNameError
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.models.deeplab_v2 import ASPP_DILATIONS, DeepLabV2
from spcl.models.discriminator import DISC_NDF, OutputDiscriminator
from spcl.models.input_conventions import PIPELINE_CONVENTION, InputConvention
from spcl.models.mit import DEFAULT_WIDTH as MIT_WIDTH
from spcl.models.mit import MIT_VARIANTS, MixVisionTransformer, mit_variant_of
from spcl.models.resnet import (
    BN_EPS,
    DEFAULT_WIDTH,
    RESNET_DEPTHS,
    ResNet,
    ResNetStyle,
    freeze_batchnorm,
)
from spcl.models.segformer import SegFormerSegmenter, daformer_mit, segformer_mit
from spcl.models.vit import DINOV2_VARIANTS, DINOv2Encoder
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
BACKBONE_PREFIXES = ("backbone.",)  # a backbone saved inside a segmenter (DDP's module. always)
CHECKPOINT_CONTAINER_KEYS = ("state_dict", "model")  # checkpoints that nest the weights one level
UNUSED_BACKBONE_PREFIXES = ("fc.",)  # ImageNet head: kept for strict loading, never run
MIT_IMAGENET_HEAD = "head."  # official mit_bX.pth hold a 1000-class Linear: read, never built
BUILD_ARGUMENTS = ("num_classes", "width")  # passed by build_model itself, not via options
SHOWN_KEYS = 5  # keys named in a checkpoint error
URL_SCHEMES = ("http", "https")

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


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a tensor mapping from ``path`` (safely), unwrapping a ``state_dict``/``model`` level."""
    loaded = load_state(path)  # weights_only; refuses non-dict files with a named error
    for container in CHECKPOINT_CONTAINER_KEYS:
        if isinstance(loaded.get(container), Mapping):
            loaded = loaded[container]
            break
    tensors = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    state = clean_state_dict(tensors, BACKBONE_PREFIXES)
    if not state:
        raise CheckpointError(f"checkpoint {path} contains no tensors")
    return state


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


def _resolve_checkpoint(pretrained: str | Path) -> Path:
    """Return a local path for ``pretrained``, downloading a URL into the torch hub cache once."""
    text = str(pretrained)
    url = urlparse(text)
    if url.scheme not in URL_SCHEMES:
        return Path(pretrained)
    filename = Path(url.path).name
    if not filename:
        raise ConfigError(f"cannot derive a file name from the checkpoint URL {text!r}")
    destination = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not destination.is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(text, str(destination), progress=True)
    return destination


def load_mit_weights(encoder: MixVisionTransformer, path: str | Path) -> list[str]:
    """Load an official SegFormer ImageNet file (``mit_b0.pth`` … ``mit_b5.pth``) strictly.

    The file's keys must be exactly the encoder's (after stripping ``module.``/``backbone.`` and
    unwrapping ``state_dict``/``model``), except the ImageNet classifier ``head.weight`` and
    ``head.bias``, which the segmenter does not build: they are accepted and returned.

    Args:
        encoder: The MiT to fill (e.g. ``model.backbone``).
        path: Local ``.pth`` file.

    Returns:
        The keys read but not used (the ImageNet classifier).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A shape differs, or keys are missing or extra; the message names the keys and
            the variant the file looks like.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"MiT checkpoint not found: {path}")
    ckpt = _read_state_dict(path)
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


def _dinov2_file_shape(state: Mapping[str, Tensor]) -> str:
    """What a DINOv2 state dict looks like: its embed dim, depth and registers (for errors)."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else "?"
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") > 1}
    registers = tuple(state["register_tokens"].shape) if "register_tokens" in state else "none"
    return f"embed dim {dim}, {len(blocks)} blocks, register_tokens {registers}"


def load_dinov2_weights(encoder: DINOv2Encoder, path: str | Path) -> None:
    """Load an official DINOv2 file (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``) strictly.

    The file's keys and shapes must equal the encoder's exactly, as the hub's
    ``load_state_dict(strict=True)`` demands (after unwrapping a ``state_dict``/``model`` level
    and stripping ``module.``/``backbone.``).

    Args:
        encoder: The DINOv2 trunk to fill (``model.backbone``).
        path: Local ``.pth`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: A shape differs, or keys are missing or extra; the message names the
            first keys that do not fit, the file's apparent shape and the encoder's.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"DINOv2 checkpoint not found: {path}")
    ckpt = _read_state_dict(path)
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
    encoder.load_state_dict(ckpt, strict=True)


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
    return constructor(num_classes, width=width, **options)


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
            included), official ``mit_bX.pth`` (MiT models) or DINOv2 files, or an http(s) URL
            downloaded into the torch hub cache; ``None`` keeps the random init. The options a
            file implies are kept in ``model.layout_options`` (saved in the model file).
        freeze_bn: Replace the backbone's BatchNorm by FrozenBatchNorm2d (after loading weights);
            a MiT backbone has none, so this changes nothing there.
        bn_eps_frozen: eps of the frozen layers; the reference trains with ``0.0``.
        options: Further constructor keywords of the model (MiT models: ``fusion``,
            ``decoder_channels``, ``projection_dim``, ``drop_path_rate``, ``dropout``).

    Returns:
        The segmenter (DeepLabV2 or SegFormerSegmenter), on the CPU.

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).
        ValueError: an option the model does not take, a width it cannot have, or MiT weights
            asked for at a width other than 64.
    """
    if name not in MODEL_REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; valid names: {sorted(MODEL_REGISTRY)}")
    options = dict(options or {})
    checkpoint = None if pretrained is None else _resolve_checkpoint(pretrained)
    if checkpoint is not None and name.startswith(DEEPLAB_PREFIX):
        weights = read_resnet_weights(checkpoint)  # its layout decides style / input convention
        options = merge_layout_options(name, options, weights, checkpoint)
        model = _construct(name, num_classes, width, options)
        for note in load_deeplab_weights(model, weights, checkpoint):
            logger.info("%s: %s", checkpoint, note)
        model.layout_options = dict(weights.options)  # recorded in the model file
    else:
        model = _construct(name, num_classes, width, options)
    if checkpoint is not None and not name.startswith(DEEPLAB_PREFIX):
        if isinstance(model, ViTSegmenter):
            if width != DEFAULT_WIDTH:
                raise ConfigError(
                    f"{name}: official DINOv2 weights exist at width {DEFAULT_WIDTH} only, got "
                    f"width={width} with pretrained={str(pretrained)!r}"
                )
            load_dinov2_weights(model.backbone, checkpoint)
        elif isinstance(model, SegFormerSegmenter):
            if width != MIT_WIDTH:
                raise ConfigError(
                    f"{name}: official MiT weights exist at width {MIT_WIDTH} only, got "
                    f"width={width} with pretrained={str(pretrained)!r}"
                )
            load_mit_weights(model.backbone, checkpoint)
    if freeze_bn:
        freeze_batchnorm(model.backbone, eps=bn_eps_frozen)
    return model


def build_discriminator(num_classes: int, ndf: int = DISC_NDF) -> OutputDiscriminator:
    """Build the output-space discriminator for ``num_classes``-channel probability maps."""
    return OutputDiscriminator(num_classes, ndf=ndf)
