"""The Lightning checkpoints of VFM-UDA and VFM-UDA++, read as spcl models.

The authors' released files (tue-mps/vfm-uda, tue-mps/vfm-uda-plusplus, README "Model Weights")
are PyTorch-Lightning ``.ckpt`` files: ``{"state_dict": ..., "epoch", "global_step", ...}`` with
the state dict of their training module (``training/uda_vit/uda_vit_generic.py``,
``training/uda/uda.py``): the student under ``network.``, the EMA teacher under ``network_ema.``
(absent from trimmed files), and for VFM-UDA++ the frozen distillation model and its head under
``network_feature_extractor.`` / ``network_feature_head.`` (never loaded here). Their
``validate`` command scores ``network`` (``eval_step`` calls ``slide_inference_pre_cropped(
self.network, ...)``), and their ``ckpt_path`` loader reads ``network.*``, so the **student** is
the default here; ``role="teacher"`` reads ``network_ema.*``.

Inside a network, names map onto spcl's by this table:

==================================================  ==========================  ==============
authors                                             spcl                        family
==================================================  ==========================  ==============
``encoder.*`` (the DINOv2 hub model)                ``backbone.*``              VFM-UDA
``encoder.{blocks,cls_token,patch_embed,pos_embed}``  ``backbone.*``            VFM-UDA++
``encoder.{level_embed,spm,interactions,up,norm1-4}``  ``adapter.*``            VFM-UDA++
``upscale.*``                                       ``decode_head.upscale.*``   both
``out.weight``                                      ``decode_head.out.weight``  both
==================================================  ==========================  ==============

VFM-UDA's network also names its mask token ``token_masking.mask_token`` (the same tensor as
``encoder.mask_token``; not read). VFM-UDA++'s encoder has no final ``norm`` and no
``mask_token`` (spcl's ViT keeps them for official DINOv2 files; the adapter model does not use
them). The authors' ImageNet-1k adapter pre-training files have the same ``network.encoder.*``
layout plus a classification ``network.head.*``; they initialise a model (``model.pretrained``)
but are not segmenters. The variant is read from the weights (embed dim and depth), the classes
from ``out.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from spcl.base import CheckpointError
from spcl.models.vit import DINOV2_VARIANTS
from spcl.models.weight_layouts import fit_problems

__all__ = [
    "ADAPTER_OPTIONAL",
    "VFM_ROLES",
    "VFMLayout",
    "detect_vfm_layout",
    "fill_from_vfm_encoder",
    "is_vfm_network",
    "vfm_encoder_tensors",
    "vfm_model_weights",
    "vfm_unused_keys",
]

Role = Literal["student", "teacher"]
VFM_ROLES: dict[str, str] = {"student": "network.", "teacher": "network_ema."}
ENCODER = "encoder."  # the ViT (and, VFM-UDA++, its adapter) inside a network
ADAPTER_NAMES = ("level_embed", "spm", "interactions", "up", "norm1", "norm2", "norm3", "norm4")
ADAPTER_OPTIONAL = ("backbone.norm.", "backbone.mask_token")  # spcl's, unused by the adapter
HEAD_MAP = {"upscale.": "decode_head.upscale.", "out.": "decode_head.out."}
SHOWN_KEYS = 5  # keys quoted in an error message


def is_vfm_network(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a state dict is a VFM-UDA(++) training module's (``network[_ema].encoder.*``)."""
    marks = tuple(prefix + ENCODER for prefix in VFM_ROLES.values())
    return any(key.startswith(marks) for key in tensors)


def _network(tensors: Mapping[str, Tensor], role: Role, source: str | Path) -> dict:
    """The tensors of one network (its prefix removed); a named error when it is absent."""
    prefix = VFM_ROLES[role]
    found = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    if not found:
        present = sorted({k.split(".", 1)[0] for k in tensors})
        raise CheckpointError(
            f"{source}: a VFM-UDA(++) checkpoint without the {role} ({prefix}*); it holds "
            f"{present} (trimmed releases keep only network.*: use the student)"
        )
    return found


def _is_adapter_key(encoder_key: str) -> bool:
    return encoder_key.split(".", 1)[0] in ADAPTER_NAMES


def vfm_encoder_tensors(
    tensors: Mapping[str, Tensor], source: str | Path, role: Role = "student"
) -> dict[str, Tensor]:
    """The ``encoder.*`` weights of one network, the ``encoder.`` prefix removed."""
    network = _network(tensors, role, source)
    return {k.removeprefix(ENCODER): v for k, v in network.items() if k.startswith(ENCODER)}


def _load_checked(module: nn.Module, weights: dict, what: str, source: str | Path, **kw) -> None:
    """Load ``weights`` into ``module`` after comparing keys and shapes (named errors)."""
    problems = fit_problems(module.state_dict(), weights, **kw)
    if any(problems.values()):
        shown = [
            f"{kind} ({len(k)}): {', '.join(k[:SHOWN_KEYS])}" for kind, k in problems.items() if k
        ]
        raise CheckpointError(f"{source}: its {what} does not fit: {'; '.join(shown)}")
    module.load_state_dict(weights, strict=False)


