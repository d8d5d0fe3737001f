"""Tests of the confusion matrix and IoU tables against hand-computed cases, a naive loop and
cityscapesscripts' official pixel-level evaluation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.evaluation.metrics import ConfusionMatrix, SegmentationScores, scores_from_confusion

IGNORE = 255
NAMES3 = ("a", "b", "c")


def scores_of(
    pred: list[int], target: list[int], names: tuple[str, ...] = NAMES3
) -> SegmentationScores:
    confusion = ConfusionMatrix(len(names))
    confusion.update(torch.tensor(pred), torch.tensor(target))
    return confusion.compute(names)


def naive_confusion(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    matrix = np.zeros((k, k), dtype=np.int64)
    for i in range(target.shape[0]):
        for j in range(target.shape[1]):
            if target[i, j] != ignore:
                matrix[target[i, j], pred[i, j]] += 1
    return matrix


def random_maps(
    seed: int, shape: tuple[int, ...], k: int, ignore_frac: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < ignore_frac] = IGNORE
    pred = torch.randint(0, k, shape, generator=gen)
    return pred, target


# ---- hand-made cases with exactly known scores -------------------------------------------------


def test_perfect_prediction_scores_100() -> None:
    scores = scores_of([0, 1, 2, 2], [0, 1, 2, 2])
    np.testing.assert_array_equal(scores.iou, [100.0, 100.0, 100.0])
    np.testing.assert_array_equal(scores.acc, [100.0, 100.0, 100.0])
    assert (scores.miou, scores.macc, scores.pixel_acc) == (100.0, 100.0, 100.0)
    assert scores.absent_classes == ()


def test_one_class_confused_with_another() -> None:
    # class a: 4 gt pixels, one predicted as b -> TP 3, FN 1; class b: TP 2, FP 1.
    scores = scores_of([0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(scores.iou, [75.0, 200.0 / 3.0, 100.0])
    np.testing.assert_allclose(scores.acc, [75.0, 100.0, 100.0])
    assert scores.miou == pytest.approx((75.0 + 200.0 / 3.0 + 100.0) / 3.0)
    assert scores.macc == pytest.approx(275.0 / 3.0)
    assert scores.pixel_acc == pytest.approx(100.0 * 7 / 8)
    np.testing.assert_array_equal(scores.confusion, [[3, 1, 0], [0, 2, 0], [0, 0, 2]])


def test_all_ignored_gives_all_absent_and_nan_means() -> None:
    scores = scores_of([0, 1, 2], [IGNORE, IGNORE, IGNORE])
    assert scores.absent_classes == NAMES3
    assert np.isnan(scores.iou).all() and np.isnan(scores.acc).all()
    assert math.isnan(scores.miou) and math.isnan(scores.macc) and math.isnan(scores.pixel_acc)
    as_dict = scores.to_dict()
    assert as_dict["miou"] is None and as_dict["pixel_acc"] is None
    assert as_dict["per_class_iou"] == {"a": None, "b": None, "c": None}
    json.dumps(as_dict, allow_nan=False)
    assert "nan" not in scores.format_table().lower()


def test_absent_class_is_excluded_from_the_mean() -> None:
    scores = scores_of([0, 1, 1, 1], [0, 0, 1, 1])  # class c in neither map
    assert scores.absent_classes == ("c",)
    assert math.isnan(scores.iou[2]) and math.isnan(scores.acc[2])
    assert scores.miou == pytest.approx((50.0 + 200.0 / 3.0) / 2.0)
    assert scores.macc == pytest.approx((50.0 + 100.0) / 2.0)
    assert scores.to_dict()["per_class_iou"]["c"] is None
    assert scores.num_present == 2


def test_class_present_only_in_prediction_gets_iou_zero() -> None:
    scores = scores_of([0, 2, 1, 1], [0, 0, 1, 1])  # c predicted once, never in ground truth
    assert scores.absent_classes == ()
    np.testing.assert_allclose(scores.iou, [50.0, 100.0, 0.0])
    assert scores.miou == pytest.approx(50.0)
    assert math.isnan(scores.acc[2])  # recall undefined without ground-truth pixels
    assert scores.macc == pytest.approx(75.0)
    assert scores.to_dict()["per_class_iou"]["c"] == 0.0


# ---- the bincount matrix ------------------------------------------------------------------------


@st.composite
def map_pairs(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 6))
    shape = draw(st.tuples(st.integers(1, 9), st.integers(1, 9)))
    target = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, k - 1)))
    ignored = draw(hnp.arrays(np.bool_, shape))
    target[ignored] = IGNORE
    pred = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, k - 1)))
    return k, pred, target


@settings(max_examples=60, deadline=None)
@given(map_pairs())
def test_bincount_matrix_equals_naive_loop(case: tuple[int, np.ndarray, np.ndarray]) -> None:
    k, pred, target = case
    confusion = ConfusionMatrix(k)
    confusion.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert confusion.matrix.dtype == torch.int64
    np.testing.assert_array_equal(
        confusion.matrix.numpy(), naive_confusion(pred, target, k, IGNORE)
    )


def test_iou_equals_naive_per_class_counts() -> None:
    pred, target = random_maps(3, (2, 16, 16), 5)
    confusion = ConfusionMatrix(5)
    confusion.update(pred, target)
    scores = confusion.compute(("a", "b", "c", "d", "e"))
    valid = target != IGNORE
    for c in range(5):
        tp = ((pred == c) & (target == c) & valid).sum().item()
        union = (((pred == c) | (target == c)) & valid).sum().item()
        assert scores.iou[c] == pytest.approx(100.0 * tp / union)


def test_several_batches_equal_one_update_and_shapes() -> None:
    pred, target = random_maps(0, (4, 12, 10), 7)
    whole = ConfusionMatrix(7)
    whole.update(pred, target)
    pieces = ConfusionMatrix(7)
    pieces.update(pred[:1], target[:1])  # (1, H, W)
    pieces.update(pred[1:3], target[1:3])  # (2, H, W)
    pieces.update(pred[3], target[3])  # (H, W)
    assert torch.equal(whole.matrix, pieces.matrix)
    assert whole.matrix.sum().item() == (target != IGNORE).sum().item()


def test_uint8_inputs_do_not_overflow() -> None:
    pred, target = random_maps(1, (2, 16, 16), 19)  # index up to 18 * 19 + 18 > 255
    wide, narrow = ConfusionMatrix(19), ConfusionMatrix(19)
    wide.update(pred, target)
    narrow.update(pred.to(torch.uint8), target.to(torch.uint8))
    assert torch.equal(wide.matrix, narrow.matrix)


def test_merge_reset_and_state_dict() -> None:
    pred, target = random_maps(2, (2, 8, 8), 4)
    first, second, both = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    first.update(pred[0], target[0])
    second.update(pred[1], target[1])
    both.update(pred, target)
    assert first.merge(second) is first
    assert torch.equal(first.matrix, both.matrix)
    restored = ConfusionMatrix(4)
    restored.load_state_dict(both.state_dict())
    assert torch.equal(restored.matrix, both.matrix)
    both.reset()
    assert both.matrix.sum().item() == 0 and restored.matrix.sum().item() > 0
    with pytest.raises(ValueError, match="num_classes"):
        first.merge(ConfusionMatrix(5))
    with pytest.raises(ValueError, match="differ"):
        ConfusionMatrix(5).load_state_dict(restored.state_dict())


def test_reduce_sums_in_place_like_all_reduce() -> None:
    pred, target = random_maps(4, (2, 8, 8), 4)
    rank0, rank1 = ConfusionMatrix(4), ConfusionMatrix(4)
    rank0.update(pred[0], target[0])
    rank1.update(pred[1], target[1])
    expected = rank0.matrix + rank1.matrix
    seen: list[torch.Tensor] = []

    def fake_all_reduce(tensor: torch.Tensor) -> None:  # what SUM over the two ranks does
        seen.append(tensor)
        tensor += rank1.matrix

    assert rank0.reduce_(fake_all_reduce) is rank0
    assert seen[0] is rank0.matrix
    assert torch.equal(rank0.matrix, expected)


def test_reduce_with_torch_distributed_single_process(tmp_path: Path) -> None:
    dist = pytest.importorskip("torch.distributed", reason="torch built without distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        pred, target = random_maps(5, (8, 8), 3)
        confusion = ConfusionMatrix(3)
        confusion.update(pred, target)
        before = confusion.matrix.clone()
        confusion.reduce_(dist.all_reduce)
        assert torch.equal(confusion.matrix, before)  # world size 1: the sum of one rank
    finally:
        dist.destroy_process_group()


def test_invalid_inputs_raise_naming_the_value() -> None:
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="pred holds class id 7"):
        confusion.update(torch.tensor([0, 7]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pred holds class id -1"):
        confusion.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target holds class id 3"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="shapes differ"):
        confusion.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="float32"):
        confusion.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert confusion.matrix.sum().item() == 0  # nothing was counted by the failed updates
    confusion.update(torch.tensor([IGNORE, 1]), torch.tensor([IGNORE, 1]))  # skipped pixel
    assert confusion.matrix.sum().item() == 1
    with pytest.raises(ValueError, match="shape"):
        scores_from_confusion(np.zeros((3, 3)), ("a", "b"))


def test_custom_ignore_index() -> None:
    confusion = ConfusionMatrix(3, ignore_index=-1)
    confusion.update(torch.tensor([0, 2, 1]), torch.tensor([-1, 2, 1]))
    np.testing.assert_array_equal(confusion.matrix.numpy(), np.diag([0, 1, 1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_matrix_follows_the_inputs_to_the_gpu() -> None:
    pred, target = random_maps(6, (2, 32, 32), 19)
    device = torch.device("cuda", torch.cuda.current_device())
    on_cpu, on_gpu = ConfusionMatrix(19), ConfusionMatrix(19, device=device)
    on_cpu.update(pred, target)
    on_gpu.update(pred.to(device), target.to(device))
    assert on_gpu.matrix.device == device
    assert torch.equal(on_gpu.matrix.cpu(), on_cpu.matrix)
    with pytest.raises(ValueError, match="pred holds class id 19"):
        on_gpu.update(torch.full_like(target, 19, device=device), target.to(device))


# ---- scores: subsets, dict, table ---------------------------------------------------------------


def cityscapes_scores(seed: int = 7) -> SegmentationScores:
    pred, target = random_maps(seed, (2, 24, 24), CITYSCAPES.num_classes)
    target[target == CITYSCAPES.names.index("train")] = IGNORE
    pred[pred == CITYSCAPES.names.index("train")] = 0  # "train" absent from both maps
    confusion = ConfusionMatrix(CITYSCAPES.num_classes)
    confusion.update(pred, target)
    return confusion.compute(CITYSCAPES.names)


def test_subset_miou_is_the_mean_of_the_subset_ious() -> None:
    scores = cityscapes_scores()
    assert scores.absent_classes == ("train",)
    per_class = scores.to_dict()["per_class_iou"]
    for subset in (SYNTHIA_16_NAMES, SYNTHIA_13_NAMES):
        expected = sum(per_class[n] for n in subset) / len(subset)
        assert scores.miou_over(subset) == pytest.approx(expected)
    present = [v for v in per_class.values() if v is not None]
    assert scores.miou == pytest.approx(sum(present) / 18)
    assert scores.miou_over(CITYSCAPES.names) == pytest.approx(scores.miou)
    with pytest.raises(KeyError, match="caravan"):
        scores.miou_over(("road", "caravan"))


def test_to_dict_is_json_and_adds_subsets_only_when_asked() -> None:
    scores = cityscapes_scores()
    plain = scores.to_dict()
    assert set(plain) == {
        "miou",
        "macc",
        "pixel_acc",
        "per_class_iou",
        "per_class_acc",
        "absent_classes",
    }
    assert list(plain["per_class_iou"]) == list(CITYSCAPES.names)
    assert plain["absent_classes"] == ["train"] and plain["per_class_iou"]["train"] is None
    full = scores.to_dict({"16": SYNTHIA_16_NAMES, "13": SYNTHIA_13_NAMES})
    assert full["miou_16"] == pytest.approx(scores.miou_over(SYNTHIA_16_NAMES))
    assert full["miou_13"] == pytest.approx(scores.miou_over(SYNTHIA_13_NAMES))
    assert json.loads(json.dumps(full, allow_nan=False)) == full


def test_format_table_rows_and_means() -> None:
    scores = cityscapes_scores()
    table = scores.format_table({"13": SYNTHIA_13_NAMES}).splitlines()
    assert table[0].split() == ["class", "IoU", "Acc"]
    rows = {line[: len("traffic light")].strip(): line for line in table[2:21]}
    assert list(rows) == list(CITYSCAPES.names)
    assert rows["train"].split()[-2:] == ["absent", "absent"]
    road = CITYSCAPES.names.index("road")
    assert rows["road"].split()[-2:] == [f"{scores.iou[road]:.2f}", f"{scores.acc[road]:.2f}"]
    assert len({len(line) for line in table[2:21]}) == 1  # aligned columns
    means = [line.split() for line in table[22:]]
    assert means[0] == ["mIoU", "(18", "classes)", f"{scores.miou:.2f}"]
    assert means[1] == ["mAcc", f"{scores.macc:.2f}"]
    assert means[2] == ["pixel", "acc", f"{scores.pixel_acc:.2f}"]
    assert means[3] == ["mIoU", "(13)", f"{scores.miou_over(SYNTHIA_13_NAMES):.2f}"]
    text = "\n".join(table)
    assert "nan" not in text.lower()


# ---- parity with cityscapesscripts --------------------------------------------------------------


def make_label_id_pair(
    rng: np.random.Generator, shape: tuple[int, int], ignored_ids: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Random (prediction, ground truth) Cityscapes label-id maps built from train-id maps.

    Ignored ground-truth pixels get random ids among ``ignored_ids`` (not only 0 = unlabeled).
    """
    k = CITYSCAPES.num_classes
    gt_train = rng.integers(0, k, shape)
    gt_train[gt_train == CITYSCAPES.names.index("train")] = 0  # train: in neither map
    gt_train[gt_train == CITYSCAPES.names.index("truck")] = 1  # truck: prediction only
    pred_train = np.where(rng.random(shape) < 0.6, gt_train, rng.integers(0, k, shape))
    pred_train[pred_train == CITYSCAPES.names.index("train")] = 2
    gt_train[rng.random(shape) < 0.15] = IGNORE
    to_id = CITYSCAPES.train_to_id()
    gt_ids, pred_ids = to_id[gt_train], to_id[pred_train]
    ignored = gt_train == IGNORE  # spread over every ignored label id, not just 0
    gt_ids[ignored] = rng.choice(ignored_ids, int(ignored.sum()))
    return pred_ids.astype(np.uint8), gt_ids.astype(np.uint8)


