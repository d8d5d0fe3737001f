"""Input conventions: how a network's weights expect images, and the adapter from spcl's own.

Every spcl input pipeline (training loaders, evaluation, pseudo-labels, ``spcl predict``) feeds
the same tensors: RGB, ``(x/255 − mean) / std`` with torchvision's ImageNet mean and std
(:func:`spcl.data.lists.to_tensor`). Weights trained elsewhere may expect other images; the
DeepLab-v2 "COCO" initialisation of AdaptSegNet, ADVENT and DACS was converted from Caffe and
expects **BGR** in 0-255 minus a per-channel mean, without std division (ADVENT
``advent/dataset/base_dataset.py``; AdaptSegNet ``dataset/gta5_dataset.py``).

Rather than a second input pipeline, a model built for such weights carries an
:class:`InputAdapter` as its first operation: a channel permutation and a per-channel affine map
``y[c] = x[perm[c]] · a[c] + b[c]`` that turns spcl's tensors into the tensors the weights
expect, exactly (up to float rounding). The convention is a model option, so it is recorded in
the model file and re-applied wherever the model is rebuilt, and it is part of an exported graph.
The adapter's constants are non-persistent buffers: state dicts are the same with or without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spcl.base import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CAFFE_BGR_MEAN",
    "INPUT_CONVENTIONS",
    "PIPELINE_CONVENTION",
    "InputAdapter",
    "InputConvention",
    "InputSpec",
    "convention_metadata",
]

InputConvention = Literal["imagenet_rgb", "caffe_bgr"]
PIXEL_MAX = 255.0  # images are decoded as uint8
# DeepLab-v2 / Caffe mean in B, G, R order, 0-255 units (ADVENT domain_adaptation/config.py)
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
RGB, BGR = (0, 1, 2), (2, 1, 0)  # channel indices into an RGB image


@dataclass(frozen=True)
class InputSpec:
    """What a network expects: channel order and ``(pixel − mean) / std`` in 0-255 units.

    Attributes:
        channels: ``"RGB"`` or ``"BGR"``.
        mean: Per-channel mean, in the order of ``channels``, 0-255 units.
        std: Per-channel divisor, same order and units (1 = none).
        description: One line for messages and documentation.
    """

    channels: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    @property
    def order(self) -> tuple[int, int, int]:
        """Indices of the RGB channels in the network's channel order."""
        return BGR if self.channels == "BGR" else RGB


INPUT_CONVENTIONS: dict[str, InputSpec] = {
    "imagenet_rgb": InputSpec(
        "RGB",
        tuple(m * PIXEL_MAX for m in IMAGENET_MEAN),  # type: ignore[arg-type]
        tuple(s * PIXEL_MAX for s in IMAGENET_STD),  # type: ignore[arg-type]
        "RGB, (x − ImageNet mean) / ImageNet std (torchvision weights)",
    ),
    "caffe_bgr": InputSpec(
        "BGR",
        CAFFE_BGR_MEAN,
        (1.0, 1.0, 1.0),
        "BGR 0-255 minus the Caffe mean (104.008, 116.669, 122.679), no std (DeepLab-v2 COCO)",
    ),
}
PIPELINE_CONVENTION = "imagenet_rgb"  # what spcl.data.lists.to_tensor produces


def _spec(convention: str) -> InputSpec:
    if convention not in INPUT_CONVENTIONS:
        raise ValueError(
            f"unknown input_convention {convention!r}; valid: {sorted(INPUT_CONVENTIONS)}"
        )
    return INPUT_CONVENTIONS[convention]


class InputAdapter(nn.Module):
    """Turn spcl's pipeline tensors into the tensors a network's weights expect.

    Identity for ``"imagenet_rgb"``. Otherwise the pipeline image is undone to 0-255 RGB,
    reordered and re-normalised, folded into one permutation and one affine map per channel.

    Args:
        convention: A key of :data:`INPUT_CONVENTIONS`.

    Shape:
        - Input: (B, 3, H, W), normalised as :data:`PIPELINE_CONVENTION`.
        - Output: (B, 3, H, W), normalised as ``convention``.
    """

    def __init__(self, convention: InputConvention = PIPELINE_CONVENTION) -> None:
        super().__init__()
        target, source = _spec(convention), _spec(PIPELINE_CONVENTION)
        self.convention = convention
        self.identity = target == source
        perm = target.order  # source is RGB: output channel c reads input channel perm[c]
        scale = [source.std[p] / target.std[c] for c, p in enumerate(perm)]
        shift = [(source.mean[p] - target.mean[c]) / target.std[c] for c, p in enumerate(perm)]
        self.register_buffer("perm", torch.tensor(perm), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        return x.index_select(1, self.perm) * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return self.convention


def convention_metadata(convention: str) -> dict[str, Any]:
    """The convention as plain data (for model-file and export metadata)."""
    spec = _spec(convention)
    return {
        "name": convention,
        "channels": spec.channels,
        "mean_255": list(spec.mean),
        "std_255": list(spec.std),
        "description": spec.description,
    }
