"""Tests of the model registry, build_model, and torchvision-format checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spcl.base import CheckpointError
from spcl.models.build import (
    MODEL_REGISTRY,
    build_discriminator,
    build_model,
    load_backbone_weights,
)
from spcl.models.deeplab_v2 import DeepLabV2
from spcl.models.deform_attn import MSDeformAttn
from spcl.models.resnet import FrozenBatchNorm2d, freeze_batchnorm, resnet18, resnet50

NUM_CLASSES = 5
# a 33×65 input, by hand: DeepLab-v2 at stride 8 (5×9); MiT models at stride 4: ⌊(n + 6 − 7)/4⌋ + 1
# (9×17); DINOv2 resizes to ⌊33/14⌋·14 × ⌊65/14⌋·14 = 28×56 → 2×4 tokens → ×4 in the head → 8×16
OUT_SIZE = {"deeplabv2": (5, 9), "daformer": (9, 17), "segformer": (9, 17), "dinov2": (8, 16)}
OUT_SIZE["vfmudapp"] = (56, 56)  # ViT-Adapter: ⌊33·1.1/224⌋ → at least 224 per side, stride 4
# feature channels at width 8: ResNet-18/34 8·8, ResNet-50/101 8·8·4; DAFormer 256·8/64;
# SegFormer 256·8/64 (B0/B1) or 768·8/64 (B2-B5); DINOv2 heads·8/4 (the head's last map has D/4
# channels, D = heads × width)
DINOV2_HEADS = {"vits14": 6, "vitb14": 12, "vitl14": 16, "vitg14": 24}
FEATURES_AT_WIDTH_8 = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}
FEATURES_AT_WIDTH_8 |= {f"daformer_mit_b{i}": 32 for i in range(6)}
FEATURES_AT_WIDTH_8 |= {f"segformer_mit_b{i}": 32 if i < 2 else 96 for i in range(6)}
FEATURES_AT_WIDTH_8 |= {f"dinov2_{v}": h * 8 // 4 for v, h in DINOV2_HEADS.items()}
FEATURES_AT_WIDTH_8 |= {f"dinov2_{v}_reg": h * 8 // 4 for v, h in DINOV2_HEADS.items()}
FEATURES_AT_WIDTH_8 |= {
    f"vfmudapp_{v}": DINOV2_HEADS[v] * 8 // 8 for v in ("vits14", "vitb14", "vitl14")
}
# stochastic depth may drop a block for both samples of the one step (no gradient): off here
OPTIONS = {
    "deeplabv2": {},
    "daformer": {"drop_path_rate": 0.0},
    "segformer": {"drop_path_rate": 0.0},
    "dinov2": {},
    "vfmudapp": {},
}


def _family(name: str) -> str:
    return name.split("_", 1)[0]


def _expected_features(name: str) -> int:
    return FEATURES_AT_WIDTH_8[name.removeprefix("deeplabv2_")]


def _backbone_keys(model: torch.nn.Module) -> set[str]:
    return {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers()}


def _perturb_zero_init(model: torch.nn.Module) -> None:
    """Give the weights ViT-Adapter initialises to zero small values (injector ``gamma``, the
    deformable attentions' offset and weight projections), so every parameter gets a gradient."""
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.01)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.01)
    for interaction in model.adapter.interactions:
        torch.nn.init.constant_(interaction.injector.gamma, 0.1)


# --- one shared tester over every registered model -------------------------------------------


@pytest.mark.parametrize("freeze_bn", [False, True])
@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_every_model_is_finite_and_fully_trained(name: str, freeze_bn: bool) -> None:
    torch.manual_seed(0)
    family = _family(name)
    model = build_model(
        name, NUM_CLASSES, width=8, freeze_bn=freeze_bn, options=OPTIONS[family]
    ).train()
    if family == "vfmudapp":  # by design, an untrained adapter passes no gradient to some of its
        _perturb_zero_init(
            model
        )  # parameters: the injectors' gamma and queries' weights start at 0
    x = torch.randn(2, 3, 33, 65)
    out = model(x)
    size = OUT_SIZE[family]
    assert out.logits.shape == (2, NUM_CLASSES, *size)
    assert out.features.shape == (2, _expected_features(name), *size)
    assert model.feature_channels == _expected_features(name)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
    target = torch.randint(NUM_CLASSES, (2, *size))
    loss = F.cross_entropy(out.logits, target) + out.features.square().mean()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    backbone_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    frozen = any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    if family == "deeplabv2":
        assert backbone_bn != freeze_bn and frozen == freeze_bn
    elif family == "dinov2":  # LayerNorm only in a ViT and its head: nothing to freeze
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) and not frozen
        assert any(isinstance(m, torch.nn.LayerNorm) for m in model.decode_head.modules())
    else:  # LayerNorm only in a MiT: freeze_bn changes nothing; the decoder's BN always trains
        assert not backbone_bn and not frozen
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decode_head.modules())


