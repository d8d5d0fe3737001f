"""Tests of folder evaluation (file matching, label spaces, bad input), the score files, and
parity with cityscapesscripts' pixel-level evaluation."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spcl.data.labels import CITYSCAPES, SYNTHIA_13_NAMES, SYNTHIA_16_NAMES
from spcl.evaluation.pred_folders import evaluate_folders, match_files
from spcl.evaluation.reports import (
    default_subsets,
    write_confusion_csv,
    write_csv,
    write_json,
    write_table,
)

IGNORE = 255
ROAD, SIDEWALK, BUILDING, TERRAIN, CAR = 0, 1, 2, 9, 13  # Cityscapes train ids
ROAD_ID, SIDEWALK_ID, TERRAIN_ID, UNLABELLED_ID = 7, 8, 22, 0  # Cityscapes label ids


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array).astype(np.uint8)).save(path)
    return path


def naive_scores(
    pairs: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """IoU, accuracy (percent, NaN if undefined), per-class misses to "no class", pixel accuracy.

    Inputs are already in the evaluated space: gt in 0..k-1 or 255, pred in 0..k-1 or k (none).
    """
    tp, fp, fn, missed = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k, dtype=int)
    correct = counted = 0
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
            if g == IGNORE:
                continue
            counted += 1
            if p == g:
                tp[g] += 1
                correct += 1
                continue
            fn[g] += 1
            if p == k:
                missed[g] += 1
            else:
                fp[p] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, 100.0 * tp / (tp + fp + fn), np.nan)
        acc = np.where(tp + fn > 0, 100.0 * tp / (tp + fn), np.nan)
    return iou, acc, missed, 100.0 * correct / counted if counted else math.nan


# ---- scores against a naive per-pixel loop ------------------------------------------------------


def test_train_id_folders_equal_the_naive_loop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    k = CITYSCAPES.num_classes
    pairs = []
    for i, shape in enumerate([(12, 16), (9, 7), (5, 11)]):
        gt = rng.integers(0, k, shape)
        gt[gt == CITYSCAPES.names.index("train")] = ROAD  # train: absent from both maps
        gt[rng.random(shape) < 0.2] = IGNORE
        pred = np.where(rng.random(shape) < 0.5, gt, rng.integers(0, k, shape))
        pred[pred == CITYSCAPES.names.index("train")] = SIDEWALK
        pred[rng.random(shape) < 0.1] = IGNORE  # "no prediction" pixels: misses
        save(tmp_path / "pred" / f"img{i}.png", pred)
        save(tmp_path / "gt" / f"img{i}.png", gt)
        pairs.append((np.where(pred == IGNORE, k, pred), gt))
    scores, report = evaluate_folders(
        tmp_path / "pred", tmp_path / "gt", gt_format="trainIds", progress=False
    )
    iou, acc, missed, pixel_acc = naive_scores(pairs, k)
    np.testing.assert_allclose(scores.iou, iou, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(scores.acc, acc, rtol=1e-12, equal_nan=True)
    assert scores.miou == pytest.approx(np.nanmean(iou), rel=1e-12)
    assert scores.pixel_acc == pytest.approx(pixel_acc, rel=1e-12)
    assert scores.absent_classes == ("train",)
    assert list(report["unlabelled_predictions"].values()) == missed.tolist()
    assert report["num_images"] == 3 and sum(missed) > 0
    assert report["unmatched_predictions"] == report["missing_predictions"] == []


def test_sixteen_classes_ignore_other_ground_truth_and_miss_other_predictions(
    tmp_path: Path,
) -> None:
    # label ids: gt road, road, terrain (not among the 16: ignored), sidewalk, unlabelled.
    gt = np.array([[ROAD_ID, ROAD_ID, TERRAIN_ID, SIDEWALK_ID, UNLABELLED_ID]])
    pred = np.array([[ROAD_ID, TERRAIN_ID, ROAD_ID, ROAD_ID, SIDEWALK_ID]])
    save(tmp_path / "pred" / "a.png", pred)
    save(tmp_path / "gt" / "a.png", gt)
    scores, report = evaluate_folders(
        tmp_path / "pred", tmp_path / "gt", pred_format="labelIds", classes=16, progress=False
    )
    assert scores.class_names == SYNTHIA_16_NAMES
    road, sidewalk = SYNTHIA_16_NAMES.index("road"), SYNTHIA_16_NAMES.index("sidewalk")
    # road: TP 1, FN 1 (predicted terrain = no class), FP 1 (sidewalk pixel) -> 1/3
    assert scores.iou[road] == pytest.approx(100.0 / 3.0)
    assert scores.acc[road] == pytest.approx(50.0)
    assert scores.iou[sidewalk] == 0.0
    assert report["unlabelled_predictions"]["road"] == 1
    assert len(scores.absent_classes) == 14
    assert scores.miou == pytest.approx((100.0 / 3.0 + 0.0) / 2)
    assert scores.pixel_acc == pytest.approx(100.0 / 3.0)


def test_sixteen_class_train_ids_are_indices_of_the_sixteen(tmp_path: Path) -> None:
    gt = np.array([[CAR, CAR, TERRAIN]])  # Cityscapes train ids; terrain is ignored
    pred = np.array([[SYNTHIA_16_NAMES.index("car")] * 2 + [0]])
    save(tmp_path / "p" / "a.png", pred)
    save(tmp_path / "g" / "a.png", gt)
    scores, _ = evaluate_folders(
        tmp_path / "p", tmp_path / "g", gt_format="trainIds", classes=16, progress=False
    )
    assert scores.iou[SYNTHIA_16_NAMES.index("car")] == 100.0
    assert scores.absent_classes == tuple(n for n in SYNTHIA_16_NAMES if n != "car")
    save(tmp_path / "p" / "a.png", np.array([[16, 13, 0]]))  # 16 is no class of the 16
    with pytest.raises(ValueError, match=r"a\.png.*holds id 16.*0\.\.15 or 255"):
        evaluate_folders(
            tmp_path / "p", tmp_path / "g", gt_format="trainIds", classes=16, progress=False
        )


def test_all_ignored_ground_truth_gives_absent_classes_and_no_mean(tmp_path: Path) -> None:
    save(tmp_path / "p" / "a.png", np.zeros((4, 4)))
    save(tmp_path / "g" / "a.png", np.full((4, 4), IGNORE))
    scores, report = evaluate_folders(
        tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False
    )
    assert scores.absent_classes == CITYSCAPES.names
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_acc)
    assert scores.to_dict()["miou"] is None
    assert report["num_images"] == 1


# ---- file matching ------------------------------------------------------------------------------


def cityscapes_tree(root: Path, keys: list[str]) -> None:
    """gtFine-style files for each key: labelIds, labelTrainIds, color, instanceIds (16-bit)."""
    rng = np.random.default_rng(1)
    for key in keys:
        city = root / key.split("_")[0]
        ids = rng.choice([ROAD_ID, SIDEWALK_ID, 26, UNLABELLED_ID, 1], (6, 8))
        save(city / f"{key}_gtFine_labelIds.png", ids)
        save(city / f"{key}_gtFine_labelTrainIds.png", CITYSCAPES.id_lut()[ids])
        save(city / f"{key}_gtFine_color.png", CITYSCAPES.colorize(CITYSCAPES.id_lut()[ids]))
        Image.fromarray(ids.astype(np.uint16) * 1000).save(city / f"{key}_gtFine_instanceIds.png")


def test_cityscapes_names_are_matched_and_unmatched_files_listed(tmp_path: Path) -> None:
    keys = ["aachen_000000_000019", "bonn_000001_000019", "köln_000002_000019"]
    cityscapes_tree(tmp_path / "gt", keys)
    save(tmp_path / "pred" / f"{keys[0]}_leftImg8bit.png", np.zeros((6, 8)))
    save(tmp_path / "pred" / "sub" / f"{keys[1]}.png", np.ones((6, 8)))
    save(tmp_path / "pred" / "extra_leftImg8bit.png", np.ones((6, 8)))
    pairs, unmatched, missing = match_files(tmp_path / "pred", tmp_path / "gt", "labelIds")
    assert [(p.name, g.name) for p, g in pairs] == [
        (f"{keys[0]}_leftImg8bit.png", f"{keys[0]}_gtFine_labelIds.png"),
        (f"{keys[1]}.png", f"{keys[1]}_gtFine_labelIds.png"),
    ]
    assert [Path(p).name for p in unmatched] == ["extra_leftImg8bit.png"]
    assert [Path(p).name for p in missing] == [f"{keys[2]}_gtFine_labelIds.png"]
    with pytest.raises(ValueError, match=f"1 ground-truth.*{keys[2]}_gtFine_labelIds.png"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    by_ids, report = evaluate_folders(
        tmp_path / "pred", tmp_path / "gt", on_error="skip", progress=False
    )
    assert report["missing_predictions"] == missing and report["num_images"] == 2
    by_train_ids, _ = evaluate_folders(
        tmp_path / "pred", tmp_path / "gt", gt_format="trainIds", on_error="skip", progress=False
    )
    np.testing.assert_array_equal(by_ids.confusion, by_train_ids.confusion)
    assert by_ids.confusion.sum() > 0


def test_matching_errors_name_the_files(tmp_path: Path) -> None:
    save(tmp_path / "pred" / "a.png", np.zeros((2, 2)))
    save(tmp_path / "pred" / "a_leftImg8bit.png", np.zeros((2, 2)))
    save(tmp_path / "gt" / "a.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"a\.png and .*a_leftImg8bit\.png .*both stand for"):
        match_files(tmp_path / "pred", tmp_path / "gt", "labelIds")
    save(tmp_path / "other" / "b.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"no prediction .* matches .*'b\.png'"):
        match_files(tmp_path / "other", tmp_path / "gt", "labelIds")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        match_files(tmp_path / "nowhere", tmp_path / "gt", "labelIds")
    only_ids = tmp_path / "cs"
    save(only_ids / "x_gtFine_labelIds.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"without any .*labelTrainIds.*--gt-format labelIds"):
        match_files(tmp_path / "other", only_ids, "trainIds")


# ---- bad pairs ----------------------------------------------------------------------------------


def test_size_mismatch_names_both_files_or_is_skipped(tmp_path: Path) -> None:
    save(tmp_path / "p" / "good.png", np.zeros((4, 6)))
    save(tmp_path / "g" / "good.png", np.zeros((4, 6)))
    save(tmp_path / "p" / "small.png", np.zeros((4, 5)))
    save(tmp_path / "g" / "small.png", np.zeros((4, 6)))
    pattern = r"prediction .*small\.png is 5x4 but ground truth .*small\.png is 6x4"
    with pytest.raises(ValueError, match=pattern):
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)
    scores, report = evaluate_folders(
        tmp_path / "p", tmp_path / "g", gt_format="trainIds", on_error="skip", progress=False
    )
    assert report["num_images"] == 1 and scores.confusion.sum() == 24
    (skipped,) = report["skipped"]
    assert skipped["prediction"].endswith("small.png") and "5x4" in skipped["error"]


def test_unreadable_and_colour_predictions_are_named(tmp_path: Path) -> None:
    save(tmp_path / "g" / "a.png", np.zeros((4, 6)))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read prediction .*p/a\.png"):
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)
    save(tmp_path / "p" / "a.png", np.zeros((4, 6, 3)))
    with pytest.raises(ValueError, match=r"prediction .*a\.png has mode RGB \(3 channels\)"):
        evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)
    with pytest.raises(ValueError, match="every one of the 1 pairs failed"):
        evaluate_folders(
            tmp_path / "p", tmp_path / "g", gt_format="trainIds", on_error="skip", progress=False
        )


def own_four_class_folders(root: Path) -> None:
    """A user's 4-class data: raw label values 10/20/30/40 (classes.yaml), predictions 0..3."""
    (root / "classes.yaml").write_text(
        "names: [grass, road, wall, sky]\nid_to_train: {10: 0, 20: 1, 30: 2, 40: 3}\n"
    )
    rng = np.random.default_rng(9)
    for name in ("a", "b"):
        gt = rng.choice([10, 20, 30, 40, IGNORE], (6, 8))
        gt[0, 0] = 40
        save(root / "labels" / f"{name}.png", gt)
        save(root / "pred" / f"{name}.png", rng.integers(0, 4, (6, 8)))


