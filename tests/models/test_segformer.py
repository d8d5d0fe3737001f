"""Tests of the DAFormer / SegFormer decoders, SePiCo's projection head and SegFormerSegmenter.

Expected keys and shapes come from the mmseg module definitions (docs/recipes.md, "DAFormer head"
and "SegFormer head": DAFormerHead with ConvModule ``conv``/``bn``, SegFormerHead of DAFormer's
copy), written out here by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spcl.models.build import build_model
from spcl.models.deeplab_v2 import DeepLabV2
from spcl.models.segformer import SegFormerSegmenter, daformer_mit
from spcl.models.segformer_heads import (
    DAFormerHead,
    DepthwiseDilatedConv2d,
    ProjectionHead,
    SegFormerHead,
)

B5_DIMS = (64, 128, 320, 512)
BN = ("weight", "bias", "running_mean", "running_var")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.bn.{name}": (channels,) for name in BN}
    shapes[f"{prefix}.bn.num_batches_tracked"] = ()
    return shapes


def daformer_shapes(fusion: str, classes: int = 19) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(B5_DIMS):
        shapes[f"embed_layers.{i}.proj.weight"], shapes[f"embed_layers.{i}.proj.bias"] = (
            (256, c),
            (256,),
        )
    if fusion == "conv1":
        shapes["fuse_layer.conv.weight"] = (256, 1024, 1, 1)
        shapes |= _bn("fuse_layer", 256)
    else:
        shapes["fuse_layer.aspp_modules.0.conv.weight"] = (256, 1024, 1, 1)
        shapes |= _bn("fuse_layer.aspp_modules.0", 256)
        for k in (1, 2, 3):
            m = f"fuse_layer.aspp_modules.{k}"
            if fusion == "sepaspp":
                shapes[f"{m}.depthwise_conv.conv.weight"] = (1024, 1, 3, 3)
                shapes |= _bn(f"{m}.depthwise_conv", 1024)
                shapes[f"{m}.pointwise_conv.conv.weight"] = (256, 1024, 1, 1)
                shapes |= _bn(f"{m}.pointwise_conv", 256)
            else:
                shapes[f"{m}.conv.weight"] = (256, 1024, 3, 3)
                shapes |= _bn(m, 256)
        shapes["fuse_layer.bottleneck.conv.weight"] = (256, 1024, 3, 3)
        shapes |= _bn("fuse_layer.bottleneck", 256)
    shapes["conv_seg.weight"], shapes["conv_seg.bias"] = (classes, 256, 1, 1), (classes,)
    return shapes


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("fusion", ["sepaspp", "aspp", "conv1"])
def test_daformer_head_has_the_mmseg_layout(fusion: str) -> None:
    with torch.device("meta"):
        head = DAFormerHead(B5_DIMS, 19, fusion=fusion)
    assert _shapes(head) == daformer_shapes(fusion)


def test_sepaspp_dilations_and_parameter_count() -> None:
    head = DAFormerHead(B5_DIMS, 19)
    branches = head.fuse_layer.aspp_modules
    assert branches[0].conv.kernel_size == (1, 1)
    for branch, rate in zip(branches[1:], (6, 12, 18), strict=True):
        conv = branch.depthwise_conv.conv
        assert (conv.dilation, conv.padding, conv.groups) == ((rate, rate), (rate, rate), 1024)
    # embeddings + 1×1 branch + 3 separable branches + 3×3 bottleneck + classifier, by hand
    embed = 256 * sum(B5_DIMS) + 4 * 256
    branch1 = 256 * 1024 + 2 * 256
    separable = 1024 * 9 + 2 * 1024 + 256 * 1024 + 2 * 256
    bottleneck = 256 * 1024 * 9 + 2 * 256
    expected = embed + branch1 + 3 * separable + bottleneck + 19 * 256 + 19
    assert sum(p.numel() for p in head.parameters()) == expected
    assert round(expected / 1e6, 2) == 3.71  # docs/recipes.md, "DAFormer head": ≈ 3.71 M


def test_segformer_head_layout_and_fusion_order() -> None:
    with torch.device("meta"):
        head = SegFormerHead(B5_DIMS, 19, 768)
    expected = {f"linear_c.{i}.proj.weight": (768, c) for i, c in enumerate(B5_DIMS)}
    expected |= {f"linear_c.{i}.proj.bias": (768,) for i in range(4)}
    expected |= {"linear_fuse.conv.weight": (768, 3072, 1, 1), **_bn("linear_fuse", 768)}
    expected |= {"linear_pred.weight": (19, 768, 1, 1), "linear_pred.bias": (19,)}
    assert _shapes(head) == expected
    # fuse = ReLU(BN(W · [c1, c2, c3, c4])), each level embedded then upsampled (bilinear)
    torch.manual_seed(0)
    small = SegFormerHead((2, 3, 4, 5), 3, 6).eval()
    feats = [torch.randn(1, c, s, s) for c, s in zip((2, 3, 4, 5), (8, 4, 2, 1), strict=True)]
    levels = []
    for i, f in enumerate(feats):
        proj = small.linear_c[str(i)].proj
        embedded = torch.einsum("bchw,oc->bohw", f, proj.weight) + proj.bias.view(1, -1, 1, 1)
        levels.append(F.interpolate(embedded, (8, 8), mode="bilinear", align_corners=False))
    bn = small.linear_fuse.bn
    fused = F.conv2d(torch.cat(levels, 1), small.linear_fuse.conv.weight)
    fused = F.batch_norm(fused, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    torch.testing.assert_close(small.fuse(feats), fused.relu())


@pytest.mark.parametrize("dilation", [1, 2, 6])
def test_depthwise_dilated_conv_matches_conv2d(dilation: int) -> None:
    torch.manual_seed(dilation)
    conv = DepthwiseDilatedConv2d(5, 3, dilation).double()
    x = torch.randn(2, 5, 7, 11, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    grad_out = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, conv.weight), grad_out)
    weight = conv.weight.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ref = F.conv2d(x_ref, weight, padding=dilation, dilation=dilation, groups=5)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x_ref, weight), grad_out)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref)


def test_projection_head_is_unit_norm_at_stride_four() -> None:
    torch.manual_seed(0)
    head = ProjectionHead((4, 8, 20, 32), 12)
    assert head.convs[0].conv.weight.shape == (16, 64, 1, 1)  # mid = 64 channels / 4 levels
    assert head.convs[1].conv.weight.shape == (12, 16, 1, 1)
    feats = [torch.randn(2, c, 16 // 2**i, 24 // 2**i) for i, c in enumerate((4, 8, 20, 32))]
    out = head(feats)
    assert out.shape == (2, 12, 16, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 16, 24))
    assert (out >= 0).all()  # ReLU before the normalisation, as SePiCo


def test_segmenter_outputs_features_and_head_split() -> None:
    torch.manual_seed(0)
    model = build_model("daformer_mit_b0", 4, width=8).eval()
    x = torch.randn(2, 3, 33, 65)
    out = model(x)
    assert out.logits.shape == (2, 4, 9, 17) and out.features.shape == (2, 32, 9, 17)
    assert model.feature_channels == 32 and model.num_classes == 4
    torch.testing.assert_close(out.features, model.forward_features(x))
    torch.testing.assert_close(out.logits, model.forward_head(out.features))


def test_projection_features_do_not_reach_the_decoder() -> None:
    torch.manual_seed(0)
    model = daformer_mit("b0", 4, width=8, projection_dim=16).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 16, 8, 8) and model.feature_channels == 16
    # unit norm (a pixel whose 16 channels are all cut by the ReLU would stay 0, as in SePiCo)
    torch.testing.assert_close(out.features.norm(dim=1), torch.ones(2, 8, 8))
    out.features.sum().backward()
    assert all(p.grad is None for p in model.decode_head.parameters())
    assert all(p.grad is not None for p in model.projection.parameters())
    assert model.backbone.patch_embed1.proj.weight.grad is not None


@pytest.mark.parametrize(
    "model",
    [
        daformer_mit("b0", 3, width=8, projection_dim=4),
        build_model("segformer_mit_b1", 3, width=8),
        build_model("deeplabv2_resnet18", 3, width=8),
    ],
    ids=["daformer_proj", "segformer", "deeplab"],
)
def test_param_groups_match_head_prefixes(model: torch.nn.Module) -> None:
    backbone, head = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    head_names = {names[id(p)] for p in head}
    assert head_names == {n for n in names.values() if n.startswith(model.head_prefixes)}
    assert {names[id(p)] for p in backbone} == {
        n for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad
    }
    assert not head_names & {names[id(p)] for p in backbone}


def test_decoder_widths_and_options() -> None:
    with torch.device("meta"):
        assert build_model("segformer_mit_b1", 19).decode_head.channels == 256
        assert build_model("segformer_mit_b2", 19).decode_head.channels == 768
        assert build_model("segformer_mit_b2", 19, width=32).decode_head.channels == 384
        assert build_model("daformer_mit_b5", 19, width=16).decode_head.channels == 64
        opts = {"fusion": "conv1", "decoder_channels": 48, "dropout": 0.0}
        model = build_model("daformer_mit_b5", 19, options=opts)
    assert model.decode_head.fusion == "conv1" and model.feature_channels == 48
    assert model.decode_head.dropout.p == 0.0 and isinstance(model, SegFormerSegmenter)
    with pytest.raises(ValueError, match=r"no option\(s\) \['fusoin'\].*'fusion'"):
        build_model("daformer_mit_b0", 19, options={"fusoin": "aspp"})
    with pytest.raises(ValueError, match="unknown DAFormer fusion 'sep'"):
        build_model("daformer_mit_b0", 19, width=8, options={"fusion": "sep"})
    assert DeepLabV2.head_prefixes == ("classifier.", "projection.")
    assert math.isclose(
        build_model("daformer_mit_b0", 2, width=8).backbone.block4[1].drop_path.p, 0.1
    )
