"""Where ``model.pretrained`` comes from, for the encoders that are not ResNets (MiT, DINOv2).

:func:`resolve_pretrained` turns the configured value into a local file: ``""`` (and ``None``)
mean none, an http(s) URL is downloaded into the torch hub cache once, and a URL that cannot be
fetched (no network) is a one-line error that says where to place the file by hand.

:func:`load_encoder_weights` fills a MiT or DINOv2 segmenter's encoder from one of two files:

- an official file (``mit_bX.pth``, ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``): keys and
  shapes must be exactly the encoder's, and only width 64 (the published one) can hold them;
- an spcl model file (another run's ``model.pth``): its ``backbone.*`` weights, at any width,
  provided the configured model has the same shapes (the file's ``arch`` is named otherwise).

ResNet files of every layout are read by :mod:`spcl.models.weight_layouts`.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from spcl.base import CheckpointError, ConfigError, MissingFileError
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.models.mit import MixVisionTransformer, mit_variant_of
from spcl.models.vit import DINOv2Encoder
from spcl.models.vit_seg import ViTSegmenter
from spcl.models.weight_layouts import detect_layout, fit_problems

__all__ = [
    "load_dinov2_weights",
    "load_encoder_weights",
    "load_mit_weights",
    "read_state_dict",
    "resolve_pretrained",
]

OFFICIAL_WIDTH = 64  # the only width at which published MiT and DINOv2 weights exist
BACKBONE_PREFIXES = ("backbone.",)  # a backbone saved inside a segmenter (DDP's module. always)
CHECKPOINT_CONTAINER_KEYS = ("state_dict", "model")  # checkpoints that nest the weights one level
MIT_IMAGENET_HEAD = "head."  # official mit_bX.pth hold a 1000-class Linear: read, never built
SPCL_BACKBONE = "backbone."  # an spcl segmenter keeps its encoder as attribute `backbone`
SHOWN_KEYS = 5  # keys named in a checkpoint error
URL_SCHEMES = ("http", "https")
FETCH_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError)  # no network, no host, …


def resolve_pretrained(pretrained: str | Path | None) -> Path | None:
    """A local path for ``pretrained``: ``None`` or ``""`` mean none; a URL is fetched once.

    Raises:
        ConfigError: a URL without a file name.
        CheckpointError: a URL that cannot be fetched (no network, unknown host, HTTP error):
            the message names the URL, the reason and the cache path to place the file at.
    """
    if pretrained is None or str(pretrained) == "":
        return None  # an empty model.pretrained means none, as leaving it out does
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
        try:
            torch.hub.download_url_to_file(text, str(destination), progress=True)
        except FETCH_ERRORS as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CheckpointError(
                f"model.pretrained {text} cannot be fetched ({reason}); download it on a machine "
                f"with network access and place it at {destination} (the torch hub cache, "
                f"$TORCH_HOME), or set model.pretrained to its local path"
            ) from exc
    return destination


def _tensors_of(loaded: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded file, one ``state_dict``/``model`` level down when present."""
    for container in CHECKPOINT_CONTAINER_KEYS:
        if isinstance(loaded.get(container), Mapping):
            loaded = loaded[container]
            break
    tensors = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    state = clean_state_dict(tensors, BACKBONE_PREFIXES)
    if not state:
        raise CheckpointError(f"checkpoint {path} contains no tensors")
    return state


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a tensor mapping from ``path`` (safely), unwrapping a ``state_dict``/``model`` level."""
    return _tensors_of(load_state(path), path)  # weights_only; non-dict files: a named error


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


def _dinov2_file_shape(state: Mapping[str, Tensor]) -> str:
    """What a DINOv2 state dict looks like: its embed dim, depth and registers (for errors)."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else "?"
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.") and k.count(".") > 1}
    registers = tuple(state["register_tokens"].shape) if "register_tokens" in state else "none"
    return f"embed dim {dim}, {len(blocks)} blocks, register_tokens {registers}"


def _fill_dinov2(encoder: DINOv2Encoder, ckpt: Mapping[str, Tensor], path: Path) -> None:
    """Load official DINOv2 weights strictly (keys and shapes exactly the encoder's)."""
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
    _fill_dinov2(encoder, read_state_dict(path), path)


def _fill_from_model_file(
    encoder: nn.Module, loaded: Mapping[str, Any], path: Path, name: str, width: int
) -> None:
    """Load the ``backbone.*`` weights of an spcl model file into ``encoder`` (shapes compared)."""
    model = loaded["model"] if isinstance(loaded["model"], Mapping) else {}
    weights = {
        k.removeprefix(SPCL_BACKBONE): v
        for k, v in clean_state_dict(model).items()
        if k.startswith(SPCL_BACKBONE) and isinstance(v, Tensor)
    }
    problems = fit_problems(encoder.state_dict(), weights)
    if any(problems.values()) or not weights:
        arch = loaded.get("arch")
        holds = (
            f"{arch.get('name')!r} at width {arch.get('width')!r}"
            if isinstance(arch, Mapping)
            else "a model of no readable arch"
        )
        shown = [
            f"{kind} ({len(k)}): {', '.join(k[:SHOWN_KEYS])}" for kind, k in problems.items() if k
        ]
        raise CheckpointError(
            f"{path}: an spcl model file of {holds}; its backbone does not fit {name!r} at "
            f"width {width}: {'; '.join(shown) or 'it holds no backbone weights'}; configure "
            f"the model and width it was trained with"
        )
    encoder.load_state_dict(weights, strict=True)


def load_encoder_weights(model: nn.Module, name: str, width: int, path: Path) -> None:
    """Fill a MiT or DINOv2 segmenter's encoder from an official file or an spcl model file.

    Raises:
        ConfigError: an official file with a width other than 64.
        CheckpointError: the file does not fit (keys and shapes named).
    """
    if not path.is_file():
        raise MissingFileError(f"model.pretrained not found: {path}")
    loaded = load_state(path)
    if detect_layout(loaded) == "spcl_model_file":
        _fill_from_model_file(model.backbone, loaded, path, name, width)
        return
    kind = "DINOv2" if isinstance(model, ViTSegmenter) else "MiT"
    if width != OFFICIAL_WIDTH:
        raise ConfigError(
            f"{name}: official {kind} weights exist at width {OFFICIAL_WIDTH} only, got "
            f"width={width} with pretrained={str(path)!r} (an spcl model file, another run's "
            f"model.pth, loads at its own width)"
        )
    weights = _tensors_of(loaded, path)
    if isinstance(model, ViTSegmenter):
        _fill_dinov2(model.backbone, weights, path)
    else:
        _fill_mit(model.backbone, weights, path)
