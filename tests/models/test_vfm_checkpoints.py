"""The authors' Lightning checkpoints of VFM-UDA and VFM-UDA++ (spcl.models.vfm_checkpoints).

Files are generated in the authors' layout from spcl models at the published width (ViT-S, the
smallest): ``state_dict`` with the student under ``network.``, the EMA teacher under
``network_ema.``, VFM-UDA++'s distillation model under ``network_feature_extractor.`` /
``network_feature_head.``; the ImageNet-1k adapter file with ``network.encoder.*`` and a
classification ``network.head.*``. The key names asserted in
test_generated_files_use_the_authors_key_names are the authors' (read from tue-mps/vfm-uda-plusplus
``models/vit_adapter/*.py`` and ``models/multiscale_vfm/basic_pyramid_head.py``), so the mapping
is checked against their layout, not only against its own inverse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from spcl.base import CheckpointError
from spcl.models.build import build_model
from spcl.models.files import load_model_file
from spcl.models.segmenter import Segmenter
from spcl.predict import predict_paths

CLASSES = 19
ADAPTER, VFMUDA = "vfmudapp_vits14", "dinov2_vits14"
UNUSED_BY_ADAPTER = ("backbone.norm.", "backbone.mask_token")  # not in the authors' encoder


def _authors_network(model: Segmenter, *, adapter: bool) -> dict[str, Tensor]:
    """An spcl model's weights under the authors' names (encoder.*, upscale.*, out.*)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("decode_head."):
            out[key.removeprefix("decode_head.")] = value
        elif key.startswith("adapter."):
            out["encoder." + key.removeprefix("adapter.")] = value
        elif not (adapter and key.startswith(UNUSED_BY_ADAPTER)):
            out["encoder." + key.removeprefix("backbone.")] = value
    return out