def test_parity_with_cityscapesscripts(tmp_path: Path) -> None:
    cs_eval = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="cityscapesscripts not installed (pip install cityscapesscripts)",
    )
    ignored_ids = [label.id for label in cs_eval.labels if label.ignoreInEval and label.id >= 0]
    args = copy.copy(cs_eval.args)  # the module's settings, minus instance scores, output and files
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False
    args.JSONOutput, args.quiet = False, True
    rng = np.random.default_rng(0)
    lut = CITYSCAPES.id_lut()
    confusion = ConfusionMatrix(CITYSCAPES.num_classes)
    pred_files, gt_files = [], []
    for i in range(3):
        pred_ids, gt_ids = make_label_id_pair(rng, (64, 128), ignored_ids)
        pred_files.append(str(tmp_path / f"pred_{i}.png"))
        gt_files.append(str(tmp_path / f"gt_{i}_gtFine_labelIds.png"))
        Image.fromarray(pred_ids).save(pred_files[-1])
        Image.fromarray(gt_ids).save(gt_files[-1])
        confusion.update(torch.from_numpy(lut[pred_ids]), torch.from_numpy(lut[gt_ids]))
    official = cs_eval.evaluateImgLists(pred_files, gt_files, args)
    scores = confusion.compute(CITYSCAPES.names)

    label_ids = CITYSCAPES.train_to_id()[: CITYSCAPES.num_classes]
    official_matrix = np.asarray(official["confMatrix"])[np.ix_(label_ids, label_ids)]
    np.testing.assert_array_equal(scores.confusion, official_matrix)
    official_iou = np.array([official["classScores"][n] for n in CITYSCAPES.names]) * 100.0
    np.testing.assert_allclose(scores.iou, official_iou, rtol=1e-12, equal_nan=True)
    assert scores.miou == pytest.approx(official["averageScoreClasses"] * 100.0, rel=1e-12)
    assert scores.absent_classes == ("train",)
    assert scores.iou[CITYSCAPES.names.index("truck")] == 0.0
