"""The DINOv2 segmenter: VFM-UDA head layout, input fitting, feature blocks, freezing, layer ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spcl.base import ConfigError
from spcl.models.build import build_model
from spcl.models.vit import DINOv2Encoder
from spcl.models.vit_seg import LayerNorm2d, ViTSegmenter

# VFM-UDA's network.upscale.{0,1,3,4,5,6} and network.out for ViT-B (D = 768; docs/recipes.md,
# "VFM-UDA network"): ConvTranspose2d weights are (in, out, k, k)
VFM_UDA_HEAD_VITB = {
    "decode_head.upscale.0.weight": (768, 384, 2, 2),
    "decode_head.upscale.1.weight": (384,),
    "decode_head.upscale.1.bias": (384,),
    "decode_head.upscale.3.weight": (384, 192, 2, 2),
    "decode_head.upscale.4.weight": (192,),
    "decode_head.upscale.4.bias": (192,),
    "decode_head.upscale.5.weight": (192, 192, 3, 3),
    "decode_head.upscale.6.weight": (192,),
    "decode_head.upscale.6.bias": (192,),
    "decode_head.out.weight": (19, 192, 1, 1),
}


def _tiny(**options: object) -> ViTSegmenter:
    torch.manual_seed(0)
    return ViTSegmenter(DINOv2Encoder(8, 4, 2), 3, **options)  # type: ignore[arg-type]


def test_head_has_vfm_uda_layout() -> None:
    with torch.device("meta"):
        model = build_model("dinov2_vitb14", 19)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("decode_")}
    assert head == VFM_UDA_HEAD_VITB
    assert model.feature_channels == 192 and model.head_prefixes == ("decode_head.",)


def test_out_conv_init_std() -> None:
    torch.manual_seed(0)
    model = build_model("dinov2_vits14", 19, width=32)  # D = 192: out conv 19 × 48 weights
    assert model.decode_head.out.weight.std().item() == pytest.approx(0.1, rel=0.1)


def test_layernorm2d_normalises_channels_per_pixel() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    x = torch.randn(2, 4, 3, 5)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, 4, 1, 1)
    expected = expected + norm.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    assert isinstance(norm, torch.nn.LayerNorm)  # the optimiser finds it by type


def test_inputs_are_fitted_to_multiples_of_14() -> None:
    model = _tiny()
    exact = torch.randn(1, 3, 28, 56)
    assert model.fit_to_patches(exact) is exact  # multiples of 14 pass untouched
    assert model.fit_to_patches(torch.randn(1, 3, 33, 65)).shape[-2:] == (28, 56)
    assert model.fit_to_patches(torch.randn(1, 3, 9, 20)).shape[-2:] == (14, 14)  # ≥ one patch
    vfm_uda = _tiny(input_scale=1.1)  # VFM-UDA: 1024 → int(1024 · 1.1) // 14 · 14 = 1120
    assert vfm_uda.fit_to_patches(torch.empty(1, 3, 1024, 1024)).shape[-2:] == (1120, 1120)
    expected = F.interpolate(torch.ones(1, 3, 33, 65), size=(28, 56), mode="bilinear")
    torch.testing.assert_close(model.fit_to_patches(torch.ones(1, 3, 33, 65)), expected)
    out = model(torch.randn(2, 3, 33, 65))
    assert out.logits.shape == (2, 3, 8, 16) and out.features.shape == (2, 2, 8, 16)


def test_several_blocks_are_concatenated_in_order() -> None:
    model = _tiny(feature_blocks=(-3, 3))
    assert model.feature_blocks == (1, 3)
    assert model.decode_head.upscale[0].in_channels == 16  # two 8-channel maps
    x = torch.randn(2, 3, 28, 28)
    maps = model.backbone.forward_maps(x, [1, 3])
    torch.testing.assert_close(model.forward_features(x), model.decode_head(torch.cat(maps, 1)))
    # a map after block 1 equals the final norm of the tokens after two blocks, read directly
    tokens = model.backbone.prepare_tokens(x)
    for block in model.backbone.blocks[:2]:
        tokens = block(tokens)
    direct = model.backbone.norm(tokens)[:, 1:].transpose(1, 2).reshape(2, 8, 2, 2)
    torch.testing.assert_close(maps[0], direct)
    with pytest.raises(ValueError, match="feature_blocks"):
        _tiny(feature_blocks=(4,))
    with pytest.raises(ValueError, match="feature_blocks"):
        _tiny(feature_blocks=(1, -3))  # the same block twice


def test_blocks_after_the_deepest_feature_block_are_frozen() -> None:
    model = _tiny(feature_blocks=(1,))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {n.split(".")[2] for n in frozen if n.startswith("backbone.blocks.")} == {"2", "3"}
    assert "backbone.mask_token" in frozen  # kept for strict loading, never used
    out = model(torch.randn(1, 3, 28, 28))
    out.logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)


def test_frozen_backbone_trains_the_head_only() -> None:
    model = _tiny(freeze_backbone=True)
    backbone, head = model.param_groups()
    assert backbone == [] and len(head) == len(list(model.decode_head.parameters()))
    out = model(torch.randn(1, 3, 28, 28))
    (out.logits.sum() + out.features.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decode_head.parameters())


def test_options_reach_the_constructor_and_unknown_ones_are_named() -> None:
    model = build_model("dinov2_vits14_reg", 3, width=8, options={"feature_blocks": [-2, -1]})
    assert model.feature_blocks == (10, 11) and model.backbone.num_register_tokens == 4
    with pytest.raises(ConfigError, match=r"no option\(s\) \['registers'\]"):
        build_model("dinov2_vits14", 3, width=8, options={"registers": True})
    with pytest.raises(ValueError, match="even width"):
        build_model("dinov2_vits14", 3, width=3)  # D = 18: no quarter channels for the head


def test_layer_ids() -> None:
    model = _tiny()
    assert model.num_layers == 4
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters() if n.startswith("backbone.")}
    assert ids["backbone.blocks.0.attn.qkv.weight"] == 1
    assert ids["backbone.blocks.3.ls2.gamma"] == 4
    for stem in ("cls_token", "pos_embed", "mask_token", "patch_embed.proj.bias", "norm.weight"):
        assert ids[f"backbone.{stem}"] == 0
    assert set(ids.values()) == {0, 1, 2, 3, 4}
    assert model.layer_id("decode_head.out.weight") == 4  # the head: the top, no decay
    with pytest.raises(ValueError, match="encoder parameter"):
        model.layer_id("aux_head.weight")
    with pytest.raises(ValueError, match="no layer id"):
        model.layer_id("backbone.extra.weight")
