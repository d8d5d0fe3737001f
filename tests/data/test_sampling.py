"""Class-balanced sampling and the class index, against a loop written like the SPCL reference."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.data import sampling
from spcl.data.registry import build_dataset
from spcl.data.sampling import (
    ClassBalancedOrder,
    ClassIndex,
    build_class_index,
    class_balance_weights,
    class_balanced_order,
    load_or_build_class_index,
)

LENGTH = 1500  # draws per test sub-epoch (the reference uses 3,000)


def skewed_presence() -> np.ndarray:
    """200 images: class 0 everywhere, class 1 in 40, class 2 in 4, class 3 nowhere, 10 empty."""
    presence = np.zeros((200, 4), dtype=bool)
    presence[:190, 0] = True
    presence[:40, 1] = True
    presence[40:44, 2] = True
    return presence


def reference_draws(presence: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
    """One sub-epoch as the reference's dataset constructor draws it (classes without images
    get weight 0 here; the reference would fail on them)."""
    num_classes = presence.shape[1]
    label_to_file = [list(np.flatnonzero(presence[:, c])) for c in range(num_classes)]
    ind = [0] * num_classes
    cur_class_dist = np.zeros(num_classes)
    drawn = []
    for _ in range(length):
        if cur_class_dist.sum() == 0:
            dist1 = cur_class_dist.copy()
        else:
            dist1 = cur_class_dist / cur_class_dist.sum()
        w = 1 / np.log(1 + 1e-2 + dist1)
        w[[c for c in range(num_classes) if not label_to_file[c]]] = 0.0
        w = w / w.sum()
        c = rng.choice(num_classes, p=w)
        if ind[c] > len(label_to_file[c]) - 1:
            rng.shuffle(label_to_file[c])
            ind[c] = 0
        c_file = label_to_file[c][ind[c]]
        drawn.append(c_file)
        ind[c] += 1
        cur_class_dist[presence[c_file]] += 1
    return np.array(drawn)


def test_weights_follow_the_inverse_log_formula() -> None:
    counts = np.array([10.0, 1.0, 0.0, 5.0])
    available = np.array([True, True, True, False])
    raw = [1 / math.log(1.01 + c / 16.0) for c in counts[:3]]
    expected = np.array([*raw, 0.0]) / sum(raw)
    np.testing.assert_allclose(class_balance_weights(counts, available), expected, rtol=1e-12)
    uniform = class_balance_weights(np.zeros(3), np.ones(3, dtype=bool))
    np.testing.assert_allclose(uniform, [1 / 3] * 3)


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    presence = skewed_presence()
    first = class_balanced_order(presence, seed=3, epoch=5, length=LENGTH)
    assert first.shape == (LENGTH,) and first.dtype == np.int64
    np.testing.assert_array_equal(first, class_balanced_order(presence, 3, 5, LENGTH))
    assert not np.array_equal(first, class_balanced_order(presence, 3, 6, LENGTH))
    assert not np.array_equal(first, class_balanced_order(presence, 4, 5, LENGTH))
    order = ClassBalancedOrder(ClassIndex([str(i) for i in range(200)], presence * 1), 3, LENGTH)
    assert len(order) == LENGTH
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(order))(5), first)


def test_balance_matches_the_reference_scheme() -> None:
    presence = skewed_presence()
    ours = np.concatenate([class_balanced_order(presence, 0, e, LENGTH) for e in range(2)])
    rng = np.random.default_rng(123)
    reference = np.concatenate([reference_draws(presence, rng, LENGTH) for _ in range(2)])
    ours_share = presence[ours].mean(axis=0)
    reference_share = presence[reference].mean(axis=0)
    np.testing.assert_allclose(ours_share, reference_share, atol=0.04)
    uniform_share = presence.mean(axis=0)
    assert ours_share[2] > 10 * uniform_share[2]  # the rare class is drawn far more often
    assert ours_share[3] == 0.0
    assert not np.isin(np.arange(190, 200), ours).any()  # images without classes: never
    assert set(np.arange(40, 44)) <= set(ours.tolist())  # every rare-class image is visited


def test_no_class_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no image contains any class"):
        class_balanced_order(np.zeros((5, 3), dtype=bool), 0, 0, 10)


def test_index_save_load_round_trip_and_errors(tmp_path: Path) -> None:
    index = ClassIndex(["a", "b"], np.array([[3, 0, 1], [0, 0, 9]], dtype=np.int64))
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = ClassIndex.load(path)
    assert loaded.names == ["a", "b"] and loaded.num_classes == 3
    np.testing.assert_array_equal(loaded.pixel_counts, index.pixel_counts)
    np.testing.assert_array_equal(loaded.images_of(2), [0, 1])
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read class index .*bad.npz"):
        ClassIndex.load(tmp_path / "bad.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:100])  # a zip cut short
    with pytest.raises(ValueError, match=r"cannot read class index .*cut.npz"):
        ClassIndex.load(tmp_path / "cut.npz")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "index.npz"
    ClassIndex(["old"], np.ones((1, 2), dtype=np.int64)).save(path)

    def broken_savez(handle: object, **arrays: np.ndarray) -> None:
        handle.write(b"half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(sampling.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        ClassIndex(["new"], np.zeros((1, 2), dtype=np.int64)).save(path)
    monkeypatch.undo()
    assert ClassIndex.load(path).names == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]


def make_folder(root: Path, labels: list[np.ndarray]) -> None:
    (root / "classes.yaml").write_text("names: [a, b, c]\n")
    for i, label in enumerate(labels):
        for sub, array in (("images", np.zeros((*label.shape, 3))), ("labels", label)):
            (root / sub / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(root / sub / "train" / f"{i}.png")


def test_build_and_cache_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = [np.random.default_rng(i).choice([0, 1, 2, 255], size=(6, 8)) for i in range(3)]
    make_folder(tmp_path, labels)
    dataset = build_dataset("folder", tmp_path, with_labels=True)
    expected = np.array([[(label == c).sum() for c in range(3)] for label in labels])
    index = build_class_index(dataset, 3)
    np.testing.assert_array_equal(index.pixel_counts, expected)
    assert index.names == ["0", "1", "2"]
    path = tmp_path / "cache" / "index.npz"
    load_or_build_class_index(dataset, 3, path)
    monkeypatch.setattr(sampling, "build_class_index", lambda *a, **k: pytest.fail("rebuilt"))
    np.testing.assert_array_equal(
        load_or_build_class_index(dataset, 3, path).pixel_counts, expected
    )
    monkeypatch.undo()
    ClassIndex(["x"], np.zeros((1, 3), dtype=np.int64)).save(path)  # stale: other names
    np.testing.assert_array_equal(
        load_or_build_class_index(dataset, 3, path).pixel_counts, expected
    )
    assert ClassIndex.load(path).names == ["0", "1", "2"]


def test_building_the_index_draws_nothing_from_the_global_torch_rng(tmp_path: Path) -> None:
    # the first run builds it, later ones read it: both must leave Dropout's draws alike
    import torch

    make_folder(tmp_path, [np.zeros((6, 8)), np.ones((6, 8))])
    dataset = build_dataset("folder", tmp_path, with_labels=True)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    build_class_index(dataset, 3)
    assert torch.equal(torch.get_rng_state(), before)
