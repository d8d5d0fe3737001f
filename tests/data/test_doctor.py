"""``spcl data check`` / ``stats``: problems found on fake trees, class tables, the class index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.data import sampling
from spcl.data.doctor import check_dataset, dataset_stats
from spcl.data.sampling import ClassIndex

H, W = 16, 32
IGNORE = 255
CS19 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def train_ids(raw: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: CS19.get(int(v), IGNORE))(raw)


def naive_counts(raw: np.ndarray) -> np.ndarray:
    ids = train_ids(raw)
    return np.array([(ids == c).sum() for c in range(19)])


def write_pair(root: Path, name: str, raw: np.ndarray | None, seed: int) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    if raw is not None:  # a palette PNG like GTA5's (distinct colours keep the indices)
        label = Image.fromarray(raw.astype(np.uint8), mode="P")
        label.putpalette([v for i in range(256) for v in ((i * 7) % 256, 200, 3)])
        label.save(root / "labels" / f"{name}.png")


def raw_ids(seed: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 34, shape)


@pytest.fixture
def broken_gta5(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """00001 fine, 00002 no label, 00003 truncated image, 00004 label 1 px wider, 00005 id 99,
    00006 fine, and a label 00099 without image."""
    raws = {f"{i:05d}": raw_ids(i) for i in range(1, 7)}
    raws["00004"] = raw_ids(4, (H, W + 1))
    raws["00005"][2, 3] = 99
    for i, (name, raw) in enumerate(raws.items()):
        write_pair(tmp_path, name, None if name == "00002" else raw, i)
    image = tmp_path / "images" / "00003.png"
    image.write_bytes(image.read_bytes()[:-40])
    Image.fromarray(raw_ids(99).astype(np.uint8)).save(tmp_path / "labels" / "00099.png")
    return tmp_path, raws


def test_check_reports_every_problem(broken_gta5: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, raws = broken_gta5
    report = check_dataset("gta5", root, progress=False, num_workers=0)
    found = {(p.code, Path(p.path).name, p.severity) for p in report.problems}
    assert found == {
        ("missing_label", "00002.png", "warning"),
        ("orphan_label", "00099.png", "warning"),
        ("unreadable_image", "00003.png", "error"),
        ("size_mismatch", "00004.png", "error"),
        ("invalid_values", "00005.png", "error"),
    }
    assert not report.ok
    assert report.num_images == 6 and report.num_labelled == 5
    counted = [raws[n] for n in ("00001", "00003", "00004", "00006")]  # readable, valid labels
    np.testing.assert_array_equal(report.pixel_counts, sum(naive_counts(r) for r in counted))
    presence = sum((naive_counts(r) > 0).astype(int) for r in counted)
    np.testing.assert_array_equal(report.image_counts, presence)
    ignored = sum(int((train_ids(r) == IGNORE).sum()) for r in counted)
    assert report.ignored_pixels == ignored
    assert report.image_sizes == {f"{W}x{H}": 5}  # the truncated image has no size
    text = report.format()
    for needle in ("missing_label ×1", "00002.png", "size_mismatch", "33x16", "NOT OK", "road"):
        assert needle in text
    json.dumps(report.to_dict())


def test_check_writes_the_class_index(broken_gta5: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, raws = broken_gta5
    out = root / "run" / "index.npz"
    report = check_dataset("gta5", root, class_index_out=out, progress=False, num_workers=0)
    assert report.class_index_path == out
    index = ClassIndex.load(out)
    assert index.names == ["00001", "00003", "00004", "00005", "00006"]  # the dataset's items
    expected = [naive_counts(raws["00001"]), *[np.zeros(19)] * 3, naive_counts(raws["00006"])]
    np.testing.assert_array_equal(index.pixel_counts, np.stack(expected))  # broken rows: zero
    default = check_dataset("gta5", root, progress=False, num_workers=0).class_index_path
    assert default == root / "spcl_class_index_gta5_train_19cls.npz" and default.is_file()


def test_clean_dataset_is_ok_and_uses_workers(tmp_path: Path) -> None:
    raws = {f"{i:05d}": raw_ids(i) for i in range(1, 4)}
    for i, (name, raw) in enumerate(raws.items()):
        write_pair(tmp_path, name, raw, i)
    report = check_dataset("gta5", tmp_path, progress=False, num_workers=1)
    assert report.ok and not report.problems
    assert report.format().endswith("OK")
    np.testing.assert_array_equal(report.pixel_counts, sum(naive_counts(r) for r in raws.values()))


def test_stats_reads_headers_only_and_writes_nothing(
    broken_gta5: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, _ = broken_gta5
    report = dataset_stats("gta5", root, progress=False, num_workers=0)
    codes = {p.code for p in report.problems}
    assert "unreadable_image" not in codes  # a truncated body is not seen from the header
    assert {"size_mismatch", "invalid_values", "missing_label"} <= codes
    assert report.image_sizes == {f"{W}x{H}": 6}
    assert not list(root.glob("*.npz"))


def test_missing_labels_are_errors_where_the_dataset_would_fail(tmp_path: Path) -> None:
    for i, city in enumerate(("aachen", "bonn")):
        stem = f"{city}_000000_000019"
        image = tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
        image.parent.mkdir(parents=True)
        Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(image)
        if i == 0:
            label = tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
            label.parent.mkdir(parents=True)
            Image.fromarray(raw_ids(i).astype(np.uint8)).save(label)
    report = check_dataset("cityscapes", tmp_path, "val", progress=False, num_workers=0)
    assert [(p.code, p.severity) for p in report.problems] == [("missing_label", "error")]
    skipping = check_dataset(
        "cityscapes", tmp_path, "val", progress=False, num_workers=0, missing_labels="skip"
    )
    assert skipping.ok and skipping.warnings[0].path.endswith("bonn_000000_000019_leftImg8bit.png")


def test_unwritable_index_is_a_note(
    broken_gta5: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = broken_gta5

    def refuse(self: ClassIndex, path: Path) -> None:
        raise OSError(f"read-only file system: {path}")

    monkeypatch.setattr(sampling.ClassIndex, "save", refuse)
    report = check_dataset("gta5", root, progress=False, num_workers=0)
    assert report.class_index_path is None
    assert "class index not written (read-only" in report.format()


def test_layout_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Synscapes root not found"):
        check_dataset("synscapes", tmp_path / "missing", progress=False)
    with pytest.raises(KeyError, match="valid kinds"):
        check_dataset("kitti", tmp_path, progress=False)


def test_synscapes_2k_labels_of_the_same_aspect_are_fine(tmp_path: Path) -> None:
    for name, label_hw in (("1", (H, W)), ("2", (H, W + 2))):
        image = tmp_path / "img" / "rgb-2k" / f"{name}.png"
        label = tmp_path / "img" / "class" / f"{name}.png"
        for path in (image, label):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((2 * H, 2 * W, 3), dtype=np.uint8)).save(image)
        Image.fromarray(raw_ids(int(name), label_hw).astype(np.uint8)).save(label)
    report = check_dataset("synscapes", tmp_path, progress=False, num_workers=0)
    assert [(p.code, Path(p.path).name) for p in report.problems] == [("size_mismatch", "2.png")]
    expected = naive_counts(raw_ids(1)) + naive_counts(raw_ids(2, (H, W + 2)))
    np.testing.assert_array_equal(report.pixel_counts, expected)  # counted at label resolution