def _lightning(network: dict[str, Tensor], *, teacher: bool = True) -> dict:
    """A Lightning checkpoint: student, teacher (its classifier shifted), extra modules."""
    state = {f"network.{k}": v for k, v in network.items()}
    if teacher:
        shifted = {k: v + 1 if k == "out.weight" else v for k, v in network.items()}
        state |= {f"network_ema.{k}": v for k, v in shifted.items()}
    state["network_feature_extractor.encoder.cls_token"] = torch.zeros(1, 1, 8)
    state["network_feature_head.feat_project.0.weight"] = torch.zeros(8, 8, 1, 1)
    return {"state_dict": state, "epoch": 0, "global_step": 40000, "hyper_parameters": {}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The two source models and their files (built once: ViT-S at width 64 is 27 M params)."""
    folder = tmp_path_factory.mktemp("vfm")
    torch.manual_seed(0)
    adapter = build_model(ADAPTER, CLASSES).eval()
    vfmuda = build_model(VFMUDA, CLASSES).eval()
    network = _authors_network(adapter, adapter=True)
    paths = {
        "adapter": folder / "vfmuda_plusplus_small.ckpt",
        "vfmuda": folder / "vfmuda_small.ckpt",
        "trimmed": folder / "trimmed.ckpt",
        "in1k": folder / "dinov2_small_with_vitadapter_pretraining_in1k.ckpt",
        "dinov2": folder / "dinov2_vits14_pretrain.pth",
    }
    torch.save(_lightning(network), paths["adapter"])
    vfmuda_network = _authors_network(vfmuda, adapter=False)
    # VFM-UDA's TokenMasking holds the encoder's mask token under a second name
    vfmuda_network["token_masking.mask_token"] = vfmuda_network["encoder.mask_token"]
    torch.save(_lightning(vfmuda_network), paths["vfmuda"])
    torch.save(_lightning(network, teacher=False), paths["trimmed"])
    encoder = {f"network.{k}": v for k, v in network.items() if k.startswith("encoder.")}
    head = {"network.head.2.weight": torch.zeros(384, 384), "network.head.8.bias": torch.zeros(9)}
    torch.save({"state_dict": encoder | head, "global_step": 50000}, paths["in1k"])
    torch.save(vfmuda.backbone.state_dict(), paths["dinov2"])
    return {"adapter_model": adapter, "vfmuda_model": vfmuda, "network": network, **paths}


def test_generated_files_use_the_authors_key_names(files: dict) -> None:
    network = files["network"]
    for key in (
        "encoder.level_embed",
        "encoder.spm.stem.7.running_var",
        "encoder.spm.conv4.1.weight",
        "encoder.spm.fc4.bias",
        "encoder.interactions.0.injector.gamma",
        "encoder.interactions.0.injector.attn.sampling_offsets.bias",
        "encoder.interactions.2.extractor.ffn.dwconv.dwconv.weight",
        "encoder.interactions.2.extractor.ffn_norm.weight",
        "encoder.interactions.3.extra_extractors.1.attn.value_proj.weight",
        "encoder.up.weight",
        "encoder.norm4.running_mean",
        "encoder.blocks.11.ls2.gamma",
        "upscale.up_conv3.weight",
        "upscale.reduce_conv1.bias",
        "upscale.smooth_conv4.weight",
        "upscale.norm3.num_batches_tracked",
        "out.weight",
    ):
        assert key in network, key
    assert "encoder.interactions.2.extra_extractors.0.attn.value_proj.weight" not in network
    assert "encoder.norm.weight" not in network and "encoder.mask_token" not in network
    assert network["encoder.pos_embed"].shape == (1, 1370, 384)  # not resized (their default)
    assert network["encoder.interactions.0.injector.attn.value_proj.weight"].shape == (192, 384)
    assert network["encoder.interactions.0.extractor.ffn.fc1.weight"].shape == (96, 384)


@pytest.mark.parametrize("kind", ["adapter", "vfmuda"])
def test_released_checkpoints_are_read_as_the_student_or_the_teacher(
    files: dict, kind: str
) -> None:
    source: Segmenter = files[f"{kind}_model"]
    model, info = load_model_file(files[kind])  # what `spcl evaluate` and `spcl predict` call
    assert info["arch"]["name"] == (ADAPTER if kind == "adapter" else VFMUDA)
    assert info["arch"]["role"] == "student" and info["arch"]["num_classes"] == CLASSES
    assert len(info["class_names"]) == CLASSES
    others = ["network_ema", "network_feature_extractor", "network_feature_head"]
    expected = others if kind == "adapter" else ["network.token_masking", *others]
    assert info["unused_keys"] == expected
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(UNUSED_BY_ADAPTER) or kind == "vfmuda":
            assert torch.equal(loaded[key], value), key
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, source(x).logits, rtol=0, atol=0)
    teacher, info = load_model_file(files[kind], mmseg_role="teacher")
    assert info["arch"]["role"] == "teacher"
    out_weight = source.state_dict()["decode_head.out.weight"]
    assert torch.equal(teacher.state_dict()["decode_head.out.weight"], out_weight + 1)


def test_a_trimmed_file_has_no_teacher_and_an_in1k_file_no_segmenter(files: dict) -> None:
    model, _ = load_model_file(files["trimmed"])
    assert torch.equal(
        model.state_dict()["adapter.level_embed"],
        files["adapter_model"].state_dict()["adapter.level_embed"],
    )
    with pytest.raises(CheckpointError, match=r"without the teacher \(network_ema"):
        load_model_file(files["trimmed"], mmseg_role="teacher")
    with pytest.raises(CheckpointError, match="ImageNet-1k adapter"):
        load_model_file(files["in1k"])


@pytest.mark.parametrize("kind", ["adapter", "in1k"])
def test_model_pretrained_fills_vit_and_adapter_from_the_authors_files(
    files: dict, kind: str
) -> None:
    torch.manual_seed(1)  # another init than the source's
    model = build_model(ADAPTER, CLASSES, pretrained=files[kind])
    source = files["adapter_model"].state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("backbone.", "adapter.")) and not key.startswith(UNUSED_BY_ADAPTER):
            assert torch.equal(value, source[key]), key
    out = "decode_head.out.weight"  # the head is never filled: it keeps its own init
    assert not torch.equal(model.state_dict()[out], source[out])


def test_official_dinov2_and_vfmuda_files_fill_the_vit(files: dict) -> None:
    official = torch.load(files["dinov2"], weights_only=True)
    torch.manual_seed(1)
    model = build_model(ADAPTER, CLASSES, pretrained=files["dinov2"])  # unchanged, strict
    for key, value in official.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    torch.manual_seed(1)
    vfmuda = build_model(VFMUDA, CLASSES, pretrained=files["vfmuda"])  # its student's encoder
    for key, value in official.items():
        assert torch.equal(vfmuda.backbone.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="no adapter"):
        build_model(ADAPTER, CLASSES, pretrained=files["vfmuda"])


def test_a_file_of_another_size_is_named(files: dict, tmp_path: Path) -> None:
    network = dict(files["network"])
    network["encoder.level_embed"] = torch.zeros(3, 100)
    torch.save(_lightning(network, teacher=False), tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match=r"adapter\.level_embed"):
        load_model_file(tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="level_embed"):
        build_model(ADAPTER, CLASSES, pretrained=tmp_path / "edited.ckpt")


def test_spcl_predict_runs_a_released_checkpoint(files: dict, tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    Image.fromarray(np.full((48, 80, 3), 128, dtype=np.uint8)).save(image)
    written = predict_paths(files["adapter"], [str(image)], tmp_path / "out", progress=False)
    masks = [Image.open(path) for path in written if path.suffix == ".png"]
    assert masks and all(mask.size == (80, 48) for mask in masks)


def test_entries_that_are_no_tensors_are_not_read(files: dict, tmp_path: Path) -> None:
    state = torch.load(files["trimmed"], weights_only=True)
    state["state_dict"][7] = "not a weight"  # an edited file: a key and a value of no weight
    state["state_dict"]["network.note"] = "text"
    torch.save(state, tmp_path / "edited.ckpt")
    _, info = load_model_file(tmp_path / "edited.ckpt")
    assert info["arch"]["name"] == ADAPTER and info["unused_keys"] == [
        "network_feature_extractor",
        "network_feature_head",
    ]