def test_ids_outside_the_assumed_classes_are_an_error_naming_file_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # main 3f6f3d3 scored these files as Cityscapes' 19 classes: mIoU 0.00, exit 0
    own_four_class_folders(tmp_path)
    pattern = (
        r"ground truth .*labels/a\.png .*holds id 40.*Cityscapes label ids are 0\.\.33.*--classes"
    )
    with pytest.raises(ValueError, match=pattern):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", progress=False)
    from spcl.cli import main

    args = ["evaluate", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "labels")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds id 40" in err and "--classes" in err
    assert main([*args, "--classes", str(tmp_path)]) == 0  # its own classes: scored
    assert "mIoU" in capsys.readouterr().out
    save(tmp_path / "labels" / "a.png", np.full((6, 8), 7))  # Cityscapes road: a valid label id
    with pytest.raises(ValueError, match=r"labels/b\.png .*holds id 40"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", progress=False)
    with pytest.raises(ValueError, match=r"Cityscapes train ids are 0\.\.18.*--classes"):
        evaluate_folders(
            tmp_path / "pred", tmp_path / "labels", gt_format="trainIds", progress=False
        )


def test_label_id_predictions_outside_cityscapes_ids_are_an_error(tmp_path: Path) -> None:
    save(tmp_path / "g" / "a.png", np.array([[ROAD_ID, 255, UNLABELLED_ID]]))  # 255: ignored
    save(tmp_path / "p" / "a.png", np.array([[ROAD_ID, 255, 33]]))
    scores, _ = evaluate_folders(
        tmp_path / "p", tmp_path / "g", pred_format="labelIds", progress=False
    )
    assert scores.iou[ROAD] == 100.0
    save(tmp_path / "p" / "a.png", np.array([[ROAD_ID, 255, 34]]))  # 34: no Cityscapes id
    with pytest.raises(ValueError, match=r"prediction .*p/a\.png .*holds id 34.*0\.\.33"):
        evaluate_folders(tmp_path / "p", tmp_path / "g", pred_format="labelIds", progress=False)
    sixteen_bit = np.array([[ROAD_ID, 300, UNLABELLED_ID]], dtype=np.uint16)
    Image.fromarray(sixteen_bit).save(tmp_path / "g" / "a.png")
    with pytest.raises(ValueError, match=r"ground truth .*g/a\.png .*holds id 300"):
        evaluate_folders(tmp_path / "p", tmp_path / "g", progress=False)


def test_invalid_arguments_are_named(tmp_path: Path) -> None:
    for kwargs, name in (
        ({"pred_format": "ids"}, "pred_format"),
        ({"gt_format": "color"}, "gt_format"),
        ({"classes": 20}, "classes"),
        ({"on_error": "ignore"}, "on_error"),
    ):
        with pytest.raises(ValueError, match=name):
            evaluate_folders(tmp_path, tmp_path, progress=False, **kwargs)


# ---- score files --------------------------------------------------------------------------------


def scored_folder(tmp_path: Path) -> tuple:
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 5, (10, 10))
    gt[0] = IGNORE
    pred = np.where(rng.random((10, 10)) < 0.6, gt, rng.integers(0, 6, (10, 10)))
    pred[1, :3] = IGNORE
    save(tmp_path / "p" / "a.png", np.where(gt == IGNORE, 0, pred))
    save(tmp_path / "g" / "a.png", gt)
    return evaluate_folders(tmp_path / "p", tmp_path / "g", gt_format="trainIds", progress=False)


