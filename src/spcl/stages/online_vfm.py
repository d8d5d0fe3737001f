"""VFM-UDA's and VFM-UDA++'s parts of the online step, each an ``online`` switch off by default.

VFM-UDA++ (tue-mps/vfm-uda-plusplus: training/uda/uda.py; docs/recipes.md, section
"VFM-UDA++: the training step") differs from the DAFormer step of :mod:`spcl.stages.online_step` by:

- ``online.source_augment``: the student's source batch augmented per image with torchvision's
  operators, weak (VFM-UDA) or strong (VFM-UDA++) (:mod:`spcl.method.vfm_augment`);
- ``online.pseudo.flip_average``: the teacher's labels from the mean of its softmax on the target
  image and on its mirror image;
- ``online.distill``: feature distillation of the student's stride-32 map, through a projection
  head, onto a frozen DINOv2 with registers (:mod:`spcl.method.feature_distill`), one term on the
  source batch (``fd_src``) and one on the target batch (``fd_tgt``);
- ``optim.lr_batch_scaling: sqrt``: every learning rate × √(total batch)
  (:func:`spcl.stages.builders.scaled_optim`).

Image-level block masking, EMA over parameters only, layer-wise lr decay, the warm-up and linear
decay and sliding inference are the existing switches (``online.masking``,
``online.teacher.ema_buffers``, ``optim.layer_decay``, ``optim.power``, ``evaluate.slide``).

The projection head trains with the student: :class:`DistillStudent` holds both, so that one
DistributedDataParallel wrapper all-reduces both gradients under torchrun; it is checkpointed
as ``distill_head`` and is not part of ``model.pth``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from spcl.base import ConfigError, MissingFileError
from spcl.config_schema import OnlineDistillConfig
from spcl.method.feature_distill import DistillHead, FrozenDINOv2, distill_loss
from spcl.method.losses import upsample_logits
from spcl.method.vfm_augment import STRONG_SOURCE, WEAK_SOURCE, torchvision_augment
from spcl.models.pretrained import resolve_pretrained
from spcl.models.vit import dinov2_encoder
from spcl.models.vit_seg import load_dinov2_weights

if TYPE_CHECKING:
    from spcl.stages.online_step import OnlineParts

__all__ = [
    "DistillStudent",
    "distill_head",
    "distill_terms",
    "frozen_dinov2",
    "source_input",
    "teacher_logits",
]

SOURCE_AUGMENTS = {"weak": WEAK_SOURCE, "strong": STRONG_SOURCE}  # online.source_augment → recipe


def source_input(parts: OnlineParts, images: Tensor) -> Tensor:
    """The student's source batch: VFM-UDA's weak or VFM-UDA++'s strong augmentation, or as is."""
    kind = parts.cfg.source_augment
    if kind == "none":
        return images
    return torchvision_augment(
        images, parts.generator.generator, SOURCE_AUGMENTS[kind], parts.image_mean, parts.image_std
    )


@torch.no_grad()
def teacher_logits(parts: OnlineParts, images: Tensor, align_corners: bool) -> Tensor:
    """The teacher's logits at image size; with ``pseudo.flip_average`` the log of the mean
    softmax of the image and its mirror image (its softmax is that mean)."""
    size = images.shape[-2:]
    logits = upsample_logits(parts.teacher(images).logits, size, align_corners=align_corners)
    if not parts.cfg.pseudo.flip_average:
        return logits
    mirrored = parts.teacher(images.flip(-1)).logits
    mirrored = upsample_logits(mirrored, size, align_corners=align_corners).flip(-1)
    mean = (logits.float().softmax(dim=1) + mirrored.float().softmax(dim=1)) / 2
    return mean.log()


class DistillStudent(nn.Module):
    """The student and its distillation head as one module (one DDP wrapper for both).

    ``forward(x)`` is the segmenter's; ``forward(x, size)`` is the head's projection of the
    segmenter's last feature level, resized to ``size``.
    """

    def __init__(self, segmenter: nn.Module, head: DistillHead) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.head = head

    def forward(self, images: Tensor, size: tuple[int, int] | None = None) -> object:
        if size is None:
            return self.segmenter(images)
        return self.head(self.segmenter.forward_levels(images)[-1], size)


def frozen_dinov2(cfg: OnlineDistillConfig, device: torch.device) -> FrozenDINOv2:
    """The frozen distillation target, from its official weights (a path or URL).

    Raises:
        ConfigError: no weights named (``online.distill.pretrained``).
        MissingFileError: the named file does not exist.
    """
    path = resolve_pretrained(cfg.pretrained)
    if path is None:
        raise ConfigError("online.distill needs online.distill.pretrained (the frozen weights)")
    if not path.is_file():  # before building a 300 M-parameter model for nothing
        raise MissingFileError(f"online.distill.pretrained: DINOv2 checkpoint not found: {path}")
    name = cfg.model.removeprefix("dinov2_")
    encoder = dinov2_encoder(name.removesuffix("_reg"), registers=name.endswith("_reg"))
    load_dinov2_weights(encoder, path)
    return FrozenDINOv2(encoder, cfg.input_size).to(device)


def distill_head(segmenter: nn.Module, frozen: FrozenDINOv2) -> DistillHead:
    """The projection head for ``segmenter``'s last level (it must have ``forward_levels``).

    Raises:
        ConfigError: the model has no feature levels (only the ViT-Adapter models have them).
    """
    if not hasattr(segmenter, "forward_levels") or not hasattr(segmenter, "backbone"):
        raise ConfigError(
            f"online.distill needs a model with feature levels (vfmudapp_vit*14); "
            f"{type(segmenter).__name__} has none"
        )
    return DistillHead(segmenter.backbone.embed_dim, frozen.out_channels)


def distill_terms(
    parts: OnlineParts, src_images: Tensor, tgt_images: Tensor
) -> Iterator[tuple[str, Tensor]]:
    """``fd_src`` and ``fd_tgt`` (those with a weight > 0), one after the other (each is its own
    pass of the student): the distillation loss of the student's (weakly jittered) batch against
    the frozen model's map of the batch as loaded."""
    cfg, frozen = parts.cfg.distill, parts.distill
    assert frozen is not None, "distill_terms needs parts.distill"
    for key, weight, images in (
        ("fd_src", cfg.weight_source, src_images),
        ("fd_tgt", cfg.weight_target, tgt_images),
    ):
        if weight <= 0:
            continue
        target = frozen(images)
        seen = images
        if cfg.student_augment == "weak":
            seen = torchvision_augment(
                images, parts.generator.generator, WEAK_SOURCE, parts.image_mean, parts.image_std
            )
        projected = parts.student(seen, tuple(target.shape[-2:]))
        yield key, distill_loss(projected, target)
