"""Readers of the official layouts (GTA5, SYNTHIA, Synscapes, Cityscapes) and user folders.

Each test writes a tiny fake tree in the real layout (file names, bit depths, id encodings) and
checks the train ids that come out against a per-pixel loop over maps written out here from the
SPCL reference code, independently of ``spcl.data``.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.data.labels import SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.data.readers.folder import load_class_table
from spcl.data.readers.synthia import synthia_table
from spcl.data.registry import DATASET_KINDS, build_dataset, dataset_options, scan_dataset
from spcl.data.transforms import build_train_transform

H, W = 16, 32  # tiny images
IGNORE = 255
# Cityscapes label id → train id (cityscapesscripts labels.py; SPCL core/datasets/cityscapes.py)
CS19 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
# the reference's cityscapes.py with NUM_CLASS == 16 (SYNTHIA → Cityscapes)
CS16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10, 25: 11,
        26: 12, 28: 13, 32: 14, 33: 15}  # fmt: skip
CS13 = {7: 0, 8: 1, 11: 2, 19: 3, 20: 4, 21: 5, 23: 6, 24: 7, 25: 8, 26: 9, 28: 10, 32: 11,
        33: 12}  # fmt: skip
# SYNTHIA class id → train id: SPCL core/datasets/synthia.py id_to_trainid
SYN16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12,
         19: 13, 12: 14, 11: 15}  # fmt: skip
SYN13 = {3: 0, 4: 1, 2: 2, 15: 3, 9: 4, 6: 5, 1: 6, 10: 7, 17: 8, 8: 9, 19: 10, 12: 11, 11: 12}


def naive_map(raw: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, IGNORE, dtype=np.int64)
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            out[i, j] = mapping.get(int(raw[i, j]), IGNORE)
    return out


def write_rgb(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def write_grey(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def write_palette(path: Path, ids: np.ndarray) -> None:
    """GTA5-style palette PNG: index = id, colours whose grey level is not the id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in ((i * 7) % 256, 200, 3)])
    image.save(path)


def write_png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG written byte by byte (no OpenCV, so no BGR convention involved)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16-bit, colour type RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = b"\x89PNG\r\n\x1a\n"
    idat = chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(signature + chunk(b"IHDR", header) + idat + chunk(b"IEND", b""))


def random_ids(seed: int, high: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high + 1, size)


def make_gta5(root: Path, n: int = 3) -> list[np.ndarray]:
    raws = []
    for i in range(1, n + 1):
        write_rgb(root / "images" / f"{i:05d}.png", i)
        raws.append(random_ids(i, 33))
        write_palette(root / "labels" / f"{i:05d}.png", raws[-1])
    return raws


def make_synthia(root: Path, n: int = 2) -> list[np.ndarray]:
    raws = []
    for i in range(n):
        write_rgb(root / "RGB" / f"{i:07d}.png", i)
        ids = random_ids(100 + i, 22)
        instances = random_ids(200 + i, 3000)  # instance ids > 255 exercise the 16 bits
        rgb = np.dstack([ids, instances, 0 * ids])  # class id first, instance id second
        write_png16_rgb(root / "GT" / "LABELS" / f"{i:07d}.png", rgb)
        raws.append(ids)
    return raws


def make_cityscapes(root: Path, split: str = "train") -> dict[str, np.ndarray]:
    raws = {}
    for city, frame in (("aachen", 19), ("bochum", 42)):
        stem = f"{city}_000000_{frame:06d}"
        write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", frame)
        raws[stem] = random_ids(frame, 33)
        labels = root / "gtFine" / split / city
        write_grey(labels / f"{stem}_gtFine_labelIds.png", raws[stem])
        write_grey(labels / f"{stem}_gtFine_instanceIds.png", raws[stem] * 0 + 1)  # distractors
        write_rgb(labels / f"{stem}_gtFine_color.png", 0)
    return raws


def labels_of(dataset: torch.utils.data.Dataset) -> list[np.ndarray]:
    return [dataset[i]["label"].numpy() for i in range(len(dataset))]


def test_registry_lists_kinds_and_options() -> None:
    kinds = {"gta5", "synthia", "synscapes", "cityscapes", "folder", "synthetic"}
    assert set(DATASET_KINDS) == kinds
    with pytest.raises(KeyError, match=r"valid kinds.*gta5.*folder"):
        build_dataset("gtav", "/nowhere", with_labels=True)
    assert dataset_options("synthia")["classes"] == 16
    assert dataset_options("gta5")["missing_labels"] == "skip"
    assert dataset_options("synthetic") == {"domain": "source", "missing_labels": "error"}


