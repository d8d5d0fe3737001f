"""Tests of the synthetic source/target pair: determinism, layout, label statistics, the shift."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spcl.data.synthetic.generator as synthetic
from spcl.base import IGNORE_INDEX
from spcl.data.labels import CITYSCAPES
from spcl.data.registry import scan_dataset
from spcl.data.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    ShiftParams,
    generate_pair,
    render_scene,
    scene_rng,
    write_preview,
)
from spcl.data.synthetic.painter import Camera
from spcl.data.synthetic.style import MATERIALS, apply_target_effects, material_colours

TINY = (64, 128)  # image size of the on-disk sets
DEFAULT = (128, 256)  # image size of the in-memory statistics
N_SCENES = 16  # in-memory scenes per domain for the statistics
SMALL_CLASSES = ("pole", "traffic light", "traffic sign", "person", "rider", "bicycle")
BIG_CLASSES = ("road", "building", "sky", "vegetation")
FREQUENCY_TOLERANCE = 0.06  # max |source - target| pixel share per class (16 scenes each)
COLOUR_MARGIN = 30.0  # RGB L2 distance between a class's source and target mean colours
MIN_SHIFTED_CLASSES = 12  # classes whose mean colour moves by more than COLOUR_MARGIN (strong)
MAX_JITTER_RATIO = 0.7  # strong's source colour spread over mild's (jitter 12 vs 25: ~0.57)


def _tiny_set(root: Path, **kwargs: object) -> Path:
    args = {"seed": 3, "n_train": 2, "n_val": 1, "size": TINY, "progress": False}
    return generate_pair(root, **(args | kwargs))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _scenes(domain: str, preset: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    shift = PRESETS[preset]
    return [
        render_scene(scene_rng(seed, domain, "train", i), DEFAULT, domain, shift)
        for i in range(N_SCENES)
    ]


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return {
        "source": _scenes("source", "strong"),
        "target": _scenes("target", "strong"),
        "mild": _scenes("target", "mild"),
        "source_mild": _scenes("source", "mild"),
        "source_other_seed": _scenes("source", "strong", seed=1),
    }


def _class_shares(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Pixel share of each of the 19 classes, counted class by class."""
    labels = np.stack([label for _, label in pairs])
    return np.array([(labels == k).sum() / labels.size for k in range(CITYSCAPES.num_classes)])


def _mean_colours(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    """Mean RGB of each class present, by explicit per-class masks."""
    out = {}
    for k in range(CITYSCAPES.num_classes):
        pixels = [image[label == k] for image, label in pairs if (label == k).any()]
        if pixels:
            out[k] = np.concatenate(pixels).astype(np.float64).mean(axis=0)
    return out


def _colour_distances(a: list, b: list) -> list[float]:
    ma, mb = _mean_colours(a), _mean_colours(b)
    return [float(np.linalg.norm(ma[k] - mb[k])) for k in sorted(ma) if k in mb]


# ------------------------------------------------------------------ files, determinism, API


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first, second = _files(_tiny_set(tmp_path / "a")), _files(_tiny_set(tmp_path / "b"))
    assert first == second
    other = _files(_tiny_set(tmp_path / "c", seed=4))
    images = [k for k in first if "/images/" in k]
    assert len(images) == 6
    assert all(first[k] != other[k] for k in images)


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path) -> None:
    one = _files(_tiny_set(tmp_path / "one", workers=1))
    two = _files(_tiny_set(tmp_path / "two", workers=2))
    assert one == two


