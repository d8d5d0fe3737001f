"""ViT-Adapter around a DINOv2 ViT: a convolutional pyramid that talks to the ViT tokens.

Chen et al., "Vision Transformer Adapter for Dense Predictions" (ICLR 2023), as VFM-UDA++ builds
it around DINOv2 (tue-mps/vfm-uda-plusplus ``models/vit_adapter/dinov2_vit_adapter.py`` and
``adapter_modules.py``; docs/recipes.md, "VFM-UDA++: the network"):

- a **spatial prior module** (:class:`SpatialPriorModule`): a ResNet-like conv stem on the image
  giving maps at strides 4, 8, 16 and 32, each projected to the ViT width D by a 1×1 conv;
- the ViT blocks run in four equal groups; before each group an **injector** (deformable
  attention from the ViT tokens into the stride-8/16/32 maps, 3 levels) adds pyramid detail to
  the tokens, scaled by a per-channel ``gamma`` that starts at 0, so the untrained adapter leaves
  the ViT's tokens unchanged; after each group an **extractor** (deformable attention from the
  pyramid into the tokens, 1 level, then a conv-FFN: Linear D → D/4, depthwise 3×3 per level,
  GELU, Linear back) updates the pyramid; the last group has two extra extractors;
- the four **output levels**: the stride-8 map upsampled by a ×2 transposed conv and added to the
  stride-4 map, each level plus the matching ViT group's tokens resized bilinearly, then a
  BatchNorm per level (momentum 0.01): D channels at strides 4, 8, 16 and 32.

Settings are the authors': 4 sampling points, ``cffn_ratio`` 0.25, ``deform_ratio`` 0.5 (values
at half width), D/64 deformable heads (the ViT's head count), a 64-channel stem, LayerNorm eps
1e-5 in the injector and extractor; the ViT groups are the blocks ``[k·n/4, (k+1)·n/4)`` (ViT-S/B:
0-2, 3-5, 6-8, 9-11; ViT-L: 0-5, 6-11, 12-17, 18-23). The sampling is plain PyTorch
(:mod:`spcl.models.deform_attn`), where the authors need a compiled operator.

Module and parameter names follow the reference, so the adapter's state dict maps one to one onto
the ``encoder.{level_embed, spm, interactions, up, norm1…norm4}`` entries of their checkpoints
(:mod:`spcl.models.vfm_checkpoints`). The ViT itself stays spcl's
:class:`~spcl.models.vit.DINOv2Encoder` (official DINOv2 files load into it unchanged); the
adapter reads its patch embedding, position embedding and blocks but not its final ``norm``.

Sides of the input must be multiples of 224 (= lcm of the patch 14 and the stem's stride 32), so
that every level has exactly half the side of the one before;
:class:`~spcl.models.vfmudapp_seg.AdapterSegmenter` resizes its input so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spcl.models.deform_attn import MSDeformAttn, Shapes
from spcl.models.vit import DINOv2Encoder

__all__ = [
    "ADAPTER_SIDE",
    "ConvFFN",
    "Extractor",
    "Injector",
    "InteractionBlock",
    "SpatialPriorModule",
    "ViTAdapter",
    "interaction_groups",
]

ADAPTER_SIDE = 224  # input sides must be multiples of lcm(patch 14, stem stride 32)
N_POINTS = 4  # sampling points per head and level (dinov2_vit_adapter.py: n_points=4)
CFFN_RATIO = 0.25  # conv-FFN hidden width / D (cffn_ratio=0.25)
DEFORM_RATIO = 0.5  # deformable-attention value width / D (deform_ratio=0.5)
STEM_CHANNELS = 64  # conv_inplane=64 at width 64 (scaled with the ViT's width)
INJECTOR_INIT = 0.0  # init_values=0.0: the injectors' gamma starts at zero
NUM_GROUPS = 4  # interaction_indexes_split = 4: four ViT block groups
EXTRA_EXTRACTORS = 2  # use_extra_extractor: two more extractors after the last group
LEVELS = 3  # the injector attends to the stride-8, 16 and 32 maps
BN_MOMENTUM = 0.01  # SyncBatchNorm(momentum=0.01) in the stem and the output norms
INIT_STD = 0.02  # trunc_normal_ std of every Linear weight (_init_weights)


def interaction_groups(depth: int) -> list[tuple[int, int]]:
    """The authors' interaction indexes: four equal groups of blocks, (first, last) inclusive."""
    size = depth // NUM_GROUPS
    if size < 1:
        raise ValueError(f"ViT-Adapter needs at least {NUM_GROUPS} blocks, got {depth}")
    return [(k * size, (k + 1) * size - 1 if k < NUM_GROUPS - 1 else depth - 1) for k in range(4)]


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """Conv stem → maps at strides 4, 8, 16, 32, each projected to D by a 1×1 conv (``fc1…4``).

    Module indices are the reference's (``stem.{0,1,3,4,6,7}``, ``conv2.{0,1}`` …).

    Shape:
        - Input: (B, 3, H, W); output: four maps (B, D, H/s, W/s) for s = 4, 8, 16, 32.
    """

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, channels, 2),
            *_conv_bn_relu(channels, channels, 1),
            *_conv_bn_relu(channels, channels, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(channels, 2 * channels, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * channels, 4 * channels, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * channels, 4 * channels, 2))
        self.fc1 = nn.Conv2d(channels, embed_dim, kernel_size=1)
        self.fc2 = nn.Conv2d(2 * channels, embed_dim, kernel_size=1)
        self.fc3 = nn.Conv2d(4 * channels, embed_dim, kernel_size=1)
        self.fc4 = nn.Conv2d(4 * channels, embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


def _flatten(maps: Sequence[Tensor]) -> Tensor:
    """Maps (B, C, H_l, W_l) → one sequence (B, Σ H_l·W_l, C)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def _unflatten(seq: Tensor, shapes: Shapes) -> list[Tensor]:
    """Inverse of :func:`_flatten`."""
    sizes = [h * w for h, w in shapes]
    return [
        part.transpose(1, 2).reshape(seq.shape[0], seq.shape[2], h, w)
        for part, (h, w) in zip(seq.split(sizes, dim=1), shapes, strict=True)
    ]


def reference_points(shapes: Shapes, device: torch.device) -> Tensor:
    """Pixel centres of each level, normalised to [0, 1] as (x, y): (1, Σ H_l·W_l, 2)."""
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
    return torch.cat(points)[None]


class DWConv(nn.Module):
    """Depthwise 3×3 conv applied to each pyramid level of a flattened sequence separately."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        return _flatten([self.dwconv(m) for m in _unflatten(x, shapes)])


class ConvFFN(nn.Module):
    """``fc2(GELU(dwconv(fc1 x)))``: the extractor's FFN, D → D·cffn_ratio → D."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, shapes: Shapes) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Injector(nn.Module):
    """ViT tokens ← pyramid: ``x + gamma · attn(norm x, norm c)`` (gamma starts at 0)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.feat_norm = nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, LEVELS, heads, N_POINTS, ratio=DEFORM_RATIO)
        self.gamma = nn.Parameter(torch.full((dim,), INJECTOR_INIT))

    def forward(self, x: Tensor, reference: Tensor, c: Tensor, c_shapes: Shapes) -> Tensor:
        attended = self.attn(self.query_norm(x), reference, self.feat_norm(c), c_shapes)
        return x + self.gamma * attended