def test_unknown_option_lists_valid_ones(tmp_path: Path) -> None:
    make_gta5(tmp_path)
    with pytest.raises(ValueError, match=r"\['colour'\].*valid options.*classes"):
        build_dataset("gta5", tmp_path, with_labels=True, colour=1)


def test_gta5_palette_labels_give_cityscapes_train_ids(tmp_path: Path) -> None:
    raws = make_gta5(tmp_path)
    dataset = build_dataset("gta5", tmp_path, "train", with_labels=True)
    assert dataset.names == ["00001", "00002", "00003"]
    for raw, label in zip(raws, labels_of(dataset), strict=True):
        np.testing.assert_array_equal(label, naive_map(raw, CS19))
    item = dataset[0]
    assert item["image"].shape == (3, H, W) and item["label"].dtype == torch.int64
    sixteen = build_dataset("gta5", tmp_path, with_labels=True, classes=16)
    np.testing.assert_array_equal(labels_of(sixteen)[1], naive_map(raws[1], CS16))


def test_gta5_skips_images_without_labels_with_a_warning(tmp_path: Path) -> None:
    make_gta5(tmp_path, n=4)
    (tmp_path / "labels" / "00002.png").unlink()
    (tmp_path / "labels" / "00004.png").unlink()
    with pytest.warns(UserWarning, match=r"skipping 2 gta5 image.*00002\.png, 00004\.png"):
        dataset = build_dataset("gta5", tmp_path, with_labels=True)
    assert dataset.names == ["00001", "00003"]
    unlabelled = build_dataset("gta5", tmp_path, with_labels=False)
    assert len(unlabelled) == 4 and "label" not in unlabelled[1]
    with pytest.raises(ValueError, match=r"00002.png"):
        build_dataset("gta5", tmp_path, with_labels=True, missing_labels="error")


@pytest.mark.parametrize(
    ("classes", "mapping", "names"),
    [(16, SYN16, SYNTHIA_16_NAMES), (13, SYN13, SYNTHIA_13_NAMES)],
)
def test_synthia_16bit_labels_and_subsets(
    tmp_path: Path, classes: int, mapping: dict[int, int], names: tuple[str, ...]
) -> None:
    raws = make_synthia(tmp_path / "RAND_CITYSCAPES")  # the parent folder works as root
    files = scan_dataset("synthia", tmp_path, classes=classes)
    assert files.table.names == names and files.table.id_to_train == mapping
    for raw, label in zip(raws, labels_of(files.dataset()), strict=True):
        np.testing.assert_array_equal(label, naive_map(raw, mapping))


def test_synthia_table_is_the_reference_map() -> None:
    assert synthia_table(16).id_to_train == SYN16
    assert [synthia_table(16).names[t] for t in (9, 13, 14)] == ["sky", "bus", "motorcycle"]
    with pytest.raises(ValueError, match="16 or 13"):
        synthia_table(19)


def test_pil_cannot_read_synthia_labels_but_we_do(tmp_path: Path) -> None:
    raw = make_synthia(tmp_path, n=1)[0]
    path = tmp_path / "GT" / "LABELS" / "0000000.png"
    with Image.open(path) as image:  # PIL drops 16-bit RGB to 8 bits: ids < 256 become 0
        assert not np.array_equal(np.asarray(image)[:, :, 0], raw)
    label = build_dataset("synthia", tmp_path, with_labels=True)[0]["label"].numpy()
    np.testing.assert_array_equal(label, naive_map(raw, SYN16))


def test_synscapes_2k_images_get_labels_resized_like_pil_nearest(tmp_path: Path) -> None:
    raw = random_ids(5, 33)
    write_rgb(tmp_path / "img" / "rgb-2k" / "1.png", 1, size=(2 * H, 2 * W))
    write_rgb(tmp_path / "img" / "rgb" / "1.png", 1)
    write_grey(tmp_path / "img" / "class" / "1.png", raw)
    item = build_dataset("synscapes", tmp_path, with_labels=True)[0]
    expected = Image.fromarray(naive_map(raw, CS19).astype(np.uint8)).resize(
        (2 * W, 2 * H), Image.NEAREST
    )
    assert item["image"].shape == (3, 2 * H, 2 * W)
    np.testing.assert_array_equal(item["label"].numpy(), np.asarray(expected))
    small = build_dataset("synscapes", tmp_path, with_labels=True, image_dir="rgb")[0]
    np.testing.assert_array_equal(small["label"].numpy(), naive_map(raw, CS19))


