"""DINOv2 Vision Transformers (ViT-S/14, B/14, L/14, g/14; with or without registers).

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision" (2023); registers:
Darcet et al., "Vision Transformers Need Registers" (2024). The modules are written from the
architecture of facebookresearch/dinov2 (``dinov2/models/vision_transformer.py``,
``dinov2/layers/{block,attention,mlp,swiglu_ffn,layer_scale,patch_embed}.py``, hub builders in
``dinov2/hub/backbones.py``) so that :class:`DINOv2Encoder`'s state dict has exactly the keys and
shapes of the official ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` files (``strict=True``):
``cls_token``, ``pos_embed`` (1, 1370, D), ``mask_token``, ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` (ViT-g:
``mlp.w12``/``mlp.w3``, SwiGLU), ``norm``, and ``register_tokens`` for the ``_reg`` models.

Position embeddings are stored for a 37 × 37 grid (518 px at patch 14) and resized bicubically to
any grid (:func:`resize_pos_embed`), with each checkpoint's own rule: a scale factor with the
historical ``+0.1`` offset and no antialiasing for the original models, an output size with
antialiasing for the ``_reg`` models (``hub/backbones.py``). The encoder takes inputs whose sides
are multiples of 14; :class:`spcl.models.vit_seg.ViTSegmenter` resizes other inputs.

``width`` scales every channel count by ``width / 64`` at fixed head counts (all DINOv2 heads are
64 wide, so ``width`` is the head dimension): 64 is the published network, smaller widths are for
CPU tests and demos and cannot load official weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_WIDTH",
    "DINOV2_VARIANTS",
    "PATCH_SIZE",
    "Attention",
    "Block",
    "DINOv2Encoder",
    "DINOv2Variant",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "dinov2_encoder",
    "resize_pos_embed",
    "swiglu_hidden_features",
]

PATCH_SIZE = 14  # every DINOv2 hub model is /14 (hub/backbones.py: patch_size=14)
PRETRAIN_IMG_SIZE = 518  # hub img_size: the stored position grid is 518 / 14 = 37 per side
DEFAULT_WIDTH = 64  # head dimension of every DINOv2 model (embed dim / heads); the published width
MLP_RATIO = 4.0  # FFN hidden = 4 × D (vision_transformer.py vit_small … vit_giant2: mlp_ratio=4)
LN_EPS = 1e-6  # norm_layer = partial(nn.LayerNorm, eps=1e-6) (vision_transformer.py)
LAYERSCALE_INIT = 1.0  # hub init_values=1.0: LayerScale present; trained values come from the file
INIT_STD = 0.02  # trunc_normal_ std of pos_embed and every Linear weight (init_weights_vit_timm)
TOKEN_INIT_STD = 1e-6  # normal std of cls_token and register_tokens (init_weights)
NUM_REGISTERS = 4  # dinov2_vit*14_reg: num_register_tokens=4 (hub/backbones.py)
SWIGLU_ALIGN = 8  # SwiGLUFFNFused rounds its hidden size up to a multiple of 8 (swiglu_ffn.py)
SWIGLU_SHRINK = 2 / 3  # ... after scaling the MLP hidden size by 2/3
ORIGINAL_OFFSET = 0.1  # interpolate_offset of the models without registers (hub default)
POS_EMBED_MODE = "bicubic"  # interpolate_pos_encoding mode
FFN = Literal["mlp", "swiglu"]


@dataclass(frozen=True)
class DINOv2Variant:
    """The published shape of one DINOv2 ViT (``vision_transformer.py`` vit_small … vit_giant2)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: FFN  # "swiglu" = SwiGLUFFNFused (ViT-g only, hub ffn_layer="swiglufused")

    def embed_dim_at(self, width: int) -> int:
        """Embedding dimension at ``width`` (heads × width; the published D at 64)."""
        return self.num_heads * width


DINOV2_VARIANTS: dict[str, DINOv2Variant] = {
    "vits14": DINOv2Variant(384, 12, 6, "mlp"),
    "vitb14": DINOv2Variant(768, 12, 12, "mlp"),
    "vitl14": DINOv2Variant(1024, 24, 16, "mlp"),
    "vitg14": DINOv2Variant(1536, 40, 24, "swiglu"),  # vit_giant2
}


