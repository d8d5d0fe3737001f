"""The model registry (each family's declared entries) and ``build_model``: name → segmenter.

Every family module (:data:`FAMILIES`) declares ``MODELS``, its registry names each with a
constructor and a weight loader (:class:`~spcl.models.segmenter.ModelEntry`);
:data:`MODEL_REGISTRY` collects them, and :func:`build_model` checks the options against the
constructor, builds, lets the name's loader read ``pretrained`` and freezes BatchNorm.

``build_model("deeplabv2_resnet101", 19, pretrained="resnet101-5d3b4d8f.pth", freeze_bn=True,
bn_eps_frozen=0.0)`` builds SPCL's segmenter (arXiv 2111.12358, Sec. 4.1) as the reference trains
it; ``build_model("daformer_mit_b5", 19, pretrained="mit_b5.pth")`` builds DAFormer's (MiT-B5 +
sep-ASPP decoder, Hoyer et al. 2022), ``segformer_mit_bX`` SegFormer's (all-MLP decoder), and
``build_model("dinov2_vitb14", 19, pretrained="dinov2_vitb14_pretrain.pth")`` a DINOv2 ViT-B/14
with VFM-UDA's lightweight head (:mod:`spcl.models.vit_seg`; ``dinov2_<v>_reg`` with registers),
``vfmudapp_vitb14`` the same ViT inside a ViT-Adapter with VFM-UDA++'s pyramid head
(:mod:`spcl.models.vfmudapp_seg`).
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
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from spcl.base import ConfigError, UnknownNameError, did_you_mean
from spcl.models import deeplab_v2, segformer, vfmudapp_seg, vit_seg
from spcl.models.deeplab_v2 import load_backbone_weights
from spcl.models.discriminator import DISC_NDF, OutputDiscriminator
from spcl.models.pretrained import resolve_pretrained
from spcl.models.resnet import BN_EPS, DEFAULT_WIDTH, freeze_batchnorm
from spcl.models.segformer import load_mit_weights
from spcl.models.segmenter import ModelEntry, Segmenter
from spcl.models.vit_seg import load_dinov2_weights

__all__ = [
    "FAMILIES",
    "MODEL_REGISTRY",
    "build_discriminator",
    "build_model",
    "load_backbone_weights",
    "load_dinov2_weights",
    "load_mit_weights",
]

FAMILIES: tuple[ModuleType, ...] = (deeplab_v2, segformer, vit_seg, vfmudapp_seg)
# ^ the modules that declare registry entries (their MODELS); a new family adds its module here
BUILD_ARGUMENTS = ("num_classes", "width")  # passed by build_model itself, not via options


def _collect(families: Iterable[ModuleType]) -> dict[str, ModelEntry]:
    """Every family's ``MODELS`` in one dict; a name declared twice is a programming error."""
    registry: dict[str, ModelEntry] = {}
    for family in families:
        for name, entry in family.MODELS.items():
            if name in registry:
                raise RuntimeError(f"model name {name!r} is declared twice ({family.__name__})")
            registry[name] = entry
    return registry


MODEL_REGISTRY: dict[str, ModelEntry] = _collect(FAMILIES)  # name → constructor + weight loader


def _construct(name: str, num_classes: int, width: int, options: Mapping[str, Any]) -> Segmenter:
    """Call the registered constructor, refusing options it does not take (named)."""
    constructor = MODEL_REGISTRY[name].constructor
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
        model = constructor(num_classes, width=width, **options)
    except (ValueError, TypeError) as exc:  # an option of the right name but a value it refuses
        raise ConfigError(
            f"model {name!r} cannot be built with width={width!r}, {num_classes!r} classes and "
            f"options {dict(options)}: {exc}"
        ) from exc
    if not isinstance(model, Segmenter):  # a family that skipped the contract: its author's bug
        raise TypeError(f"model {name!r} built a {type(model).__name__}, not a Segmenter")
    return model


def build_model(
    name: str,
    num_classes: int,
    *,
    width: int = DEFAULT_WIDTH,
    pretrained: str | Path | None = None,
    freeze_bn: bool = False,
    bn_eps_frozen: float = BN_EPS,
    options: Mapping[str, Any] | None = None,
) -> Segmenter:
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
            hub cache; ``None`` or ``""`` keeps the random init. The name's weight loader
            (:class:`~spcl.models.segmenter.ModelEntry`) reads it; the options a file implies
            are kept in ``model.layout_options`` (saved in the model file).
        freeze_bn: Replace the backbone's BatchNorm by FrozenBatchNorm2d (after loading weights);
            a MiT backbone has none, so this changes nothing there.
        bn_eps_frozen: eps of the frozen layers; the reference trains with ``0.0``.
        options: Further constructor keywords of the model (MiT models: ``fusion``,
            ``decoder_channels``, ``projection_dim``, ``drop_path_rate``, ``dropout``).

    Returns:
        The segmenter (a :class:`~spcl.models.segmenter.Segmenter`), on the CPU.

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).
        ValueError: an option the model does not take or a value it refuses (``ConfigError``),
            a width it cannot have, or official MiT/DINOv2 weights at a width other than 64.
        CheckpointError: ``pretrained`` does not fit, is unreadable, or is a URL that cannot be
            fetched (the message says where to place the file).
    """
    if name not in MODEL_REGISTRY:
        raise UnknownNameError(  # spcl.model_catalog.unknown_model's words: models stay below it
            f"unknown model {name!r}{did_you_mean(name, MODEL_REGISTRY)}; valid names: "
            f"{sorted(MODEL_REGISTRY)}"
        )
    options = dict(options or {})
    checkpoint = resolve_pretrained(pretrained)  # None for None and ""
    if checkpoint is None:
        model = _construct(name, num_classes, width, options)
    else:
        build = partial(_construct, name, num_classes, width)
        load = MODEL_REGISTRY[name].load_pretrained
        model = load(build, options, checkpoint, name=name, width=width)
    if freeze_bn:
        freeze_batchnorm(model.backbone, eps=bn_eps_frozen)
    return model


def build_discriminator(num_classes: int, ndf: int = DISC_NDF) -> OutputDiscriminator:
    """Build the output-space discriminator for ``num_classes``-channel probability maps."""
    return OutputDiscriminator(num_classes, ndf=ndf)