def test_cityscapes_layout_names_and_subsets(tmp_path: Path) -> None:
    raws = make_cityscapes(tmp_path, "val")
    dataset = build_dataset("cityscapes", tmp_path, "val", with_labels=True)
    assert dataset.names == list(raws)  # colour / instance PNGs are not labels
    for stem, label in zip(raws, labels_of(dataset), strict=True):
        np.testing.assert_array_equal(label, naive_map(raws[stem], CS19))
    for classes, mapping in ((16, CS16), (13, CS13)):
        subset = build_dataset("cityscapes", tmp_path, "val", with_labels=True, classes=classes)
        np.testing.assert_array_equal(
            labels_of(subset)[0], naive_map(raws["aachen_000000_000019"], mapping)
        )
    with pytest.raises(FileNotFoundError, match=r"split 'train'.*leftImg8bit/train.*'val'"):
        build_dataset("cityscapes", tmp_path, "train", with_labels=True)


def test_cityscapes_reference_list_file(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("bochum/bochum_000000_000042_leftImg8bit.png\n")
    dataset = build_dataset("cityscapes", tmp_path, with_labels=True, list_file=listing)
    assert dataset.names == ["bochum_000000_000042"]
    listing.write_text("aachen/aachen_000000_999999_leftImg8bit.png\n")
    with pytest.raises(ValueError, match=r"1 name.*list.txt have no image.*999999"):
        build_dataset("cityscapes", tmp_path, with_labels=True, list_file=listing)


def write_yaml(root: Path, text: str) -> Path:
    path = root / "classes.yaml"
    path.write_text(text)
    return path


def test_user_folder_from_yaml(tmp_path: Path) -> None:
    write_yaml(
        tmp_path, "names: [ground, thing, sky]\nid_to_train: {10: 0, 20: 1, 30: 2, 0: 255}\n"
    )
    raw = np.random.default_rng(0).choice([0, 10, 20, 30], size=(H, W))
    write_rgb(tmp_path / "images" / "train" / "seq1" / "a.jpg", 0)
    write_grey(tmp_path / "labels" / "train" / "seq1" / "a.png", raw)
    dataset = build_dataset("folder", tmp_path, with_labels=True)
    np.testing.assert_array_equal(
        dataset[0]["label"].numpy(), naive_map(raw, {10: 0, 20: 1, 30: 2})
    )
    table = load_class_table(tmp_path / "classes.yaml")
    assert table.num_classes == 3 and table.palette[0] == (128, 64, 128)  # Cityscapes colours


def test_user_folder_identity_map_many_classes_and_no_labels(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(40)]
    write_yaml(tmp_path, f"names: {names}\nignore_index: 250\n")
    raw = np.random.default_rng(1).integers(0, 40, (H, W))
    raw[0, 0] = 250
    write_rgb(tmp_path / "images" / "train" / "b.png", 1)
    write_grey(tmp_path / "labels" / "train" / "b.png", raw)
    label = build_dataset("folder", tmp_path, with_labels=True)[0]["label"].numpy()
    np.testing.assert_array_equal(label, np.where(raw == 250, IGNORE, raw))  # file's ignore → 255
    assert len(load_class_table(tmp_path / "classes.yaml").palette) == 40
    write_rgb(tmp_path / "images" / "test" / "c.png", 2)  # a split without labels
    assert "label" not in build_dataset("folder", tmp_path, "test", with_labels=False)[0]
    with pytest.raises(FileNotFoundError, match=r"label folder not found: .*labels/test"):
        build_dataset("folder", tmp_path, "test", with_labels=True)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("names: [a, b]\ncolours: []\n", "key 'colours': unknown key"),
        ("names: []\n", "key 'names': expected a non-empty list"),
        ("names: [a, a]\n", "key 'names': expected at most 255 unique"),
        ("names: [a, b]\nid_to_train: {3: 7}\n", r"key 'id_to_train': 3: 7 is not a train id"),
        ("names: [a, b]\npalette: [[1, 2, 3]]\n", "key 'palette': expected a list of 2"),
        ("names: [a, b]\nignore_index: 1\n", "key 'ignore_index': 1 is also class 1"),
        ("names: [a]\nid_to_train: {3: 0}\nignore_index: 3\n", "'ignore_index': 3 is mapped"),
        ("names: [a\n", "not valid YAML"),
    ],
)
def test_class_yaml_errors_name_file_and_key(tmp_path: Path, text: str, pattern: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ValueError, match=pattern) as info:
        load_class_table(path)
    assert str(path) in str(info.value)


