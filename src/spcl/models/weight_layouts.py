"""ResNet weight files from elsewhere: detect their layout by their keys, map them onto spcl's.

Three layouts are read (``spcl`` model files and mmseg checkpoints are handled by
:mod:`spcl.models.files`):

====================  ==========================================  ==================================
layout                keys (after ``module.`` is stripped)        what it needs of the model
====================  ==========================================  ==================================
``torchvision_resnet`` ``conv1.weight``, ``layer1.0.conv1.weight``  nothing: spcl's ResNet has
                      … (optionally ``backbone.``, under           torchvision's names
                      ``state_dict``/``model``)
``deeplab_coco``      ``Scale.conv1.weight``, ``Scale.layerL.j.*``  ``style="caffe"`` (stride on the
                      ``Scale.layer5.conv2d_list.i.*`` (a          first 1×1 conv, ceil-mode pool)
                      21-class ASPP head); no                      and ``input_convention=
                      ``num_batches_tracked``                      "caffe_bgr"``, set automatically
``spcl_reference``    ``{"feature_extractor": {module.backbone.*},  nothing; its BN was frozen (no
                      "classifier": {module.conv2d_list.i.*},      ``num_batches_tracked``) unless
                      "iteration", "optimizer_*"[, "model_D"]}``   trained by self-training
====================  ==========================================  ==================================

``deeplab_coco`` is the DeepLab-v2 ImageNet+COCO initialisation of AdaptSegNet
(``DeepLab_resnet_pretrained_init-f81d91e8.pth``) and ADVENT
(``DeepLab_resnet_pretrained_imagenet.pth``): isht7's conversion of DeepLab's Caffe model, whose
ResNet is the attribute ``Scale``. Its classifier is loaded only when the model has the same
classes and rates (AdaptSegNet and ADVENT skip it for 19 classes). ``spcl_reference`` is what the
SPCL code (BinhuiXie/SPCL ``warmup.py``, ``train_ours.py``, ``train_ssl.py``), and before it FADA
and SDCA, save: a torchvision ResNet inside ``IntermediateLayerGetter`` (``backbone.``) and an
``ASPP_Classifier_V2`` (``conv2d_list``), wrapped in DDP (``module.``).

Every failure is a :class:`~spcl.base.CheckpointError` naming the file, the layout it looks like
and the first keys that do not fit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from spcl.base import CheckpointError, ConfigError, MissingFileError
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.models.model_meta import checked_arch
from spcl.models.resnet import RESNET_DEPTHS, Bottleneck

__all__ = [
    "LAYOUTS",
    "RESNET_LAYOUTS",
    "ResNetWeights",
    "detect_layout",
    "fit_problems",
    "layout_error",
    "load_deeplab_weights",
    "merge_layout_options",
    "read_resnet_weights",
    "resnet_depth_of",
    "resnet_weights_from_state",
]

logger = logging.getLogger(__name__)

LAYOUTS: dict[str, str] = {
    "torchvision_resnet": "a torchvision-format ResNet state dict",
    "deeplab_coco": "the DeepLab-v2 ImageNet+COCO initialisation (Scale.* keys, Caffe-style)",
    "spcl_reference": "a reference SPCL/FADA checkpoint (feature_extractor/classifier dicts)",
    "spcl_model_file": "an spcl model file (model + arch)",
    "mmseg": "an mmseg segmentor/UDA checkpoint (decode_head / model. / ema_model. keys)",
}
RESNET_LAYOUTS = ("torchvision_resnet", "deeplab_coco", "spcl_reference", "spcl_model_file")
# ^ read by this module; an spcl model file gives its backbone (e.g. a warm-up from another run)
SPCL_BACKBONE = "backbone."  # spcl segmenters keep their ResNet as attribute `backbone`
CONTAINER_KEYS = ("state_dict", "model")  # checkpoints that nest the weights one level
COCO_PREFIX = "Scale."  # isht7's MS_Deeplab keeps the ResNet as attribute `Scale`
COCO_HEAD = "layer5."  # ... and its ASPP classifier as Scale.layer5
COCO_OPTIONS: dict[str, Any] = {"style": "caffe", "input_convention": "caffe_bgr"}
REF_BACKBONE, REF_FEATURES, REF_CLASSIFIER = "backbone.", "feature_extractor", "classifier"
HEAD_PREFIX = "classifier."  # spcl DeepLabV2's ASPP head
MMSEG_MARKERS = ("decode_head.", "model.decode_head.", "ema_model.")
OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BN step counters: absent or extra is harmless
UNUSED_PREFIXES = ("fc.",)  # torchvision's ImageNet classifier: kept for strict loads, never run
SHOWN_KEYS = 5  # keys quoted per kind of problem
BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


@dataclass
class ResNetWeights:
    """A ResNet (+ optional ASPP head) read from a file, in spcl's key names.

    Attributes:
        layout: A key of :data:`LAYOUTS`.
        description: What the file looks like, for messages (layout, depth, head).
        backbone: Backbone tensors under spcl's ResNet names (torchvision's).
        head: ASPP classifier tensors under DeepLabV2's names (``conv2d_list.i.*``), or empty.
        options: Model options the weights need (``style``, ``input_convention``).
        depth: ResNet depth inferred from the block counts, or None.
        frozen_bn: The BatchNorm layers were saved without ``num_batches_tracked`` (frozen).
        unused: Top-level entries of the file that hold no model weights (optimizer, ``model_D``…).
    """

    layout: str
    description: str
    backbone: dict[str, Tensor]
    head: dict[str, Tensor] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    depth: int | None = None
    frozen_bn: bool = False
    unused: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int | None:
        """Classes of the head (rows of its first conv), None without a head."""
        weight = self.head.get("conv2d_list.0.weight")
        return None if weight is None else int(weight.shape[0])


def _tensors(mapping: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in mapping.items() if isinstance(v, Tensor)}


def _unwrap(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a state dict, one ``state_dict``/``model`` level down when present."""
    for key in CONTAINER_KEYS:
        if isinstance(state.get(key), Mapping):
            return _tensors(state[key])
    return _tensors(state)


