"""Tests of importing mmseg checkpoints (DAFormer, MIC(DAFormer), SePiCo, SegFormer).

Files are generated here in mmcv's layout (``{"meta", "state_dict", "optimizer"}``; student under
``model.``, EMA teacher under ``ema_model.``, the FD model under ``imnet_model.``, SePiCo's
projection as ``auxiliary_head.``) from spcl models, and must give back those models' outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.cli import main
from spcl.data.labels import CITYSCAPES
from spcl.data.synthetic import generate_pair
from spcl.engine.checkpoint import CheckpointError
from spcl.models.build import build_model
from spcl.models.files import load_model_file
from spcl.models.mmseg_import import detect_mmseg_layout, import_mmseg_state
from spcl.predict import predict_paths

META = {  # what mmcv/mmseg write (strings, lists, numbers)
    "mmcv_version": "1.3.7",
    "time": "Sat Jan  1 00:00:00 2022",
    "CLASSES": list(CITYSCAPES.names),
    "PALETTE": [list(c) for c in CITYSCAPES.palette],
    "config": "model = dict(type='EncoderDecoder')",
    "iter": 40000,
}


def _randomised(name: str, seed: int, classes: int = 19, **options: object) -> torch.nn.Module:
    """A model with random weights and random BN statistics (so buffers must load too)."""
    torch.manual_seed(seed)
    model = build_model(name, classes, options=options)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _mmseg_keys(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The model's state dict as mmseg names it (SePiCo's projection is ``auxiliary_head``)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("projection."):
            key = "auxiliary_head." + key[len("projection.") :]
        out[prefix + key] = value.clone()
    return out


def _save(path: Path, state_dict: dict, meta: dict | None = META) -> Path:
    torch.save({"meta": meta, "state_dict": state_dict, "optimizer": {}}, path)
    return path


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def daformer_uda(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A DAFormer-B0 UDA checkpoint: student, EMA teacher and ImageNet FD model."""
    student, teacher = _randomised("daformer_mit_b0", 0), _randomised("daformer_mit_b0", 1)
    state = _mmseg_keys(student, "model.") | _mmseg_keys(teacher, "ema_model.")
    state |= {
        k.replace("model.", "imnet_model.", 1): v + 1
        for k, v in _mmseg_keys(student, "model.").items()
    }
    path = _save(tmp_path_factory.mktemp("mmseg") / "daformer.pth", state)
    return path, {"student": student, "teacher": teacher, "state": state}


def test_daformer_student_and_teacher_give_their_logits(daformer_uda: tuple[Path, dict]) -> None:
    path, made = daformer_uda
    x = _x()
    for role in ("student", "teacher"):
        model, info = load_model_file(path, mmseg_role=role)
        assert info["arch"]["name"] == "daformer_mit_b0" and info["arch"]["role"] == role
        assert info["arch"]["num_classes"] == 19 and info["arch"]["options"] == {}
        assert info["class_names"] == list(CITYSCAPES.names)
        with torch.no_grad():
            torch.testing.assert_close(model(x).logits, made[role](x).logits)
        used = "model." if role == "student" else "ema_model."
        expected_unused = {k for k in made["state"] if not k.startswith(used)}
        assert set(info["unused_keys"]) == expected_unused
    assert "imnet_model.backbone.norm4.weight" in info["unused_keys"]


def test_sepico_projection_is_detected_and_loaded(tmp_path: Path) -> None:
    student = _randomised("daformer_mit_b0", 3, projection_dim=64)
    teacher = _randomised("daformer_mit_b0", 4, projection_dim=64)
    state = _mmseg_keys(student, "model.") | _mmseg_keys(teacher, "ema_model.")
    assert "model.auxiliary_head.convs.1.conv.weight" in state
    path = _save(tmp_path / "sepico.pth", state, meta={"iter": 40000})
    model, info = load_model_file(path)
    assert info["arch"]["options"] == {"projection_dim": 64} and info["class_names"] == []
    with torch.no_grad():
        ours, theirs = model(_x(1)), student(_x(1))
    torch.testing.assert_close(ours.features, theirs.features)
    torch.testing.assert_close(ours.logits, theirs.logits)
    assert "SePiCo projection 64" in info["arch"]["layout"]


def test_plain_segformer_reports_its_unused_conv_seg(tmp_path: Path) -> None:
    model = _randomised("segformer_mit_b0", 5, classes=7)
    state = _mmseg_keys(model, "")  # a source-only EncoderDecoder: no UDA prefix
    state["decode_head.conv_seg.weight"] = torch.randn(7, 128, 1, 1)  # BaseDecodeHead's, unused
    state["decode_head.conv_seg.bias"] = torch.randn(7)
    imported, report = import_mmseg_state({"state_dict": state}, source="plain.pth")
    assert report.layout.name == "segformer_mit_b0" and report.layout.prefix == ""
    assert sorted(report.unused_keys) == [
        "decode_head.conv_seg.bias",
        "decode_head.conv_seg.weight",
    ]
    with torch.no_grad():
        torch.testing.assert_close(imported(_x(2)).logits, model(_x(2)).logits)
    with pytest.raises(CheckpointError, match=r"plain\.pth: no teacher weights"):
        import_mmseg_state({"state_dict": state}, role="teacher", source="plain.pth")