def test_user_folder_needs_its_class_table(tmp_path: Path) -> None:
    write_rgb(tmp_path / "images" / "train" / "a.png", 0)
    write_grey(tmp_path / "labels" / "train" / "a.png", np.zeros((H, W)))
    with pytest.raises(FileNotFoundError, match=r"classes.yaml"):
        build_dataset("folder", tmp_path, with_labels=True)


def test_missing_root_and_split_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"GTA5 root not found.*nowhere"):
        build_dataset("gta5", tmp_path / "nowhere", with_labels=True)
    with pytest.raises(ValueError, match="single split 'train'"):
        build_dataset("synthia", tmp_path, "val", with_labels=True)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match=r"no gta5 images .* in .*images"):
        build_dataset("gta5", tmp_path, with_labels=True)
    with pytest.raises(FileNotFoundError, match=r"SYNTHIA image folder not found.*RGB"):
        build_dataset("synthia", tmp_path, with_labels=True)


def test_corrupt_and_truncated_images_name_the_file(tmp_path: Path) -> None:
    make_gta5(tmp_path, n=2)
    (tmp_path / "images" / "00001.png").write_bytes(b"not a png at all")
    data = (tmp_path / "images" / "00002.png").read_bytes()
    (tmp_path / "images" / "00002.png").write_bytes(data[: len(data) // 2])
    dataset = build_dataset("gta5", tmp_path, with_labels=True)
    for index, name in ((0, "00001.png"), (1, "00002.png")):
        with pytest.raises(ValueError, match=f"cannot read image .*{name}"):
            dataset[index]


def test_truncated_synthia_label_names_the_file(tmp_path: Path) -> None:
    make_synthia(tmp_path, n=1)
    path = tmp_path / "GT" / "LABELS" / "0000000.png"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"cannot read label .*0000000.png"):
        build_dataset("synthia", tmp_path, with_labels=True)[0]


def test_wrong_size_label_and_values_outside_the_table(tmp_path: Path) -> None:
    make_gta5(tmp_path, n=2)
    write_palette(tmp_path / "labels" / "00001.png", random_ids(0, 33, (H, W + 1)))
    bad = random_ids(1, 33)
    bad[3, 4], bad[5, 6] = 34, 200
    write_palette(tmp_path / "labels" / "00002.png", bad)
    dataset = build_dataset("gta5", tmp_path, with_labels=True)
    with pytest.raises(
        ValueError, match=r"label .*00001.png is 33x16 but image .*00001.png is 32x16"
    ):
        dataset[0]
    with pytest.raises(
        ValueError, match=r"00002.png has values 34, 200 outside .*expected 0\.\.33"
    ):
        dataset[1]


def test_synscapes_labels_of_another_aspect_ratio_are_refused(tmp_path: Path) -> None:
    write_rgb(tmp_path / "img" / "rgb-2k" / "1.png", 1, size=(2 * H, 2 * W))
    write_grey(tmp_path / "img" / "class" / "1.png", random_ids(0, 33, (H, W + 2)))
    with pytest.raises(ValueError, match="not the same aspect ratio"):
        build_dataset("synscapes", tmp_path, with_labels=True)[0]


def test_rgb_label_is_refused(tmp_path: Path) -> None:
    make_gta5(tmp_path, n=1)
    write_rgb(tmp_path / "labels" / "00001.png", 3)
    pattern = r"label .*00001.png has mode RGB \(3 channels\): expected a single-channel"
    with pytest.raises(ValueError, match=pattern):
        build_dataset("gta5", tmp_path, with_labels=True)[0]


def test_datasets_pickle_for_workers_and_transform(tmp_path: Path) -> None:
    raws = make_synthia(tmp_path, n=1)
    transform = build_train_transform(size=(H // 2, W // 2))
    original = build_dataset("synthia", tmp_path, with_labels=True, transform=transform)
    dataset = pickle.loads(pickle.dumps(original))  # as sent to worker processes
    item = dataset[(0, 7)]
    assert item["image"].shape == (3, H // 2, W // 2)
    assert set(np.unique(item["label"].numpy())) <= set(np.unique(naive_map(raws[0], SYN16)))