def swiglu_hidden_features(dim: int, mlp_ratio: float = MLP_RATIO) -> int:
    """SwiGLUFFNFused's hidden size: ``(int(4D · 2/3) + 7) // 8 · 8`` (4096 for D = 1536)."""
    return (
        (int(int(dim * mlp_ratio) * SWIGLU_SHRINK) + SWIGLU_ALIGN - 1)
        // SWIGLU_ALIGN
        * SWIGLU_ALIGN
    )


class PatchEmbed(nn.Module):
    """Non-overlapping 14 × 14 patches → tokens: a strided Conv2d with bias, no norm.

    Shape:
        - Input: (B, 3, H, W) with H and W multiples of the patch size.
        - Output: (B, H/14 · W/14, D), row-major over the patch grid.
    """

    def __init__(self, embed_dim: int, patch_size: int = PATCH_SIZE, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"PatchEmbed needs sides that are multiples of {self.patch_size}, got {h}×{w}; "
                f"resize or pad first (ViTSegmenter does)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) → (B, h·w, D)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` Linear(D, 3D) whose rows are [Q; K; V], then ``proj``.

    Shape:
        - Input / output: (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # (B, N, 3D) → (B, N, 3, heads, D/heads) → three (B, heads, N, D/heads)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √(D/heads)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """FFN of ViT-S/B/L: ``fc1`` (D → 4D), GELU, ``fc2`` (4D → D), biases on."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """FFN of ViT-g: ``w12`` (D → 2·hidden) split in halves x1, x2; ``w3(silu(x1) · x2)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel scale ``x · gamma`` of a residual branch (CaiT; DINOv2 ``ls1``/``ls2``)."""

    def __init__(self, dim: int, init_value: float = LAYERSCALE_INIT) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x))``, then ``x + ls2(mlp(norm2 x))``."""

    def __init__(self, dim: int, num_heads: int, ffn: FFN = "mlp") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, int(dim * MLP_RATIO))
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, swiglu_hidden_features(dim))
        else:
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resize_pos_embed(
    patch_pos: Tensor, grid: tuple[int, int], *, offset: float, antialias: bool
) -> Tensor:
    """Resize a square grid of patch position embeddings bicubically (DINOv2's rule).

    With ``offset > 0`` (the models without registers) the call passes
    ``scale_factor = ((h + offset) / M, (w + offset) / M)``, so the output is
    ``floor(M · scale) = (h, w)`` and the sampling positions follow the offset scale (DINOv2's
    "historical kludge"); with ``offset == 0`` (the ``_reg`` models) it passes ``size=(h, w)``.
    Computed in float32, returned in the input's dtype.

    Args:
        patch_pos: (1, M·M, D), the stored patch embeddings without the class token.
        grid: the target patch grid (h, w).
        offset: DINOv2's ``interpolate_offset``.
        antialias: DINOv2's ``interpolate_antialias``.

    Returns:
        (1, h·w, D), row-major over the grid.
    """
    _, n, dim = patch_pos.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embeddings hold {n} patches, not a square grid")
    grid_map = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    if offset:
        scale = ((grid[0] + offset) / side, (grid[1] + offset) / side)
        resized = F.interpolate(
            grid_map, scale_factor=scale, mode=POS_EMBED_MODE, antialias=antialias
        )
    else:
        resized = F.interpolate(grid_map, size=grid, mode=POS_EMBED_MODE, antialias=antialias)
    if tuple(resized.shape[-2:]) != tuple(grid):
        raise ValueError(f"position grid {side}×{side} resized to {resized.shape[-2:]}, not {grid}")
    return resized.permute(0, 2, 3, 1).reshape(1, -1, dim).to(patch_pos.dtype)


class DINOv2Encoder(nn.Module):
    """The DINOv2 ViT trunk (no classification head), parameter names as in the official files.

    Tokens: patch embedding, ``cls_token`` prepended, position embedding (resized to the input's
    grid) added, then the ``register_tokens`` inserted after the class token, *after* the
    position add (``prepare_tokens_with_masks``). ``mask_token`` is kept for strict loading but
    unused here (no token masking), so it does not require gradients.

    Args:
        embed_dim: D.
        depth: Number of blocks.
        num_heads: Attention heads.
        ffn: "mlp" (ViT-S/B/L) or "swiglu" (ViT-g).
        num_register_tokens: 0, or 4 for the ``_reg`` models.
        interpolate_offset: 0.1 for the original models, 0.0 for ``_reg`` ones.
        interpolate_antialias: False for the original models, True for ``_reg`` ones.

    Shape:
        - Input of :meth:`forward_maps`: (B, 3, H, W), H and W multiples of 14.
        - Output: normalised patch-token maps (B, D, H/14, W/14).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        *,
        ffn: FFN = "mlp",
        num_register_tokens: int = 0,
        interpolate_offset: float = ORIGINAL_OFFSET,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.depth, self.patch_size = embed_dim, depth, PATCH_SIZE
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.patch_embed = PatchEmbed(embed_dim)
        num_patches = (PRETRAIN_IMG_SIZE // PATCH_SIZE) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2's random init (``init_weights``); official weights replace it."""
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.normal_(self.cls_token, std=TOKEN_INIT_STD)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=TOKEN_INIT_STD)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings (1, 1 + h·w, D) for a patch grid; the stored ones at 37 × 37."""
        stored = math.isqrt(self.pos_embed.shape[1] - 1)
        if tuple(grid) == (stored, stored):
            return self.pos_embed
        patch_pos = resize_pos_embed(
            self.pos_embed[:, 1:],
            grid,
            offset=self.interpolate_offset,
            antialias=self.interpolate_antialias,
        )
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, 1 + R + h·w, D): class token, registers, patch tokens."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid).to(tokens.dtype)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        return tokens

    def forward_maps(self, x: Tensor, block_ids: Sequence[int]) -> list[Tensor]:
        """Patch tokens after the given blocks (0-based), each through the final ``norm``.

        This is DINOv2's ``get_intermediate_layers(x, n=block_ids, reshape=True, norm=True)``;
        for the last block it is ``x_norm_patchtokens`` as a map. Blocks after the deepest one
        asked for are not run.

        Returns:
            One (B, D, H/14, W/14) map per entry of ``block_ids``, in that order.
        """
        wanted = sorted(set(block_ids))
        if not wanted or wanted[0] < 0 or wanted[-1] >= self.depth:
            raise ValueError(f"block ids must lie in [0, {self.depth - 1}], got {list(block_ids)}")
        b, _, h, w = x.shape
        grid = (h // self.patch_size, w // self.patch_size)
        tokens = self.prepare_tokens(x)
        kept: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks[: wanted[-1] + 1]):
            tokens = block(tokens)
            if index in wanted:
                kept[index] = tokens
        skip = 1 + self.num_register_tokens  # class token and registers are not part of the map
        maps = []
        for index in block_ids:
            patches = self.norm(kept[index])[:, skip:]  # (B, h·w, D)
            maps.append(patches.transpose(1, 2).reshape(b, self.embed_dim, *grid))
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """The last block's normalised patch-token map (B, D, H/14, W/14)."""
        return self.forward_maps(x, [self.depth - 1])[0]


def dinov2_encoder(
    variant: str, *, registers: bool = False, width: int = DEFAULT_WIDTH
) -> DINOv2Encoder:
    """A DINOv2 trunk as the hub builds it (``dinov2_<variant>`` / ``dinov2_<variant>_reg``).

    Args:
        variant: "vits14", "vitb14", "vitl14" or "vitg14".
        registers: The ``_reg`` model: 4 register tokens, size-based antialiased pos-embed
            resizing (offset 0).
        width: Head dimension (64 = published; every channel count scales with it).

    Raises:
        KeyError: Unknown variant (the valid ones are listed).
        ValueError: ``width`` < 1.
    """
    if variant not in DINOV2_VARIANTS:
        raise KeyError(f"unknown DINOv2 variant {variant!r}; valid: {sorted(DINOV2_VARIANTS)}")
    if width < 1:
        raise ValueError(f"width must be a positive head dimension (64 = DINOv2), got {width}")
    spec = DINOV2_VARIANTS[variant]
    return DINOv2Encoder(
        spec.embed_dim_at(width),
        spec.depth,
        spec.num_heads,
        ffn=spec.ffn,
        num_register_tokens=NUM_REGISTERS if registers else 0,
        interpolate_offset=0.0 if registers else ORIGINAL_OFFSET,
        interpolate_antialias=registers,
    )