def test_layout_modes_and_manifest(tmp_path: Path) -> None:
    root = _tiny_set(tmp_path / "out", preset="mild")
    for domain in ("source", "target"):
        for split, count in (("train", 2), ("val", 1)):
            images = sorted((root / domain / "images" / split).iterdir())
            labels = sorted((root / domain / "labels" / split).iterdir())
            assert [p.name for p in images] == [
                f"{domain}_{split}_{i:05d}.png" for i in range(count)
            ]
            assert [p.name for p in labels] == [p.name for p in images]
            with Image.open(images[0]) as image, Image.open(labels[0]) as label:
                assert (image.mode, label.mode) == ("RGB", "L")
                assert image.size == label.size == (TINY[1], TINY[0])
    text = (root / "manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert (manifest["seed"], manifest["preset"], manifest["size"]) == (3, "mild", list(TINY))
    assert manifest["shift"] == dataclasses.asdict(PRESETS["mild"])
    assert manifest["counts"]["target"] == {"train": 2, "val": 1}
    assert manifest["class_names"] == list(CITYSCAPES.names)


def test_custom_shift_is_recorded(tmp_path: Path) -> None:
    shift = dataclasses.replace(PRESETS["strong"], blur=0.0)
    root = _tiny_set(tmp_path / "out", shift=shift, n_train=1, n_val=1, preview=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["preset"] == "custom"
    assert manifest["shift"]["blur"] == 0.0
    assert not (root / "preview.png").exists()


def test_refuses_non_empty_output_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite") as error:
        _tiny_set(out)
    assert str(out) in str(error.value)
    assert (out / "old.txt").read_text() == "keep me"
    _tiny_set(out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (_tiny_set(empty, n_train=1, n_val=1) / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]  # no temp dirs left


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"preset": "bogus"}, "preset"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": -1}, "n_val"),
        ({"size": (30, 64)}, "size"),
        ({"size": (64, 100)}, "size"),
        ({"size": (64,)}, "size"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_name_the_culprit(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name) as error:
        _tiny_set(tmp_path / "out", **kwargs)
    if name == "preset":
        assert "mild" in str(error.value) and "strong" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_crash_leaves_no_output_and_no_temp_dir(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_task = synthetic._render_task

    def failing_task(task: tuple) -> None:
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        real_task(task)

    monkeypatch.setattr(synthetic, "_render_task", failing_task)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _tiny_set(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_preview_grid_size_and_tiles(tmp_path: Path) -> None:
    root = _tiny_set(tmp_path / "out")
    path = root / "preview.png"
    assert path.stat().st_size > 0
    height, width = TINY
    pad, gap, header, rows = 4, 12, 16, 2  # rows: n=4 asked, only 2 train images
    with Image.open(path) as image:
        grid = np.asarray(image.convert("RGB"))
    assert grid.shape == (header + rows * height + (rows - 1) * pad, 2 * (2 * width + pad) + gap, 3)
    for domain, left in (("source", 0), ("target", 2 * width + pad + gap)):
        for row in (0, rows - 1):
            name = f"{domain}_train_{row:05d}.png"
            label = np.asarray(Image.open(root / domain / "labels" / "train" / name))
            image = np.asarray(Image.open(root / domain / "images" / "train" / name))
            top = header + row * (height + pad)
            label_tile = grid[top : top + height, left + width + pad : left + 2 * width + pad]
            assert np.array_equal(grid[top : top + height, left : left + width], image)
            assert np.array_equal(label_tile, CITYSCAPES.palette_array()[label])
    assert grid[:header].min() < 128  # header text drawn on white
    with pytest.raises(ValueError, match="n"):
        write_preview(root, tmp_path / "p.png", n=0)
    with pytest.raises(FileNotFoundError):
        write_preview(tmp_path / "missing", tmp_path / "p.png")


def test_scene_rng_streams_are_independent() -> None:
    draw = lambda *key: scene_rng(*key).integers(0, 2**31, 4).tolist()  # noqa: E731
    assert draw(0, "source", "train", 1) == draw(0, "source", "train", 1)
    keys = [
        (0, "source", "train", 1),
        (0, "target", "train", 1),
        (0, "source", "val", 1),
        (0, "source", "train", 2),
        (1, "source", "train", 1),
    ]
    assert len({tuple(draw(*k)) for k in keys}) == len(keys)


# ------------------------------------------------------------------ pieces


def test_material_colours_blend_linearly() -> None:
    shift = ShiftParams(colour_blend=0.25)
    target, source = material_colours("target", shift), material_colours("source", shift)
    for name, (game, real) in MATERIALS.items():
        for c in range(3):
            assert source[name][c] == pytest.approx(game[c])
            assert target[name][c] == pytest.approx(0.75 * game[c] + 0.25 * real[c])


def test_target_effects_off_is_identity_and_noise_has_its_std() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(40, 215, (32, 48, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (32, 48), dtype=np.uint8)
    shadow = np.zeros((32, 48), np.uint8)
    off = PRESETS["none"]
    assert np.array_equal(apply_target_effects(image, label, shadow, rng, off), image)
    noisy = apply_target_effects(image, label, shadow, rng, dataclasses.replace(off, noise=10.0))
    assert np.std(noisy.astype(float) - image) == pytest.approx(10.0, rel=0.1)
    shadow[:16] = 255
    dark = apply_target_effects(image, label, shadow, rng, dataclasses.replace(off, shadows=0.5))
    top, bottom = dark[:12].astype(float), dark[20:].astype(float)  # away from the soft edge
    assert np.allclose(top, image[:12] * 0.5, atol=1.0) and np.array_equal(bottom, image[20:])


def test_camera_projection_matches_pinhole_formula() -> None:
    cam = Camera(horizon=50.0, vanish_x=120.0, focal=200.0, height=1.5, size=(128, 256))
    assert cam.point(2.0, 10.0) == pytest.approx((120.0 + 200.0 * 2.0 / 10.0, 50.0 + 30.0))
    assert cam.point(-1.0, 4.0, 1.5) == pytest.approx((70.0, 50.0))  # eye height → horizon
    assert cam.point(0.0, cam.nearest_ground())[1] == pytest.approx(128.0)


def test_shift_params_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="colour_blend"):
        ShiftParams(colour_blend=1.5)
    with pytest.raises(ValueError, match="noise"):
        ShiftParams(noise=-1.0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ShiftParams(jpeg_quality=0)


# ------------------------------------------------------------------ label statistics, shift


def test_labels_use_valid_ids_and_every_class_appears(scenes: dict) -> None:
    valid = set(range(CITYSCAPES.num_classes)) | {IGNORE_INDEX}
    seen = set()
    for pairs in scenes.values():
        for image, label in pairs:
            assert image.shape == (*DEFAULT, 3) and image.dtype == np.uint8
            assert label.shape == DEFAULT and label.dtype == np.uint8
            ids = set(np.unique(label).tolist())
            assert ids <= valid
            seen |= ids
    assert seen >= set(range(CITYSCAPES.num_classes))


def test_class_frequencies_are_long_tailed(scenes: dict) -> None:
    for domain in ("source", "target"):
        shares = _class_shares(scenes[domain])
        big = sum(shares[CITYSCAPES.names.index(n)] for n in BIG_CLASSES)
        assert big > 0.5, domain
        for name in SMALL_CLASSES:
            assert 0 < shares[CITYSCAPES.names.index(name)] < 0.03, (domain, name)


def test_domains_share_label_statistics(scenes: dict) -> None:
    source, target = _class_shares(scenes["source"]), _class_shares(scenes["target"])
    assert np.abs(source - target).max() < FREQUENCY_TOLERANCE


def test_domains_differ_in_appearance_strong_more_than_mild(scenes: dict) -> None:
    strong = _colour_distances(scenes["source"], scenes["target"])
    mild = _colour_distances(scenes["source"], scenes["mild"])
    control = _colour_distances(scenes["source"], scenes["source_other_seed"])
    assert sum(d > COLOUR_MARGIN for d in strong) >= MIN_SHIFTED_CLASSES
    assert np.median(mild) < np.median(strong) - 10.0
    assert np.median(control) < np.median(mild) - 10.0  # the measure is not just scene noise


@pytest.mark.slow
def _colour_spread(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Median over classes of how much a class's mean colour varies from image to image."""
    per_class: dict[int, list[np.ndarray]] = {}
    for image, label in pairs:
        for k in range(CITYSCAPES.num_classes):
            mask = label == k
            if mask.sum() > 50:
                per_class.setdefault(k, []).append(image[mask].astype(np.float64).mean(axis=0))
    spreads = [np.linalg.norm(np.std(v, axis=0)) for v in per_class.values() if len(v) >= 4]
    return float(np.median(spreads))


def test_strong_source_colours_vary_less_per_object_than_mild(scenes: dict) -> None:
    # the game's "small per-instance variation": source_jitter 12 under strong, 25 under mild
    strong, mild = _colour_spread(scenes["source"]), _colour_spread(scenes["source_mild"])
    assert strong < MAX_JITTER_RATIO * mild, (strong, mild)


def test_default_train_split_has_every_class() -> None:
    """The default 300-image source train split (in memory) contains all 19 classes."""
    seen = set()
    for i in range(300):
        seen |= set(np.unique(render_scene(scene_rng(0, "source", "train", i))[1]).tolist())
    assert seen >= set(range(CITYSCAPES.num_classes))


def test_each_domain_of_the_pair_reads_as_a_folder_dataset_too(tmp_path: Path) -> None:
    """``classes.yaml`` in each domain: the own-data path can be tried on the pair."""
    root = _tiny_set(tmp_path / "pair")
    for domain in ("source", "target"):
        for split in ("train", "val"):
            pair = scan_dataset("synthetic", root, split, domain=domain)
            folder = scan_dataset("folder", root / domain, split)
            assert folder.table.names == pair.table.names == CITYSCAPES.names
            assert folder.images == pair.images and folder.labels == pair.labels
