"""Tests of ``spcl predict``'s logic: outputs, sizes, palettes, ids, bad input, wrong models."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.base import CheckpointError
from spcl.data.labels import CITYSCAPES, SYNTHIA_16_NAMES, class_table_for
from spcl.data.lists import to_tensor
from spcl.evaluation.inference import predict_probs
from spcl.evaluation.pred_folders import evaluate_folders
from spcl.models.build import build_model
from spcl.models.files import load_model_file, save_model_file
from spcl.predict import collect_images, predict_image, predict_paths, uncertainty_map

ARCH = "deeplabv2_resnet18"
WIDTH = 8  # tiny backbone: fast on a CPU
ROAD_RGB, CAR_RGB, SKY_RGB = (128, 64, 128), (0, 0, 142), (70, 130, 180)  # official colours
ROAD_ID, CAR_ID = 7, 26  # Cityscapes label ids


def model_file(path: Path, names: tuple[str, ...], seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(ARCH, len(names), width=WIDTH)
    save_model_file(model, path, name=ARCH, num_classes=len(names), width=WIDTH, class_names=names)
    return path


def write_image(path: Path, shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, np.ndarray]:
    """Three readable images of different sizes (one in a sub-folder) and a corrupt one."""
    images = {
        "a_leftImg8bit": write_image(tmp_path / "in" / "a_leftImg8bit.png", (40, 56), 0),
        "b": write_image(tmp_path / "in" / "b.png", (33, 47), 1),
        "sub/c": write_image(tmp_path / "in" / "sub" / "c.png", (24, 24), 2),
    }
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return images


def test_predict_writes_every_output_at_the_image_size(
    tmp_path: Path, inputs: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    with caplog.at_level(logging.WARNING):
        written = predict_paths(
            path, [str(tmp_path / "in")], tmp_path / "out", on_error="skip", progress=False
        )
    assert "bad.png" in caplog.text
    kinds = ("color", "overlay", "trainIds", "labelIds")
    expected = {tmp_path / "out" / k / f"{n}.png" for k in kinds for n in inputs}
    assert set(written) == expected and len(written) == len(expected)
    model, _ = load_model_file(path)
    palette = {i: CITYSCAPES.palette[i] for i in range(19)}
    to_label_id = {t: raw for raw, t in CITYSCAPES.id_to_train.items()}
    for name, image in inputs.items():
        out = {k: read(tmp_path / "out" / k / f"{name}.png") for k in kinds}
        train_ids = out["trainIds"]
        assert train_ids.shape == image.shape[:2] and out["color"].shape == image.shape
        probs = predict_probs(model, to_tensor(image)[None], image.shape[:2])[0]
        np.testing.assert_array_equal(train_ids, probs.argmax(0).numpy())
        for (i, j), t in np.ndenumerate(train_ids):  # naive per-pixel checks
            assert tuple(out["color"][i, j]) == palette[t]
            assert out["labelIds"][i, j] == to_label_id[t]
        blend = np.rint(0.5 * image.astype(float) + 0.5 * out["color"].astype(float))
        assert np.abs(out["overlay"].astype(float) - blend).max() <= 1.0


def test_unreadable_image_fails_by_default_naming_it(
    tmp_path: Path, inputs: dict[str, np.ndarray]
) -> None:
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        predict_paths(path, [str(tmp_path / "in")], tmp_path / "out", progress=False)


def test_confidence_and_entropy_maps(tmp_path: Path) -> None:
    image = write_image(tmp_path / "x.png", (20, 30), 3)
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    written = predict_paths(
        path, [str(tmp_path / "x.png")], tmp_path / "out", save_confidence=True, progress=False
    )
    confidence = read(tmp_path / "out" / "confidence" / "x.png").astype(float)
    model, _ = load_model_file(path)
    probs = predict_probs(model, to_tensor(image)[None], (20, 30))[0].double()
    assert np.abs(confidence - 255.0 * probs.max(0).values.numpy()).max() <= 0.5 + 1e-6
    assert tmp_path / "out" / "confidence" / "x.png" in written
    entropy = -(probs * probs.log()).sum(0) / np.log(19)
    got = uncertainty_map(probs.float(), "entropy").astype(float)
    assert np.abs(got - 255.0 * entropy.numpy()).max() <= 0.5 + 1e-4
    predict_paths(
        path,
        [str(tmp_path / "x.png")],
        tmp_path / "out2",
        save_confidence=True,
        uncertainty="entropy",
        progress=False,
    )
    np.testing.assert_array_equal(read(tmp_path / "out2" / "entropy" / "x.png"), got)
    sharp = torch.zeros(3, 1, 2)
    sharp[0] = 1.0  # one-hot: confidence 255, entropy 0
    assert uncertainty_map(sharp, "confidence").tolist() == [[255, 255]]
    assert uncertainty_map(sharp, "entropy").tolist() == [[0, 0]]


def test_resize_and_slide_keep_the_image_size(tmp_path: Path) -> None:
    image = write_image(tmp_path / "x.png", (30, 44), 4)
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    model, _ = load_model_file(path)
    resized = predict_image(model, image, size=(16, 24))
    assert resized.shape == (19, 30, 44)
    whole = predict_image(model, image)
    one_window = predict_image(model, image, slide=(64, 32))  # window covers the image
    assert torch.allclose(one_window, whole, atol=1e-6)
    predict_paths(
        path,
        [str(tmp_path / "x.png")],
        tmp_path / "o",
        slide=(16, 8),
        size=(24, 32),
        flip=True,
        scales=(0.75, 1.0),
        progress=False,
    )
    assert read(tmp_path / "o" / "trainIds" / "x.png").shape == (30, 44)


def test_subset_models_use_cityscapes_colours_and_ids(tmp_path: Path) -> None:
    table = class_table_for(SYNTHIA_16_NAMES, 16)
    car = SYNTHIA_16_NAMES.index("car")
    assert table.palette[0] == ROAD_RGB and table.palette[car] == CAR_RGB
    assert table.palette[SYNTHIA_16_NAMES.index("sky")] == SKY_RGB
    assert table.train_to_id()[car] == CAR_ID and table.train_to_id()[0] == ROAD_ID
    assert class_table_for(CITYSCAPES.names, 19) is CITYSCAPES
    image = write_image(tmp_path / "x.png", (16, 16), 5)
    path = model_file(tmp_path / "m16.pth", SYNTHIA_16_NAMES)
    predict_paths(path, [str(tmp_path / "x.png")], tmp_path / "out", progress=False)
    train_ids = read(tmp_path / "out" / "trainIds" / "x.png")
    assert train_ids.max() < 16 and read(tmp_path / "out" / "color" / "x.png").shape == image.shape
    names = [SYNTHIA_16_NAMES[t] for t in train_ids.ravel()]
    expected = [CITYSCAPES.train_to_id()[CITYSCAPES.names.index(n)] for n in names]
    assert read(tmp_path / "out" / "labelIds" / "x.png").ravel().tolist() == expected


def test_custom_classes_get_distinct_colours_and_no_label_ids(tmp_path: Path) -> None:
    table = class_table_for(("cat", "dog", "grass"), 3)
    assert len(set(table.palette)) == 3 and (0, 0, 0) not in table.palette
    assert not table.id_to_train
    assert class_table_for((), 4).names == ("class_0", "class_1", "class_2", "class_3")
    with pytest.raises(CheckpointError, match="2 class names for a 3-class model"):
        class_table_for(("a", "b"), 3)
    write_image(tmp_path / "x.png", (16, 16), 6)
    path = model_file(tmp_path / "m.pth", ("cat", "dog", "grass"))
    written = predict_paths(path, [str(tmp_path / "x.png")], tmp_path / "out", progress=False)
    assert {p.parent.name for p in written} == {"color", "overlay", "trainIds"}


def test_wrong_checkpoints_are_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "x.png", (16, 16), 7)
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    with pytest.raises(CheckpointError, match="19 classes but 16 are expected"):
        predict_paths(path, [str(tmp_path / "x.png")], tmp_path / "o", num_classes=16)
    torch.manual_seed(0)
    model19 = build_model(ARCH, 19, width=WIDTH)
    lying = tmp_path / "lying.pth"  # says 16 classes, holds a 19-class head
    save_model_file(
        model19, lying, name=ARCH, num_classes=16, width=WIDTH, class_names=SYNTHIA_16_NAMES
    )
    with pytest.raises(CheckpointError, match="do not fit"):
        predict_paths(lying, [str(tmp_path / "x.png")], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_collect_images_expands_folders_globs_and_refuses_collisions(tmp_path: Path) -> None:
    for rel in ("d/a.png", "d/s/b.jpg", "d/notes.txt", "e/a.png", "f/g.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = collect_images([str(tmp_path / "d"), str(tmp_path / "d" / "a.png")])
    assert [(p.name, str(n)) for p, n in found] == [("a.png", "a"), ("b.jpg", "s/b")]
    found = collect_images([str(tmp_path / "f" / "*.png")])
    assert [(p.name, str(n)) for p, n in found] == [("g.png", "g")]
    with pytest.raises(ValueError, match=r"a\.png and .*e/a\.png would both be written as a"):
        collect_images([str(tmp_path / "d"), str(tmp_path / "e" / "a.png")])
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        collect_images([str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="pattern"):
        collect_images([str(tmp_path / "*.gif")])
    (tmp_path / "z").mkdir()
    with pytest.raises(ValueError, match="no images"):
        collect_images([str(tmp_path / "z")])


def test_predictions_score_the_same_from_train_ids_and_label_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    for i in range(2):
        write_image(tmp_path / "in" / f"k{i}_leftImg8bit.png", (20, 28), 10 + i)
        gt_ids = rng.choice([ROAD_ID, CAR_ID, 8, 11, 0], (20, 28)).astype(np.uint8)
        (tmp_path / "gt").mkdir(exist_ok=True)
        Image.fromarray(gt_ids).save(tmp_path / "gt" / f"k{i}_gtFine_labelIds.png")
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    predict_paths(path, [str(tmp_path / "in")], tmp_path / "out", progress=False)
    by_train, report = evaluate_folders(
        tmp_path / "out" / "trainIds", tmp_path / "gt", progress=False
    )
    by_label, _ = evaluate_folders(
        tmp_path / "out" / "labelIds", tmp_path / "gt", pred_format="labelIds", progress=False
    )
    assert report["num_images"] == 2 and by_train.confusion.sum() > 0
    np.testing.assert_array_equal(by_train.confusion, by_label.confusion)


def test_existing_outputs_are_refused_listing_them_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_image(tmp_path / "in" / "a.png", (12, 16), 20)
    first = model_file(tmp_path / "m0.pth", CITYSCAPES.names, seed=0)
    predict_paths(first, [str(tmp_path / "in")], tmp_path / "out", progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")}
    assert len(before) == 4
    write_image(tmp_path / "in" / "b.png", (12, 16), 21)  # new image: its outputs are free
    (tmp_path / "out" / "notes.txt").write_text("mine")  # other files never block
    second = model_file(tmp_path / "m1.pth", CITYSCAPES.names, seed=1)
    with pytest.raises(FileExistsError, match=r"4 output file\(s\) .*color/a\.png.*overwrite"):
        predict_paths(second, [str(tmp_path / "in")], tmp_path / "out", progress=False)
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")}
    assert after == before  # nothing written, not even b's outputs
    written = predict_paths(
        second, [str(tmp_path / "in")], tmp_path / "out", overwrite=True, progress=False
    )
    assert len(written) == 8 and (tmp_path / "out" / "notes.txt").read_text() == "mine"
    model, _ = load_model_file(second)
    image = read(tmp_path / "in" / "a.png")
    expected = predict_probs(model, to_tensor(image)[None], image.shape[:2])[0].argmax(0)
    np.testing.assert_array_equal(read(tmp_path / "out" / "trainIds" / "a.png"), expected.numpy())
    from spcl.cli import main

    argv = ["predict", str(second), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--device", "cpu"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "spcl: error: 8 output file(s)" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0


def test_a_crash_while_writing_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "x.png", (12, 16), 22)
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    predict_paths(path, [str(tmp_path / "x.png")], tmp_path / "out", progress=False)
    old = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")}
    original_save = Image.Image.save
    calls = []

    def crash_midway(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        """Write half of the PNG to the destination, then fail (on the third file)."""
        calls.append(fp)
        if len(calls) < 3:
            return original_save(self, fp, *args, **kwargs)
        encoded = io.BytesIO()
        original_save(self, encoded, *args, **kwargs)
        half = encoded.getvalue()[: len(encoded.getvalue()) // 2]
        if isinstance(fp, (str, Path)):
            Path(fp).write_bytes(half)
        else:
            fp.write(half)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Image.Image, "save", crash_midway)
    with pytest.raises(OSError, match="simulated"):
        predict_paths(path, [str(tmp_path / "x.png")], tmp_path / "out", overwrite=True)
    monkeypatch.undo()
    files = sorted((tmp_path / "out").rglob("*"))
    assert [p for p in files if p.is_file()] == sorted(old)  # no temporary file left
    assert read(tmp_path / "out" / "trainIds" / "x.png").shape == (12, 16)  # whole files only
    assert (tmp_path / "out" / "trainIds" / "x.png").read_bytes() == old[
        tmp_path / "out" / "trainIds" / "x.png"
    ]  # same model: same bytes
