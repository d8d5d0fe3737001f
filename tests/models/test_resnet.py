"""Tests of the dilated ResNet: torchvision key/shape compatibility, output stride, frozen BN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spcl.models.resnet import (
    FrozenBatchNorm2d,
    ResNet,
    freeze_batchnorm,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)

CONSTRUCTORS = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}
# Published parameter counts of torchvision's resnet18/34/50/101 (ImageNet, 1000 classes).
TORCHVISION_PARAM_COUNTS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def torchvision_keys(depth: int, width: int = 64) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every state-dict entry of torchvision's resnet<depth>, in order.

    Written from the architecture's definition: stem, four layers of blocks, fc.
    """
    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    expansion = 4 if bottleneck else 1

    def bn(name: str, ch: int) -> list[tuple[str, tuple[int, ...]]]:
        return [
            (f"{name}.weight", (ch,)),
            (f"{name}.bias", (ch,)),
            (f"{name}.running_mean", (ch,)),
            (f"{name}.running_var", (ch,)),
            (f"{name}.num_batches_tracked", ()),
        ]

    keys = [("conv1.weight", (width, 3, 7, 7)), *bn("bn1", width)]
    inplanes = width
    for layer in range(4):
        planes = width * 2**layer
        for b in range(blocks[layer]):
            p = f"layer{layer + 1}.{b}"
            if bottleneck:
                keys += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1)), *bn(f"{p}.bn1", planes)]
                keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes)]
                keys += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1))]
                keys += bn(f"{p}.bn3", planes * 4)
            else:
                keys += [(f"{p}.conv1.weight", (planes, inplanes, 3, 3)), *bn(f"{p}.bn1", planes)]
                keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes)]
            if b == 0 and (layer > 0 or inplanes != planes * expansion):
                keys += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1))]
                keys += bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys += [("fc.weight", (1000, 8 * width * expansion)), ("fc.bias", (1000,))]
    return keys


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_state_dict_matches_torchvision(depth: int) -> None:
    model = CONSTRUCTORS[depth]()
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == torchvision_keys(depth)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAM_COUNTS[depth]


@pytest.mark.parametrize("depth", [18, 50])
def test_width_scales_every_layer(depth: int) -> None:
    model = CONSTRUCTORS[depth](width=16)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == torchvision_keys(depth, width=16)
    assert model.out_channels == 512 * (4 if depth >= 50 else 1) * 16 // 64


@pytest.mark.parametrize(("output_stride", "size"), [(8, (8, 16)), (16, (4, 8)), (32, (2, 4))])
@pytest.mark.parametrize("depth", [18, 50])
def test_output_stride(depth: int, output_stride: int, size: tuple[int, int]) -> None:
    model = CONSTRUCTORS[depth](width=8, output_stride=output_stride).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 128))
    assert features.shape == (1, model.out_channels, *size)


def test_dilation_pattern_as_torchvision() -> None:
    """layer3/4 lose their stride; the first block of a layer keeps the previous dilation."""
    model = resnet50(width=8)
    expected = {
        "layer2.0.conv2": (2, 1),
        "layer3.0.conv2": (1, 1),
        "layer3.1.conv2": (1, 2),
        "layer4.0.conv2": (1, 2),
        "layer4.2.conv2": (1, 4),
        "layer3.0.downsample.0": (1, 1),
        "layer4.0.downsample.0": (1, 1),
    }
    modules = dict(model.named_modules())
    for name, (stride, dilation) in expected.items():
        conv = modules[name]
        assert conv.stride == (stride, stride), name
        assert conv.dilation == (dilation, dilation), name
        assert conv.padding == ((dilation, dilation) if conv.kernel_size == (3, 3) else (0, 0))


def test_basic_block_dilates_both_convs() -> None:
    """torchvision's BasicBlock refuses dilation; ours dilates both 3×3 convs of a block."""
    modules = dict(resnet18(width=8).named_modules())
    expected = {  # name: (stride, dilation)
        "layer2.0.conv1": (2, 1),
        "layer3.0.conv1": (1, 1),
        "layer3.0.conv2": (1, 1),
        "layer3.1.conv1": (1, 2),
        "layer3.1.conv2": (1, 2),
        "layer4.0.conv1": (1, 2),
        "layer4.0.conv2": (1, 2),
        "layer4.1.conv1": (1, 4),
        "layer4.1.conv2": (1, 4),
    }
    for name, (stride, dilation) in expected.items():
        conv = modules[name]
        assert (conv.stride, conv.dilation, conv.padding) == (
            (stride, stride),
            (dilation, dilation),
            (dilation, dilation),
        ), name


