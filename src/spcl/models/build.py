"""Model registry and constructors: name → DeepLab-v2 variant, ImageNet backbone loading.

``build_model("deeplabv2_resnet101", 19, pretrained="resnet101-5d3b4d8f.pth", freeze_bn=True,
bn_eps_frozen=0.0)`` builds SPCL's segmenter (arXiv 2111.12358, Sec. 4.1) as the reference trains
it.
Backbone checkpoints are torchvision-format ResNet state dicts read from a local file with
``torch.load(weights_only=True)``; a URL is downloaded into the torch hub cache only when one is
passed explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from spcl.base import CheckpointError, ConfigError, MissingFileError, UnknownNameError
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.models.deeplab_v2 import DeepLabV2
from spcl.models.discriminator import DISC_NDF, OutputDiscriminator
from spcl.models.resnet import BN_EPS, DEFAULT_WIDTH, RESNET_DEPTHS, ResNet, freeze_batchnorm

__all__ = [
    "MODEL_REGISTRY",
    "build_discriminator",
    "build_model",
    "load_backbone_weights",
]

SEG_OUTPUT_STRIDE = 8  # DeepLab-v2's output stride (layer3/layer4 dilated)
BACKBONE_PREFIXES = ("backbone.",)  # a backbone saved inside a segmenter (DDP's module. always)
CHECKPOINT_CONTAINER_KEYS = ("state_dict", "model")  # checkpoints that nest the weights one level
OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BN step counters: absent or extra is harmless
UNUSED_BACKBONE_PREFIXES = ("fc.",)  # ImageNet head: kept for strict loading, never run
URL_SCHEMES = ("http", "https")


def _deeplabv2_resnet(depth: int, num_classes: int, width: int = DEFAULT_WIDTH) -> DeepLabV2:
    """DeepLab-v2 on a ResNet of ``depth`` at output stride 8."""
    block, layers = RESNET_DEPTHS[depth]
    backbone = ResNet(block, layers, width=width, output_stride=SEG_OUTPUT_STRIDE)
    return DeepLabV2(backbone, num_classes)


MODEL_REGISTRY: dict[str, Callable[..., DeepLabV2]] = {
    f"deeplabv2_resnet{depth}": partial(_deeplabv2_resnet, depth) for depth in RESNET_DEPTHS
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
    """Load a torchvision-format ResNet checkpoint from a local file into ``backbone``.

    ``module.`` and ``backbone.`` prefixes are stripped; ``num_batches_tracked`` counters may be
    present or absent on either side (FrozenBatchNorm2d has none). The ImageNet ``fc`` is never run,
    so a feature-extractor checkpoint without it is accepted (the keys are still reported missing).

    Args:
        backbone: The module to fill (e.g. ``model.backbone``).
        path: Local ``.pth`` file with a state dict (optionally under ``state_dict``/``model``).
        strict: Raise if any parameter or buffer of ``backbone`` other than ``fc`` is missing.

    Returns:
        (missing, unexpected): backbone keys the file lacks, and file keys the backbone lacks.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A shape differs (the key and both shapes are named), or ``strict`` and keys
            are missing.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"backbone checkpoint not found: {path}")
    ckpt = _read_state_dict(path)
    own = backbone.state_dict()
    for key, value in ckpt.items():
        if key in own and value.shape != own[key].shape:
            raise CheckpointError(
                f"shape mismatch for {key!r} in {path}: checkpoint has {tuple(value.shape)}, "
                f"model expects {tuple(own[key].shape)} (wrong depth or width?)"
            )

    def optional(key: str) -> bool:
        return key.endswith(OPTIONAL_SUFFIXES)

    missing = [k for k in own if k not in ckpt and not optional(k)]
    unexpected = [k for k in ckpt if k not in own and not optional(k)]
    required_missing = [k for k in missing if not k.startswith(UNUSED_BACKBONE_PREFIXES)]
    if strict and required_missing:
        shown = ", ".join(required_missing[:5])
        raise CheckpointError(
            f"{len(required_missing)} backbone keys missing from {path} (first: {shown}); "
            f"pass strict=False to load the rest"
        )
    backbone.load_state_dict({k: v for k, v in ckpt.items() if k in own}, strict=False)
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


def build_model(
    name: str,
    num_classes: int,
    *,
    width: int = DEFAULT_WIDTH,
    pretrained: str | Path | None = None,
    freeze_bn: bool = False,
    bn_eps_frozen: float = BN_EPS,
) -> DeepLabV2:
    """Build a registered segmenter.

    Args:
        name: A key of :data:`MODEL_REGISTRY`, e.g. ``"deeplabv2_resnet101"``.
        num_classes: Number of classes K.
        width: Backbone base channels (64 = torchvision; smaller for CPU demos).
        pretrained: Local torchvision ResNet checkpoint, or an http(s) URL downloaded into the torch
            hub cache; ``None`` keeps the random init.
        freeze_bn: Replace the backbone's BatchNorm by FrozenBatchNorm2d (after loading weights).
        bn_eps_frozen: eps of the frozen layers; the reference trains with ``0.0``.

    Returns:
        The DeepLabV2 model, on the CPU.

    Raises:
        KeyError: ``name`` is not registered (the message lists the valid names).
    """
    if name not in MODEL_REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; valid names: {sorted(MODEL_REGISTRY)}")
    model = MODEL_REGISTRY[name](num_classes, width=width)
    if pretrained is not None:
        load_backbone_weights(model.backbone, _resolve_checkpoint(pretrained), strict=True)
    if freeze_bn:
        freeze_batchnorm(model.backbone, eps=bn_eps_frozen)
    return model


def build_discriminator(num_classes: int, ndf: int = DISC_NDF) -> OutputDiscriminator:
    """Build the output-space discriminator for ``num_classes``-channel probability maps."""
    return OutputDiscriminator(num_classes, ndf=ndf)
