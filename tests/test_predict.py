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
from spcl.engine.checkpoint import clean_state_dict
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
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "gt" / "x.png")
    with pytest.raises(ValueError, match=r"out is the output of spcl predict but has no labelIds/"):
        evaluate_folders(tmp_path / "out", tmp_path / "gt", pred_format="labelIds")


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


def test_predictions_score_the_same_from_train_ids_and_label_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
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
    # predict's --out itself: its trainIds/ (labelIds/) are scored, not color/ and overlay/
    # (main 3f6f3d3: "color/k0.png and overlay/k0.png both stand for image 'k0'")
    for pred_format, expected in (("trainIds", by_train), ("labelIds", by_label)):
        scores, report = evaluate_folders(
            tmp_path / "out", tmp_path / "gt", pred_format=pred_format, progress=False
        )
        np.testing.assert_array_equal(scores.confusion, expected.confusion)
        assert report["pred_dir"] == str(tmp_path / "out" / pred_format)
    from spcl.cli import main

    argv = ["evaluate", "--pred-dir", str(tmp_path / "out"), "--gt-dir", str(tmp_path / "gt")]
    assert main(argv) == 0
    assert f"predictions {tmp_path / 'out' / 'trainIds'} against" in capsys.readouterr().out


def png_bytes(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_a_rerun_skips_finished_images_and_refuses_other_models_or_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    # main 3f6f3d3: a re-run needed --overwrite and predicted every image again
    write_image(tmp_path / "in" / "a.png", (12, 16), 20)
    first = model_file(tmp_path / "m0.pth", CITYSCAPES.names, seed=0)
    out = tmp_path / "out"
    predict_paths(first, [str(tmp_path / "in")], out, progress=False)
    before = png_bytes(out)
    assert len(before) == 4 and (out / "predict.json").is_file()
    write_image(tmp_path / "in" / "b.png", (12, 16), 21)
    with caplog.at_level(logging.WARNING):
        written = predict_paths(first, [str(tmp_path / "in")], out, progress=False)
    assert {p.stem for p in written} == {"b"} and len(written) == 4  # only the new image
    assert "1 of 2 image(s) already have all their outputs" in caplog.text
    (out / "overlay" / "b.png").unlink()  # an image cut short by a crash is predicted again
    written = predict_paths(first, [str(tmp_path / "in")], out, progress=False)
    assert {p.stem for p in written} == {"b"} and (out / "overlay" / "b.png").is_file()
    assert {p: png_bytes(out)[p] for p in before} == before

    (out / "notes.txt").write_text("mine")  # other files never block
    second = model_file(tmp_path / "m1.pth", CITYSCAPES.names, seed=1)
    kept = png_bytes(out)
    for model, options, differs in ((second, {}, "model"), (first, {"flip": True}, "flip")):
        with pytest.raises(FileExistsError, match=rf"color/a\.png.*\({differs}: .*--overwrite"):
            predict_paths(model, [str(tmp_path / "in" / "a.png")], out, progress=False, **options)
    assert png_bytes(out) == kept  # nothing written
    written = predict_paths(second, [str(tmp_path / "in")], out, overwrite=True, progress=False)
    assert len(written) == 8 and (out / "notes.txt").read_text() == "mine"
    model, _ = load_model_file(second)
    image = read(tmp_path / "in" / "a.png")
    expected = predict_probs(model, to_tensor(image)[None], image.shape[:2])[0].argmax(0)
    np.testing.assert_array_equal(read(out / "trainIds" / "a.png"), expected.numpy())

    from spcl.cli import main

    argv = ["predict", str(second), str(tmp_path / "in"), "--out", str(out), "--device", "cpu"]
    capsys.readouterr()
    assert main(argv) == 0 and "wrote 0 files" in capsys.readouterr().out
    argv[1] = str(first)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spcl: error: output files under") and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    (tmp_path / "file").write_text("")
    assert main([*argv[:-3], str(tmp_path / "file"), "--device", "cpu"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


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
    record = tmp_path / "out" / "predict.json"  # what wrote the outputs (for re-runs)
    assert [p for p in files if p.is_file()] == sorted([*old, record])  # no temporary file
    assert read(tmp_path / "out" / "trainIds" / "x.png").shape == (12, 16)  # whole files only
    assert (tmp_path / "out" / "trainIds" / "x.png").read_bytes() == old[
        tmp_path / "out" / "trainIds" / "x.png"
    ]  # same model: same bytes


FAMILIES = {  # one tiny model per family: (registry name, width)
    "deeplab": ("deeplabv2_resnet18", 8),
    "segformer_mit": ("segformer_mit_b0", 16),
    "daformer_mit": ("daformer_mit_b0", 16),
    "dinov2_vit": ("dinov2_vits14", 16),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_model_family_predicts_images_below_its_patch_and_above_its_crop(
    tmp_path: Path, family: str
) -> None:
    # main 3f6f3d3: MiT raised a raw RuntimeError on the 20x30 image (its 8x8 key reduction)
    name, width = FAMILIES[family]
    torch.manual_seed(0)
    model = build_model(name, 3, width=width)
    path = tmp_path / "model.pth"
    save_model_file(model, path, name=name, num_classes=3, width=width, class_names=("a", "b", "c"))
    shapes = {"tiny": (3, 5), "small": (20, 30), "large": (48, 120)}
    for stem, shape in shapes.items():
        write_image(tmp_path / "in" / f"{stem}.png", shape, 30)
    predict_paths(path, [str(tmp_path / "in")], tmp_path / "out", progress=False)
    small = str(tmp_path / "in" / "small.png")
    predict_paths(  # windows smaller than a MiT accepts, flipped and rescaled
        path, [small], tmp_path / "o2", slide=(16, 12), flip=True, scales=(0.5, 1.0)
    )
    for stem, shape in shapes.items():
        ids = read(tmp_path / "out" / "trainIds" / f"{stem}.png")
        assert ids.shape == shape and ids.max() < 3
    assert read(tmp_path / "o2" / "trainIds" / "small.png").shape == shapes["small"]


def test_evaluate_scores_a_mit_model_on_images_smaller_than_its_patch(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # main 3f6f3d3: `spcl evaluate MODEL --config` stopped with a RuntimeError on 20x30 images
    root = tmp_path / "data"
    (root / "classes.yaml").parent.mkdir()
    (root / "classes.yaml").write_text("names: [a, b, c]\n")
    for i in range(2):
        write_image(root / "images" / "val" / f"v{i}.png", (20, 30), 40 + i)
        labels = np.random.default_rng(i).integers(0, 3, (20, 30)).astype(np.uint8)
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(root / "labels" / "val" / f"v{i}.png")
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"data:\n  num_classes: 3\n  target_val: {{kind: folder, root: {root}, split: val}}\n"
        "run: {device: cpu, progress: false}\n"
    )
    torch.manual_seed(0)
    model = build_model("daformer_mit_b0", 3, width=16)
    path = tmp_path / "mit.pth"
    save_model_file(
        model, path, name="daformer_mit_b0", num_classes=3, width=16, class_names=("a", "b", "c")
    )
    from spcl.cli import main

    assert main(["evaluate", str(path), "--config", str(config)]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_on_error_skip_goes_on_after_an_image_the_model_cannot_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # main 3f6f3d3: a model's failure was not skipped and the images after it were not written
    import spcl.predict

    for stem in ("a", "b", "c"):
        write_image(tmp_path / "in" / f"{stem}.png", (12, 16), 50)
    write_image(tmp_path / "in" / "b.png", (13, 16), 51)
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    real = spcl.predict.predict_image

    def failing_on_b(model: torch.nn.Module, image: np.ndarray, **kwargs: object) -> torch.Tensor:
        if image.shape[0] == 13:
            raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB\nmore lines")
        return real(model, image, **kwargs)

    monkeypatch.setattr(spcl.predict, "predict_image", failing_on_b)
    with pytest.raises(ValueError, match=r"cannot segment .*b\.png \(13x16 pixels\): CUDA out"):
        predict_paths(path, [str(tmp_path / "in")], tmp_path / "out", progress=False)
    from spcl.cli import main

    argv = ["predict", str(path), str(tmp_path / "in"), "--out", str(tmp_path / "o2")]
    capsys.readouterr()
    assert main([*argv, "--device", "cpu", "--on-error", "skip"]) == 0
    assert {p.stem for p in (tmp_path / "o2" / "trainIds").iterdir()} == {"a", "c"}
    err = capsys.readouterr().err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]  # as a terminal shows them
    skipped = [line for line in lines if "b.png" in line]
    assert skipped and all(line.startswith(("skipped ", "--on-error skip")) for line in skipped)


def test_exif_orientation_is_applied_and_16_bit_images_are_converted(tmp_path: Path) -> None:
    # main 3f6f3d3: EXIF ignored; a 16-bit grey image clipped to near-white without a word
    import cv2

    from spcl.predict_io import read_image

    stored = np.random.default_rng(60).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored picture is shown turned 90 degrees clockwise
    (tmp_path / "in").mkdir()
    Image.fromarray(stored).save(tmp_path / "in" / "turned.png", exif=exif)
    upright = np.rot90(stored, k=-1)
    np.testing.assert_array_equal(read_image(tmp_path / "in" / "turned.png"), upright)
    grey = (np.arange(14 * 18).reshape(14, 18) * 251).astype(np.uint16)  # 0..63,001
    cv2.imwrite(str(tmp_path / "in" / "deep.png"), grey)
    as_opencv = cv2.imread(str(tmp_path / "in" / "deep.png"), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(read_image(tmp_path / "in" / "deep.png"), as_opencv)
    assert as_opencv.max() == 246  # 63,001 >> 8; main clipped every value above 255 to 255
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif: floating-point"):
        read_image(tmp_path / "float.tif")
    path = model_file(tmp_path / "model.pth", CITYSCAPES.names)
    predict_paths(path, [str(tmp_path / "in")], tmp_path / "out", progress=False)
    model, _ = load_model_file(path)
    expected = predict_probs(model, to_tensor(upright.copy())[None], upright.shape[:2])[0]
    np.testing.assert_array_equal(
        read(tmp_path / "out" / "trainIds" / "turned.png"), expected.argmax(0).numpy()
    )
    overlay = read(tmp_path / "out" / "overlay" / "deep.png").astype(float)
    colour = read(tmp_path / "out" / "color" / "deep.png").astype(float)
    assert np.abs(overlay - (0.5 * as_opencv + 0.5 * colour)).max() <= 1.0


def test_a_training_checkpoint_points_to_the_model_file_beside_it(tmp_path: Path) -> None:
    # main 3f6f3d3: "looks like an mmseg segmentor/UDA checkpoint"
    from spcl.engine.checkpoint import save_state

    torch.manual_seed(0)
    model = build_model(ARCH, 19, width=WIDTH)
    checkpoint = tmp_path / "07_online" / "checkpoint.pth"
    checkpoint.parent.mkdir()
    state = clean_state_dict(model.state_dict())
    save_state(  # what spcl.engine.loop saves for the online stage
        {"model": state, "teacher": state, "_loop": {"iteration": 4, "rng": {}, "scaler": {}}},
        checkpoint,
    )
    write_image(tmp_path / "x.png", (12, 16), 70)
    pattern = r"checkpoint\.pth: a training checkpoint.*use model\.pth beside it"
    with pytest.raises(CheckpointError, match=pattern):
        predict_paths(checkpoint, [str(tmp_path / "x.png")], tmp_path / "out", progress=False)


def test_an_image_far_larger_than_the_training_input_gets_a_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    path = model_file(run / "07_online" / "model.pth", CITYSCAPES.names)
    (run / "config.yaml").write_text("online: {crop: [8, 12]}\ndata: {target_val: {size: []}}\n")
    write_image(tmp_path / "in" / "near.png", (16, 24), 80)  # 4x the pixels: no hint
    with caplog.at_level(logging.WARNING):
        predict_paths(path, [str(tmp_path / "in")], tmp_path / "o1", progress=False)
    assert "--size" not in caplog.text
    write_image(tmp_path / "in" / "far.png", (17, 24), 81)
    with caplog.at_level(logging.WARNING):
        predict_paths(path, [str(tmp_path / "in")], tmp_path / "o2", progress=False)
        predict_paths(path, [str(tmp_path / "in")], tmp_path / "o3", size=(8, 12), progress=False)
    (hint,) = [r.getMessage() for r in caplog.records if "--size" in r.getMessage()]
    assert "far.png is 17x24 pixels, over 4x the 8x12" in hint
    assert f"online.crop in {run / 'config.yaml'}" in hint
