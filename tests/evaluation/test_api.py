"""Tests of evaluation as a library: ``infer`` (flip, scales, sliding window) against a whole-image
pass where they must agree, ``evaluate`` against a hand count, and ``spcl evaluate MODEL`` against
the library called directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_inference import K, assert_close, context_model, images, pointwise_model
from torch import nn

from spcl.data.loaders import build_eval_loader
from spcl.data.registry import build_dataset
from spcl.data.transforms import build_eval_transform
from spcl.evaluation.api import evaluate, infer
from spcl.evaluation.inference import predict_probs
from spcl.models.files import load_model_file
from spcl.models.segmenter import SegOutput
from test_predict import model_file, write_image

IGNORE = 255

# ---- infer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("slide", [(20, 28, 20, 28), (64, 10), (32, 40, 5, 7)])
def test_a_window_covering_the_image_is_the_whole_image_pass(slide: tuple[int, ...]) -> None:
    model, x = context_model(), images(10, (2, 3, 20, 28))  # not flip-equivariant
    assert_close(infer(model, x, flip=True, slide=slide), infer(model, x, flip=True))
    assert_close(infer(model, x, slide=slide), predict_probs(model, x))


def test_flipping_a_flip_symmetric_model_changes_nothing_whole_or_windowed() -> None:
    model, x = pointwise_model(), images(11, (1, 3, 19, 26))
    for slide in (None, (8, 8, 5, 6)):
        plain = infer(model, x, (38, 52), slide=slide)
        assert_close(infer(model, x, (38, 52), flip=True, slide=slide), plain)
        assert plain.shape == (1, K, 38, 52)
    # a pointwise model's windows agree with the whole image wherever they are cut
    assert_close(infer(model, x, slide=(7, 9, 3, 4)), infer(model, x))


def test_infer_without_options_is_the_plain_softmax() -> None:
    model, x = context_model(), images(12)
    logits = F.interpolate(model(x).logits, size=(24, 30), mode="bilinear", align_corners=True)
    assert_close(infer(model, x, (24, 30)), logits.softmax(1))
    assert torch.equal(infer(model, x, (24, 30), slide=()), infer(model, x, (24, 30)))


def test_infer_refuses_a_bad_window() -> None:
    with pytest.raises(ValueError, match="stride <= crop"):
        infer(pointwise_model(), images(13), slide=(8, 9))


# ---- evaluate ---------------------------------------------------------------------------------


class ClassFromPixel(nn.Module):
    """Predicts, at every pixel, the class written in the image's first channel (pointwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))  # gives the model a device

    def forward(self, images: torch.Tensor) -> SegOutput:
        classes = images[:, 0].round().long().clamp(0, K - 1)
        logits = F.one_hot(classes, K).permute(0, 3, 1, 2).float() * self.scale
        return SegOutput(logits, logits)


def batches(seed: int) -> list[dict[str, torch.Tensor]]:
    """Two batches of images whose first channel holds the predicted class, and labels."""
    rng = np.random.default_rng(seed)
    out = []
    for batch, (height, width) in ((2, (6, 9)), (1, (5, 7))):
        pred = rng.integers(0, K, (batch, height, width))
        label = rng.integers(0, K, (batch, height, width))
        label[rng.random(label.shape) < 0.2] = IGNORE
        image = np.zeros((batch, 3, height, width), dtype=np.float32)
        image[:, 0] = pred
        out.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    return out


def hand_count(loader: list[dict[str, torch.Tensor]]) -> np.ndarray:
    counts = np.zeros((K, K), dtype=np.int64)
    for batch in loader:
        pred = batch["image"][:, 0].long().numpy().ravel()
        for truth, guess in zip(batch["label"].numpy().ravel(), pred, strict=True):
            if truth != IGNORE:
                counts[truth, guess] += 1
    return counts


def test_evaluate_counts_every_labelled_pixel_like_a_hand_count() -> None:
    model, loader = ClassFromPixel().train(), batches(0)
    names = tuple("abcde")
    expected = hand_count(loader)
    scores = evaluate(model, loader, names)
    np.testing.assert_array_equal(scores.confusion, expected)
    assert scores.class_names == names and model.training  # its mode given back
    tp, union = np.diag(expected), expected.sum(0) + expected.sum(1) - np.diag(expected)
    np.testing.assert_allclose(scores.iou, 100 * tp / union)
    assert scores.miou == pytest.approx(float(np.mean(100 * tp / union)))
    # the test-time options go through infer: for a pointwise model they change no prediction
    options = evaluate(model, loader, names, flip=True, slide=(4, 4, 2, 3), device="cpu")
    np.testing.assert_array_equal(options.confusion, expected)


def test_evaluate_reduces_the_counts_once_before_scoring() -> None:
    seen: list[torch.Tensor] = []

    def double(counts: torch.Tensor) -> None:  # stands in for a sum over two processes
        seen.append(counts.clone())
        counts.mul_(2)

    loader = batches(1)
    scores = evaluate(ClassFromPixel(), loader, tuple("abcde"), reduce=double)
    assert len(seen) == 1 and np.array_equal(seen[0].numpy(), hand_count(loader))
    np.testing.assert_array_equal(scores.confusion, 2 * hand_count(loader))


def test_evaluate_refuses_a_bad_window_before_any_batch() -> None:
    def loader():
        raise AssertionError("a batch was drawn")
        yield  # a generator

    with pytest.raises(ValueError, match="stride <= crop"):
        evaluate(ClassFromPixel(), loader(), tuple("abcde"), slide=(4, 4, 5, 4))


# ---- spcl evaluate MODEL: the library with the flags' options ---------------------------------


def test_cli_evaluate_scores_what_the_library_scores(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "labels" / "val").mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [a, b, c]\n")
    for i in range(2):
        write_image(root / "images" / "val" / f"v{i}.png", (24, 32), seed=i)
        label = np.random.default_rng(10 + i).integers(0, 3, (24, 32)).astype(np.uint8)
        Image.fromarray(label).save(root / "labels" / "val" / f"v{i}.png")
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"data:\n  target_val: {{kind: folder, root: {root}, split: val, size: [16, 20]}}\n"
        "run: {device: cpu, progress: false}\n"
    )
    path = model_file(tmp_path / "model.pth", ("a", "b", "c"))
    model, _ = load_model_file(path)
    from spcl.cli import main

    argv = ["evaluate", str(path), "--config", str(config), "--flip", "--slide", "12,12,6,8"]
    assert main([*argv, "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    transform = build_eval_transform((16, 20))
    dataset = build_dataset("folder", str(root), "val", with_labels=True, transform=transform)
    loader = build_eval_loader(dataset)
    expected = evaluate(model, loader, ("a", "b", "c"), flip=True, slide=(12, 12, 6, 8))
    assert {key: got[key] for key in expected.to_dict()} == expected.to_dict()
    assert expected.confusion.sum() == 2 * 24 * 32  # scored at the labels' full size
    plain = evaluate(model, build_eval_loader(dataset), ("a", "b", "c"))
    assert not np.array_equal(plain.confusion, expected.confusion)  # the flags were used
