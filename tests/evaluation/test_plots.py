"""Tests of the pictures: each is a non-empty PNG with content; the error map and the PCA
projection against naive versions; bad input is named."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spcl.data.labels import CITYSCAPES
from spcl.evaluation.embedding import embed_2d, plot_feature_embedding
from spcl.evaluation.metrics import ConfusionMatrix, SegmentationScores
from spcl.evaluation.plots import (
    error_map,
    plot_confusion,
    plot_iou_bars,
    plot_model_comparison,
    plot_prediction_panels,
)

IGNORE = 255
FEW_NAMES = CITYSCAPES.names[:6]  # few classes keep figures (and the test) fast
MIN_COLOURS = 8  # a drawn figure has far more distinct colours than a blank canvas


def scores(seed: int, names: tuple[str, ...] = CITYSCAPES.names) -> SegmentationScores:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, len(names), (40, 40), generator=gen)
    pred = torch.where(
        torch.rand(40, 40, generator=gen) < 0.6,
        target,
        torch.randint(0, len(names), (40, 40), generator=gen),
    )
    target[target == len(names) - 1] = IGNORE  # last class absent from ground truth
    pred[pred == len(names) - 1] = 0  # and from prediction
    confusion = ConfusionMatrix(len(names))
    confusion.update(pred, target)
    return confusion.compute(names)


def assert_png(path: Path, min_size: tuple[int, int] = (300, 200)) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= MIN_COLOURS
    return pixels


def test_confusion_plot(tmp_path: Path) -> None:
    assert_png(plot_confusion(scores(0, FEW_NAMES), tmp_path / "cm.png"))
    assert not list(tmp_path.glob("**/.*.tmp"))  # atomic writes leave no temporary file


def test_iou_bar_plot(tmp_path: Path) -> None:
    first = scores(0, FEW_NAMES)
    runs = {"source only": first, "SPCL": scores(1, FEW_NAMES), "oracle": scores(2, FEW_NAMES)}
    assert_png(plot_iou_bars(runs, tmp_path / "figs" / "bars.png"))
    assert not list(tmp_path.glob("**/.*.tmp"))  # atomic writes leave no temporary file
    with pytest.raises(ValueError, match="run 'other' has classes"):
        plot_iou_bars({"a": first, "other": scores(0, ("x", "y", "z"))}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one run"):
        plot_iou_bars({}, tmp_path / "bad.png")


def naive_error_map(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    out = np.zeros((*gt.shape, 3), dtype=np.uint8)
    for i in range(gt.shape[0]):
        for j in range(gt.shape[1]):
            if gt[i, j] == IGNORE:
                out[i, j] = (0, 0, 0)
            elif gt[i, j] != pred[i, j]:
                out[i, j] = (255, 0, 0)
            else:
                out[i, j] = (225, 225, 225)
    return out


def test_error_map_marks_wrong_red_and_ignored_black() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (9, 11))
    gt[rng.random(gt.shape) < 0.2] = IGNORE
    pred = rng.integers(0, 4, (9, 11))
    np.testing.assert_array_equal(error_map(gt, pred), naive_error_map(gt, pred))
    with pytest.raises(ValueError, match="shapes differ"):
        error_map(gt, pred[:, :5])


def test_prediction_panels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i, shape in enumerate([(32, 64), (24, 40)]):
        gt = np.repeat(np.arange(shape[1]) * 19 // shape[1], shape[0]).reshape(shape[::-1]).T
        gt[:4] = IGNORE
        pred = np.where(rng.random(shape) < 0.8, np.where(gt == IGNORE, 0, gt), 3)
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        rows.append((image, gt, pred, f"image {i}"))
    rows[1] = (rows[1][0], None, rows[1][2], "unlabelled")
    pixels = assert_png(
        plot_prediction_panels(
            rows, CITYSCAPES.palette, tmp_path / "p.png", class_names=CITYSCAPES.names
        )
    )
    road = np.array(CITYSCAPES.palette[0])
    assert (np.abs(pixels.astype(int) - road).sum(axis=2) == 0).any()  # palette colours drawn
    assert ((pixels == (255, 0, 0)).all(axis=2)).any()  # error pixels drawn
    with pytest.raises(ValueError, match="row 'bad': prediction is"):
        plot_prediction_panels(
            [(rows[0][0], None, rows[1][2], "bad")], CITYSCAPES.palette, tmp_path / "q.png"
        )


def test_model_comparison_panels(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    gt = rng.integers(0, 3, (24, 40))
    preds = {"source only": np.zeros((24, 40), dtype=np.uint8), "SPCL": gt.astype(np.uint8)}
    pixels = assert_png(
        plot_model_comparison(
            [(image, gt, preds, "a"), (image, None, preds, "b")],
            CITYSCAPES.palette,
            tmp_path / "cmp.png",
            class_names=FEW_NAMES,
        )
    )
    assert (np.abs(pixels.astype(int) - np.array(CITYSCAPES.palette[0])).sum(axis=2) == 0).any()
    with pytest.raises(ValueError, match="row 'c': SPCL is"):
        plot_model_comparison(
            [(image, gt, {"SPCL": gt[:5]}, "c")], CITYSCAPES.palette, tmp_path / "bad.png"
        )
    with pytest.raises(ValueError, match="no rows"):
        plot_model_comparison([], CITYSCAPES.palette, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_pca_projection_equals_the_covariance_eigenvectors() -> None:
    rng = np.random.default_rng(2)
    points = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    points = points @ np.linalg.qr(rng.normal(size=(6, 6)))[0] + 4.0  # rotated, shifted
    coords, used = embed_2d(points, "pca")
    assert used == "pca" and coords.shape == (200, 2)
    centred = points - points.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    naive = centred @ vectors[:, ::-1][:, :2]  # the two largest eigenvalues
    for column in range(2):  # eigenvectors are defined up to sign
        sign = np.sign(coords[:, column] @ naive[:, column])
        np.testing.assert_allclose(coords[:, column], sign * naive[:, column], atol=1e-8)
    np.testing.assert_allclose(coords.var(axis=0, ddof=1), values[::-1][:2], rtol=1e-8)
    with pytest.raises(ValueError, match="method"):
        embed_2d(points, "umap")


def test_feature_embedding_plot_and_tsne_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(3)
    k, channels = 4, 16
    centres = torch.randn(k, channels, generator=gen) * 3
    src_labels = torch.randint(0, k, (300,), generator=gen)
    src_feat = centres[src_labels] + torch.randn(300, channels, generator=gen)
    tgt_labels = torch.randint(0, k, (2, 6, 8), generator=gen)
    tgt_labels[0, 0] = IGNORE
    tgt_feat = centres[tgt_labels.clamp(max=k - 1)].permute(0, 3, 1, 2) + 0.5  # (B, C, h, w)
    prototypes = torch.nn.functional.normalize(centres, dim=1)
    used = plot_feature_embedding(
        {"source": src_feat, "target": tgt_feat},
        {"source": src_labels, "target": tgt_labels},
        prototypes,
        tmp_path / "emb.png",
        class_names=CITYSCAPES.names[:k],
        max_points=100,
    )
    assert used == "pca"
    assert_png(tmp_path / "emb.png")
    with pytest.raises(ValueError, match="no labels for domain 'target'"):
        plot_feature_embedding(
            {"target": tgt_feat}, {"source": src_labels}, None, tmp_path / "x.png"
        )
    with pytest.raises(ValueError, match=r"domain 'source': features \(300, 16\)"):
        plot_feature_embedding(
            {"source": src_feat}, {"source": tgt_labels}, None, tmp_path / "x.png"
        )


def test_tsne_falls_back_to_pca_without_scikit_learn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(50) % 3
    with pytest.warns(UserWarning, match="scikit-learn"):
        used = plot_feature_embedding(
            {"source": features}, {"source": labels}, None, tmp_path / "tsne.png", method="tsne"
        )
    assert used == "pca"
    assert_png(tmp_path / "tsne.png")
