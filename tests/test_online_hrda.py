"""The online stage under HRDA (online.hrda): the student's two views and HRDA's loss, the
teacher's whole-crop pseudo-labels, FD on context features, and the model file it writes read
back by evaluate/predict as the two-scale model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from spcl.config import load_config
from spcl.context import open_run
from spcl.data.lists import _margin_mask
from spcl.data.synthetic import generate_pair
from spcl.engine.loop import step_terms, weighted_total
from spcl.method.hrda import Box
from spcl.models.files import load_model_file, save_model_file
from spcl.models.hrda import ContextView, DetailCropStudent, HRDAOutput, HRDASegmenter
from spcl.pipeline import run_pipeline
from spcl.stages import online
from spcl.stages.online_step import online_step
from tiny import TINY

HRDA = (
    "online.hrda.enabled=true",
    "online.hrda.detail_crop=[32, 32]",
    "online.crop=[64, 64]",
    "online.init=pretrained",
    "online.optim.batch_size=2",
    "run.stages=[online]",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("hrda")
    path = generate_pair(
        root / "data", seed=4, n_train=4, n_val=2, size=(64, 128), preview=False, progress=False
    )
    return [f"data.{d}.root={path}" for d in ("source", "target", "target_val")]


def _config(data: list[str], tmp_path: Path, *overrides: str) -> Any:
    return load_config("demo", [*TINY, *data, *HRDA, *overrides, f"run.out={tmp_path}"])


def test_the_student_trains_on_two_views_with_hrdas_loss(data, tmp_path: Path) -> None:
    config = _config(data, tmp_path, "online.masking.enabled=true")
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {})
        parts = stage.parts
        assert isinstance(parts.student, DetailCropStudent)
        assert isinstance(stage.state["teacher"], HRDASegmenter)
        seen: list[HRDAOutput] = []
        original = parts.student.net

        def spy(images: torch.Tensor, box: Any = None) -> HRDAOutput:
            out = original(images, box=box)
            seen.append(out)
            return out

        parts.student.net = spy
        terms = step_terms(stage.step(0))
        assert set(terms) == {"seg", "mix", "mask"}
        weighted_total(terms, stage.weights).backward()
    assert len(seen) == 3 and all(o.detail is not None for o in seen)
    for out in seen:  # 64-pixel crops, DeepLab-v2 at stride 8: 8×8 fused, 4×4 detail logits
        assert out.logits.shape[-2:] == (8, 8) and out.detail.shape[-2:] == (4, 4)
        assert out.box.y1 % 8 == 0 and out.box.y2 - out.box.y1 == 32
    attention = stage.state["model"].scale_attention
    assert all(p.grad is not None for p in attention.parameters())


def test_the_feature_distance_compares_context_features(data, tmp_path: Path, monkeypatch) -> None:
    """The frozen ImageNet model is single-scale and sees the context view: its features match
    the student's."""
    real = online.build_segmenter

    def without_file(ctx: Any, **kwargs: Any) -> torch.nn.Module:
        saved, ctx.config.model.pretrained = ctx.config.model.pretrained, None
        try:
            return real(ctx, **kwargs)
        finally:
            ctx.config.model.pretrained = saved

    monkeypatch.setattr(online, "build_segmenter", without_file)
    config = _config(data, tmp_path, "model.name=daformer_mit_b0", "model.pretrained=mit_b0.pth")
    with open_run(config) as ctx:  # the file stands for an ImageNet init: FD is on
        student, imnet = online._models(ctx, None)
    assert isinstance(student, HRDASegmenter) and isinstance(imnet, ContextView)
    assert not isinstance(imnet.segmenter, HRDASegmenter)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert imnet(x).features.shape == student(x, box=Box(0, 32, 0, 32)).features.shape


def test_a_single_scale_warm_up_fills_the_segmenter_inside(data, tmp_path: Path) -> None:
    config = _config(data, tmp_path, "online.init=warmup")
    with open_run(config) as ctx:
        warm = online.build_segmenter(ctx)  # what the warm-up stage trains: one scale
        path = tmp_path / "warmup.pth"
        save_model_file(
            warm,
            path,
            name="deeplabv2_resnet18",
            num_classes=19,
            width=8,
            class_names=[str(i) for i in range(19)],
        )
        student, _ = online._models(ctx, path)
    assert isinstance(student, HRDASegmenter)
    for key, value in warm.state_dict().items():
        assert torch.equal(student.segmenter.state_dict()[key], value)


