"""The published HRDA / MIC(HRDA) checkpoint layout (mmseg ``HRDAEncoderDecoder`` + ``HRDAHead``)
read by load_model_file (evaluate, predict) and by ``model.pretrained``.

Files are generated in the authors' layout: ``backbone.*``, the single-scale DAFormer head under
``decode_head.head.*`` and the scale attention (a DAFormer head whose fusion is one 1×1
ConvModule) under ``decode_head.scale_attention.*``, inside mmcv's UDA checkpoint
(``model.``/``ema_model.``/``imnet_model.``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.engine.checkpoint import CheckpointError
from spcl.models.build import build_model
from spcl.models.export import export_model
from spcl.models.files import load_model_file, save_model_file
from spcl.models.hrda import HRDASegmenter, HRDASettings
from spcl.models.mmseg_import import detect_mmseg_layout
from spcl.predict import predict_paths

# names the authors' modules give (hrda_head.py: self.head, self.scale_attention; DAFormerHead:
# embed_layers, fuse_layer as a ConvModule (conv, bn) for the attention, conv_seg)
AUTHORS_KEYS = (
    "backbone.patch_embed1.proj.weight",
    "decode_head.head.embed_layers.0.proj.weight",
    "decode_head.head.fuse_layer.bottleneck.conv.weight",
    "decode_head.head.conv_seg.weight",
    "decode_head.scale_attention.embed_layers.3.proj.weight",
    "decode_head.scale_attention.fuse_layer.conv.weight",
    "decode_head.scale_attention.fuse_layer.bn.running_var",
    "decode_head.scale_attention.conv_seg.weight",
)


def _hrda_model(seed: int, attention: str = "classwise") -> HRDASegmenter:
    torch.manual_seed(seed)
    model = HRDASegmenter(build_model("daformer_mit_b0", 19), HRDASettings(attention=attention))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _authors_layout(model: HRDASegmenter, prefix: str) -> dict[str, torch.Tensor]:
    """The model's weights under the names HRDA's modules give them."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("scale_attention."):
            key = "decode_head." + key
        elif key.startswith("segmenter.decode_head."):
            key = "decode_head.head." + key[len("segmenter.decode_head.") :]
        else:
            key = key[len("segmenter.") :]
        out[prefix + key] = value.clone()
    return out


@pytest.fixture(scope="module")
def mic_hrda(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    student, teacher = _hrda_model(0), _hrda_model(1)
    state = _authors_layout(student, "model.") | _authors_layout(teacher, "ema_model.")
    state |= {"imnet_model.backbone.patch_embed1.proj.weight": torch.zeros(1)}
    assert all(f"model.{key}" in state for key in AUTHORS_KEYS)
    path = tmp_path_factory.mktemp("hrda") / "mic_hrda.pth"
    torch.save({"meta": {"iter": 40000}, "state_dict": state, "optimizer": {}}, path)
    return path, {"student": student, "teacher": teacher}


def test_student_and_teacher_import_as_two_scale_models(mic_hrda: tuple[Path, dict]) -> None:
    path, made = mic_hrda
    x = torch.randn(1, 3, 64, 96)
    for role in ("student", "teacher"):
        model, info = load_model_file(path, mmseg_role=role)
        assert isinstance(model, HRDASegmenter) and info["arch"]["hrda"]["attention"] == "classwise"
        assert "HRDA" in info["arch"]["layout"]
        with torch.no_grad():
            torch.testing.assert_close(model(x).logits, made[role](x).logits)


def test_an_imported_hrda_model_is_saved_and_rebuilt(mic_hrda, tmp_path: Path) -> None:
    path, made = mic_hrda
    model, info = load_model_file(path)
    arch = info["arch"]
    out = tmp_path / "model.pth"
    save_model_file(model, out, name=arch["name"], num_classes=19, width=64, class_names=[])
    again, _ = load_model_file(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, made["student"](x).logits)


def test_an_hrda_model_file_exports_to_safetensors_and_back(mic_hrda, tmp_path: Path) -> None:
    path, made = mic_hrda
    model, info = load_model_file(path)
    spcl_file = tmp_path / "model.pth"
    names = [str(i) for i in range(19)]
    save_model_file(model, spcl_file, name=info["arch"]["name"], num_classes=19, width=64,
                    class_names=names)  # fmt: skip
    report = export_model(spcl_file, "safetensors")
    again, _ = load_model_file(report.path)
    assert isinstance(again, HRDASegmenter)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, made["student"](x).logits)


def test_predict_reads_the_published_layout(mic_hrda, tmp_path: Path) -> None:
    path, _ = mic_hrda
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    written = predict_paths(path, [str(tmp_path / "a.png")], tmp_path / "pred", progress=False)
    assert written and all(p.is_file() for p in written)


def test_model_pretrained_takes_the_encoder_of_an_hrda_checkpoint(mic_hrda, tmp_path) -> None:
    path, made = mic_hrda
    model = build_model("daformer_mit_b0", 19, pretrained=path)
    expected = made["student"].segmenter.backbone.state_dict()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, expected[key])
    spcl_file = tmp_path / "hrda_model.pth"  # an spcl HRDA run's model.pth works too
    save_model_file(
        made["teacher"], spcl_file, name="daformer_mit_b0", num_classes=19, width=64, class_names=[]
    )
    model = build_model("daformer_mit_b0", 19, pretrained=spcl_file)
    expected = made["teacher"].segmenter.backbone.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.backbone.state_dict().items())


def test_single_attention_and_fixed_attention(tmp_path: Path) -> None:
    state = _authors_layout(_hrda_model(2, attention="single"), "")
    assert detect_mmseg_layout(state).hrda["attention"] == "single"
    fixed = {k: v for k, v in state.items() if "scale_attention" not in k}
    with pytest.raises(CheckpointError, match=r"fixed\.pth: an HRDA checkpoint without a learnt"):
        detect_mmseg_layout(fixed, source="fixed.pth")
