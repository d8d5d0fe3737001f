"""Mix Transformer (MiT-B0…B5), the hierarchical encoder of SegFormer (Xie et al., NeurIPS 2021).

Four stages at output strides 4, 8, 16, 32. Each stage is an overlapping patch embedding (a strided
convolution + LayerNorm), ``depth`` pre-norm transformer blocks with *efficient self-attention*
(keys and values from a spatially reduced copy of the tokens) and a *Mix-FFN* (a depthwise 3×3
convolution between the two linear layers, which replaces positional embeddings), and a final
LayerNorm. :meth:`MixVisionTransformer.forward` returns the four maps.

Facts from NVlabs/SegFormer ``mmseg/models/backbones/mix_transformer.py`` (the copy in
lhoyer/DAFormer is the same network): the variant table ``mit_b0``…``mit_b5``, kernels 7/3/3/3
with strides 4/2/2/2 and padding k//2, ``qkv_bias=True``, mlp ratio 4, GELU, drop path linearly
0 → 0.1 over all blocks, dropout and attention dropout 0, LayerNorm eps 1e-6 in the blocks and the
stage norms but the default 1e-5 in the patch embeddings and the attention's reduction norm.
Module names equal the official ones (``patch_embed1.proj``, ``block1.0.attn.kv``,
``block1.0.mlp.dwconv.dwconv``, ``norm1``, …), so the official ImageNet files ``mit_b0.pth`` …
``mit_b5.pth`` load with ``strict=True`` once their ImageNet classifier ``head.*`` is set aside
(see :func:`spcl.models.build.load_mit_weights`). Weight init follows the official
``_init_weights``: Linear weights truncated normal (std 0.02, cut at ±2 as timm's
``trunc_normal_``), biases 0, LayerNorm 1/0, Conv2d normal with std sqrt(2 / fan_out) where
fan_out = k·k·out_channels / groups.

``width`` scales every stage's channels by ``width / 64`` (64 = the published network) at fixed
head counts, like the base width of :mod:`spcl.models.resnet`; it exists for CPU demos and tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_WIDTH",
    "MIT_VARIANTS",
    "DropPath",
    "EfficientSelfAttention",
    "MiTBlock",
    "MiTSpec",
    "MixFFN",
    "MixVisionTransformer",
    "OverlapPatchEmbed",
    "mit_variant_of",
]

DEFAULT_WIDTH = 64  # the published channel widths; other values scale them by width / 64
NUM_STAGES = 4
PATCH_KERNELS = (7, 3, 3, 3)  # hard-coded in MixVisionTransformer.__init__ (patch_size is unused)
PATCH_STRIDES = (4, 2, 2, 2)  # output strides 4, 8, 16, 32
MLP_RATIO = 4  # Mix-FFN hidden width = 4 × channels, every variant
DWCONV_KERNEL = 3  # the Mix-FFN's depthwise convolution
BLOCK_NORM_EPS = 1e-6  # norm_layer=partial(nn.LayerNorm, eps=1e-6): block norm1/norm2, stage normI
DEFAULT_NORM_EPS = 1e-5  # patch-embedding and attention-reduction LayerNorms use the default
DROP_PATH_RATE = 0.1  # stochastic depth, linearly spaced from 0 over all blocks
LINEAR_INIT_STD = 0.02  # trunc_normal_(std=.02); timm cuts at ±2 (absolute), not at ±2 std
LINEAR_INIT_CUT = 2.0


@dataclass(frozen=True)
class MiTSpec:
    """One MiT variant: per-stage channels, depths, attention heads and spatial-reduction ratios."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)

    def scaled(self, width: int) -> MiTSpec:
        """The variant with channels × ``width`` / 64 (same heads, so head dims scale too).

        Raises:
            ValueError: the scaled head dimension would not be a positive whole number.
        """
        head_dim = self.embed_dims[0] // self.num_heads[0]
        if width < 1 or (head_dim * width) % DEFAULT_WIDTH:
            step = DEFAULT_WIDTH // math.gcd(head_dim, DEFAULT_WIDTH)
            raise ValueError(
                f"width {width} does not scale this MiT (head dim {head_dim} × {width}/64 must be "
                f"a whole number): use a positive multiple of {step} (64 = the published network)"
            )
        new_head_dim = head_dim * width // DEFAULT_WIDTH
        dims = tuple(heads * new_head_dim for heads in self.num_heads)
        return MiTSpec(dims, self.depths, self.num_heads, self.sr_ratios)  # type: ignore[arg-type]