def detect_layout(state: Mapping[str, Any]) -> str | None:
    """Which of :data:`LAYOUTS` a loaded checkpoint has, judged by its keys; None if none."""
    if "arch" in state and "model" in state:
        return "spcl_model_file"
    if isinstance(state.get(REF_FEATURES), Mapping) and isinstance(
        state.get(REF_CLASSIFIER), Mapping
    ):
        return "spcl_reference"
    keys = list(clean_state_dict(_unwrap(state)))
    if any(k.startswith(COCO_PREFIX) for k in keys):
        return "deeplab_coco"
    if any(k.startswith(MMSEG_MARKERS) for k in keys):
        return "mmseg"
    bare = {k.removeprefix(REF_BACKBONE) for k in keys}
    if "conv1.weight" in bare and any(k.startswith("layer1.0.") for k in bare):
        return "torchvision_resnet"
    return None


def resnet_depth_of(backbone: Mapping[str, Tensor]) -> int | None:
    """ResNet depth (18/34/50/101) from the block counts and block type of a state dict."""
    counts = [0, 0, 0, 0]
    for key in backbone:
        match = BLOCK_KEY.match(key)
        if match:
            layer, index = int(match.group(1)), int(match.group(2))
            counts[layer - 1] = max(counts[layer - 1], index + 1)
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in backbone)
    for depth, (block, layers) in RESNET_DEPTHS.items():
        if tuple(counts) == tuple(layers) and (block is Bottleneck) == bottleneck:
            return depth
    return None