def test_nvlabs_segformer_head_is_renamed_and_reordered(tmp_path: Path) -> None:
    model = _randomised("segformer_mit_b1", 6, classes=5, decoder_channels=16)
    state = {}
    for key, value in _mmseg_keys(model, "").items():
        for i in range(4):  # NVlabs: linear_c1 … linear_c4, fused in the order c4, c3, c2, c1
            key = key.replace(f"decode_head.linear_c.{i}.", f"decode_head.linear_c{i + 1}.")
        state[key] = value
    fuse = state["decode_head.linear_fuse.conv.weight"]  # (16, 4·16, 1, 1) in spcl's c1..c4
    blocks = [fuse[:, 16 * i : 16 * (i + 1)] for i in range(4)]
    state["decode_head.linear_fuse.conv.weight"] = torch.cat(blocks[::-1], dim=1)
    imported, report = import_mmseg_state({"state_dict": state})
    assert report.layout.head == "segformer_nvlabs"
    assert report.layout.options == {"decoder_channels": 16}
    with torch.no_grad():
        torch.testing.assert_close(imported(_x(3)).logits, model(_x(3)).logits)


HEAD_CASES = [  # (family, options, head kind): every DAFormer fusion, SegFormer
    ("daformer", {}, "daformer"),
    ("daformer", {"fusion": "aspp"}, "daformer"),
    ("daformer", {"fusion": "conv1", "decoder_channels": 128}, "daformer"),
    ("segformer", {}, "segformer"),
]


@pytest.mark.parametrize(
    ("variant", "case"),
    [("b0", c) for c in range(4)]
    + [(v, c) for v in ("b1", "b2", "b3", "b4", "b5") for c in (0, 3)],
)
def test_every_variant_and_head_is_detected(variant: str, case: int) -> None:
    family, options, head = HEAD_CASES[case]
    name = f"{family}_mit_{variant}"
    with torch.device("meta"):
        model = build_model(name, 16, options=options)
    layout = detect_mmseg_layout(_mmseg_keys(model, "ema_model."), role="teacher")
    assert (layout.name, layout.num_classes, layout.options, layout.head) == (
        name,
        16,
        options,
        head,
    )


def test_unsupported_layouts_are_named(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = build_model("daformer_mit_b0", 19)
    state = _mmseg_keys(model, "model.")
    resnet = {"model.backbone.layer1.0.conv1.weight": torch.empty(64, 64, 1, 1)}
    with pytest.raises(CheckpointError, match=r"dlv2\.pth: an mmseg ResNet checkpoint"):
        detect_mmseg_layout(resnet, source="dlv2.pth")
    other = {k: v for k, v in state.items() if "embed_layers" not in k}
    with pytest.raises(
        CheckpointError, match=r"neither DAFormerHead nor SegFormerHead.*fuse_layer"
    ):
        detect_mmseg_layout(other, source="x.pth")


def test_weights_that_do_not_fit_name_file_layout_and_keys(tmp_path: Path) -> None:
    model = _randomised("daformer_mit_b0", 7)
    state = _mmseg_keys(model, "model.")
    state["model.decode_head.embed_layers.2.proj.weight"] = torch.zeros(256, 99)
    del state["model.decode_head.fuse_layer.bottleneck.bn.running_var"]
    path = _save(tmp_path / "broken.pth", state)
    with pytest.raises(
        CheckpointError,
        match=r"broken\.pth: looks like daformer head on MiT-B0, 19 classes \(model\.\*\).*"
        r"embed_layers\.2\.proj\.weight: file \(256, 99\) vs model \(256, 160\).*"
        r"bottleneck\.bn\.running_var",
    ):
        load_model_file(path)
    with pytest.raises(CheckpointError, match=r"19 classes but 16 are expected"):
        load_model_file(_save(tmp_path / "ok.pth", _mmseg_keys(model, "model.")), num_classes=16)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: not an spcl model file.*mmseg"):
        load_model_file(tmp_path / "odd.pth")


def test_spcl_model_files_keep_their_options(tmp_path: Path) -> None:
    from spcl.models.files import save_model_file

    model = _randomised("daformer_mit_b0", 8, classes=4, projection_dim=8, fusion="conv1")
    options = {"projection_dim": 8, "fusion": "conv1"}
    path = tmp_path / "model.pth"
    save_model_file(
        model,
        path,
        name="daformer_mit_b0",
        num_classes=4,
        width=64,
        class_names=[],
        options=options,
    )
    loaded, info = load_model_file(path)
    assert info["arch"]["options"] == options
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(4)).features, model(_x(4)).features)


def test_predict_and_evaluate_score_a_published_checkpoint(
    daformer_uda: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, _ = daformer_uda
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    written = predict_paths(path, [str(tmp_path / "a.png")], tmp_path / "pred", progress=False)
    assert written and all(p.is_file() for p in written)
    data = generate_pair(
        tmp_path / "data", n_train=1, n_val=2, size=(32, 64), preview=False, progress=False
    )
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(path), "--config", "demo", "--json", str(out)]
    argv += [f"data.target_val.root={data}", "run.progress=false"]
    assert main(argv) == 0
    scores = json.loads(out.read_text())
    assert 0.0 <= scores["miou"] <= 100.0 and len(scores["per_class_iou"]) == 19
    assert "road" in capsys.readouterr().out
