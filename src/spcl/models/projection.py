"""SePiCo's projection head of DeepLab-v2: features mapped to a unit-norm contrast embedding.

SePiCo (Xie et al., TPAMI 2023; BIT-DA/SePiCo ``mmseg/models/decode_heads/proj_head.py``,
``configs/_base_/models/*_proj_*.py``; docs/recipes.md, "SePiCo projection head") contrasts pixels
with class prototypes in a learnt space rather than on the segmenter's features: two 1×1
convolutions with BatchNorm and ReLU (for DeepLab-v2 ResNet-101: 2048 → 2048 → 512), then L2
normalisation over channels. The head is trained by the contrastive loss only
(``DeepLabV2(projection_dim=...)``); the MiT models have SePiCo's multi-level variant in
:mod:`spcl.models.segformer_heads`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PROJECTION_DIM", "ProjectionHead"]

PROJECTION_DIM = 512  # SePiCo `channels=512` (experiments.py)


class ProjectionHead(nn.Module):
    """1×1 conv + BN + ReLU twice, then L2 normalisation over channels.

    Args:
        in_channels: feature channels C.
        out_channels: embedding size (SePiCo: 512).
        hidden_channels: width of the first conv (SePiCo's DeepLab-v2 head: C).

    Shape:
        - Input: (B, C, h, w).
        - Output: (B, out_channels, h, w), unit norm over channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = PROJECTION_DIM,
        hidden_channels: int | None = None,
    ) -> None:
        super().__init__()
        hidden = hidden_channels or in_channels
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.layers(features), dim=1)