def fill_from_vfm_encoder(model: nn.Module, tensors: Mapping[str, Tensor], source: Path) -> None:
    """Fill an adapter segmenter's ViT and adapter from a VFM-UDA++ (or in1k adapter) file.

    Raises:
        CheckpointError: the file has no adapter (a VFM-UDA file) or its shapes do not fit.
    """
    encoder = vfm_encoder_tensors(tensors, source)
    adapter = {k: v for k, v in encoder.items() if _is_adapter_key(k)}
    if not adapter:
        raise CheckpointError(
            f"{source}: a VFM-UDA checkpoint (a plain ViT, no adapter); it fits the "
            f"dinov2_vit* models, not the vfmudapp_* ones"
        )
    vit = {k: v for k, v in encoder.items() if not _is_adapter_key(k)}
    optional = tuple(p.removeprefix("backbone.") for p in ADAPTER_OPTIONAL)
    _load_checked(model.backbone, vit, "ViT", source, optional=optional)
    _load_checked(model.adapter, adapter, "ViT-Adapter", source)


@dataclass(frozen=True)
class VFMLayout:
    """What a VFM-UDA(++) network holds, as an spcl model.

    Attributes:
        name: spcl registry name (``dinov2_vitb14``, ``vfmudapp_vitl14`` …).
        num_classes: Rows of ``out.weight``.
        role: The network read.
        description: One line for messages and reports.
    """

    name: str
    num_classes: int
    role: Role
    description: str


def _variant(encoder: Mapping[str, Tensor], source: str | Path) -> str:
    """DINOv2 variant from the class token's width and the number of blocks."""
    if "cls_token" not in encoder:
        raise CheckpointError(f"{source}: network.encoder.cls_token is missing")
    dim = int(encoder["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
    for variant, spec in DINOV2_VARIANTS.items():
        if (spec.embed_dim, spec.depth) == (dim, depth):
            return variant
    raise CheckpointError(f"{source}: no DINOv2 variant has embed dim {dim} and {depth} blocks")


def detect_vfm_layout(tensors: Mapping[str, Tensor], role: Role, source: str | Path) -> VFMLayout:
    """The spcl model a VFM-UDA or VFM-UDA++ checkpoint's network is.

    Raises:
        CheckpointError: the network is absent, has no segmentation head (an ImageNet-1k
            adapter file), or is of no known variant.
    """
    network = _network(tensors, role, source)
    encoder = {k.removeprefix(ENCODER): v for k, v in network.items() if k.startswith(ENCODER)}
    if "out.weight" not in network:
        raise CheckpointError(
            f"{source}: a VFM-UDA(++) {ENCODER}* without a segmentation head (out.weight); an "
            f"ImageNet-1k adapter pre-training file initialises model.pretrained of the "
            f"vfmudapp_* models, it cannot be evaluated"
        )
    variant = _variant(encoder, source)
    classes = int(network["out.weight"].shape[0])
    if any(_is_adapter_key(k) for k in encoder):
        name, family = f"vfmudapp_{variant}", "VFM-UDA++ (DINOv2 + ViT-Adapter, pyramid head)"
    else:
        registers = "_reg" if "register_tokens" in encoder else ""
        name, family = f"dinov2_{variant}{registers}", "VFM-UDA (DINOv2, lightweight head)"
    description = f"{family} {variant}, {classes} classes, the {role} ({VFM_ROLES[role]}*)"
    return VFMLayout(name, classes, role, description)


def vfm_unused_keys(tensors: Mapping[str, Tensor], layout: VFMLayout) -> list[str]:
    """What an import leaves out, by module: the other networks, and inside the one read its
    modules outside the table (VFM-UDA's ``token_masking.mask_token``, a second name of
    ``encoder.mask_token``)."""
    prefix = VFM_ROLES[layout.role]
    read = (prefix + ENCODER, *(prefix + theirs for theirs in HEAD_MAP))
    return sorted(
        ".".join(k.split(".")[:2]) if k.startswith(prefix) else k.split(".")[0]
        for k in tensors
        if not k.startswith(read)
    )


def vfm_model_weights(tensors: Mapping[str, Tensor], layout: VFMLayout) -> dict[str, Tensor]:
    """One network's weights under spcl's names (the table above); other keys are dropped."""
    out: dict[str, Tensor] = {}
    adapter_model = layout.name.startswith("vfmudapp_")
    for key, value in _network(tensors, layout.role, "").items():
        if key.startswith(ENCODER):
            inner = key.removeprefix(ENCODER)
            owner = "adapter." if adapter_model and _is_adapter_key(inner) else "backbone."
            out[owner + inner] = value
        for theirs, ours in HEAD_MAP.items():
            if key.startswith(theirs):
                out[ours + key.removeprefix(theirs)] = value
    return out
