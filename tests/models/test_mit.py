"""Tests of the MiT encoder: official key layout, weight files, parameter counts, numerics.

The expected keys and shapes of ``mit_b0.pth`` … ``mit_b5.pth`` are built here from the
architecture facts alone (NVlabs/SegFormer ``mix_transformer.py``: channels, depths, reduction
ratios, mlp ratio 4, kernels 7/3/3/3; names as docs/recipes.md, "MiT checkpoint keys"), never
from the model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from official_layouts import IMAGENET_CLASSES as IMAGENET
from official_layouts import MIT_ARCH as ARCH
from official_layouts import mit_shapes as official_shapes
from spcl.base import CheckpointError
from spcl.models.build import build_model, load_mit_weights
from spcl.models.mit import (
    MIT_VARIANTS,
    DropPath,
    EfficientSelfAttention,
    MixVisionTransformer,
    mit_variant_of,
)

# docs/recipes.md, "MiT parameter counts": computed, encoder only (millions, 2 decimals)
ENCODER_MILLIONS = {"b0": 3.32, "b1": 13.15, "b2": 24.20, "b3": 44.07, "b4": 60.84, "b5": 81.44}
# SegFormer paper, ADE20K (150 classes) totals, as listed on paperswithcode.com for the paper
SEGFORMER_ADE_MILLIONS = {"b0": 3.8, "b4": 64.1, "b5": 84.7}


def official_file(path: Path, variant: str, seed: int = 0, wrap: bool = False) -> dict:
    """Random tensors in the official layout, ImageNet head included, saved with torch.save."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=generator) for k, s in official_shapes(variant).items()}
    c4 = ARCH[variant][0][-1]
    state["head.weight"] = torch.randn(IMAGENET, c4, generator=generator)
    state["head.bias"] = torch.randn(IMAGENET, generator=generator)
    torch.save({"state_dict": state} if wrap else state, path)
    return state


def _meta_encoder(variant: str) -> MixVisionTransformer:
    with torch.device("meta"):
        return MixVisionTransformer(MIT_VARIANTS[variant])


@pytest.mark.parametrize("variant", sorted(ARCH))
def test_state_dict_equals_the_official_layout(variant: str) -> None:
    own = {k: tuple(v.shape) for k, v in _meta_encoder(variant).state_dict().items()}
    assert own == official_shapes(variant)


@pytest.mark.parametrize("variant", sorted(ARCH))
def test_parameter_counts(variant: str) -> None:
    expected = sum(math.prod(s) for s in official_shapes(variant).values())
    encoder = _meta_encoder(variant)
    assert sum(p.numel() for p in encoder.parameters()) == expected
    assert round(expected / 1e6, 2) == ENCODER_MILLIONS[variant]
    if variant == "b5":  # HF docs' 82.0 M = encoder + the 1000-class ImageNet Linear
        assert round((expected + IMAGENET * 512 + IMAGENET) / 1e6, 1) == 82.0
    if variant in SEGFORMER_ADE_MILLIONS:
        with torch.device("meta"):
            model = build_model(f"segformer_mit_{variant}", 150)
        total = sum(p.numel() for p in model.parameters())
        assert round(total / 1e6, 1) == SEGFORMER_ADE_MILLIONS[variant]


def test_official_file_loads_strictly_and_head_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "mit_b0.pth"
    state = official_file(path, "b0")
    for name in ("daformer_mit_b0", "segformer_mit_b0"):
        model = build_model(name, 19, pretrained=path)
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, state[key]), key
    encoder = MixVisionTransformer(MIT_VARIANTS["b0"])
    wrapped = tmp_path / "wrapped.pth"
    official_file(wrapped, "b0", seed=1, wrap=True)  # a {"state_dict": ...} container
    assert sorted(load_mit_weights(encoder, wrapped)) == ["head.bias", "head.weight"]


