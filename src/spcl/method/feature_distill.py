"""VFM-UDA++'s feature distillation: the student's last feature map regressed onto a frozen DINOv2.

VFM-UDA++ (tue-mps/vfm-uda-plusplus: training/uda/uda.py ``get_feature_distance_loss``,
models/distill_feature_head/{dinov2_feature_extractor,distill_feature_head}.py; docs/recipes.md,
section "VFM-UDA++: the training step"):

* the frozen model, ``dinov2_vitl14_reg`` (1024 channels), sees the image resized bilinearly to
  406 × 406 (29 × 29 tokens of 14 px) and gives its final-norm patch tokens as a map
  (:class:`FrozenDINOv2`);
* the student's stride-32 map (the ViT-Adapter's fourth level, D channels) goes through a
  projection head 1×1 conv D → 4D, LayerNorm over channels, GELU, 1×1 conv 4D → 1024 (with
  biases), then bilinearly to the frozen map's size (:class:`DistillHead`);
* the loss per position is ``0.1 · mean_c SmoothL1(s, t) + 0.9 · (1 − cos(s, t))`` (β = 1, the
  cosine over channels), averaged over batch and positions (:func:`distill_loss`).

The head is trained at the decoder's learning rate; the frozen model never is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.models.vit import DINOv2Encoder
from spcl.models.vit_seg import LayerNorm2d

__all__ = [
    "COSINE_WEIGHT",
    "DISTILL_EXPANSION",
    "SMOOTH_L1_WEIGHT",
    "DistillHead",
    "FrozenDINOv2",
    "distill_loss",
]

SMOOTH_L1_WEIGHT = 0.1  # uda.py: smooth_l1_loss(...).mean(1) * 0.1
COSINE_WEIGHT = 0.9  # uda.py: (1 − cosine_similarity) * 0.9
DISTILL_EXPANSION = 4  # distill_feature_head.py: Conv2d(D, 4D) … Conv2d(4D, out)


class DistillHead(nn.Module):
    """The student's projection head: 1×1 D → 4D, LayerNorm2d, GELU, 1×1 4D → ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = in_channels * DISTILL_EXPANSION
        self.expand = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.norm = LayerNorm2d(hidden)
        self.act = nn.GELU()
        self.project = nn.Conv2d(hidden, out_channels, kernel_size=1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, D, h, w) → (B, out_channels, *size), resized bilinearly (align_corners False)."""
        x = self.project(self.act(self.norm(self.expand(features))))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FrozenDINOv2(nn.Module):
    """A frozen DINOv2 trunk run at a fixed square input size: the distillation's target."""

    def __init__(self, encoder: DINOv2Encoder, input_size: int) -> None:
        super().__init__()
        if input_size < encoder.patch_size:
            raise ValueError(f"input_size must hold one {encoder.patch_size}-px patch")
        self.encoder = encoder.eval().requires_grad_(False)
        self.input_size = input_size

    @property
    def out_channels(self) -> int:
        return self.encoder.embed_dim

    def train(self, mode: bool = True) -> FrozenDINOv2:
        """Always in eval mode (no dropout, no DropPath), whatever its owner does."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) → the final-norm patch map (B, C, S/14, S/14)."""
        size = (self.input_size, self.input_size)
        resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return self.encoder(resized)


def distill_loss(student: Tensor, frozen: Tensor) -> Tensor:
    """``mean(0.1 · mean_c SmoothL1(student, frozen) + 0.9 · (1 − cos_c(student, frozen)))``.

    Shape:
        student, frozen: (B, C, h, w) of one size → a scalar.
    """
    if student.shape != frozen.shape:
        raise ValueError(
            f"student {tuple(student.shape)} and frozen {tuple(frozen.shape)} maps differ"
        )
    frozen = frozen.to(student.dtype)
    smooth = F.smooth_l1_loss(student, frozen, reduction="none").mean(dim=1)
    cosine = 1.0 - F.cosine_similarity(student, frozen, dim=1)
    return (SMOOTH_L1_WEIGHT * smooth + COSINE_WEIGHT * cosine).mean()