def _describe(layout: str, depth: int | None, head: Mapping[str, Tensor]) -> str:
    net = f"ResNet-{depth}" if depth else "a ResNet of no standard depth"
    text = f"{LAYOUTS[layout]}, {net}"
    if "conv2d_list.0.weight" in head:
        classes, rates = head["conv2d_list.0.weight"].shape[0], len({k.split(".")[1] for k in head})
        text += f", ASPP head of {classes} classes × {rates} rates"
    return text


def _split_coco(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    backbone, head = {}, {}
    for key, value in tensors.items():
        name = key.removeprefix(COCO_PREFIX)
        if name.startswith(COCO_HEAD):
            head[name.removeprefix(COCO_HEAD)] = value
        else:
            backbone[name] = value
    return backbone, head


def _has_backbone(model: Any) -> bool:
    """Whether an spcl model file's ``model`` entry holds ``backbone.*`` weights."""
    return isinstance(model, Mapping) and any(str(k).startswith(SPCL_BACKBONE) for k in model)


def resnet_weights_from_state(state: Mapping[str, Any], source: str | Path) -> ResNetWeights:
    """Map a loaded checkpoint of a supported layout onto spcl's names.

    Raises:
        CheckpointError: the layout is not a ResNet layout (named, with the first keys).
    """
    layout = detect_layout(state)
    if layout == "spcl_reference":
        features = clean_state_dict(_tensors(state[REF_FEATURES]), (REF_BACKBONE,))
        head = clean_state_dict(_tensors(state[REF_CLASSIFIER]))
        unused = [k for k in state if k not in (REF_FEATURES, REF_CLASSIFIER)]
        frozen = not any(k.endswith(OPTIONAL_SUFFIXES) for k in features)
        options: dict[str, Any] = {}
    elif layout == "deeplab_coco":
        features, head = _split_coco(clean_state_dict(_unwrap(state)))
        unused, frozen, options = [], True, dict(COCO_OPTIONS)
    elif layout == "torchvision_resnet":
        features = clean_state_dict(_unwrap(state), (REF_BACKBONE,))
        head, unused, frozen, options = {}, [], False, {}
    elif layout == "spcl_model_file" and _has_backbone(state["model"]):
        model = clean_state_dict(_tensors(state["model"]))
        features = {
            k.removeprefix(SPCL_BACKBONE): v
            for k, v in model.items()
            if k.startswith(SPCL_BACKBONE)
        }
        unused = sorted(k for k in model if not k.startswith(SPCL_BACKBONE))  # its head
        arch_options = checked_arch(source, state["arch"])["options"]  # named if edited
        options = {k: arch_options[k] for k in COCO_OPTIONS if k in arch_options}
        head, frozen = {}, not any(k.endswith(OPTIONAL_SUFFIXES) for k in features)
    else:
        looks = LAYOUTS.get(layout or "", "no known layout")
        first = sorted(clean_state_dict(_unwrap(state)))[:SHOWN_KEYS] or sorted(state)[:SHOWN_KEYS]
        hint = (
            " (pass it to `spcl evaluate`/`predict`, not as model.pretrained)"
            if layout in ("spcl_model_file", "mmseg")
            else ""
        )
        raise CheckpointError(
            f"{source}: looks like {looks}, not a ResNet weight file{hint}; first keys: "
            f"{', '.join(first)}. Readable layouts: {', '.join(LAYOUTS[k] for k in RESNET_LAYOUTS)}"
        )
    depth = resnet_depth_of(features)
    return ResNetWeights(
        layout=layout,
        description=_describe(layout, depth, head),
        backbone=features,
        head=head,
        options=options,
        depth=depth,
        frozen_bn=frozen,
        unused=unused,
    )


def read_resnet_weights(path: str | Path) -> ResNetWeights:
    """Read a ResNet weight file of any layout in :data:`LAYOUTS` (``weights_only`` load).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: unreadable, or not a ResNet layout (the message says what it looks like).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"backbone checkpoint not found: {path}")
    weights = resnet_weights_from_state(load_state(path), path)
    if not weights.backbone:
        raise CheckpointError(f"{path}: {weights.description} holds no backbone tensors")
    return weights


def fit_problems(
    own: Mapping[str, Tensor], weights: Mapping[str, Tensor], *, optional: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Keys that do not fit: shape mismatches, missing and unexpected (optional ones excepted).

    ``optional`` are prefixes of ``own`` that may be absent (never run, such as ``fc.``);
    ``num_batches_tracked`` counters may be absent or extra on either side.
    """

    def counter(key: str) -> bool:
        return key.endswith(OPTIONAL_SUFFIXES)

    return {
        "shape mismatch": [  # in the model's order, whatever order the file keeps
            f"{k}: file {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in weights and tuple(weights[k].shape) != tuple(v.shape)
        ],
        "missing": [
            k for k in own if k not in weights and not counter(k) and not k.startswith(optional)
        ],
        "unexpected": [k for k in weights if k not in own and not counter(k)],
    }


def layout_error(
    source: str | Path, looks_like: str, target: str, problems: Mapping[str, list[str]]
) -> CheckpointError:
    """The error for weights that do not fit: file, layout, first non-fitting keys per kind."""
    parts = [
        f"{kind} ({len(keys)}): {', '.join(keys[:SHOWN_KEYS])}"
        for kind, keys in problems.items()
        if keys
    ]
    return CheckpointError(
        f"{source}: looks like {looks_like}; keys that do not fit {target}: {'; '.join(parts)}"
    )


def merge_layout_options(
    name: str, options: Mapping[str, Any], weights: ResNetWeights, source: str | Path
) -> dict[str, Any]:
    """The configured options plus those the weights need; a contradiction is a ConfigError."""
    merged = dict(options)
    for key, value in weights.options.items():
        if key in merged and merged[key] != value:
            raise ConfigError(
                f"model.options.{key}={merged[key]!r} contradicts {source} ({weights.description},"
                f" which needs {key}={value!r}); drop the option"
            )
        merged[key] = value
    if weights.depth is not None and not name.endswith(f"resnet{weights.depth}"):
        raise ConfigError(
            f"{source} holds {weights.description}, but the model is {name!r}: use "
            f"deeplabv2_resnet{weights.depth}"
        )
    return merged


def load_deeplab_weights(
    model: nn.Module, weights: ResNetWeights, source: str | Path, *, strict: bool = True
) -> list[str]:
    """Load the backbone (strictly) and, when it fits, the head of ``weights`` into a DeepLabV2.

    A ``deeplab_coco`` head that does not fit (other classes or rates) is skipped, as AdaptSegNet
    and ADVENT do; a reference checkpoint's trained head must fit.

    Returns:
        Notes on what was not loaded (for logging).

    Raises:
        CheckpointError: keys that do not fit; the message names the file, its layout and keys.
    """
    target = f"{type(model).__name__} with a {model.backbone.out_channels}-channel ResNet"
    own = model.backbone.state_dict()  # once: each call walks every module
    problems = fit_problems(own, weights.backbone, optional=UNUSED_PREFIXES)
    if weights.layout == "torchvision_resnet":
        problems["unexpected"] = []  # a segmenter's other parts, reported by the caller
    if problems["shape mismatch"] or (strict and (problems["missing"] or problems["unexpected"])):
        raise layout_error(source, weights.description, f"the backbone of {target}", problems)
    present = {k: v for k, v in weights.backbone.items() if k in own}
    model.backbone.load_state_dict(present, strict=False)
    notes = [f"unused entries: {', '.join(weights.unused)}"] if weights.unused else []
    if not weights.head:
        return notes
    head_problems = fit_problems(model.classifier.state_dict(), weights.head)
    if any(head_problems.values()):
        if weights.layout == "deeplab_coco":
            notes.append(
                f"ASPP head of the file not loaded (re-initialised): {weights.description}"
            )
            return notes
        raise layout_error(
            source, weights.description, f"the classifier of {target}", head_problems
        )
    model.classifier.load_state_dict(weights.head, strict=True)
    return notes
