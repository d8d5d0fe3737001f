"""Foreign ResNet weight layouts: DeepLab COCO init, reference SPCL/FADA checkpoints, torchvision.

Every file here is generated in the test from the published architecture facts (key names, shapes,
strides; docs/recipes.md, "DeepLab-v2 COCO initialisation", and BinhuiXie/SPCL ``core/models``),
not from spcl's modules, and every model output is checked against a forward pass written out
here with plain convolutions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from official_layouts import (
    ASPP_RATES,
    EXPANSION,
    RESNET_BLOCKS,
    aspp_tensors,
    coco_init_state,
    random_tensors,
    resnet_shapes,
)
from spcl.base import CheckpointError, ConfigError
from spcl.cli import main
from spcl.config import load_config
from spcl.context import open_run
from spcl.data.labels import CITYSCAPES
from spcl.data.lists import to_tensor
from spcl.data.synthetic import generate_pair
from spcl.models.build import build_model, load_backbone_weights
from spcl.models.files import load_model_file, save_model_file
from spcl.models.resnet import FrozenBatchNorm2d, resnet50
from spcl.models.weight_layouts import detect_layout, read_resnet_weights
from spcl.pipeline import model_path, run_pipeline
from tiny import TINY

WIDTH = 4  # base channels: a ResNet-101 this narrow runs in milliseconds
BLOCKS_101 = RESNET_BLOCKS[101]
BLOCKS_50 = RESNET_BLOCKS[50]
RATES = ASPP_RATES
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # ADVENT / AdaptSegNet, B, G, R
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
BN_EPS = 1e-5


# ---- files built from the architecture facts -------------------------------------------------


def coco_state(classes: int = 21, blocks: tuple[int, ...] = BLOCKS_101) -> dict[str, Tensor]:
    """The DeepLab_resnet_pretrained_init layout: ``Scale.*``, ``Scale.layer5`` = 21-class ASPP."""
    return coco_init_state(WIDTH, blocks, classes)


def reference_state(frozen_bn: bool, classes: int = 19) -> dict:
    """A reference SPCL checkpoint: DDP-prefixed feature_extractor/classifier, optimizers, D."""
    backbone = random_tensors(resnet_shapes(WIDTH, BLOCKS_101), seed=3)
    if frozen_bn:  # FREEZE_BN: FrozenBatchNorm2d buffers; a tiny variance makes eps matter
        backbone["bn1.running_var"] = torch.full((WIDTH,), 1e-4)
    else:  # nn.BatchNorm2d adds a step counter to each BN
        for key in [k for k in backbone if k.endswith("running_mean")]:
            backbone[key.replace("running_mean", "num_batches_tracked")] = torch.tensor(7)
    head = aspp_tensors(WIDTH * 8 * EXPANSION, classes, seed=4)
    return {
        "iteration": 20000,
        "feature_extractor": {f"module.backbone.{k}": v for k, v in backbone.items()},
        "classifier": {f"module.{k}": v for k, v in head.items()},
        "model_D": {"module.conv1.weight": torch.zeros(2, classes, 4, 4)},
        "optimizer_fea": {"state": {}, "param_groups": [{"lr": 2.5e-4}]},
        "optimizer_cls": {"state": {}, "param_groups": [{"lr": 2.5e-3}]},
    }


# ---- the forward pass, written out ----------------------------------------------------------


def hand_resnet(x: Tensor, p: dict[str, Tensor], blocks: tuple[int, ...], caffe: bool, eps: float):
    """Dilated (output stride 8) bottleneck ResNet as the two codebases define it."""

    def bn(t: Tensor, key: str) -> Tensor:
        mean, var = p[f"{key}.running_mean"], p[f"{key}.running_var"]
        scale = p[f"{key}.weight"] / torch.sqrt(var + eps)
        return (t - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + p[f"{key}.bias"].view(
            1, -1, 1, 1
        )

    x = torch.relu(bn(F.conv2d(x, p["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=caffe)  # Caffe rounds up
    dilation = 1
    for layer, (count, stride, dilate) in enumerate(
        zip(blocks, (1, 2, 2, 2), (False, False, True, True), strict=True), start=1
    ):
        previous = dilation
        if dilate:
            dilation, stride = dilation * stride, 1
        for j in range(count):
            pre = f"layer{layer}.{j}."
            s = stride if j == 0 else 1
            # torchvision: the first block keeps the previous dilation; DeepLab's Caffe: the layer's
            d = dilation if (caffe or j > 0) else previous
            s_1x1, s_3x3 = (s, 1) if caffe else (1, s)
            out = torch.relu(bn(F.conv2d(x, p[pre + "conv1.weight"], stride=s_1x1), pre + "bn1"))
            out = F.conv2d(out, p[pre + "conv2.weight"], stride=s_3x3, padding=d, dilation=d)
            out = bn(
                F.conv2d(torch.relu(bn(out, pre + "bn2")), p[pre + "conv3.weight"]), pre + "bn3"
            )
            if j == 0:
                x = bn(F.conv2d(x, p[pre + "downsample.0.weight"], stride=s), pre + "downsample.1")
            x = torch.relu(out + x)
    return x


def hand_aspp(features: Tensor, head: dict[str, Tensor]) -> Tensor:
    return sum(
        F.conv2d(features, head[f"conv2d_list.{i}.weight"], head[f"conv2d_list.{i}.bias"], 1, r, r)
        for i, r in enumerate(RATES)
    )


def image() -> np.ndarray:
    """A 32×40 uint8 RGB image: conv1 gives 16×20, where a ceil-mode pool differs (9×11 vs 8×10)."""
    return np.random.default_rng(0).integers(0, 256, size=(32, 40, 3), dtype=np.uint8)


def caffe_input(img: np.ndarray) -> Tensor:
    """AdaptSegNet/ADVENT: RGB → BGR, float 0-255, minus the BGR mean, no std."""
    bgr = img[:, :, ::-1].astype(np.float32) - np.array(CAFFE_BGR_MEAN, dtype=np.float32)
    return torch.from_numpy(bgr.copy()).permute(2, 0, 1).unsqueeze(0)


def imagenet_input(img: np.ndarray) -> Tensor:
    """The reference SPCL: RGB in [0, 1], ImageNet mean/std."""
    rgb = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    return torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)


def assert_close(actual: Tensor, expected: Tensor) -> None:
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


# ---- the DeepLab COCO initialisation --------------------------------------------------------


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    state = coco_state()
    path = tmp_path_factory.mktemp("coco") / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    torch.save(state, path)
    return path, state


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def test_coco_layout_is_detected_with_its_depth_and_head(coco_file) -> None:
    path, _ = coco_file
    weights = read_resnet_weights(path)
    assert weights.layout == "deeplab_coco" == detect_layout(torch.load(path))
    assert (weights.depth, weights.num_classes) == (101, 21)
    assert weights.options == {"style": "caffe", "input_convention": "caffe_bgr"}
    assert "conv1.weight" in weights.backbone and "conv2d_list.3.bias" in weights.head


def test_coco_init_runs_caffe_style_on_bgr_mean_subtracted_input(coco_file) -> None:
    path, state = coco_file
    model = build_model("deeplabv2_resnet101", 19, width=WIDTH, pretrained=path).eval()
    assert model.backbone.style == "caffe"
    assert model.layout_options == {"style": "caffe", "input_convention": "caffe_bgr"}
    img = image()
    with torch.no_grad():
        out = model(to_tensor(img).unsqueeze(0))  # spcl's pipeline tensor: RGB, ImageNet-normalised
    expected = hand_resnet(
        caffe_input(img), _strip(state, "Scale."), BLOCKS_101, caffe=True, eps=BN_EPS
    )
    assert out.features.shape == expected.shape == (1, WIDTH * 32, 5, 6)  # ceil-mode sizes
    assert_close(out.features, expected)
    assert out.logits.shape == (1, 19, 5, 6)  # the 21-class head is not loaded for 19 classes


def test_coco_head_loads_when_classes_match(coco_file) -> None:
    path, state = coco_file
    model = build_model("deeplabv2_resnet101", 21, width=WIDTH, pretrained=path).eval()
    img = image()
    with torch.no_grad():
        out = model(to_tensor(img).unsqueeze(0))
    assert_close(out.logits, hand_aspp(out.features, _strip(state, "Scale.layer5.")))


def test_coco_convention_is_recorded_in_the_model_file(coco_file, tmp_path: Path) -> None:
    path, _ = coco_file
    model = build_model("deeplabv2_resnet101", 19, width=WIDTH, pretrained=path).eval()
    saved = tmp_path / "model.pth"
    names = CITYSCAPES.names
    save_model_file(model, saved, name="deeplabv2_resnet101", num_classes=19, width=WIDTH,
                    class_names=names, options={})  # fmt: skip
    loaded, info = load_model_file(saved)
    assert info["arch"]["options"] == {"style": "caffe", "input_convention": "caffe_bgr"}
    batch = to_tensor(image()).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, model(batch).logits)


def test_coco_init_refuses_contradicting_options_and_depth(coco_file) -> None:
    path, _ = coco_file
    with pytest.raises(ConfigError, match=r"style='pytorch' contradicts .*pretrained_init"):
        build_model("deeplabv2_resnet101", 19, width=WIDTH, pretrained=path,
                    options={"style": "pytorch"})  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"ResNet-101.*deeplabv2_resnet50.*use deeplabv2_resnet101"
    ):
        build_model("deeplabv2_resnet50", 19, width=WIDTH, pretrained=path)


def test_coco_init_into_a_pytorch_style_backbone_is_refused(coco_file) -> None:
    path, _ = coco_file
    with pytest.raises(CheckpointError, match=r"pretrained_init.*Scale.*style='caffe'"):
        load_backbone_weights(resnet50(width=WIDTH), path)


def test_coco_file_is_no_model_file(coco_file) -> None:
    path, _ = coco_file
    with pytest.raises(CheckpointError, match=r"not an spcl model file: it looks like .*COCO"):
        load_model_file(path)


# ---- reference SPCL / FADA checkpoints ------------------------------------------------------


@pytest.mark.parametrize("frozen_bn", [True, False], ids=["warmup_or_spcl", "self_training"])
def test_reference_checkpoint_scores_like_the_reference(tmp_path: Path, frozen_bn: bool) -> None:
    state = reference_state(frozen_bn)
    path = tmp_path / "model_iter020000.pth"
    torch.save(state, path)
    model, info = load_model_file(path, num_classes=19)
    assert info["arch"]["name"] == "deeplabv2_resnet101" and info["arch"]["width"] == WIDTH
    assert info["class_names"] == list(CITYSCAPES.names)
    assert sorted(info["unused_keys"]) == ["iteration", "model_D", "optimizer_cls", "optimizer_fea"]
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d) == frozen_bn
    backbone = {
        k.removeprefix("module.backbone."): v for k, v in state["feature_extractor"].items()
    }
    head = {k.removeprefix("module."): v for k, v in state["classifier"].items()}
    eps = 0.0 if frozen_bn else BN_EPS  # the reference's FrozenBatchNorm2d has no eps
    img = image()
    with torch.no_grad():
        out = model(to_tensor(img).unsqueeze(0))
    features = hand_resnet(imagenet_input(img), backbone, BLOCKS_101, caffe=False, eps=eps)
    assert out.features.shape == (1, WIDTH * 32, 4, 5)
    assert_close(out.features, features)
    assert_close(out.logits, hand_aspp(features, head))


def test_reference_checkpoint_as_pretrained_loads_backbone_and_head(tmp_path: Path) -> None:
    state = reference_state(frozen_bn=True)
    path = tmp_path / "warmup.pth"
    torch.save(state, path)
    model = build_model("deeplabv2_resnet101", 19, width=WIDTH, pretrained=path)
    head = {k.removeprefix("module."): v for k, v in state["classifier"].items()}
    for key, value in head.items():
        assert torch.equal(model.classifier.state_dict()[key], value), key
    conv = state["feature_extractor"]["module.backbone.layer3.22.conv2.weight"]
    assert torch.equal(model.backbone.layer3[22].conv2.weight, conv)
    bad_head = r"warmup\.pth: looks like a reference SPCL.*19 classes.*classifier.*shape mismatch"
    with pytest.raises(CheckpointError, match=bad_head + r" \(8\): conv2d_list\.0\.weight"):
        build_model("deeplabv2_resnet101", 16, width=WIDTH, pretrained=path)


def test_torchvision_file_runs_as_torchvision_defines_it(tmp_path: Path) -> None:
    state = random_tensors(resnet_shapes(WIDTH, BLOCKS_50), seed=6)
    state |= {"fc.weight": torch.zeros(1000, WIDTH * 32), "fc.bias": torch.zeros(1000)}
    state |= {k.replace("running_mean", "num_batches_tracked"): torch.tensor(1) for k in state
              if k.endswith("running_mean")}  # fmt: skip
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(state, path)
    assert detect_layout(torch.load(path)) == "torchvision_resnet"
    model = build_model("deeplabv2_resnet50", 19, width=WIDTH, pretrained=path).eval()
    assert model.layout_options == {} and model.backbone.style == "pytorch"
    img = image()
    with torch.no_grad():
        out = model(to_tensor(img).unsqueeze(0))
    expected = hand_resnet(imagenet_input(img), state, BLOCKS_50, caffe=False, eps=BN_EPS)
    assert_close(out.features, expected)


# ---- named errors ---------------------------------------------------------------------------


def test_torchvision_file_missing_keys_names_file_layout_and_keys(tmp_path: Path) -> None:
    state = random_tensors(resnet_shapes(WIDTH, BLOCKS_50), seed=5)
    del state["layer2.0.downsample.0.weight"], state["layer3.1.bn2.running_var"]
    path = tmp_path / "resnet50-partial.pth"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"resnet50-partial\.pth: looks like a torchvision-format ResNet state dict, "
        r"ResNet-50; keys that do not fit .*missing \(2\): layer2\.0\.downsample\.0\.weight, "
        r"layer3\.1\.bn2\.running_var",
    ):
        build_model("deeplabv2_resnet50", 19, width=WIDTH, pretrained=path)


def test_unknown_layout_names_its_first_keys(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"encoder.stem.weight": torch.zeros(1), "encoder.head.weight": torch.zeros(1)}, path)
    with pytest.raises(
        CheckpointError, match=r"odd\.pth: looks like no known layout.*encoder\.head\.weight"
    ):
        build_model("deeplabv2_resnet50", 19, width=WIDTH, pretrained=path)


# ---- the commands ---------------------------------------------------------------------------


def test_evaluate_and_a_run_use_the_layouts(
    coco_file, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`spcl evaluate` scores a reference checkpoint; a run from the COCO init keeps its input."""
    data = generate_pair(
        tmp_path / "data", n_train=2, n_val=2, size=(32, 64), preview=False, progress=False
    )
    reference = tmp_path / "model_iter020000.pth"
    torch.save(reference_state(frozen_bn=True), reference)
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(reference), "--config", "demo", "--json", str(out)]
    assert main([*argv, f"data.target_val.root={data}", "run.progress=false"]) == 0
    scores = json.loads(out.read_text())
    assert len(scores["per_class_iou"]) == 19 and 0.0 <= scores["miou"] <= 100.0
    assert "road" in capsys.readouterr().out

    path, _ = coco_file
    run = tmp_path / "run"
    overrides = [*TINY, "model.name=deeplabv2_resnet101", f"model.width={WIDTH}"]
    overrides += [f"model.pretrained={path}", "run.stages=[warmup]", f"run.out={run}"]
    overrides += [f"data.{d}.root={data}" for d in ("source", "target", "target_val")]
    with open_run(load_config(None, overrides)) as ctx:
        run_pipeline(ctx)
    model, info = load_model_file(model_path(run, "warmup"))
    assert info["arch"]["options"] == {"style": "caffe", "input_convention": "caffe_bgr"}
    assert model.backbone.style == "caffe" and model.input_adapter.convention == "caffe_bgr"