def test_write_json_has_percent_scores_subsets_and_report(tmp_path: Path) -> None:
    scores, report = scored_folder(tmp_path)
    path = write_json(scores, tmp_path / "out" / "metrics.json", extra=report)
    data = json.loads(path.read_text())
    assert data["miou"] == pytest.approx(scores.miou)
    assert data["per_class_iou"]["road"] == pytest.approx(scores.iou[0])
    assert data["per_class_iou"]["train"] is None
    assert data["miou_16"] == pytest.approx(scores.miou_over(SYNTHIA_16_NAMES))
    assert data["miou_13"] == pytest.approx(scores.miou_over(SYNTHIA_13_NAMES))
    assert data["num_images"] == 1 and data["gt_format"] == "trainIds"
    plain = json.loads(write_json(scores, tmp_path / "plain.json", subsets={}).read_text())
    assert "miou_16" not in plain
    with pytest.raises(ValueError, match="miou"):
        write_json(scores, tmp_path / "clash.json", extra={"miou": 1.0})
    assert not (tmp_path / "clash.json").exists()
    table = write_table(scores, tmp_path / "metrics.txt").read_text()
    assert "mIoU (13)" in table and "absent" in table
    assert default_subsets(SYNTHIA_16_NAMES) == {"13": SYNTHIA_13_NAMES}
    assert default_subsets(("a", "b")) == {}