def test_wrong_variant_missing_and_extra_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "mit_b0.pth"
    state = official_file(path, "b0")
    with pytest.raises(CheckpointError, match=r"mit_b0\.pth.*looks like mit_b0.*patch_embed1"):
        build_model("daformer_mit_b1", 19, pretrained=path)
    del state["block2.1.mlp.fc2.bias"]
    state["block2.1.mlp.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"block2\.1\.mlp\.fc2\.bias.*block2\.1\.mlp\.extra"):
        build_model("daformer_mit_b0", 19, pretrained=path)
    with pytest.raises(ValueError, match=r"width 64 only, got width=8"):
        build_model("daformer_mit_b0", 19, width=8, pretrained=path)
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        build_model("segformer_mit_b0", 19, pretrained=tmp_path / "nope.pth")


def test_variant_is_read_from_keys() -> None:
    for variant in ARCH:
        shapes = official_shapes(variant)
        state = {f"backbone.{k}": torch.empty(s, device="meta") for k, s in shapes.items()}
        assert mit_variant_of(state, "backbone.") == variant
    assert mit_variant_of({"block1.0.norm1.weight": torch.zeros(3)}) is None


def test_stage_sizes_strides_and_layer_norm_eps() -> None:
    encoder = MixVisionTransformer(MIT_VARIANTS["b0"].scaled(8))
    maps = encoder(torch.randn(2, 3, 33, 65))
    # ⌊(33 + 6 − 7)/4⌋ + 1 = 9, ⌊(65 + 6 − 7)/4⌋ + 1 = 17, then ⌊(h + 2 − 3)/2⌋ + 1
    assert [tuple(m.shape) for m in maps] == [
        (2, 4, 9, 17),
        (2, 8, 5, 9),
        (2, 20, 3, 5),
        (2, 32, 2, 3),
    ]
    assert encoder.block1[0].norm1.eps == 1e-6 and encoder.norm4.eps == 1e-6
    assert encoder.patch_embed2.norm.eps == 1e-5 and encoder.block1[0].attn.norm.eps == 1e-5
    assert encoder.patch_embed1.proj.stride == (4, 4) and encoder.patch_embed3.proj.padding == (
        1,
        1,
    )


def test_width_scales_channels_at_fixed_heads() -> None:
    assert MIT_VARIANTS["b1"].scaled(8).embed_dims == (8, 16, 40, 64)
    assert MIT_VARIANTS["b0"].scaled(8).embed_dims == (4, 8, 20, 32)
    assert MIT_VARIANTS["b3"].scaled(64) == MIT_VARIANTS["b3"]
    with pytest.raises(ValueError, match="multiple of 2"):
        MIT_VARIANTS["b0"].scaled(5)


def test_attention_matches_a_per_head_loop() -> None:
    torch.manual_seed(0)
    dim, heads, sr, h, w = 10, 2, 2, 4, 6
    attn = EfficientSelfAttention(dim, heads, sr)
    for p in attn.parameters():  # non-trivial biases and norm affine
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(1, h * w, dim)
    # reduced keys/values: conv R×R stride R on the map, LayerNorm (eps 1e-5) by its formula
    grid = x.transpose(1, 2).reshape(1, dim, h, w)
    reduced = F.conv2d(grid, attn.sr.weight, attn.sr.bias, stride=sr).flatten(2).transpose(1, 2)
    mean = reduced.mean(-1, keepdim=True)
    var = reduced.var(-1, unbiased=False, keepdim=True)
    reduced = (reduced - mean) / torch.sqrt(var + 1e-5) * attn.norm.weight + attn.norm.bias
    q = x @ attn.q.weight.T + attn.q.bias
    k = reduced @ attn.kv.weight[:dim].T + attn.kv.bias[:dim]  # rows [0:C] are the keys
    v = reduced @ attn.kv.weight[dim:].T + attn.kv.bias[dim:]
    d = dim // heads
    outs = []
    for head in range(heads):
        cols = slice(head * d, (head + 1) * d)
        scores = (q[0, :, cols] @ k[0, :, cols].T) / math.sqrt(d)
        outs.append(scores.softmax(-1) @ v[0, :, cols])
    expected = torch.cat(outs, -1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x, h, w)[0], expected, atol=1e-5, rtol=1e-5)


def test_drop_path_rates_and_behaviour() -> None:
    encoder = MixVisionTransformer(MIT_VARIANTS["b2"].scaled(8))
    blocks = [b for s in (1, 2, 3, 4) for b in getattr(encoder, f"block{s}")]
    assert [b.drop_path.p for b in blocks] == pytest.approx([0.1 * i / 15 for i in range(16)])
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    out = drop(torch.ones(4000, 3))
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (out[:, 0] == out[:, 2]).all()  # whole samples are dropped
    assert abs((out[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    x = torch.randn(5, 3)
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        DropPath(1.0)


def test_init_follows_the_official_rules() -> None:
    torch.manual_seed(0)
    encoder = MixVisionTransformer(MIT_VARIANTS["b1"])
    fc1 = encoder.block2[0].mlp.fc1  # 512 × 128 weights
    assert abs(fc1.weight.std().item() - 0.02) < 0.001 and not fc1.bias.any()
    assert fc1.weight.abs().max().item() < 0.02 * 5
    proj = encoder.patch_embed1.proj  # normal(0, sqrt(2 / fan_out)), fan_out = 7·7·64
    assert abs(proj.weight.std().item() / math.sqrt(2 / (49 * 64)) - 1) < 0.05
    dw = encoder.block1[0].mlp.dwconv.dwconv  # fan_out = 3·3·256 / 256 groups
    assert abs(dw.weight.std().item() / math.sqrt(2 / 9) - 1) < 0.05
    assert torch.equal(encoder.norm3.weight, torch.ones(320)) and not encoder.norm3.bias.any()
