"""Tests of the AdaptSegNet output-space discriminator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spcl.models.discriminator import OutputDiscriminator


def test_output_shape_and_channels() -> None:
    disc = OutputDiscriminator(num_classes=19)
    convs = [disc.conv1, disc.conv2, disc.conv3, disc.conv4, disc.classifier]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (19, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1),
    ]
    for conv in convs:
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    with torch.no_grad():
        out = disc(torch.rand(1, 19, 64, 128))
    assert out.shape == (1, 1, 2, 4)


def test_ndf_sets_widths() -> None:
    disc = OutputDiscriminator(num_classes=5, ndf=8)
    convs = [disc.conv1, disc.conv2, disc.conv3, disc.conv4, disc.classifier]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]


def test_matches_functional_chain() -> None:
    """LeakyReLU(0.2) after the first four convs, none after the last (raw logits)."""
    torch.manual_seed(0)
    disc = OutputDiscriminator(num_classes=4, ndf=4)
    x = torch.softmax(torch.randn(2, 4, 32, 64), dim=1)
    h = x
    convs = [disc.conv1, disc.conv2, disc.conv3, disc.conv4]
    for conv in convs:
        h = F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1)
        h = torch.where(h > 0, h, 0.2 * h)
    expected = F.conv2d(h, disc.classifier.weight, disc.classifier.bias, stride=2, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(disc(x), expected, rtol=1e-5, atol=1e-6)


def test_gradient_on_every_parameter() -> None:
    disc = OutputDiscriminator(num_classes=3, ndf=4)
    out = disc(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(out).all()
    F.binary_cross_entropy_with_logits(out, torch.ones_like(out)).backward()
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_invalid_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="ndf"):
        OutputDiscriminator(num_classes=19, ndf=0)