def cell(text: str) -> float:
    return math.nan if text == "" else float(text)


def same(a: float, b: float) -> bool:
    """Exactly equal, or both NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_write_csv_holds_every_number(tmp_path: Path) -> None:
    scores, report = scored_folder(tmp_path)
    unlabelled = report["unlabelled_predictions"]
    assert sum(unlabelled.values()) > 0
    path = write_csv(scores, tmp_path / "scores.csv", unlabelled=unlabelled)
    rows = list(csv.DictReader(path.open()))
    gt = np.asarray(Image.open(tmp_path / "g" / "a.png")).astype(int)
    pred = np.asarray(Image.open(tmp_path / "p" / "a.png")).astype(int)
    valid = gt != IGNORE
    for i, name in enumerate(CITYSCAPES.names):
        row = rows[i]
        assert (row["class"], int(row["train_id"])) == (name, i)
        assert same(cell(row["iou"]), scores.iou[i]) and same(cell(row["acc"]), scores.acc[i])
        tp = int(((gt == i) & (pred == i) & valid).sum())
        gt_pixels = int(((gt == i) & valid).sum())
        pred_pixels = int(((pred == i) & valid).sum())
        missed = int(((gt == i) & (pred == IGNORE)).sum())
        assert int(row["true_pos"]) == tp
        assert int(row["false_neg"]) == gt_pixels - tp
        assert int(row["false_pos"]) == pred_pixels - tp
        assert int(row["unlabelled_pred"]) == missed == unlabelled[name]
        assert (int(row["gt_pixels"]), int(row["pred_pixels"])) == (gt_pixels, pred_pixels)
    means = {row["class"]: row for row in rows[len(CITYSCAPES.names) :]}
    assert cell(means[f"mIoU ({scores.num_present} classes)"]["iou"]) == scores.miou
    assert cell(means["mAcc"]["acc"]) == scores.macc
    assert cell(means["pixel acc"]["acc"]) == scores.pixel_acc
    assert cell(means["mIoU (13)"]["iou"]) == scores.miou_over(SYNTHIA_13_NAMES)
    matrix_rows = list(csv.reader(write_confusion_csv(scores, tmp_path / "cm.csv").open()))
    assert matrix_rows[0][1:] == list(CITYSCAPES.names)
    np.testing.assert_array_equal(
        np.array([[int(v) for v in r[1:]] for r in matrix_rows[1:]]), scores.confusion
    )


# ---- parity with cityscapesscripts --------------------------------------------------------------


def test_parity_with_cityscapesscripts_on_label_id_folders(tmp_path: Path) -> None:
    cs_eval = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="cityscapesscripts not installed (pip install cityscapesscripts)",
    )
    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False
    args.JSONOutput, args.quiet = False, True
    ignored_ids = [label.id for label in cs_eval.labels if label.ignoreInEval and label.id >= 0]
    valid_ids = CITYSCAPES.train_to_id()[: CITYSCAPES.num_classes]
    rng = np.random.default_rng(3)
    pred_files, gt_files = [], []
    for i in range(3):
        key = f"city_{i:06d}_000019"
        gt = rng.choice(valid_ids[valid_ids != 31], (48, 96))  # train (31): absent
        gt[rng.random(gt.shape) < 0.15] = rng.choice(ignored_ids)
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.choice(valid_ids, gt.shape))
        pred[pred == 31] = ROAD_ID
        pred[rng.random(gt.shape) < 0.05] = rng.choice(ignored_ids)  # ignored-id predictions
        pred_files.append(str(save(tmp_path / "pred" / f"{key}_leftImg8bit.png", pred)))
        gt_files.append(str(save(tmp_path / "gt" / "city" / f"{key}_gtFine_labelIds.png", gt)))
    official = cs_eval.evaluateImgLists(pred_files, gt_files, args)
    scores, report = evaluate_folders(
        tmp_path / "pred", tmp_path / "gt", pred_format="labelIds", progress=False
    )
    official_iou = np.array([official["classScores"][n] for n in CITYSCAPES.names]) * 100.0
    np.testing.assert_allclose(scores.iou, official_iou, rtol=1e-12, equal_nan=True)
    assert scores.miou == pytest.approx(official["averageScoreClasses"] * 100.0, rel=1e-12)
    assert scores.absent_classes == ("train",)
    assert sum(report["unlabelled_predictions"].values()) > 0  # the parity covers misses