# NVlabs/SegFormer mix_transformer.py, classes mit_b0 … mit_b5
MIT_VARIANTS: dict[str, MiTSpec] = {
    "b0": MiTSpec((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": MiTSpec((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": MiTSpec((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": MiTSpec((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": MiTSpec((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": MiTSpec((64, 128, 320, 512), (3, 6, 40, 3)),
}


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch per sample with probability ``p``.

    Kept samples are scaled by 1 / (1 − p), so the expectation is unchanged; identity in eval mode.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _tokens_to_map(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H·W, C) tokens → (B, C, H, W) map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with padding k // 2 (patches overlap), then LayerNorm over channels.

    Shape:
        - Input: (B, C_in, H, W).
        - Output: tokens (B, h·w, C) with h = ⌊(H + 2·(k//2) − k) / s⌋ + 1 (and w alike), h, w.
    """

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=DEFAULT_NORM_EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width  # (B, h·w, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from tokens reduced by ``sr_ratio``.

    With ``sr_ratio`` R > 1 the tokens are reshaped to a map, reduced by a R×R convolution of
    stride R and LayerNorm-ed, so attention costs N·N/R² instead of N². ``kv`` is one Linear
    whose first C output rows are the keys and the next C the values (the official layout).

    Shape:
        - x: (B, N, C) with N = height · width.
        - Output: (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)  # qkv_bias=True in every mit_bX
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=DEFAULT_NORM_EPS)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        source = x
        if self.sr_ratio > 1:
            reduced = self.sr(_tokens_to_map(x, height, width))  # (B, C, H/R, W/R)
            source = self.norm(reduced.flatten(2).transpose(1, 2))  # (B, N', C)
        kv = self.kv(source).view(batch, -1, 2, self.num_heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N', d)
        # softmax(q kᵀ / √d) v, the official computation (attention dropout is 0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _DepthwiseConv(nn.Module):
    """The Mix-FFN's 3×3 depthwise convolution on tokens (official name ``mlp.dwconv.dwconv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, DWCONV_KERNEL, padding=DWCONV_KERNEL // 2, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.dwconv(_tokens_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 (C → 4C) → depthwise 3×3 conv → GELU → fc2 (4C → C); dropout is 0 in every variant.

    Shape:
        - x: (B, N, C); output: (B, N, C).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class MiTBlock(nn.Module):
    """Pre-norm block: x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, MLP_RATIO * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


def _init_weights(module: nn.Module) -> None:
    """The official ``_init_weights`` (see the module docstring)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(
            module.weight, std=LINEAR_INIT_STD, a=-LINEAR_INIT_CUT, b=LINEAR_INIT_CUT
        )
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / (fan_out // module.groups)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MixVisionTransformer(nn.Module):
    """The MiT encoder: four stages of patch embedding, transformer blocks and LayerNorm.

    Args:
        spec: Channels, depths, heads and reduction ratios (see :data:`MIT_VARIANTS`).
        in_channels: Input image channels.
        drop_path_rate: Stochastic depth of the last block (0 for the first, linear between).

    Attributes:
        out_channels: Channels of the four returned maps.

    Shape:
        - Input: (B, 3, H, W).
        - Output: four maps (B, C_i, H_i, W_i) at strides 4, 8, 16, 32 (H_1 = ⌊(H − 1)/4⌋ + 1,
          then H_{i+1} = ⌊(H_i − 1)/2⌋ + 1).
    """

    def __init__(
        self, spec: MiTSpec, in_channels: int = 3, drop_path_rate: float = DROP_PATH_RATE
    ) -> None:
        super().__init__()
        self.spec = spec
        self.out_channels = tuple(spec.embed_dims)
        blocks_total = sum(spec.depths)
        # torch.linspace(0, rate, n) as in the official code, in Python (works on the meta device)
        rates = [drop_path_rate * i / max(blocks_total - 1, 1) for i in range(blocks_total)]
        previous, first = in_channels, 0
        for stage in range(NUM_STAGES):
            dim, depth = spec.embed_dims[stage], spec.depths[stage]
            embed = OverlapPatchEmbed(previous, dim, PATCH_KERNELS[stage], PATCH_STRIDES[stage])
            blocks = nn.ModuleList(
                MiTBlock(dim, spec.num_heads[stage], spec.sr_ratios[stage], rates[first + i])
                for i in range(depth)
            )
            # official names: patch_embed1, block1, norm1, … (1-based)
            setattr(self, f"patch_embed{stage + 1}", embed)
            setattr(self, f"block{stage + 1}", blocks)
            setattr(self, f"norm{stage + 1}", nn.LayerNorm(dim, eps=BLOCK_NORM_EPS))
            previous, first = dim, first + depth
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for stage in range(1, NUM_STAGES + 1):
            tokens, height, width = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                tokens = block(tokens, height, width)
            x = _tokens_to_map(getattr(self, f"norm{stage}")(tokens), height, width)
            outs.append(x)
        return outs


def mit_variant_of(state: Mapping[str, Tensor], prefix: str = "") -> str | None:
    """The published variant (``"b0"``…``"b5"``) whose keys and channels ``state`` has, if any.

    Depths are read from the block indices (``{prefix}block{i}.{j}.``), channels from the patch
    embeddings; ``None`` when they match no row of :data:`MIT_VARIANTS` at width 64.
    """
    depths = []
    for stage in range(1, NUM_STAGES + 1):
        head = f"{prefix}block{stage}."
        indices = {int(k[len(head) :].split(".", 1)[0]) for k in state if k.startswith(head)}
        depths.append(max(indices) + 1 if indices else 0)
    dims = []
    for stage in range(1, NUM_STAGES + 1):
        weight = state.get(f"{prefix}patch_embed{stage}.proj.weight")
        dims.append(int(weight.shape[0]) if isinstance(weight, Tensor) else 0)
    for name, spec in MIT_VARIANTS.items():
        if tuple(depths) == spec.depths and tuple(dims) == spec.embed_dims:
            return name
    return None