def test_bottleneck_matches_functional_chain() -> None:
    """A strided Bottleneck with downsample equals the conv/bn/relu chain written out by hand."""
    torch.manual_seed(0)
    model = resnet50(width=8).eval()
    block = model.layer2[0]
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    x = torch.randn(2, 32, 9, 11)

    def bn(t: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        norm = (t - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + 1e-5)
        return norm * m.weight.view(shape) + m.bias.view(shape)

    out = F.relu(bn(F.conv2d(x, block.conv1.weight), block.bn1))
    out = F.relu(bn(F.conv2d(out, block.conv2.weight, stride=2, padding=1), block.bn2))
    out = bn(F.conv2d(out, block.conv3.weight), block.bn3)
    identity = bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
    expected = F.relu(out + identity)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_fc_is_kept_but_frozen_and_unused() -> None:
    model = resnet18(width=8)
    assert not model.fc.weight.requires_grad and not model.fc.bias.requires_grad
    model(torch.randn(1, 3, 33, 65)).sum().backward()
    assert model.fc.weight.grad is None
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        resnet18(output_stride=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        resnet18(width=0)


# --- Frozen BatchNorm ------------------------------------------------------------------------


def _random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(channels, generator=gen) - 0.5)
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.1)
    return bn


def test_frozen_bn_matches_batchnorm_eval() -> None:
    bn = _random_bn(5).eval()
    frozen = freeze_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-5
    x = torch.randn(3, 5, 4, 6)
    torch.testing.assert_close(frozen.train()(x), bn(x))


def test_frozen_bn_eps_zero_matches_formula() -> None:
    bn = _random_bn(4, seed=1)
    frozen = freeze_batchnorm(bn, eps=0.0)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    xn = x.numpy()
    stats = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    w, b, mu, var = (t.detach().double().numpy() for t in stats)
    expected = np.empty_like(xn)
    for c in range(4):
        expected[:, c] = (xn[:, c] - mu[c]) / np.sqrt(var[c]) * w[c] + b[c]
    out = frozen.double()(x)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_frozen_bn_state_dict_and_strict_load() -> None:
    bn = _random_bn(6)
    frozen = FrozenBatchNorm2d(6)
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert "num_batches_tracked" in bn.state_dict()
    frozen.load_state_dict(bn.state_dict(), strict=True)
    torch.testing.assert_close(frozen.running_var, bn.running_var)
    torch.testing.assert_close(frozen.weight, bn.weight.detach())
    with pytest.raises(RuntimeError, match="running_mean"):
        frozen.load_state_dict({"weight": bn.weight, "bias": bn.bias}, strict=True)


def test_frozen_resnet_keeps_everything_fixed_in_train_mode() -> None:
    torch.manual_seed(0)
    model = resnet18(width=8)
    model.eval()
    x = torch.randn(2, 3, 33, 65)
    with torch.no_grad():
        reference = model(x)
    freeze_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 20
    model.train()
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)

    frozen_before = {
        k: v.clone() for k, v in model.state_dict().items() if "bn" in k or "downsample.1" in k
    }
    conv_before = model.conv1.weight.detach().clone()
    model(x).square().mean().backward()
    with torch.no_grad():  # a plain SGD step (torch.optim's first use costs seconds of imports)
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    for key, value in model.state_dict().items():
        if key in frozen_before:
            assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(model.conv1.weight, conv_before)  # the step did happen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("bn" in n for n in trainable)


def test_freeze_batchnorm_resets_eps_and_rejects_stateless_bn() -> None:
    model = freeze_batchnorm(resnet18(width=8), eps=1e-5)
    freeze_batchnorm(model, eps=0.0)
    assert {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    with pytest.raises(ValueError, match="running statistics"):
        freeze_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))


def test_resnet_class_is_generic() -> None:
    assert isinstance(resnet34(width=8), ResNet)
    assert resnet101(width=8).out_channels == 256