class Extractor(nn.Module):
    """Pyramid ← ViT tokens: ``c + attn(norm c, norm x)``, then ``c + ConvFFN(norm c)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.feat_norm = nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 1, heads, N_POINTS, ratio=DEFORM_RATIO)
        self.ffn = ConvFFN(dim, int(dim * CFFN_RATIO))
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(
        self, c: Tensor, reference: Tensor, x: Tensor, grid: tuple[int, int], c_shapes: Shapes
    ) -> Tensor:
        c = c + self.attn(self.query_norm(c), reference, self.feat_norm(x), [grid])
        return c + self.ffn(self.ffn_norm(c), c_shapes)


class InteractionBlock(nn.Module):
    """Injector, a group of ViT blocks, extractor (and, last, two extra extractors)."""

    def __init__(self, dim: int, heads: int, *, extra_extractors: bool) -> None:
        super().__init__()
        self.injector = Injector(dim, heads)
        self.extractor = Extractor(dim, heads)
        self.extra_extractors = (
            nn.ModuleList(Extractor(dim, heads) for _ in range(EXTRA_EXTRACTORS))
            if extra_extractors
            else None
        )

    def forward(
        self,
        x: Tensor,
        prefix: Tensor,
        c: Tensor,
        blocks: Sequence[nn.Module],
        geometry: _Geometry,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(patch tokens, class/register tokens, pyramid sequence) after this group."""
        x = self.injector(x, geometry.token_points, c, geometry.c_shapes)
        tokens = torch.cat([prefix, x], dim=1)
        for block in blocks:
            tokens = block(tokens)
        prefix, x = tokens[:, : prefix.shape[1]], tokens[:, prefix.shape[1] :]
        for extractor in [self.extractor, *(self.extra_extractors or ())]:
            c = extractor(c, geometry.c_points, x, geometry.grid, geometry.c_shapes)
        return x, prefix, c


