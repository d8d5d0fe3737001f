"""Where ``model.pretrained`` comes from, and the weight loader of encoder-only files (MiT, DINOv2).

:func:`resolve_pretrained` turns the configured value into a local file: ``""`` (and ``None``)
mean none, an http(s) URL is downloaded into the torch hub cache once, and a URL that cannot be
fetched (no network) is a one-line error that says where to place the file by hand.

:func:`load_encoder_weights` (and :class:`EncoderWeightLoader`, the registry's loader of such
families) fills a segmenter's encoder from one of two files:

- an official file (``mit_bX.pth``, ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``): keys and
  shapes must be exactly the encoder's, and only width 64 (the published one) can hold them; the
  family supplies the strict filler (:func:`spcl.models.segformer.load_mit_weights`,
  :func:`spcl.models.vit_seg.load_dinov2_weights`);
- an spcl model file (another run's ``model.pth``): its ``backbone.*`` weights (an HRDA model
  file's ``segmenter.backbone.*``), at any width, provided the configured model has the same
  shapes (the file's ``arch`` is named otherwise);
- an mmseg checkpoint of DAFormer, HRDA, MIC or SePiCo (:mod:`spcl.models.mmseg_import`): its
  student's encoder.

ResNet files of every layout are read by :mod:`spcl.models.weight_layouts`.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from spcl.base import CheckpointError, ConfigError, MissingFileError
from spcl.engine.checkpoint import clean_state_dict, load_state
from spcl.models.segmenter import Build, Segmenter
from spcl.models.weight_layouts import detect_layout, fit_problems

__all__ = [
    "OFFICIAL_WIDTH",
    "SHOWN_KEYS",
    "EncoderWeightLoader",
    "FillOfficial",
    "checkpoint_tensors",
    "fill_from_model_file",
    "load_encoder_weights",
    "read_state_dict",
    "resolve_pretrained",
]

OFFICIAL_WIDTH = 64  # the only width at which published MiT and DINOv2 weights exist
BACKBONE_PREFIXES = ("backbone.",)  # a backbone saved inside a segmenter (DDP's module. always)
CHECKPOINT_CONTAINER_KEYS = ("state_dict", "model")  # checkpoints that nest the weights one level
SPCL_BACKBONE = "backbone."  # an spcl segmenter keeps its encoder as attribute `backbone`
HRDA_WRAPPER = "segmenter."  # an HRDA model keeps the segmenter it wraps as `segmenter`
SHOWN_KEYS = 5  # keys named in a checkpoint error
URL_SCHEMES = ("http", "https")
FETCH_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError)  # no network, no host, …
FillOfficial = Callable[[Any, Mapping[str, Tensor], Path], object]
# ^ (encoder, an official file's tensors, its path): load them strictly, or raise CheckpointError


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


def checkpoint_tensors(loaded: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
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
    return checkpoint_tensors(load_state(path), path)  # weights_only; non-dict files: a named error


def fill_from_model_file(
    encoder: nn.Module,
    loaded: Mapping[str, Any],
    path: Path,
    name: str,
    width: int,
    *,
    prefix: str = SPCL_BACKBONE,
) -> None:
    """Load the ``prefix`` weights of an spcl model file into ``encoder`` (shapes compared).

    ``prefix`` is ``backbone.`` for every family; the VFM-UDA++ family also reads ``adapter.``.
    An HRDA model file holds the same keys under ``segmenter.``.
    """
    model = loaded["model"] if isinstance(loaded["model"], Mapping) else {}
    weights = {
        k.removeprefix(HRDA_WRAPPER).removeprefix(prefix): v
        for k, v in clean_state_dict(model).items()
        if k.removeprefix(HRDA_WRAPPER).startswith(prefix) and isinstance(v, Tensor)
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
            f"{path}: an spcl model file of {holds}; its {prefix[:-1]} does not fit {name!r} at "
            f"width {width}: {'; '.join(shown) or 'it holds none'}; configure the model and "
            f"width it was trained with"
        )
    encoder.load_state_dict(weights, strict=True)


def _fill_from_mmseg(
    encoder: nn.Module, loaded: Mapping[str, Any], path: Path, name: str, width: int
) -> None:
    """Load the student encoder of an mmseg UDA checkpoint into ``encoder`` (shapes compared)."""
    from spcl.models.mmseg_import import import_mmseg_state  # it builds models: import late

    imported, report = import_mmseg_state(loaded, source=path)
    weights = imported.backbone.state_dict()
    problems = fit_problems(encoder.state_dict(), weights)
    if any(problems.values()):
        shown = [f"{kind} ({len(k)}): {', '.join(k[:SHOWN_KEYS])}" for kind, k in problems.items()]
        raise CheckpointError(
            f"{path}: an mmseg checkpoint of {report.layout.description}; its encoder does not "
            f"fit {name!r} at width {width}: {'; '.join(shown)}"
        )
    encoder.load_state_dict(weights, strict=True)


def load_encoder_weights(
    model: Segmenter, path: Path, *, name: str, width: int, kind: str, fill_official: FillOfficial
) -> None:
    """Fill a segmenter's encoder (``model.backbone``) from an official file or an spcl model file.

    Args:
        model: The segmenter, built.
        path: The local file.
        name, width: The registry name and width the model was built with (for messages).
        kind: The encoder family's name in messages ("MiT", "DINOv2").
        fill_official: Loads an official file's tensors (``state_dict``/``model`` unwrapped,
            ``module.``/``backbone.`` stripped) into the encoder, strictly.

    Raises:
        MissingFileError: ``path`` does not exist.
        ConfigError: an official file with a width other than 64.
        CheckpointError: the file does not fit (keys and shapes named).
    """
    if not path.is_file():
        raise MissingFileError(f"model.pretrained not found: {path}")
    loaded = load_state(path)
    layout = detect_layout(loaded)
    if layout == "spcl_model_file":
        fill_from_model_file(model.backbone, loaded, path, name, width)
        return
    if layout == "mmseg":
        _fill_from_mmseg(model.backbone, loaded, path, name, width)
        return
    if width != OFFICIAL_WIDTH:
        raise ConfigError(
            f"{name}: official {kind} weights exist at width {OFFICIAL_WIDTH} only, got "
            f"width={width} with pretrained={str(path)!r} (an spcl model file, another run's "
            f"model.pth, loads at its own width)"
        )
    fill_official(model.backbone, checkpoint_tensors(loaded, path), path)


@dataclass(frozen=True)
class EncoderWeightLoader:
    """The :class:`~spcl.models.segmenter.WeightLoader` of a family whose files hold an encoder.

    Builds the model with the configured options (a file implies none), then fills its encoder
    with :func:`load_encoder_weights`.

    Attributes:
        kind: The encoder family's name in messages ("MiT", "DINOv2").
        fill_official: Loads an official file's tensors into the encoder, strictly.
    """

    kind: str
    fill_official: FillOfficial

    def __call__(
        self, build: Build, options: Mapping[str, Any], path: Path, *, name: str, width: int
    ) -> Segmenter:
        model = build(options)
        load_encoder_weights(
            model, path, name=name, width=width, kind=self.kind, fill_official=self.fill_official
        )
        return model
