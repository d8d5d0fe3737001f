"""The segmenter contract: what every model family returns, exposes and declares to the registry.

Each family of spcl (DeepLab-v2 on a dilated ResNet, :mod:`spcl.models.deeplab_v2`; SegFormer and
DAFormer on a MiT, :mod:`spcl.models.segformer`; a DINOv2 ViT with VFM-UDA's head,
:mod:`spcl.models.vit_seg`; the same ViT inside a ViT-Adapter with VFM-UDA++'s pyramid head,
:mod:`spcl.models.vfmudapp_seg`) subclasses :class:`Segmenter`, so that the rest of spcl reads
one written interface instead of probing models for attributes:

- ``model(x)`` returns :class:`SegOutput` (logits and the features they are a read-out of, the
  features SPCL's prototypes and contrast use), both at ``output_stride``;
- ``backbone`` is the encoder: what a pretrained file fills and ``freeze_bn`` freezes;
- ``head_prefixes`` name the head parameters (the optimiser's ``head_lr_mult`` group); every
  other parameter is the backbone's (:meth:`Segmenter.param_groups`);
- ``layer_id`` / ``num_layers`` place every parameter for layer-wise lr decay;
- ``layout_options`` are the constructor options a pretrained file implied (the DeepLab-v2 COCO
  initialisation needs ``style="caffe"``), which a model file records so the model rebuilds.

A family module declares ``MODELS: dict[str, ModelEntry]``: each registry name with its
constructor and its weight loader (:class:`WeightLoader`). Adding a backbone is adding such a
module, naming it in :data:`spcl.models.build.FAMILIES` and listing its options in the torch-free
:mod:`spcl.model_catalog`; tests/models/test_segmenter_contract.py then runs every registered
name through this contract (docs/backbones.md, "Adding a backbone").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

from torch import Tensor, nn

__all__ = ["Build", "ModelEntry", "SegOutput", "Segmenter", "WeightLoader"]


class SegOutput(NamedTuple):
    """What a segmenter returns.

    Attributes:
        logits: Class scores at feature resolution (not upsampled), shape (B, K, h, w).
        features: The feature map the logits are a read-out of (or, with a projection head,
            its projection), shape (B, C, h, w) with C = ``feature_channels``.
    """

    logits: Tensor
    features: Tensor


class Segmenter(nn.Module, ABC):
    """Base class of every segmentation model: the contract the stages, optimiser and files use.

    A subclass sets, in ``__init__`` (after ``super().__init__()``):

    Attributes:
        backbone: The encoder module (lr × ``backbone_lr_mult``; what pretrained files fill).
        num_classes: K.
        feature_channels: Channels of ``SegOutput.features``.
        output_stride: Input side / logits side (8 for DeepLab-v2, 4 for MiT; 3.5 for DINOv2,
            of the input after its resize to a multiple of 14; 4 for the ViT-Adapter model, of
            the input after its resize to a multiple of 224).
        num_layers: Highest layer id (:meth:`layer_id`); the head sits at this id.
        layout_options: Constructor options a pretrained file implied; ``{}`` unless a weight
            loader sets them (saved in the model file with the configured options).
        head_prefixes: Class attribute: state-dict prefixes of the head parameters.
    """

    head_prefixes: ClassVar[tuple[str, ...]]
    backbone: nn.Module
    num_classes: int
    feature_channels: int
    output_stride: float
    num_layers: int
    layout_options: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.layout_options = {}  # none until a weight loader reads a file that implies some

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """The map :meth:`forward_head` reads, from pipeline-normalised images (B, 3, H, W)."""

    @abstractmethod
    def forward_head(self, features: Tensor) -> Tensor:
        """Class logits (B, K, h, w) from :meth:`forward_features`'s map (B, C', h, w)."""

    @abstractmethod
    def layer_id(self, name: str) -> int:
        """Layer of the parameter called ``name``, for layer-wise lr decay (0 … num_layers).

        The optimiser scales a backbone parameter's lr by ``decay ** (num_layers − id)``: the
        input end decays most, the head (id ``num_layers``) not at all.

        Raises:
            ValueError: ``name`` is no parameter name this model can place.
        """

    def forward(self, x: Tensor) -> SegOutput:
        """Logits and the features they are read from, in one pass.

        Families with a projection head override this (their features are then the projection).

        Shape:
            - x: (B, 3, H, W).
            - Output: SegOutput(logits (B, K, h, w), features (B, feature_channels, h, w)).
        """
        features = self.forward_features(x)
        return SegOutput(logits=self.forward_head(features), features=features)

    def is_head(self, name: str) -> bool:
        """Whether the parameter called ``name`` belongs to the head (``head_prefixes``)."""
        return name.startswith(self.head_prefixes)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable parameters split for the optimiser: (backbone, head), in module order.

        The reference trains the head with 10× the backbone's learning rate. Parameters with
        ``requires_grad=False`` (the ResNet's unused ``fc``, a frozen ViT) are left out.
        """
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        backbone = [p for n, p in named if not self.is_head(n)]
        head = [p for n, p in named if self.is_head(n)]
        return backbone, head


Build = Callable[[Mapping[str, Any]], Segmenter]
# ^ builds the registered model with these constructor options (build_model's checks included)


class WeightLoader(Protocol):
    """A family's way to build a segmenter from a pretrained file (``model.pretrained``).

    It may read the file first (its layout can imply constructor options, which it then records
    in ``layout_options``), builds the model with ``build(options)`` and fills it (at least its
    ``backbone``) from ``path``. Every family reads another run's spcl model file this way.

    Raises:
        MissingFileError: ``path`` does not exist.
        ConfigError: the file contradicts the options, name or width.
        CheckpointError: the file does not fit (the message names the file and keys).
    """

    def __call__(
        self, build: Build, options: Mapping[str, Any], path: Path, *, name: str, width: int
    ) -> Segmenter: ...


@dataclass(frozen=True)
class ModelEntry:
    """One registry name: how to construct the model, and how to load pretrained weights.

    Attributes:
        constructor: ``constructor(num_classes, width=..., **options)``; its keyword parameters
            are the name's ``model.options`` (listed again in :mod:`spcl.model_catalog`).
        load_pretrained: The family's :class:`WeightLoader`.
    """

    constructor: Callable[..., Segmenter]
    load_pretrained: WeightLoader