def test_registry_names_and_depths() -> None:
    assert sorted(MODEL_REGISTRY) == [
        *(f"daformer_mit_b{i}" for i in range(6)),
        "deeplabv2_resnet101",
        "deeplabv2_resnet18",
        "deeplabv2_resnet34",
        "deeplabv2_resnet50",
        *(f"dinov2_vit{s}14{r}" for s in "bgls" for r in ("", "_reg")),
        *(f"segformer_mit_b{i}" for i in range(6)),
        *(f"vfmudapp_vit{s}14" for s in "bls"),
    ]
    model = build_model("deeplabv2_resnet34", 19, width=8)
    assert isinstance(model, DeepLabV2)
    assert [len(model.backbone.layer3), model.backbone.out_channels] == [6, 64]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        build_model("deeplabv3_resnet50", 19)
    message = str(info.value)
    assert "deeplabv3_resnet50" in message
    assert all(name in message for name in MODEL_REGISTRY)


def test_build_discriminator() -> None:
    disc = build_discriminator(19, ndf=8)
    assert disc(torch.rand(1, 19, 64, 128)).shape == (1, 1, 2, 4)
    assert disc.conv1.in_channels == 19 and disc.conv1.out_channels == 8


# --- torchvision-format checkpoints ----------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A full-size ResNet-50 saved as torchvision saves it (BN buffers with num_batches_tracked)."""
    torch.manual_seed(1)
    state = resnet50().state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    path = tmp_path_factory.mktemp("ckpt") / "resnet50.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return resnet18(width=8).state_dict()


def test_resnet50_checkpoint_loads_strictly(resnet50_checkpoint: tuple[Path, dict]) -> None:
    path, state = resnet50_checkpoint
    model = resnet50()
    missing, unexpected = load_backbone_weights(model, path)
    assert (missing, unexpected) == ([], [])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    frozen = freeze_batchnorm(model, eps=0.0)  # no num_batches_tracked: still a strict load
    with torch.no_grad():
        frozen.layer4[2].bn3.running_var.zero_()
    assert load_backbone_weights(frozen, path) == ([], [])
    assert torch.equal(frozen.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


def test_wrong_shape_names_key_and_shapes(tmp_path: Path, small_state: dict) -> None:
    small_state["layer3.1.conv2.weight"] = torch.zeros(32, 32, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(small_state, path)
    with pytest.raises(
        CheckpointError, match=r"layer3\.1\.conv2\.weight.*\(32, 32, 1, 1\).*\(32, 32, 3, 3\)"
    ):
        load_backbone_weights(resnet18(width=8), path)


def test_prefixes_are_stripped(tmp_path: Path, small_state: dict) -> None:
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in small_state.items()}, path)
    model = resnet18(width=8)
    assert load_backbone_weights(model, path) == ([], [])
    assert torch.equal(model.conv1.weight, small_state["conv1.weight"])

    nested = {f"module.backbone.{k}": v for k, v in small_state.items() if not k.startswith("fc.")}
    nested["module.classifier.conv2d_list.0.weight"] = torch.zeros(3, 64, 3, 3)
    torch.save({"state_dict": nested}, path)
    model = resnet18(width=8)
    missing, unexpected = load_backbone_weights(model, path)
    assert missing == ["fc.weight", "fc.bias"]  # reported, but the unused head is not required
    assert unexpected == ["classifier.conv2d_list.0.weight"]
    assert torch.equal(model.layer4[1].bn2.running_mean, small_state["layer4.1.bn2.running_mean"])


def test_missing_keys_raise_when_strict(tmp_path: Path, small_state: dict) -> None:
    del small_state["layer2.0.downsample.0.weight"]
    path = tmp_path / "partial.pth"
    torch.save(small_state, path)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.downsample\.0\.weight"):
        load_backbone_weights(resnet18(width=8), path)
    model = resnet18(width=8)
    missing, unexpected = load_backbone_weights(model, path, strict=False)
    assert (missing, unexpected) == (["layer2.0.downsample.0.weight"], [])
    assert torch.equal(model.layer1[0].conv1.weight, small_state["layer1.0.conv1.weight"])


def test_absent_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "resnet101.pth"
    with pytest.raises(FileNotFoundError, match=r"resnet101\.pth"):
        load_backbone_weights(resnet18(width=8), path)
    with pytest.raises(FileNotFoundError, match=r"resnet101\.pth"):
        build_model("deeplabv2_resnet18", 3, width=8, pretrained=path)


def test_build_model_loads_then_freezes(tmp_path: Path, small_state: dict) -> None:
    path = tmp_path / "r18.pth"
    torch.save(small_state, path)
    model = build_model(
        "deeplabv2_resnet18", 3, width=8, pretrained=str(path), freeze_bn=True, bn_eps_frozen=0.0
    )
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 20 and all(m.eps == 0.0 for m in frozen)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, small_state[key]), key
    assert _backbone_keys(model.backbone) == {
        k for k in small_state if not k.endswith("num_batches_tracked")
    }


def test_url_is_downloaded_once_into_hub_cache(
    tmp_path: Path, small_state: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[tuple[str, str]] = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        downloads.append((url, dst))
        torch.save(small_state, dst)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    url = "https://example.org/models/resnet18-tiny.pth"
    for _ in range(2):
        model = build_model("deeplabv2_resnet18", 3, width=8, pretrained=url)
        assert torch.equal(model.backbone.conv1.weight, small_state["conv1.weight"])
    assert downloads == [(url, str(tmp_path / "hub" / "checkpoints" / "resnet18-tiny.pth"))]
