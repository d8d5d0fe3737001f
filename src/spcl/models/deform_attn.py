"""Multi-scale deformable attention in plain PyTorch (``grid_sample``), no compiled operator.

Zhu et al., "Deformable DETR" (ICLR 2021), Sec. 4.1: each query attends to ``n_points`` sampled
locations per head and per feature level, placed at its reference point plus offsets predicted
from the query, and sums the bilinearly sampled values with softmax weights (over levels ×
points) also predicted from the query. ViT-Adapter (Chen et al., ICLR 2023) uses it in both
directions between the ViT tokens and its convolutional pyramid (:mod:`spcl.models.vit_adapter`).

The reference implementations ship the sampling as a compiled CUDA/C++ operator
(``MultiScaleDeformableAttention``), the usual installation failure of ViT-Adapter code. Here the
sampling is :func:`torch.nn.functional.grid_sample` per level (bilinear, zeros outside the map,
``align_corners=False``: a location ``u ∈ [0, 1]`` on a side of ``n`` pixels is the pixel
coordinate ``u·n − 0.5``), which is what the operator computes: the value at a location is the
bilinear mix of its four neighbouring pixels, neighbours outside the map counting as zero.
tests/models/test_deform_attn.py checks values and gradients against a per-point loop.

:class:`MSDeformAttn` keeps the parameter names of the reference module (``sampling_offsets``,
``attention_weights``, ``value_proj``, ``output_proj``) and its initialisation, so that weights
trained with the compiled operator load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformAttn", "level_starts", "ms_deform_attn_sample"]

Shapes = Sequence[tuple[int, int]]  # (height, width) of each level, in the order they are stacked


def level_starts(shapes: Shapes) -> list[int]:
    """Index of each level's first pixel in the flattened (Σ H·W) sequence."""
    starts, total = [], 0
    for height, width in shapes:
        starts.append(total)
        total += height * width
    return starts


def ms_deform_attn_sample(
    value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor
) -> Tensor:
    """Weighted sum of bilinear samples of multi-level values at the given locations.

    Levels are sampled one at a time and accumulated, so the samples of all levels are never held
    together (the reference stacks them; the sum is the same). The sampling runs in at least
    float32 with autocast off, as the reference casts its inputs (``custom_fwd(cast_inputs=
    torch.float32)``): in bfloat16 a location on a 140-pixel map would be off by up to half a
    pixel. The result has ``value``'s dtype.

    Args:
        value: (B, Σ H_l·W_l, heads, C) per-head values, levels flattened row-major and stacked.
        shapes: (H_l, W_l) of each level.
        locations: (B, Q, heads, L, P, 2) sampling locations (x, y), normalised so that (0, 0)
            is the top-left corner of a map and (1, 1) its bottom-right; outside [0, 1] samples
            zeros (partly, near the border).
        weights: (B, Q, heads, L, P) attention weights.

    Returns:
        (B, Q, heads·C), heads concatenated on channels.
    """
    length, levels = value.shape[1], locations.shape[3]
    if len(shapes) != levels or sum(h * w for h, w in shapes) != length:
        raise ValueError(
            f"value holds {length} positions but the level shapes {list(shapes)} give "
            f"{sum(h * w for h, w in shapes)} (locations have {levels} levels)"
        )
    out_dtype = value.dtype
    dtype = torch.promote_types(value.dtype, torch.float32)  # float64 stays, half types → float32
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = _sample(value.to(dtype), shapes, locations.to(dtype), weights.to(dtype))
    return out.to(out_dtype)


def _sample(value: Tensor, shapes: Shapes, locations: Tensor, weights: Tensor) -> Tensor:
    """:func:`ms_deform_attn_sample` in one dtype."""
    batch, _, heads, channels = value.shape
    _, queries, _, _, points, _ = locations.shape
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1] frame
    out = value.new_zeros(batch * heads, channels, queries)
    for level, ((height, width), start) in enumerate(
        zip(shapes, level_starts(shapes), strict=True)
    ):
        # (B, HW, heads, C) → (B·heads, C, H, W)
        level_value = value[:, start : start + height * width].permute(0, 2, 3, 1)
        level_value = level_value.reshape(batch * heads, channels, height, width)
        # (B, Q, heads, P, 2) → (B·heads, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(
            level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B·heads, C, Q, P)
        level_weights = (
            weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        )
        out = out + (sampled * level_weights).sum(-1)
    # (B·heads, C, Q) → (B, Q, heads·C)
    return out.reshape(batch, heads * channels, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: queries sample ``n_points`` per head and level.

    Args:
        d_model: Channels of queries and of the attended input.
        n_levels: Levels of the attended input.
        n_heads: Attention heads.
        n_points: Sampling points per head and level (ViT-Adapter: 4).
        ratio: Value channels / ``d_model`` (ViT-Adapter's ``deform_ratio`` 0.5: values are
            projected to half the width before sampling, and back by ``output_proj``).

    Shape:
        - query: (B, Q, d_model); reference: (B or 1, Q, 2), (x, y) in [0, 1], the same point
          on every level; feat: (B, Σ H_l·W_l, d_model); output: (B, Q, d_model).
    """

    def __init__(
        self, d_model: int, n_levels: int, n_heads: int, n_points: int, ratio: float = 1.0
    ) -> None:
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim % n_heads:
            raise ValueError(
                f"value channels int({d_model} × {ratio}) = {value_dim} do not split into "
                f"{n_heads} heads"
            )
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation (the reference ``_reset_parameters``).

        Offsets start as a fixed pattern: head h looks along the direction at angle 2πh/heads
        (scaled so its larger component is 1 pixel), its k-th point k + 1 pixels out, on every
        level; the attention weights start uniform (zero logits); the projections Xavier-uniform
        with zero bias.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        pattern = directions[:, None, None, :] * steps[None, None, :, None]  # (heads, 1, P, 2)
        pattern = pattern.expand(self.n_heads, self.n_levels, self.n_points, 2)
        self.sampling_offsets.bias.copy_(pattern.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference: Tensor, feat: Tensor, shapes: Shapes) -> Tensor:
        batch, queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat).reshape(batch, feat.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).reshape(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).reshape(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).reshape(batch, queries, heads, levels, points)
        # offsets are in pixels of each level: divide by (W_l, H_l) to normalise them, in at
        # least float32 (under autocast the offsets come in bfloat16)
        dtype = torch.promote_types(offsets.dtype, torch.float32)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=dtype, device=offsets.device)
        offsets = offsets.to(dtype) / normaliser[:, None, :]
        locations = reference.to(dtype)[:, :, None, None, None, :] + offsets
        return self.output_proj(ms_deform_attn_sample(value, shapes, locations, weights))
