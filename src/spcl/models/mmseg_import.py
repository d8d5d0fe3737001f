"""Import mmseg-format checkpoints of DAFormer, HRDA, MIC and SePiCo into spcl segmenters.

A published UDA checkpoint is mmcv's ``{"meta", "state_dict", "optimizer"}``; its state dict holds
the whole self-training wrapper (lhoyer/DAFormer ``mmseg/models/uda/dacs.py``,
``uda_decorator.py``; BIT-DA/SePiCo ``mmseg/models/uda/sepico.py``): the student under
``model.``, the EMA teacher under ``ema_model.``, DAFormer/MIC's frozen ImageNet model for the
feature distance under ``imnet_model.``. A plain (source-only) ``EncoderDecoder`` has no prefix.
mmseg's own test script evaluates the *student* (DAFormer ``tools/test.py`` revises ``model.``
away), so that is the default here.

Inside a model, names map onto spcl's by this table (the rest is identical, since spcl's modules
carry mmseg's names, see :mod:`spcl.models.segformer_heads`):

=================================  ===============================  ===========================
mmseg                              spcl                             note
=================================  ===============================  ===========================
``backbone.*``                     ``backbone.*``                   MiT, official names
``decode_head.*`` (DAFormerHead)   ``decode_head.*``                ``conv_seg`` = classifier
``decode_head.*`` (SegFormerHead)  ``decode_head.*``                its unused ``conv_seg``
                                                                    is reported, not loaded
``decode_head.linear_cK.*``        ``decode_head.linear_c.{K-1}.*`` NVlabs' head; its
                                                                    ``linear_fuse`` input blocks
                                                                    are reordered c4..c1 → c1..c4
``auxiliary_head.convs.*``         ``projection.convs.*``           SePiCo's ProjHead
=================================  ===============================  ===========================

The variant is read from the weights: MiT depths and channels → B0…B5, the head type from its
keys, the number of classes from the classifier, the projection dimension from the last
projection conv. What a state dict cannot tell (ASPP dilations, dropout) is DAFormer's.

HRDA checkpoints (lhoyer/HRDA ``HRDAEncoderDecoder``; all published MIC files are MIC(HRDA))
hold the single-scale head under ``decode_head.head.*`` and the scale attention under
``decode_head.scale_attention.*``; they import as :class:`~spcl.models.hrda.HRDASegmenter`
(``decode_head.head.*`` → ``segmenter.decode_head.*``, ``backbone.*`` →
``segmenter.backbone.*``, ``decode_head.scale_attention.*`` → ``scale_attention.*``) with HRDA's
published geometry (:class:`~spcl.models.hrda.HRDASettings` defaults: a state dict holds no crop
sizes), the attention class-wise when it has one channel per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from spcl.engine.checkpoint import CheckpointError
from spcl.models.build import build_model
from spcl.models.hrda import HRDASegmenter, HRDASettings
from spcl.models.mit import NUM_STAGES, mit_variant_of
from spcl.models.segformer import SEGFORMER_CHANNELS
from spcl.models.segformer_heads import DAFORMER_CHANNELS, DAFORMER_DILATIONS
from spcl.models.segmenter import Segmenter

__all__ = [
    "ROLE_PREFIXES",
    "MMSegImport",
    "MMSegLayout",
    "detect_mmseg_layout",
    "import_mmseg_state",
    "is_mmseg_checkpoint",
]

Role = Literal["student", "teacher"]
ROLE_PREFIXES: dict[str, str] = {"student": "model.", "teacher": "ema_model."}
OTHER_PREFIXES = ("imnet_model.",)  # DAFormer/MIC feature-distance model: never loaded
BACKBONE, DECODE, AUXILIARY = "backbone.", "decode_head.", "auxiliary_head."
PROJECTION = "projection."  # spcl's name for SePiCo's auxiliary ProjHead
HRDA_HEAD, HRDA_ATTENTION = "head.", "scale_attention."  # HRDAHead's two decoders
INNER, ATTENTION = "segmenter.", "scale_attention."  # their places in spcl's HRDASegmenter
SHOWN_KEYS = 5  # keys quoted in an error message


@dataclass(frozen=True)
class MMSegLayout:
    """What an mmseg state dict holds, as an spcl model.

    Attributes:
        name: spcl registry name (``daformer_mit_b5`` …).
        num_classes: Classes of the classifier.
        options: ``build_model`` options (fusion, decoder width, projection) that differ from the
            registry defaults.
        prefix: The role prefix read (``"model."``, ``"ema_model."`` or ``""``).
        head: ``"daformer"``, ``"segformer"`` (DAFormer's copy) or ``"segformer_nvlabs"``.
        description: One line for messages and reports.
        hrda: HRDA's settings (``HRDASettings.to_dict()``) for an HRDA checkpoint, else None.
    """

    name: str
    num_classes: int
    options: dict[str, Any]
    prefix: str
    head: str
    description: str
    hrda: dict[str, Any] | None = None


@dataclass
class MMSegImport:
    """The result of an import: the layout, the unused keys and the class names of ``meta``."""

    layout: MMSegLayout
    unused_keys: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def unused_summary(self) -> dict[str, int]:
        """Unused keys counted by their first two name parts (e.g. ``ema_model.backbone``)."""
        counts: dict[str, int] = {}
        for key in self.unused_keys:
            group = ".".join(key.split(".")[:2])
            counts[group] = counts.get(group, 0) + 1
        return counts


def _weights(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of mmcv's ``state_dict`` entry (or of ``state`` itself when there is none)."""
    inner = state.get("state_dict", state)
    if not isinstance(inner, Mapping):
        return {}
    return {k: v for k, v in inner.items() if isinstance(v, Tensor)}


def is_mmseg_checkpoint(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` looks like an mmseg segmentor or UDA checkpoint (any backbone)."""
    heads = ("", *ROLE_PREFIXES.values())
    return any(k.startswith(f"{p}{BACKBONE}") for k in _weights(state) for p in heads)


def _role_prefix(weights: Mapping[str, Tensor], role: Role, source: str) -> str:
    if role not in ROLE_PREFIXES:
        raise ValueError(f"role must be one of {list(ROLE_PREFIXES)}, got {role!r}")
    wanted = ROLE_PREFIXES[role]
    if any(k.startswith(wanted + BACKBONE) for k in weights):
        return wanted
    if any(k.startswith(BACKBONE) for k in weights) and role == "student":
        return ""  # a plain EncoderDecoder (no UDA wrapper)
    found = sorted({k.split(".", 1)[0] + "." for k in weights})
    raise CheckpointError(
        f"{source}: no {role} weights ({wanted}{BACKBONE}*) in this mmseg checkpoint; its "
        f"top-level prefixes are {found[:SHOWN_KEYS]}"
    )


def _first_keys(weights: Mapping[str, Tensor], prefix: str) -> list[str]:
    return [k for k in weights if k.startswith(prefix)][:SHOWN_KEYS]


def _refuse_unsupported(weights: Mapping[str, Tensor], prefix: str, source: str) -> None:
    if any(k.startswith(prefix + BACKBONE + "layer1.") for k in weights):
        raise CheckpointError(
            f"{source}: an mmseg ResNet checkpoint ({prefix}{BACKBONE}layer1.*, e.g. a DeepLab-v2 "
            f"run of DAFormer, HRDA or SePiCo): only MiT (SegFormer/DAFormer) mmseg checkpoints "
            f"import"
        )


def _hrda_settings(
    weights: Mapping[str, Tensor], decode: str, num_classes: int, source: str
) -> dict[str, Any] | None:
    """HRDA's settings when ``decode`` holds an ``HRDAHead`` (its head and scale attention)."""
    if not any(k.startswith(decode + HRDA_HEAD) for k in weights):
        return None
    classifier = f"{decode}{HRDA_ATTENTION}conv_seg.weight"
    if classifier not in weights:
        raise CheckpointError(
            f"{source}: an HRDA checkpoint without a learnt scale attention ({classifier}; "
            f"HRDA's fixed-attention ablation): spcl's HRDA learns the attention"
        )
    outputs = int(weights[classifier].shape[0])
    attention = "classwise" if outputs == num_classes else "single"
    return HRDASettings(attention=attention).to_dict()


def _variant(weights: Mapping[str, Tensor], prefix: str, source: str) -> str:
    variant = mit_variant_of(weights, prefix + BACKBONE)
    if variant is None:
        dims = [
            tuple(weights[k].shape)[:1]
            for k in (f"{prefix}{BACKBONE}patch_embed{i}.proj.weight" for i in range(1, 5))
            if k in weights
        ]
        raise CheckpointError(
            f"{source}: the backbone under {prefix}{BACKBONE} is no published MiT-B0…B5 "
            f"(stage channels {dims}; first keys {_first_keys(weights, prefix + BACKBONE)})"
        )
    return variant


def _daformer_options(weights: Mapping[str, Tensor], decode: str, source: str) -> dict[str, Any]:
    fuse = decode + "fuse_layer."
    if f"{fuse}aspp_modules.1.depthwise_conv.conv.weight" in weights:
        fusion = "sepaspp"
    elif f"{fuse}aspp_modules.1.conv.weight" in weights:
        fusion = "aspp"
    elif f"{fuse}conv.weight" in weights:
        fusion = "conv1"
    else:
        raise CheckpointError(
            f"{source}: a DAFormerHead whose fusion is none of sepaspp/aspp/conv1 "
            f"(first fusion keys {_first_keys(weights, fuse)})"
        )
    if fusion != "conv1":
        branches = {k[len(fuse) :].split(".")[1] for k in weights if k.startswith(fuse + "aspp_")}
        if len(branches) != len(DAFORMER_DILATIONS):
            raise CheckpointError(
                f"{source}: {len(branches)} ASPP branches; spcl builds DAFormer's "
                f"{len(DAFORMER_DILATIONS)} (dilations {DAFORMER_DILATIONS})"
            )
    options: dict[str, Any] = {"fusion": fusion} if fusion != "sepaspp" else {}
    channels = int(weights[decode + "embed_layers.0.proj.weight"].shape[0])
    if channels != DAFORMER_CHANNELS:
        options["decoder_channels"] = channels
    return options


def _head(
    weights: Mapping[str, Tensor], decode: str, variant: str, source: str
) -> tuple[str, str, dict[str, Any], str]:
    """(head kind, registry family, options, classifier weight key) of the decode head."""
    if decode + "embed_layers.0.proj.weight" in weights:
        options = _daformer_options(weights, decode, source)
        return "daformer", "daformer", options, decode + "conv_seg.weight"
    for head, embed in (("segformer", "linear_c.0"), ("segformer_nvlabs", "linear_c1")):
        key = f"{decode}{embed}.proj.weight"
        if key in weights:
            channels = int(weights[key].shape[0])
            default = SEGFORMER_CHANNELS[variant]
            options = {} if channels == default else {"decoder_channels": channels}
            return head, "segformer", options, decode + "linear_pred.weight"
    raise CheckpointError(
        f"{source}: the decode head is neither DAFormerHead nor SegFormerHead (first keys "
        f"{_first_keys(weights, decode)})"
    )


def detect_mmseg_layout(
    weights: Mapping[str, Tensor], role: Role = "student", source: str = "checkpoint"
) -> MMSegLayout:
    """Read the model an mmseg state dict holds (see the module docstring).

    Raises:
        CheckpointError: no weights for ``role``, an unsupported layout (ResNet, another head,
            HRDA without a learnt attention), or a backbone that is no published MiT; the
            message names ``source``.
    """
    prefix = _role_prefix(weights, role, source)
    _refuse_unsupported(weights, prefix, source)
    variant = _variant(weights, prefix, source)
    decode = prefix + DECODE
    hrda = any(k.startswith(decode + HRDA_HEAD) for k in weights)
    head, family, options, classifier = _head(
        weights, decode + HRDA_HEAD if hrda else decode, variant, source
    )
    if classifier not in weights:
        raise CheckpointError(f"{source}: no classifier {classifier} in the {head} head")
    num_classes = int(weights[classifier].shape[0])
    projection = f"{prefix}{AUXILIARY}convs.1.conv.weight"
    if projection in weights:
        options["projection_dim"] = int(weights[projection].shape[0])
    name = f"{family}_mit_{variant}"
    text = f"{head} head on MiT-{variant.upper()}, {num_classes} classes"
    if "projection_dim" in options:
        text += f", SePiCo projection {options['projection_dim']}"
    settings = _hrda_settings(weights, decode, num_classes, source)
    if settings is not None:
        text = f"HRDA ({settings['attention']} scale attention) with the {text}"
    where = f"{prefix}*" if prefix else "no prefix"
    return MMSegLayout(name, num_classes, options, prefix, head, f"{text} ({where})", settings)


def _nvlabs_rename(key: str, value: Tensor) -> tuple[str, Tensor]:
    """NVlabs SegFormerHead → DAFormer's copy: ``linear_cK`` → ``linear_c.{K-1}``; fuse order."""
    for level in range(1, NUM_STAGES + 1):
        old = f"{DECODE}linear_c{level}."
        if key.startswith(old):
            return f"{DECODE}linear_c.{level - 1}.{key[len(old) :]}", value
    if key == f"{DECODE}linear_fuse.conv.weight":
        blocks = value.chunk(NUM_STAGES, dim=1)  # NVlabs concatenates [c4, c3, c2, c1]
        return key, torch.cat(blocks[::-1], dim=1)
    return key, value


def _convert(
    weights: Mapping[str, Tensor], layout: MMSegLayout
) -> tuple[dict[str, Tensor], list[str]]:
    """spcl state dict of ``layout``'s model, and the keys of ``weights`` it leaves unused."""
    state: dict[str, Tensor] = {}
    unused: list[str] = []
    for full, value in weights.items():
        key = full[len(layout.prefix) :] if full.startswith(layout.prefix) else None
        if key is None or key.startswith(OTHER_PREFIXES + tuple(ROLE_PREFIXES.values())):
            unused.append(full)  # another role, the FD model (or, without prefix, nothing else)
            continue
        if layout.hrda is not None:
            state[_hrda_key(key)] = value
            continue
        if layout.head != "daformer" and key.startswith(DECODE + "conv_seg."):
            unused.append(full)  # BaseDecodeHead builds conv_seg; SegFormerHead never runs it
            continue
        if layout.head == "segformer_nvlabs":
            key, value = _nvlabs_rename(key, value)
        if key.startswith(AUXILIARY):
            key = PROJECTION + key[len(AUXILIARY) :]
        state[key] = value
    return state, unused


def _hrda_key(key: str) -> str:
    """An ``HRDAEncoderDecoder`` key (role prefix removed) → spcl's HRDASegmenter key."""
    if key.startswith(DECODE + HRDA_ATTENTION):
        return ATTENTION + key[len(DECODE + HRDA_ATTENTION) :]
    if key.startswith(DECODE + HRDA_HEAD):
        return INNER + DECODE + key[len(DECODE + HRDA_HEAD) :]
    return INNER + key  # backbone.*, and anything else the fit will name


def _fit(model: Segmenter, state: dict[str, Tensor], layout: MMSegLayout, source: str) -> None:
    """Load ``state`` strictly, or say which keys and shapes do not fit."""
    own = model.state_dict()
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if wrong or missing or extra:
        raise CheckpointError(
            f"{source}: looks like {layout.description} but does not fit {layout.name}: shapes "
            f"{wrong[:SHOWN_KEYS]}, missing {missing[:SHOWN_KEYS]}, unexpected "
            f"{[layout.prefix + k for k in extra[:SHOWN_KEYS]]}"
        )
    model.load_state_dict(state, strict=True)


def import_mmseg_state(
    state: Mapping[str, Any], *, role: Role = "student", source: str | Path = "checkpoint"
) -> tuple[Segmenter, MMSegImport]:
    """Build the spcl model an mmseg checkpoint holds and load its ``role`` weights strictly.

    Args:
        state: The loaded file (``{"meta", "state_dict", ...}`` or a bare state dict).
        role: ``"student"`` (``model.*``, what mmseg evaluates) or ``"teacher"`` (``ema_model.*``).
        source: The file, for messages.

    Returns:
        ``(model, report)``; the model is in eval mode on the CPU; ``report.unused_keys`` lists
        what was read but not loaded, ``report.class_names`` the ``meta["CLASSES"]`` if present.

    Raises:
        CheckpointError: the layout is not supported or the weights do not fit it (the message
            names the file, the layout it looks like and the first keys that do not fit).
    """
    source = str(source)
    weights = _weights(state)
    if not weights:
        raise CheckpointError(f"{source}: no tensors in this checkpoint (keys {sorted(state)[:5]})")
    layout = detect_mmseg_layout(weights, role, source)
    model: Segmenter = build_model(layout.name, layout.num_classes, options=layout.options)
    if layout.hrda is not None:
        model = HRDASegmenter(model, HRDASettings.from_mapping(layout.hrda))
    converted, unused = _convert(weights, layout)
    _fit(model, converted, layout, source)
    meta = state.get("meta")
    classes = meta.get("CLASSES") if isinstance(meta, Mapping) else None
    names = [str(c) for c in classes] if isinstance(classes, list | tuple) else []
    if len(names) != layout.num_classes:
        names = []
    return model.eval(), MMSegImport(layout, unused, names)
