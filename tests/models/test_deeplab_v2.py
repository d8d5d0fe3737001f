"""Tests of the ASPP-v2 classifier and the DeepLabV2 segmenter."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spcl.models.deeplab_v2 import ASPP_DILATIONS, ASPPClassifierV2, DeepLabV2
from spcl.models.resnet import resnet18, resnet50
from spcl.models.segmenter import SegOutput


def test_aspp_is_sum_of_four_dilated_convs() -> None:
    torch.manual_seed(0)
    head = ASPPClassifierV2(in_channels=6, num_classes=5)
    assert len(head.conv2d_list) == 4
    x = torch.randn(2, 6, 13, 29)
    expected = torch.zeros(2, 5, 13, 29)
    for conv, rate in zip(head.conv2d_list, (6, 12, 18, 24), strict=True):
        assert conv.kernel_size == (3, 3) and conv.bias is not None
        expected += F.conv2d(x, conv.weight, conv.bias, padding=rate, dilation=rate)
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)


def test_aspp_dilation_reaches_far_pixels() -> None:
    """A single non-zero input pixel reaches outputs exactly ±rate away (and not ±1 away)."""
    head = ASPPClassifierV2(in_channels=1, num_classes=1, dilations=(6,))
    with torch.no_grad():
        head.conv2d_list[0].weight.fill_(1.0)
        head.conv2d_list[0].bias.zero_()
        x = torch.zeros(1, 1, 15, 15)
        x[0, 0, 7, 7] = 1.0
        out = head(x)[0, 0]
    hits = {tuple(i.tolist()) for i in out.nonzero()}
    assert hits == {(7 + dy, 7 + dx) for dy in (-6, 0, 6) for dx in (-6, 0, 6)}


def test_aspp_init() -> None:
    torch.manual_seed(0)
    in_channels = 256
    head = ASPPClassifierV2(in_channels=in_channels, num_classes=19)
    weights = torch.cat([c.weight.flatten() for c in head.conv2d_list])
    assert abs(weights.mean().item()) < 1e-3
    assert abs(weights.std().item() - 0.01) < 2e-4
    # Biases keep PyTorch's default: uniform in ±1/sqrt(fan_in), not zero.
    bound = 1 / math.sqrt(in_channels * 9)
    for conv in head.conv2d_list:
        assert conv.bias.abs().max().item() <= bound
        assert conv.bias.abs().max().item() > bound / 10


def test_deeplab_shapes_at_output_stride_8() -> None:
    model = DeepLabV2(resnet50(width=8), num_classes=19).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 128))
    assert isinstance(out, SegOutput)
    assert out.features.shape == (1, 256, 8, 16)
    assert out.logits.shape == (1, 19, 8, 16)
    assert model.num_classes == 19


def test_forward_equals_features_then_head() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(resnet18(width=8), num_classes=7).eval()
    x = torch.randn(2, 3, 33, 65)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        logits = model.forward_head(features)
    torch.testing.assert_close(out.features, features)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.features, model.backbone(x))
    assert logits.shape == (2, 7, 5, 9)


def test_param_groups_split_backbone_and_head() -> None:
    model = DeepLabV2(resnet18(width=8), num_classes=3)
    backbone, head = model.param_groups()
    ids_backbone, ids_head = {id(p) for p in backbone}, {id(p) for p in head}
    assert ids_head == {id(p) for p in model.classifier.parameters()}
    assert len(head) == 2 * len(ASPP_DILATIONS)  # weight + bias per branch
    assert not ids_backbone & ids_head
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids_backbone | ids_head == trainable
    assert id(model.backbone.fc.weight) not in ids_backbone  # unused ImageNet head left out