def test_the_model_file_rebuilds_the_two_scale_model(data, tmp_path: Path) -> None:
    """The stage's model.pth is scored by the evaluate stage and read back by load_model_file
    (spcl evaluate, spcl predict) as the two-scale model."""
    steps = ("online.optim.max_iter=2", "online.optim.stop_iter=2", "run.val_every=0")
    config = _config(data, tmp_path, *steps, "run.stages=[online, evaluate]")
    with open_run(config) as ctx:
        outputs = run_pipeline(ctx)
    assert json.loads(outputs["evaluate"].read_text())["online"] >= 0
    model, info = load_model_file(outputs["online"])
    assert isinstance(model, HRDASegmenter)
    assert info["arch"]["hrda"]["detail_crop"] == [32, 32]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 128))
    assert out.logits.shape == (1, 19, 8, 16) and out.detail is None


def test_margin_mask_by_hand() -> None:
    mask = _margin_mask((8, 16), (1, 2, 3, 1), ())
    assert mask[0].sum() == 0 and mask[6:].sum() == 0  # top 1, bottom 2 rows
    assert mask[1:6, :3].sum() == 0 and mask[1:6, 15].sum() == 0  # left 3, right 1 columns
    assert mask[1:6, 3:15].all()
    scaled = _margin_mask((16, 32), (1, 2, 3, 1), (8, 16))  # given at half the file's size
    assert scaled[:2].sum() == 0 and scaled[2].sum() > 0 and scaled[12:].sum() == 0
    assert scaled[2:12, :6].sum() == 0 and scaled[2:12, 6:30].all() and scaled[2:12, 30:].sum() == 0
    assert _margin_mask((4, 4), (0, 0, 0, 0), ()).all()  # zero margins zero nothing


def test_pseudo_margins_follow_the_crop_and_zero_the_weight(data, tmp_path: Path) -> None:
    """HRDA's PL crop v2: the whole image's margins, cropped and flipped with it, zero the pseudo
    weight; the images are those of a run without margins (no draw added)."""
    overrides = ("online.pseudo.margins=[8, 16, 8, 8]", "online.crop=[48, 96]")
    config = _config(data, tmp_path, *overrides, "online.pseudo.weight=none")
    with open_run(config) as ctx:
        stage = online.setup(ctx, tmp_path / "07_online", {})
        src, tgt = next(stage.state["source"]), next(stage.state["target"])
        plain = online.domain_dataset(
            ctx.config.data.target, with_labels=False, train=True, hflip=True, crop=[48, 96]
        )
        seen: dict[str, torch.Tensor] = {}
        stage.parts.watch = lambda labels, weight: seen.update(weight=weight)
        step_terms(online_step(stage.parts, 0, src, tgt))
    valid = tgt["pseudo_valid"]
    assert valid.shape == (2, 48, 96) and not valid.all() and valid.any()
    assert torch.equal(seen["weight"] > 0, valid)
    crop = stage.state["target"].loader.dataset[(0, 5)]
    assert torch.equal(crop["image"], plain[(0, 5)]["image"])  # the same crop and flip
    whole = online.domain_dataset(ctx.config.data.target, with_labels=False, train=True)[0]
    mask = torch.from_numpy(_margin_mask((64, 128), (8, 16, 8, 8), ()) == 1)
    places = [
        (y, x, flip)
        for y in range(17)
        for x in range(33)
        for flip in (False, True)
        if torch.equal(_cut(whole["image"], y, x, flip), crop["image"])
    ]
    assert len(places) == 1  # where the loader cut the image, and whether it flipped it
    y, x, flip = places[0]
    assert torch.equal(crop["pseudo_valid"], _cut(mask, y, x, flip))


def _cut(tensor: torch.Tensor, y: int, x: int, flip: bool) -> torch.Tensor:
    window = tensor[..., y : y + 48, x : x + 96]
    return window.flip(-1) if flip else window
