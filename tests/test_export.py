"""``spcl export``: ONNX with dynamic H/W (checked with onnxruntime), safetensors + metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.base import CheckpointError
from spcl.cli import main
from spcl.data.labels import CITYSCAPES
from spcl.models.build import build_model
from spcl.models.export import export_model
from spcl.models.files import load_model_file, save_model_file
from spcl.predict import predict_paths

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

WIDTH = 4
EXPORT_SIZE = (64, 96)
OTHER_SIZE = (88, 72)  # not the export size: the graph must not have baked it in
TOLERANCE = 1e-4  # relative to the largest logit


def _model_file(tmp_path: Path, caffe: bool) -> Path:
    torch.manual_seed(0)
    options = {"style": "caffe", "input_convention": "caffe_bgr"} if caffe else {}
    model = build_model("deeplabv2_resnet50", 19, width=WIDTH, options=options).eval()
    path = tmp_path / ("caffe.pth" if caffe else "model.pth")
    save_model_file(
        model, path, name="deeplabv2_resnet50", num_classes=19, width=WIDTH,
        class_names=CITYSCAPES.names, palette=CITYSCAPES.palette, options=options,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("caffe", [False, True], ids=["torchvision", "deeplab_coco"])
def test_onnx_matches_pytorch_at_another_size(tmp_path: Path, caffe: bool) -> None:
    path = _model_file(tmp_path, caffe)
    report = export_model(path, "onnx", size=EXPORT_SIZE)
    assert report.path == path.with_suffix(".onnx") and report.path.is_file()
    assert [row["size"] for row in report.parity] == [EXPORT_SIZE, (104, 32)]
    model, _ = load_model_file(path)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    image = torch.randn(2, 3, *OTHER_SIZE, generator=torch.Generator().manual_seed(1))
    (onnx_logits,) = session.run(["logits"], {"image": image.numpy()})
    with torch.no_grad():
        logits = model(image).logits
        expected = torch.nn.functional.interpolate(
            logits, size=OTHER_SIZE, mode="bilinear", align_corners=True
        )
    assert onnx_logits.shape == (2, 19, *OTHER_SIZE)
    diff = np.abs(onnx_logits - expected.numpy()).max()
    print(f"max abs diff at {OTHER_SIZE}: {diff:.3g}")  # shown with -s
    assert diff <= TOLERANCE * float(expected.abs().max())
    for row in report.parity:
        assert row["max_abs_diff"] <= TOLERANCE * row["max_abs_logit"]
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(props["class_names"]) == list(CITYSCAPES.names)
    model_input = json.loads(props["input"])
    assert model_input["channels"] == "RGB" and model_input["std_255"][0] == pytest.approx(58.395)
    assert json.loads(props["weights_input"])["name"] == ("caffe_bgr" if caffe else "imagenet_rgb")


def test_safetensors_has_metadata_and_predict_reads_it(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = _model_file(tmp_path, caffe=True)
    report = export_model(path, "safetensors")
    with safe_open(str(report.path), "pt") as handle:
        meta = handle.metadata()
        names = list(handle.keys())
    assert "backbone.layer1.0.conv1.weight" in names
    assert json.loads(meta["class_names"]) == list(CITYSCAPES.names)
    assert json.loads(meta["palette"])[0] == list(CITYSCAPES.palette[0])
    assert json.loads(meta["arch"])["options"]["style"] == "caffe"
    assert json.loads(meta["input"])["mean_255"][0] == pytest.approx(123.675)
    assert json.loads(meta["weights_input"])["channels"] == "BGR"
    assert report.path.read_bytes()[8:9] == b"{"  # a plain safetensors header, no pickle
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    predict_paths(path, [str(images)], tmp_path / "from_pth", progress=False)
    predict_paths(report.path, [str(images)], tmp_path / "from_st", progress=False)
    ids = [
        np.array(Image.open(tmp_path / d / "trainIds" / "a.png")) for d in ("from_pth", "from_st")
    ]
    assert np.array_equal(ids[0], ids[1])
    assert len(np.unique(ids[0])) > 1  # a real prediction, not a constant map


def test_reference_checkpoint_exports_with_its_frozen_bn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("deeplabv2_resnet50", 19, width=WIDTH)
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    state["backbone.bn1.running_var"] = torch.full((WIDTH,), 1e-4)  # eps 0 vs 1e-5 shows here
    ckpt = {
        "iteration": 1,
        "feature_extractor": {
            f"module.{k}": v for k, v in state.items() if k.startswith("backbone.")
        },
        "classifier": {
            f"module.{k.removeprefix('classifier.')}": v
            for k, v in state.items()
            if k.startswith("classifier.")
        },
    }
    path = tmp_path / "model_iter020000.pth"
    torch.save(ckpt, path)
    report = export_model(path, "safetensors")
    original, _ = load_model_file(path)
    exported, info = load_model_file(report.path)
    assert info["arch"]["frozen_bn_eps"] == 0.0
    image = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(original(image).logits, exported(image).logits)


def test_cli_export_reports_parity_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _model_file(tmp_path, caffe=False)
    out = tmp_path / "deploy.onnx"
    argv = ["export", str(path), "--format", "onnx", "--out", str(out), "--size", "64,96"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "onnxruntime vs PyTorch at 64x96: max |diff|" in text and f"wrote {out}" in text
    before = out.read_bytes()
    assert main(argv) == 2
    assert "deploy.onnx exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_bare_safetensors_is_refused_by_name(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 3, 7, 7)}, str(path))
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: a safetensors file without"):
        load_model_file(path)


def test_a_model_the_tracer_cannot_export_is_a_named_error() -> None:
    from spcl.base import UsageError
    from spcl.models.export import export_onnx

    model = build_model("dinov2_vits14", 19).eval()  # pos-embed resize from the input size
    with pytest.raises(UsageError, match=r"ViTSegmenter cannot be exported to ONNX.*safetensors"):
        export_onnx(model, {}, size=(56, 84))