class _Geometry:
    """Sizes and reference points of one forward pass (they depend on the input size only)."""

    def __init__(self, grid: tuple[int, int], c_shapes: Shapes, device: torch.device) -> None:
        self.grid = grid
        self.c_shapes = list(c_shapes)
        self.token_points = reference_points([grid], device)  # injector queries: ViT tokens
        self.c_points = reference_points(c_shapes, device)  # extractor queries: the pyramid


class ViTAdapter(nn.Module):
    """The adapter's own modules, run around a :class:`~spcl.models.vit.DINOv2Encoder`.

    Args:
        embed_dim: D of the ViT.
        heads: Deformable-attention heads (the ViT's: D/64 at the published width).
        depth: The ViT's number of blocks (split into four groups).
        stem_channels: Channels of the stem's first maps (64 published).

    Shape:
        - :meth:`forward`: image (B, 3, H, W), sides multiples of 224, and the ViT → four maps
          (B, D, H/s, W/s), s = 4, 8, 16, 32.
    """

    def __init__(self, embed_dim: int, heads: int, depth: int, stem_channels: int) -> None:
        super().__init__()
        self.groups = interaction_groups(depth)
        self.level_embed = nn.Parameter(torch.zeros(LEVELS, embed_dim))
        self.spm = SpatialPriorModule(stem_channels, embed_dim)
        self.interactions = nn.ModuleList(
            InteractionBlock(embed_dim, heads, extra_extractors=k == len(self.groups) - 1)
            for k in range(len(self.groups))
        )
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2)
        self.norm1 = nn.BatchNorm2d(embed_dim, momentum=BN_MOMENTUM)
        self.norm2 = nn.BatchNorm2d(embed_dim, momentum=BN_MOMENTUM)
        self.norm3 = nn.BatchNorm2d(embed_dim, momentum=BN_MOMENTUM)
        self.norm4 = nn.BatchNorm2d(embed_dim, momentum=BN_MOMENTUM)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The authors' initialisation (``_init_weights``, then the deformable attentions').

        Linear: truncated normal (std 0.02), zero bias; norms: weight 1, bias 0; convs and the
        transposed conv: normal with std √(2 / (k²·out_channels/groups)), zero bias; each
        :class:`~spcl.models.deform_attn.MSDeformAttn` its own init; ``level_embed`` N(0, 1).
        """
        for module in [self.spm, self.interactions, self.up]:
            module.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, image: Tensor, vit: DINOv2Encoder) -> list[Tensor]:
        b, _, h, w = image.shape
        if h % ADAPTER_SIDE or w % ADAPTER_SIDE:
            raise ValueError(f"ViT-Adapter needs sides that are multiples of 224, got {h}×{w}")
        c1, *pyramid = self.spm(image)
        shapes = [(m.shape[-2], m.shape[-1]) for m in pyramid]
        geometry = _Geometry((h // vit.patch_size, w // vit.patch_size), shapes, image.device)
        c = _flatten([m + e[:, None, None] for m, e in zip(pyramid, self.level_embed, strict=True)])
        tokens = vit.prepare_tokens(image)  # class token (+ registers), position embedding added
        skip = 1 + vit.num_register_tokens
        prefix, x = tokens[:, :skip], tokens[:, skip:]
        token_maps = []
        for (first, last), interaction in zip(self.groups, self.interactions, strict=True):
            blocks = vit.blocks[first : last + 1]
            x, prefix, c = interaction(x, prefix, c, blocks, geometry)
            token_maps.append(x.transpose(1, 2).reshape(b, -1, *geometry.grid))
        c2, c3, c4 = _unflatten(c, shapes)
        levels = [self.up(c2) + c1, c2, c3, c4]
        norms = [self.norm1, self.norm2, self.norm3, self.norm4]
        return [
            norm(level + F.interpolate(t, size=level.shape[-2:], mode="bilinear"))
            for norm, level, t in zip(norms, levels, token_maps, strict=True)
        ]


def _init_weights(module: nn.Module) -> None:
    """One module's init by the authors' ``_init_weights`` (:meth:`ViTAdapter.reset_parameters`)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        module.weight.normal_(0.0, math.sqrt(2.0 / (fan_out // module.groups)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
